package cuda

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

var _ kernels.LinearKeeper = (*Backend)(nil)

// kept16 is what LinearKeep keeps for the backward: the device addresses of the 16-bit
// x and w the product multiplied, and the blocks that hold them (the copies LinearKeep
// made, and x and w themselves when they came as 16-bit buffers), so they live until
// the backward.
type kept16 struct {
	copies   *buffer // nil when x and w both came 16-bit
	x16, w16 *half
	x, w     uint64
	m, k     int
	n        int
}

// Len is the number of 16-bit elements kept (x and w).
func (k *kept16) Len() int { return k.m*k.k + k.n*k.k }

// LinearKeep implements kernels.LinearKeeper: in bf16/fp16 the 16-bit copies of x and
// w that the product multiplies go to a buffer of the step's scope instead of the
// shared scratch, so LinearBackwardKept rounds only dy (the backward rounded x and w
// again before: about 0.7 ms of casts per 6L-6L step). x and w may be 16-bit buffers
// (kernels.HalfBuffers, kernels.HalfRounder): they are multiplied and kept as they
// are, and with both 16-bit nothing is rounded or allocated. In FP32 nothing is
// rounded: it is Linear and returns nil. y may be a 16-bit buffer (kernels.HalfOutputs):
// the product is written rounded (half_out.go).
func (be *Backend) LinearKeep(y, x, w, bias kernels.Buffer, m, n, k int) kernels.Buffer {
	xh, wh, yh := halfOf(x), halfOf(w), halfOf(y)
	if be.precision == FP32 || m == 0 || n == 0 {
		if xh != nil || wh != nil || yh != nil {
			panic("cuda backend: LinearKeep of a 16-bit operand in FP32 or of an empty shape")
		}
		be.Linear(y, x, w, bias, m, n, k)
		return nil
	}
	checkHalfOperands(xh, wh, m, n, k)
	defer be.enter()()
	kp := be.keep16(x, w, m, n, k)
	if yh != nil {
		be.linearHalfOut(yh, kp, bias, m, n, k, false)
		return kp
	}
	plan := be.ltPlanFor(false, true, m, n, k, k, k, n, addr(y), addr(bias))
	be.product16(plan, false, true, m, n, k, kp.x, k, kp.w, k, 0, addr(y), n, addr(bias))
	return kp
}

// checkHalfOperands panics unless a 16-bit x holds m×k and a 16-bit w n×k elements.
func checkHalfOperands(xh, wh *half, m, n, k int) {
	if xh != nil && xh.n != m*k {
		panic(fmt.Sprintf("cuda backend: Linear of a 16-bit x of %d elements as %d×%d", xh.n, m, k))
	}
	if wh != nil && wh.n != n*k {
		panic(fmt.Sprintf("cuda backend: Linear of a 16-bit w of %d elements as %d×%d", wh.n, n, k))
	}
}

// keep16 rounds x and w, those that are not 16-bit already, into a block of the step's
// scope, in one launch. The caller holds the Backend.
func (be *Backend) keep16(x, w kernels.Buffer, m, n, k int) *kept16 {
	kp := &kept16{x16: halfOf(x), w16: halfOf(w), m: m, n: n, k: k}
	var ops [3]operand16
	if kp.x16 == nil {
		ops[0] = operand16{addr(x), m * k}
	}
	if kp.w16 == nil {
		ops[1] = operand16{addr(w), n * k}
	}
	if ops[0].n+ops[1].n > 0 {
		off, bytes := layout16(ops)
		kp.copies = be.scoped(be.newBuffer(int((max(bytes, halfAlign) + 3) / 4)))
		dst := [3]uint64{kp.copies.dptr() + off[0], kp.copies.dptr() + off[1], kp.copies.dptr() + off[2]}
		be.castInto(dst, ops)
		kp.x, kp.w = dst[0], dst[1]
	}
	if kp.x16 != nil {
		kp.x = kp.x16.dptr()
	}
	if kp.w16 != nil {
		kp.w = kp.w16.dptr()
	}
	return kp
}

// LinearBackwardKept implements kernels.LinearKeeper: LinearBackward with the copies
// LinearKeep kept (same m, n, k), the same products on the same 16-bit operands. dy may
// be a 16-bit buffer (kernels.HalfBuffers): the products take it uncast.
func (be *Backend) LinearBackwardKept(dx, dw, db, dy, kept kernels.Buffer, m, n, k int) {
	be.linearBackwardKept(dx, dw, db, dy, kept, m, n, k, freshGrads{}, 0)
}

var _ kernels.InputGradAccumulator = (*Backend)(nil)

// LinearBackwardKeptAccum implements kernels.InputGradAccumulator: the dx product runs
// with beta 1 onto the float32 dx. With dxAccumOff (tests, XFORM_CUDA_DX_ACCUM=0) it is
// the sequence it replaces: the product into a scratch buffer, then AddTo.
func (be *Backend) LinearBackwardKeptAccum(dx, dw, db, dy, kept kernels.Buffer, m, n, k int) {
	if dx == nil || halfOf(dx) != nil {
		panic(fmt.Sprintf("cuda backend: LinearBackwardKeptAccum into %T: a float32 dx wanted", dx))
	}
	if be.dxAccumOff {
		de := be.AllocUninit(m * k)
		be.linearBackwardKept(de, dw, db, dy, kept, m, n, k, freshGrads{}, 0)
		be.AddTo(dx, de)
		return
	}
	be.linearBackwardKept(dx, dw, db, dy, kept, m, n, k, freshGrads{}, 1)
}

var _ kernels.FreshBiasGrad = (*Backend)(nil)

// LinearBackwardKeptFresh implements kernels.FreshBiasGrad: the bias gradient goes
// straight from the GEMM's BGRADB epilogue into db (no scratch vector, no add_to).
func (be *Backend) LinearBackwardKeptFresh(dx, dw, db, dy, kept kernels.Buffer, m, n, k int) {
	be.linearBackwardKept(dx, dw, db, dy, kept, m, n, k, freshGrads{db: true}, 0)
}

var _ kernels.FreshWeightGrad = (*Backend)(nil)

// FreshWeightGrads implements kernels.FreshWeightGrad: in bf16/fp16 (where the
// Linears keep their operands) unless XFORM_CUDA_FRESH_DW=0 or a test turned it off.
func (be *Backend) FreshWeightGrads() bool {
	return be.precision != FP32 && !be.freshDWOff
}

// LinearBackwardKeptFreshW implements kernels.FreshWeightGrad: the dw product runs with
// beta 0 (now, or in its deferred batch), and with dbFresh db as in
// LinearBackwardKeptFresh.
func (be *Backend) LinearBackwardKeptFreshW(dx, dw, db, dy, kept kernels.Buffer, m, n, k int, dbFresh bool) {
	be.freshDWs++
	be.linearBackwardKept(dx, dw, db, dy, kept, m, n, k, freshGrads{db: dbFresh, dw: true}, 0)
}

// freshGrads says which of a Linear backward's parameter gradients hold zeros that
// nothing adds to before this call, so that the products may write them: db
// (kernels.FreshBiasGrad), dw (kernels.FreshWeightGrad).
type freshGrads struct{ db, dw bool }

// linearBackwardKept is LinearBackwardKept (with fresh: LinearBackwardKeptFresh,
// LinearBackwardKeptFreshW) with the dx product's beta: 0 writes dx, 1 adds to it
// (LinearBackwardKeptAccum).
func (be *Backend) linearBackwardKept(dx, dw, db, dy, kept kernels.Buffer, m, n, k int, fresh freshGrads, dxBeta float32) {
	be.linearBackwardKeptFold(dx, dw, db, dy, kept, m, n, k, fresh, dxBeta, nil)
}

// linearBackwardKeptFold is linearBackwardKept whose dx product, with fold, also applies
// the ReLU and dropout backward (LinearBackwardKeptReLU, relu_fold.go).
func (be *Backend) linearBackwardKeptFold(dx, dw, db, dy, kept kernels.Buffer, m, n, k int, fresh freshGrads, dxBeta float32, fold *reluFold) {
	if m == 0 {
		return
	}
	kp, ok := kept.(*kept16)
	if !ok || kp.m != m || kp.n != n || kp.k != k {
		panic(fmt.Sprintf("cuda backend: LinearBackwardKept of %d×%d×%d without LinearKeep's copies of that shape", m, n, k))
	}
	dyh := halfOf(dy)
	if dyh != nil && dyh.n != m*n {
		panic(fmt.Sprintf("cuda backend: LinearBackwardKept of a 16-bit dy of %d elements as %d×%d", dyh.n, m, n))
	}
	if dxh := halfOf(dx); dxh != nil && dxh.n != m*k {
		panic(fmt.Sprintf("cuda backend: LinearBackwardKept into a 16-bit dx of %d elements as %d×%d", dxh.n, m, k))
	}
	defer be.enter()()
	dbDone := false
	if dx != nil || dw != nil {
		dbDone = be.linearBackward16Kept(dx, dw, db, dy, nil, nil, kp.x, kp.w, m, n, k, fresh, kp, dxBeta, fold)
	}
	if db != nil && n > 0 && !dbDone {
		// The epilogue refused (or is off): the column sum, of the widened values when
		// dy is 16-bit.
		part, chunks, nout := be.colReduce(0, be.floatAddr(dy), 0, 0, m, n)
		be.colFinish(db, part, chunks, nout, 0, n, 1)
	}
}

// LinearActKeep implements kernels.LinearActKeeper: LinearAct on operands rounded into
// a kept block (x taken as it is when 16-bit), returned for LinearBackwardKept. With
// ReLU, a may be a 16-bit buffer (kernels.HalfOutputs): it gets RN16(ReLU(x·wᵀ + bias))
// and aux is nil (CUBLASLT_EPILOGUE_RELU_BIAS writes no mask; the backward, a
// ReLUDropoutBackward, reads a > 0).
func (be *Backend) LinearActKeep(a, x, w, bias kernels.Buffer, m, n, k int, act kernels.Activation) (aux, kept kernels.Buffer, ok bool) {
	auxb, kp, ok := be.linearAct(a, x, w, bias, m, n, k, act, true)
	if !ok {
		return nil, nil, false
	}
	if auxb == nil {
		return nil, kp, true
	}
	return auxb, kp, true
}

var _ kernels.CrossKVBatcher = (*Backend)(nil)

// BatchCrossKV implements kernels.CrossKVBatcher: yes in bf16/fp16 unless switched off.
// The decoder's L cross-attention key/value products of [2d, d] each (7,872×1,024×512 at
// the 6L-6L bench: 22.9 µs forward, 19.1 µs for dx, a GEMM with 64 output tiles on 132
// SMs) become one of [L·2d, d] with L times the tiles, and the L input-gradient
// products one with an inner dimension of L·2d. FP32 keeps the per-layer products, whose
// results the CPU parity tests compare.
func (be *Backend) BatchCrossKV() bool {
	if be.precision == FP32 || be.kvBatchOff {
		return false
	}
	be.kvBatchYes++
	return true
}
