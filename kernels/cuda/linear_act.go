package cuda

import (
	"fmt"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
)

// kernels.LinearActivator in the 16-bit modes: the feed-forward block's activation and
// its gradient in cuBLASLt's epilogues.
//
// Forward, one matmul: a = act(x·w1ᵀ + b1) with CUBLASLT_EPILOGUE_RELU_AUX_BIAS, which
// also writes one bit per element, pre > 0, into the auxiliary matrix (instead of the
// fp32 pre-activation that Linear + Activate write and read back). Backward: the dx
// product of the second Linear, dpre = dy·w2, with CUBLASLT_EPILOGUE_DRELU_BGRAD
// multiplies by that mask and writes the first bias gradient Σ_rows dpre in the same
// pass; the dw product and db2 are LinearBackward's.
//
// What cuBLASLt's documentation (cuBLAS 13, cublasLtEpilogue_t and
// cublasLtMatmulDescAttributes_t) says, and what follows here:
//   - The ReLU mask's leading dimension is in bits, a multiple of 128 and at least the
//     rows of D. D is the row-major [m,n] output seen column-major, n×m, so the mask has
//     m columns of ⌈n/128⌉·128 bits (16-byte aligned columns); its layout inside is
//     cuBLASLt's and nothing here reads it.
//   - The bias gradient of the *_BGRAD epilogues is the sum over the columns of D (our
//     rows) of the gradient after the mask, one value per row of D, written (not
//     accumulated) in D's type: fp32 here, so it goes to a scratch vector that a launch
//     then adds to db1 (our gradients accumulate). Its float32 summation order is
//     cuBLASLt's, against the double column sum of LinearBackward; the test bounds it.
//   - cuBLASLt's GELU is the tanh approximation, 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))):
//     fairseq's gelu_accurate (kernels.GELUAccurate), not its erf-based gelu, which
//     stays unfused. GELU_AUX_BIAS keeps the pre-activation itself as the auxiliary
//     matrix (D's type, fp32; leading dimension a multiple of 8, so n must be one
//     here, then it is exactly pre [m,n]), DGELU_BGRAD reads it back. cuBLASLt does not
//     say how accurately it evaluates tanh in float; the test states what it allows.
//   - ReLU of NaN is 0 in the epilogue (a known cuBLASLt behaviour), as in activate.cu.
//
// Whether an epilogue runs with bf16/fp16 A and B and fp32 C/D is the heuristic's to
// say: no algorithm (or a refusal) makes the forward answer false, so the caller takes
// Linear + Activate, and makes the backward fall back inside (see LinearActBackward),
// because by then the pre-activation is gone.

const (
	ltDescAuxPointer = 11 // CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: device pointer
	ltDescAuxLD      = 12 // CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: int64

	// cublasLtEpilogue_t is a bit set; ltNewPlan reads these bits to know which
	// pointers a plan's descriptor needs.
	ltEpiFlagBias  = 4   // adds the bias vector
	ltEpiFlagBGrad = 16  // writes the bias gradient vector
	ltEpiFlagAux   = 128 // reads or writes the auxiliary matrix

	ltEpiReluAuxBias = 134 // CUBLASLT_EPILOGUE_RELU_AUX_BIAS
	ltEpiDRelu       = 136 // CUBLASLT_EPILOGUE_DRELU
	ltEpiDReluBGrad  = 152 // CUBLASLT_EPILOGUE_DRELU_BGRAD
	ltEpiGeluAuxBias = 164 // CUBLASLT_EPILOGUE_GELU_AUX_BIAS
	ltEpiDGelu       = 192 // CUBLASLT_EPILOGUE_DGELU
	ltEpiDGeluBGrad  = 208 // CUBLASLT_EPILOGUE_DGELU_BGRAD
)

var _ kernels.LinearActivator = (*Backend)(nil)

// actEpilogues returns the forward epilogue of act, its backward with and without the
// bias gradient; ok is false for an activation cuBLASLt has no epilogue for.
func actEpilogues(act kernels.Activation) (fwd, bwdGrad, bwd uint32, ok bool) {
	switch act {
	case kernels.ReLU:
		return ltEpiReluAuxBias, ltEpiDReluBGrad, ltEpiDRelu, true
	case kernels.GELUAccurate:
		return ltEpiGeluAuxBias, ltEpiDGeluBGrad, ltEpiDGelu, true
	}
	return 0, 0, 0, false
}

// actAux returns the auxiliary matrix's leading dimension (bits for ReLU's mask,
// floats for GELU's pre-activation) and its size in float32 elements for an output
// [m,n]; ld is 0 when the shape cannot be fused.
func actAux(act kernels.Activation, m, n int) (ld, elems int) {
	switch act {
	case kernels.ReLU:
		ld = (n + 127) / 128 * 128
		return ld, ld / 32 * m
	case kernels.GELUAccurate:
		// A padded leading dimension would leave pre strided, and the fallback of
		// LinearActBackward (activate_bwd on pre) wants it dense.
		if n%8 != 0 {
			return 0, 0
		}
		return n, n * m
	}
	return 0, 0
}

// LinearAct implements kernels.LinearActivator in the 16-bit modes (ok is false in FP32,
// whose results stay the exact ones, and for activations other than ReLU and
// GELUAccurate).
func (be *Backend) LinearAct(a, x, w, bias kernels.Buffer, m, n, k int, act kernels.Activation) (kernels.Buffer, bool) {
	aux, _, ok := be.linearAct(a, x, w, bias, m, n, k, act, false)
	if !ok {
		return nil, false
	}
	return aux, true
}

// linearAct is LinearAct, and LinearActKeep with keep: the operands then go to a kept
// block of the step's scope (keep16) instead of the shared scratch (cast16), and the
// kept copies are returned too.
func (be *Backend) linearAct(a, x, w, bias kernels.Buffer, m, n, k int, act kernels.Activation, keep bool) (*buffer, *kept16, bool) {
	fwd, _, _, ok := actEpilogues(act)
	if !ok || be.precision == FP32 || bias == nil || m == 0 || n == 0 || k == 0 {
		return nil, nil, false
	}
	ld, elems := actAux(act, m, n)
	if ld == 0 {
		return nil, nil, false
	}
	wh, ah := halfOf(w), halfOf(a)
	if !keep && halfOf(x) != nil {
		panic("cuda backend: LinearAct of a 16-bit x (LinearActKeep takes one)")
	}
	checkHalfOperands(halfOf(x), wh, m, n, k)
	if ah != nil {
		if !keep || act != kernels.ReLU {
			panic(fmt.Sprintf("cuda backend: LinearAct of %q into a 16-bit output (LinearActKeep with ReLU writes one)", act))
		}
		defer be.enter()()
		kp := be.keep16(x, w, m, n, k)
		be.linearHalfOut(ah, kp, bias, m, n, k, true)
		return nil, kp, true
	}
	defer be.enter()()
	// The aux joins the open scope like the step's other buffers; a fresh block is
	// 256-byte aligned, more than the 16 bytes the epilogue needs.
	aux := be.scoped(be.newBuffer(elems))
	plan := be.ltPlanEpi(false, true, m, n, k, k, k, n, addr(a), fwd, addr(bias), aux.dptr(), ld)
	if plan == nil {
		return nil, nil, false
	}
	var kp *kept16
	var xa, wa uint64
	if keep {
		kp = be.keep16(x, w, m, n, k)
		xa, wa = kp.x, kp.w
	} else {
		ops := [3]operand16{{addr(x), m * k}}
		if wh == nil {
			ops[1] = operand16{addr(w), n * k}
		}
		p := be.cast16(ops)
		xa, wa = p[0], p[1]
		if wh != nil {
			wa = wh.dptr()
		}
	}
	if !be.ltRunAux(plan, xa, wa, 0, addr(a), addr(bias), aux.dptr()) {
		// Nothing written; the copies die with the scope.
		return nil, nil, false
	}
	return aux, kp, true
}

// ltRunAux is ltRun for a plan whose epilogue has an auxiliary matrix: the descriptor
// is pointed at this call's aux first (it is read when the matmul is enqueued, as the
// bias pointer that ltRun sets).
func (be *Backend) ltRunAux(p *ltPlan, a, b uint64, beta float32, c, bias, aux uint64) bool {
	must(be.lt.lib.setDesc(p.desc, ltDescAuxPointer, unsafe.Pointer(&aux), 8))
	return be.ltRun(p, a, b, beta, c, bias)
}

// LinearActBackward implements kernels.LinearActivator. dy [m,n] is the gradient of the
// second Linear's output, a [m,k] its input (LinearAct's output), w2 [n,k]. dpre, dw2
// and db2 are LinearBackward's dx, dw and db of that Linear, dpre then multiplied by
// act'(pre), and db1 += Σ_rows dpre.
//
// The dx product takes the first of: the backward epilogue with the bias gradient (db1
// from a scratch vector), the one without (db1 by the column sum of LinearBackward),
// the plain product followed by activate_bwd. That last one needs act' without the
// epilogue's mask: for ReLU, a > 0 exactly where pre > 0 (a = max(pre, 0), both from
// the same fp32 value; NaN gives 0 in both), so a stands for pre; for GELU the aux is
// pre itself.
func (be *Backend) LinearActBackward(dpre, dw2, db2, db1, dy, a, w2, aux kernels.Buffer, m, n, k int, act kernels.Activation) {
	_, epiGrad, epiPlain, ok := actEpilogues(act)
	ld, _ := actAux(act, m, k)
	if !ok || be.precision == FP32 || ld == 0 {
		panic(fmt.Sprintf("cuda backend: LinearActBackward of %q at %v: LinearAct does not fuse it", act, be.precision))
	}
	if m == 0 || k == 0 {
		return
	}
	defer be.enter()()
	var grad *buffer
	var pdx *ltPlan
	epi := uint32(0)
	if db1 != nil && be.linearActForce < 1 {
		grad = be.newBuffer(k)
		if pdx = be.ltPlanEpi(false, false, m, k, n, n, k, k, addr(dpre), epiGrad, grad.dptr(), addr(aux), ld); pdx != nil {
			epi = epiGrad
		}
	}
	if pdx == nil && be.linearActForce < 2 {
		if pdx = be.ltPlanEpi(false, false, m, k, n, n, k, k, addr(dpre), epiPlain, 0, addr(aux), ld); pdx != nil {
			epi = epiPlain
		}
	}
	// dy may be 16-bit (kernels.HalfBuffers): the products take it uncast.
	dyh := halfOf(dy)
	ops := [3]operand16{{0, 0}, {addr(w2), n * k}}
	if dyh == nil {
		ops[0] = operand16{addr(dy), m * n}
	} else if dyh.n != m*n {
		panic(fmt.Sprintf("cuda backend: LinearActBackward of a 16-bit dy of %d elements as %d×%d", dyh.n, m, n))
	}
	var pdw *ltPlan
	if dw2 != nil {
		ops[2] = operand16{addr(a), m * k}
		// This lookup cannot evict pdx: eviction takes the least recently used plan.
		pdw = be.ltPlanFor(true, false, n, k, m, n, k, k, addr(dw2), 0)
	}
	p := be.cast16(ops)
	if dyh != nil {
		p[0] = dyh.dptr()
	}
	gradPtr := uint64(0)
	if epi&ltEpiFlagBGrad != 0 {
		gradPtr = grad.dptr()
	}
	if pdx == nil || !be.ltRunAux(pdx, p[0], p[1], 0, addr(dpre), gradPtr, addr(aux)) {
		epi = 0
		plain := be.ltPlanFor(false, false, m, k, n, n, k, k, addr(dpre), 0)
		be.product16(plain, false, false, m, k, n, p[0], n, p[1], k, 0, addr(dpre), k, 0)
		x := addr(a)
		if act == kernels.GELUAccurate {
			x = addr(aux)
		}
		be.prm.reset().ptr(addr(dpre)).ptr(addr(dpre)).ptr(x).i64(m * k).i32(activationKind(act))
		be.elem(be.fn.train.activateBwd, int64(m)*int64(k))
	}
	if dw2 != nil {
		be.product16(pdw, true, false, n, k, m, p[0], n, p[2], k, 1, addr(dw2), k, 0)
	}
	if db2 != nil && n > 0 {
		part, chunks, nout := be.colReduce(0, be.floatAddr(dy), 0, 0, m, n)
		be.colFinish(db2, part, chunks, nout, 0, n, 1)
	}
	if db1 == nil {
		return
	}
	if epi&ltEpiFlagBGrad != 0 {
		be.prm.reset().ptr(addr(db1)).ptr(grad.dptr()).i64(k)
		be.elem(be.fn.train.addTo, int64(k))
		return
	}
	part, chunks, nout := be.colReduce(0, addr(dpre), 0, 0, m, k)
	be.colFinish(db1, part, chunks, nout, 0, k, 1)
}
