package cpu

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

// Copy2D implements kernels.Backend.
func (*Backend) Copy2D(dst kernels.Buffer, dOff, dStride int, src kernels.Buffer, sOff, sStride int, rows, cols int) {
	d, s := f(dst), f(src)
	for r := 0; r < rows; r++ {
		copy(d[dOff+r*dStride:dOff+r*dStride+cols], s[sOff+r*sStride:sOff+r*sStride+cols])
	}
}

// HostView returns the host memory behind b (no copy): the model's decoder reads its
// log-probabilities there instead of downloading 4·rows·V bytes every step.
func (*Backend) HostView(b kernels.Buffer) []float32 { return f(b) }

// GatherRows implements kernels.Backend.
func (*Backend) GatherRows(dst kernels.Buffer, dStride int, src kernels.Buffer, sStride int, idx []int32, n int) {
	d, s := f(dst), f(src)
	for i, j := range idx {
		copy(d[i*dStride:i*dStride+n], s[int(j)*sStride:int(j)*sStride+n])
	}
}

// PermuteRows reorders rows in place, in every buffer of bufs: afterwards row i (i <
// len(idx)) holds the first n elements that row idx[i] held before; rows from len(idx)
// on are left unspecified. Beam search reorders its self-attention caches this way
// every step: rows that keep their place are not copied, only the old rows that a move
// would clobber before another move reads them are saved first, and no second buffer
// of the cache's size is needed.
func (be *Backend) PermuteRows(bufs []kernels.Buffer, stride int, idx []int32, n int) {
	if n == 0 || len(idx) == 0 {
		return
	}
	// slot[s] is where old row s is saved (-1: not saved). A row needs saving when a
	// move reads it and it is itself a move's destination.
	slot := make([]int, len(idx))
	for i := range slot {
		slot[i] = -1
	}
	var moves []int
	var order []int32 // saved rows by slot
	for i, j := range idx {
		if int(j) == i {
			continue
		}
		moves = append(moves, i)
		if int(j) < len(idx) && int(idx[j]) != int(j) && slot[j] < 0 {
			slot[j] = len(order)
			order = append(order, j)
		}
	}
	if len(moves) == 0 {
		return
	}
	scratch := make([][]float32, len(bufs))
	for b := range bufs {
		scratch[b] = make([]float32, len(order)*n)
	}
	// Save, then move: every read of a clobbered row goes to its saved copy, and every
	// other source row is no move's destination, so the moves are independent.
	be.parallel(len(bufs)*len(order), n, func(lo, hi int) {
		for t := lo; t < hi; t++ {
			b, k := t/len(order), t%len(order)
			d, s := f(bufs[b]), int(order[k])
			copy(scratch[b][k*n:(k+1)*n], d[s*stride:s*stride+n])
		}
	})
	be.parallel(len(bufs)*len(moves), n, func(lo, hi int) {
		for t := lo; t < hi; t++ {
			b, i := t/len(moves), moves[t%len(moves)]
			d, j := f(bufs[b]), int(idx[i])
			src := d[j*stride : j*stride+n]
			if j < len(slot) && slot[j] >= 0 {
				src = scratch[b][slot[j]*n : (slot[j]+1)*n]
			}
			copy(d[i*stride:i*stride+n], src)
		}
	})
}

// rowIndex is the CPU's kernels.RowIndex: the host slice itself.
type rowIndex struct {
	idx     []int32
	srcRows int
}

func (r *rowIndex) Len() int     { return len(r.idx) }
func (r *rowIndex) SrcRows() int { return r.srcRows }

// RowIndex implements kernels.RowPacker.
func (*Backend) RowIndex(idx []int32, srcRows int) kernels.RowIndex {
	for i, j := range idx {
		if int(j) >= srcRows {
			panic(fmt.Sprintf("cpu backend: RowIndex entry %d at %d past the source's %d rows", j, i, srcRows))
		}
	}
	return &rowIndex{idx: idx, srcRows: srcRows}
}

// PackRows implements kernels.RowPacker (float32 buffers).
func (*Backend) PackRows(dst, src kernels.Buffer, ix kernels.RowIndex, width int) {
	r := ix.(*rowIndex)
	d, s := f(dst), f(src)
	if len(r.idx)*width > len(d) || r.srcRows*width > len(s) {
		panic(fmt.Sprintf("cpu backend: PackRows of %d rows from %d rows of %d: buffers of %d and %d", len(r.idx), r.srcRows, width, len(d), len(s)))
	}
	for i, j := range r.idx {
		row := d[i*width : (i+1)*width]
		if j < 0 {
			clear(row)
			continue
		}
		copy(row, s[int(j)*width:int(j+1)*width])
	}
}
