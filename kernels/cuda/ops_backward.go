package cuda

import (
	"fmt"
	"math"
	"slices"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
)

// This file and the other *_backward.go files implement kernels.Trainer: the backward
// of every forward operation, the fused loss, the optimizer update and the gradient
// norm. The conventions are the forward's (see xform.cuh): the CPU backend is the
// oracle, reductions accumulate in double in a fixed order, and nothing uses float
// atomics, so a training run on the GPU gives the same bits every time.

var _ kernels.Trainer = (*Backend)(nil)

// trainFunctions are the kernels of the Trainer methods.
type trainFunctions struct {
	colPartial, colFinish, sumsqPartial, scaleList, sumStrided uintptr
	adamList, fillList                                         uintptr
	adamListBF16, adamListF16                                  uintptr
	adamListNorm, adamListBF16Norm, adamListF16Norm            uintptr
	mul, addTo, scale                                          uintptr
	layernormBwd, residualBwd, activateBwd, embedBwd           uintptr
	attentionBwdQ, attentionBwdKV                              uintptr
	lsLoss, adamStep                                           uintptr
	dropoutMask, dropoutApply, reluDropoutBwd                  uintptr
	biasGradPartial, biasGradFinish                            uintptr
	biasGradFinish1, biasGradFinish1List                       uintptr
}

func (f *trainFunctions) add(m map[string]*uintptr) {
	for name, p := range map[string]*uintptr{
		"col_partial": &f.colPartial, "col_finish": &f.colFinish, "sumsq_partial": &f.sumsqPartial,
		"scale_list": &f.scaleList, "sum_strided": &f.sumStrided,
		"adam_list": &f.adamList, "fill_list": &f.fillList, "adam_list_bf16": &f.adamListBF16, "adam_list_f16": &f.adamListF16,
		"adam_list_norm": &f.adamListNorm, "adam_list_bf16_norm": &f.adamListBF16Norm, "adam_list_f16_norm": &f.adamListF16Norm,
		"mul": &f.mul, "add_to": &f.addTo, "scale": &f.scale,
		"layernorm_bwd": &f.layernormBwd, "residual_bwd": &f.residualBwd, "activate_bwd": &f.activateBwd,
		"embed_bwd": &f.embedBwd, "attention_bwd_q": &f.attentionBwdQ, "attention_bwd_kv": &f.attentionBwdKV,
		"ls_loss": &f.lsLoss, "adam_step": &f.adamStep, "dropout_mask": &f.dropoutMask, "dropout_apply": &f.dropoutApply,
		"relu_dropout_bwd":    &f.reluDropoutBwd,
		"bias_grad16_partial": &f.biasGradPartial, "bias_grad_finish": &f.biasGradFinish,
		"bias_grad_finish1": &f.biasGradFinish1, "bias_grad_finish1_list": &f.biasGradFinish1List,
	} {
		m[name] = p
	}
}

func (p *params) f64(v float64) *params { return p.u64(math.Float64bits(v)) }

// runBlock launches fn with a multi-dimensional block (run's blocks are 1-D).
func (be *Backend) runBlock(fn uintptr, grid, block [3]uint32, shared uint32) {
	be.launchKernel(fn, grid, block, shared)
}

// newDoubles allocates scratch for n float64 values (the pool hands back a block
// only after the GC has dropped the buffer, and the one stream orders any reuse after
// the kernels reading it).
func (be *Backend) newDoubles(n int) *buffer { return be.newBuffer(2 * max(n, 1)) }

// Column reductions (col_partial in reduce.cu) use chunks of at least colMinRows rows
// and at most colMaxChunks chunks. Both are constants, so the summation order depends
// on the shape alone.
const (
	colMinRows   = 64
	colMaxChunks = 128
)

// colChunks splits rows into chunks of per rows.
func colChunks(rows int) (chunks, per int) {
	chunks = max(1, min((rows+colMinRows-1)/colMinRows, colMaxChunks))
	per = (rows + chunks - 1) / chunks
	return (rows + per - 1) / per, per
}

// colReduce runs col_partial's mode over [rows, cols] and returns the partials, the
// chunk count and the number of outputs per chunk.
func (be *Backend) colReduce(mode int, a, b, stats uint64, rows, cols int) (*buffer, int, int) {
	chunks, per := colChunks(rows)
	nout := 1
	if mode == 2 {
		nout = 2
	}
	part := be.newDoubles(chunks * nout * cols)
	be.prm.reset().ptr(part.dptr()).ptr(a).ptr(b).ptr(stats).i32(rows).i32(cols).i32(per).i32(mode)
	be.runBlock(be.fn.train.colPartial, [3]uint32{uint32((cols + 31) / 32), uint32(chunks), 1}, [3]uint32{32, 8, 1}, 0)
	return part, chunks, nout
}

// colFinish accumulates output o of colReduce's partials into out: out += alpha·Σ.
func (be *Backend) colFinish(out kernels.Buffer, part *buffer, chunks, nout, o, cols int, alpha float64) {
	be.prm.reset().ptr(addr(out)).ptr(part.dptr()).i32(chunks).i32(cols).i32(nout).i32(o).f64(alpha)
	be.elem(be.fn.train.colFinish, int64(cols))
}

// LinearBackward implements kernels.Trainer: dx and dw with cuBLAS (pedantic fp32, as
// the forward, or on 16-bit operands through cuBLASLt as the Precision says). db is
// added to: in FP32 the deterministic column sum of the fp32 dy (the CPU's bits); in
// BF16/FP16 the sum of the 16-bit dy from the dw product's BGRADB epilogue when
// cuBLASLt has it for the shape (see linearBackward16), else that column sum.
func (be *Backend) LinearBackward(dx, dw, db, dy, x, w kernels.Buffer, m, n, k int) {
	if m == 0 {
		return
	}
	defer be.enter()()
	dbDone := false
	if be.precision != FP32 && (dx != nil || dw != nil) {
		dbDone = be.linearBackward16(dx, dw, db, dy, x, w, m, n, k)
	} else {
		if dx != nil {
			be.sgemm(false, false, m, k, n, 1, addr(dy), n, addr(w), k, 0, addr(dx), k)
		}
		if dw != nil {
			be.sgemm(true, false, n, k, m, 1, addr(dy), n, addr(x), k, 1, addr(dw), k)
		}
	}
	if db != nil && n > 0 && !dbDone {
		part, chunks, nout := be.colReduce(0, addr(dy), 0, 0, m, n)
		be.colFinish(db, part, chunks, nout, 0, n, 1)
	}
}

// LayerNormBackward implements kernels.Trainer: one row kernel for dx and the row
// statistics, one column pass for dγ and dβ. When dx aliases dy the column pass must
// read dy first, so the row kernel then runs twice (statistics, then dx).
func (be *Backend) LayerNormBackward(dx, dgamma, dbeta, dy, x, gamma kernels.Buffer, rows, dim int, eps float32) {
	if rows == 0 || dim == 0 {
		return
	}
	defer be.enter()()
	wantCols := dgamma != nil || dbeta != nil
	var stats *buffer
	if wantCols {
		stats = be.newDoubles(2 * rows)
	}
	statsPtr := uint64(0)
	if stats != nil {
		statsPtr = stats.dptr()
	}
	row := func(write bool) {
		be.prm.reset().ptr(addr(dx)).ptr(statsPtr).ptr(addr(dy)).ptr(addr(x)).ptr(addr(gamma)).
			i32(rows).i32(dim).f32(eps).i32(boolInt(write))
		be.run(be.fn.train.layernormBwd, be.rowsGrid(rows), blockRow, 0)
	}
	alias := dx != nil && addr(dx) == addr(dy)
	if dx != nil && !alias {
		row(true)
	} else if wantCols {
		row(false)
	}
	if wantCols {
		part, chunks, nout := be.colReduce(2, addr(dy), addr(x), statsPtr, rows, dim)
		if dgamma != nil {
			be.colFinish(dgamma, part, chunks, nout, 0, dim, 1)
		}
		if dbeta != nil {
			be.colFinish(dbeta, part, chunks, nout, 1, dim, 1)
		}
	}
	if alias {
		row(true)
	}
}

// ResidualBackward implements kernels.Trainer. dω is reduced before dx is updated, so
// it reads x as the forward saw it even if a caller passes dx aliasing x.
func (be *Backend) ResidualBackward(dx, domega, dy, x, omega kernels.Buffer, alpha float32, rows, dim int) {
	if rows == 0 || dim == 0 {
		return
	}
	defer be.enter()()
	if domega != nil {
		part, chunks, nout := be.colReduce(1, addr(x), addr(dy), 0, rows, dim)
		be.colFinish(domega, part, chunks, nout, 0, dim, float64(alpha))
	}
	if dx != nil {
		if !be.lnFns().sumOff && dim%4 == 0 && addr(dx)%16 == 0 && addr(dy)%16 == 0 && addr(omega)%16 == 0 {
			// residual_bwd4: the same arithmetic a float4 at a time, without the
			// per-element 64-bit modulo (the same bits).
			be.prm.reset().ptr(addr(dx)).ptr(addr(dy)).ptr(addr(omega)).f32(alpha).i32(rows).i32(dim / 4)
			grid, block := rowBlocks(rows, dim/4)
			be.run(be.lnFns().resBwd4, grid, block, 0)
			return
		}
		be.prm.reset().ptr(addr(dx)).ptr(addr(dy)).ptr(addr(omega)).f32(alpha).i32(rows).i32(dim)
		be.elem(be.fn.train.residualBwd, int64(rows)*int64(dim))
	}
}

// activationKind is the kernels' code for act (activation.cu); -1 for Linear.
func activationKind(act kernels.Activation) int {
	switch act {
	case kernels.ReLU:
		return 0
	case kernels.GELU:
		return 1
	case kernels.GELUAccurate:
		return 2
	case kernels.Tanh:
		return 3
	case kernels.Linear:
		return -1
	}
	panic(fmt.Sprintf("cuda backend: unknown activation %q", act))
}

// ActivateBackward implements kernels.Trainer.
func (be *Backend) ActivateBackward(dx, dy, x kernels.Buffer, act kernels.Activation) {
	kind := activationKind(act)
	n := dev(x).n
	if n == 0 {
		return
	}
	defer be.enter()()
	if kind < 0 {
		if addr(dx) != addr(dy) {
			be.copyDtoD(addr(dx), addr(dy), uint64(4*n))
		}
		return
	}
	be.prm.reset().ptr(addr(dx)).ptr(addr(dy)).ptr(addr(x)).i64(n).i32(kind)
	be.elem(be.fn.train.activateBwd, int64(n))
}

// embedCSR groups the rows of ids by id (stable, so each id's rows stay in increasing
// order) leaving out skip: offsets [nu+1], the distinct ids [nu], then the row indices.
//
// A counting sort over the ids' range: the host builds this for both embeddings every
// training step, and the comparison sort it replaced took ~4 ms of host time per 6L-6L
// update (~16,000 ids), a third of the host's work once updates were pipelined. Ids
// outside [0, 4·len(ids)+2²⁰) (never a vocabulary's) take the comparison sort, so a
// wild id cannot make the count table large.
func embedCSR(ids []int32, skip int32) (csr []int32, nu int) {
	n, maxID := 0, int32(-1)
	for _, id := range ids {
		if id == skip {
			continue
		}
		if id < 0 {
			return embedCSRSorted(ids, skip)
		}
		n++
		maxID = max(maxID, id)
	}
	if int64(maxID) >= 4*int64(len(ids))+1<<20 {
		return embedCSRSorted(ids, skip)
	}
	// start[id] becomes the position of id's first row in the row list.
	start := make([]int32, int(maxID)+2)
	for _, id := range ids {
		if id != skip {
			start[id+1]++
		}
	}
	for id := int32(0); id <= maxID; id++ {
		if start[id+1] > 0 {
			nu++
		}
	}
	csr = make([]int32, 0, 2*nu+1+n)
	for id := int32(0); id <= maxID; id++ {
		if start[id+1] > 0 {
			csr = append(csr, start[id])
		}
		start[id+1] += start[id]
	}
	csr = append(csr, int32(n))
	for id := int32(0); id <= maxID; id++ {
		if start[id+1] > start[id] {
			csr = append(csr, id)
		}
	}
	rows := csr[len(csr) : len(csr)+n]
	csr = csr[:len(csr)+n]
	for i, id := range ids {
		if id != skip {
			rows[start[id]] = int32(i)
			start[id]++
		}
	}
	return csr, nu
}

// embedCSRSorted is embedCSR by a comparison sort, for any ids.
func embedCSRSorted(ids []int32, skip int32) (csr []int32, nu int) {
	order := make([]int32, 0, len(ids))
	for i, id := range ids {
		if id != skip {
			order = append(order, int32(i))
		}
	}
	slices.SortStableFunc(order, func(a, b int32) int { return int(ids[a]) - int(ids[b]) })
	var offs, uniq []int32
	for p, i := range order {
		if p == 0 || ids[i] != ids[order[p-1]] {
			offs = append(offs, int32(p))
			uniq = append(uniq, ids[i])
		}
	}
	offs = append(offs, int32(len(order)))
	csr = make([]int32, 0, len(offs)+len(uniq)+len(order))
	csr = append(append(append(csr, offs...), uniq...), order...)
	return csr, len(uniq)
}

// EmbedBackward implements kernels.Trainer without atomics: the host groups the rows by
// id (it holds the ids anyway), and one thread per (id, column) adds that id's rows in
// order, which is the CPU backend's serial loop, bit for bit.
func (be *Backend) EmbedBackward(dtable, dy kernels.Buffer, ids []int32, dim int, scale float32, skip int32) {
	if len(ids) == 0 || dim == 0 {
		return
	}
	csr, nu := embedCSR(ids, skip)
	defer be.enter()()
	if nu == 0 && be.graph.mode == graphOff {
		return // a graphed step keeps the launch (with nothing to do) so its operations repeat
	}
	// The grouping's length depends on how many distinct ids there are; a graphed
	// step reserves the most it can be (offsets, ids, rows: 2·len(ids)+1).
	p := be.stageCap(slotCSR, unsafe.Pointer(&csr[0]), 4*len(csr), 4*(2*len(ids)+1))
	be.prm.reset().ptr(addr(dtable)).ptr(addr(dy)).ptr(p).i32(nu).i32(dim).f32(scale)
	be.elem(be.fn.train.embedBwd, int64(nu)*int64(dim))
}

// Mul implements kernels.Trainer.
func (be *Backend) Mul(y, x, m kernels.Buffer) {
	n := dev(m).n
	if n == 0 {
		return
	}
	defer be.enter()()
	be.prm.reset().ptr(addr(y)).ptr(addr(x)).ptr(addr(m)).i64(n)
	be.elem(be.fn.train.mul, int64(n))
}

// AddTo implements kernels.Trainer.
func (be *Backend) AddTo(y, x kernels.Buffer) {
	n := dev(x).n
	if n == 0 {
		return
	}
	defer be.enter()()
	be.prm.reset().ptr(addr(y)).ptr(addr(x)).i64(n)
	be.elem(be.fn.train.addTo, int64(n))
}

// Fill implements kernels.Trainer with cuMemsetD32 of the value's bit pattern.
func (be *Backend) Fill(x kernels.Buffer, v float32) {
	n := dev(x).n
	if n == 0 {
		return
	}
	defer be.enter()()
	be.memset32(addr(x), math.Float32bits(v), uint64(n))
}

// Scale implements kernels.Trainer.
func (be *Backend) Scale(x kernels.Buffer, a float32) {
	n := dev(x).n
	if n == 0 {
		return
	}
	defer be.enter()()
	be.prm.reset().ptr(addr(x)).f32(a).i64(n)
	be.elem(be.fn.train.scale, int64(n))
}

// readDoubles copies n float64 values from device scratch to the host (waiting for
// the work that writes them).
func (be *Backend) readDoubles(b *buffer, n int) []float64 {
	be.notGraphed("a read of device results")
	out := make([]float64, n)
	must(be.drv.dtoh(unsafe.Pointer(&out[0]), b.dptr(), uint64(8*n)))
	return out
}
