package cpu

import (
	"sync"
	"sync/atomic"
)

// The GEMM engine computes c = alpha·x·wᵀ + beta·c (+ bias per column) with both x
// [m,k] and w [n,k] row-major, the layout of torch.nn.Linear: every output is a dot
// product of two contiguous rows, so the weights are read in place. Packing w into
// panels (the textbook GEBP layout) would rewrite the whole weight matrix on every
// call, which for a decoder step (m = batch×beam rows against a 32k×512 output
// projection) costs as much as the arithmetic. Other layouts are transposed into this
// one first (see Gemm).
//
// Blocking: x is cut into row blocks that fit in L2 (mc rows × k); each worker owns a
// range of w rows and walks it tileN (8) rows at a time, splitting k into kc-long chunks so
// that the 8 w rows of a chunk (8·kc floats) stay in L1 while every x row group of the
// block streams past them.
//
// Accuracy: the AVX2 kernel accumulates float32 FMAs in 8 lanes per output, so one
// float32 chain covers kc/8 products; chunk sums are widened and added in float64 and
// the result (plus bias) is rounded to float32 once.

const (
	// kcChunk is the k length of one kernel call: 512 keeps the 8 w rows (16 KiB) in L1
	// and float32 chains at 64 products.
	kcChunk = 512
	// l2Bytes bounds the x row block re-read for every 8 w rows.
	l2Bytes = 384 << 10
	// serialFlops is the size (m·n·k) below which goroutines cost more than they save.
	serialFlops = 1 << 16
)

// ntArgs describes one product: c[i,j] = alpha·Σ_l x[i,l]·w[j,l] + beta·c[i,j] + bias[j].
// beta = 0 never reads c (it may hold NaNs), as in BLAS; bias may be nil.
type ntArgs struct {
	m, n, k     int
	x           []float32
	ldx         int
	w           []float32
	ldw         int
	c           []float32
	ldc         int
	alpha, beta float64
	bias        []float32
}

// gemmNT runs the product on up to be.workers goroutines. Every output is computed by
// exactly one task in a fixed order, so results do not depend on the worker count.
func (be *Backend) gemmNT(p *ntArgs) {
	if p.m == 0 || p.n == 0 {
		return
	}
	mc := blockRows(p.m, p.k)
	mBlocks := (p.m + mc - 1) / mc
	groups := (p.n + tileN - 1) / tileN
	workers := be.workers
	if p.m*p.n*p.k < serialFlops {
		workers = 1
	}
	// A few tasks per worker balance the load when cores are shared.
	parts := min(groups, max(1, (4*workers+mBlocks-1)/mBlocks))
	if workers == 1 {
		parts = 1
	}
	tasks := mBlocks * parts
	accLen := roundUp(mc, tileM) * tileN
	run := func(t int, sc *ntScratch) {
		mb, part := t/parts, t%parts
		i0 := mb * mc
		j0, j1 := part*groups/parts*tileN, min((part+1)*groups/parts*tileN, p.n)
		be.ntBlock(p, i0, min(i0+mc, p.m), j0, j1, sc)
	}
	if workers == 1 || tasks == 1 {
		sc := &ntScratch{acc: make([]float64, accLen)}
		for t := range tasks {
			run(t, sc)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, tasks) {
		wg.Go(func() {
			sc := &ntScratch{acc: make([]float64, accLen)}
			for t := int(next.Add(1)) - 1; t < tasks; t = int(next.Add(1)) - 1 {
				run(t, sc)
			}
		})
	}
	wg.Wait()
}

// blockRows is the number of x rows per block: as many as fit l2Bytes, balanced over
// the blocks and rounded up to whole tiles.
func blockRows(m, k int) int {
	limit := max(tileM, l2Bytes/(4*max(k, 1))/tileM*tileM)
	blocks := (m + limit - 1) / limit
	return roundUp((m+blocks-1)/blocks, tileM)
}

func roundUp(v, to int) int { return (v + to - 1) / to * to }

// ntScratch is one worker's state across the blocks it computes: acc holds the
// float64 sums of one tileN-column strip of a block, xs and ws the kernel's row pointers
// (kept here because arrays passed to the kernel through a func value escape, which
// would cost two heap allocations per block).
type ntScratch struct {
	acc []float64
	xs  [tileM]*float32
	ws  [tileN]*float32
}

// ntBlock computes rows [i0,i1) × columns [j0,j1) of the product; rows past i1 and
// columns past n are computed on duplicated rows and dropped.
func (be *Backend) ntBlock(p *ntArgs, i0, i1, j0, j1 int, sc *ntScratch) {
	kern := be.kernel
	rows := i1 - i0
	padded := roundUp(rows, tileM)
	acc := sc.acc[:padded*tileN]
	main := p.k - p.k%kern.step
	xs, ws := &sc.xs, &sc.ws
	for j := j0; j < j1; j += tileN {
		cols := min(tileN, j1-j)
		clear(acc)
		for kb := 0; kb < main; kb += kcChunk {
			kn := min(kcChunk, main-kb)
			for t := range ws {
				ws[t] = &p.w[min(j+t, p.n-1)*p.ldw+kb]
			}
			for g := 0; g < padded; g += tileM {
				for t := range xs {
					xs[t] = &p.x[min(i0+g+t, i1-1)*p.ldx+kb]
				}
				kern.fn(xs, ws, kn, (*[tileM * tileN]float64)(acc[g*tileN:]))
			}
		}
		if main < p.k {
			ntTail(p, i0, rows, j, cols, main, acc)
		}
		ntStore(p, i0, rows, j, cols, acc)
	}
}

// ntTail adds the k elements [from,k) that the kernel's step left over, in float64.
func ntTail(p *ntArgs, i0, rows, j, cols, from int, acc []float64) {
	for r := range rows {
		xr := p.x[(i0+r)*p.ldx+from : (i0+r)*p.ldx+p.k]
		for c := range cols {
			wr := p.w[(j+c)*p.ldw+from:][:len(xr)]
			var s float64
			for l, v := range xr {
				s += float64(v) * float64(wr[l])
			}
			acc[r*tileN+c] += s
		}
	}
}

// ntStore scales, adds beta·c and the bias in float64 and rounds once.
func ntStore(p *ntArgs, i0, rows, j, cols int, acc []float64) {
	if p.alpha == 1 && p.beta == 0 {
		// Linear's case: no scaling, no c to read.
		if cols == tileN && p.bias != nil {
			// The common case of a whole strip with a bias, on fixed-size arrays (no
			// bounds checks in the loop).
			b := (*[tileN]float32)(p.bias[j:])
			for r := range rows {
				cr := (*[tileN]float32)(p.c[(i0+r)*p.ldc+j:])
				a := (*[tileN]float64)(acc[r*tileN:])
				for c := range cr {
					cr[c] = float32(a[c] + float64(b[c]))
				}
			}
			return
		}
		for r := range rows {
			cr := p.c[(i0+r)*p.ldc+j:][:cols]
			a := acc[r*tileN:][:cols]
			if p.bias == nil {
				for c := range cr {
					cr[c] = float32(a[c])
				}
				continue
			}
			b := p.bias[j:][:cols]
			for c := range cr {
				cr[c] = float32(a[c] + float64(b[c]))
			}
		}
		return
	}
	for r := range rows {
		cr := p.c[(i0+r)*p.ldc+j:][:cols]
		for c := range cr {
			v := p.alpha * acc[r*tileN+c]
			if p.beta != 0 {
				v += p.beta * float64(cr[c])
			}
			if p.bias != nil {
				v += float64(p.bias[j+c])
			}
			cr[c] = float32(v)
		}
	}
}
