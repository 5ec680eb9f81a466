package cuda

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

// 16-bit GEMM outputs (kernels.HalfOutputs): a kept Linear writes its y, LinearActKeep
// its ReLU activation and LinearBackwardKept its dx rounded to the Backend's 16-bit
// format when the caller passes a 16-bit buffer, as torch.autocast's Linear returns a
// bf16/fp16 tensor. The product is the same fp32-accumulated matmul on the same 16-bit
// operands; cuBLASLt's C and D are 16-bit (the plan's dtypeD, part of its key), the
// bias (fp32) and the ReLU are applied to the fp32 accumulator in the epilogue, and the
// store rounds once (round to nearest even, cuBLASLt's conversion for the output type).
// So each element is RN16 of the value the float32 output would hold, up to the
// accumulation order of the algorithm the heuristic picks for the 16-bit D, which may
// differ from the fp32 D's. cuBLASLt may refuse an fp32 bias with a 16-bit D (its
// documented default bias type is D's): then the bias is rounded to 16 bits first
// (one small launch), which is what torch.autocast's Linear does (it casts the bias to
// bf16/fp16 with the weight); the epilogue still adds it to the fp32 accumulator.
// Where cuBLASLt takes neither, or refuses at run time, the product goes into an fp32
// scratch block (the epilogue, or GemmEx and activate, as for a float32 output) and one
// launch rounds it: RN16 of the float32 result.

var (
	_ kernels.HalfOutputs = (*Backend)(nil)
	_ kernels.HalfBiases  = (*Backend)(nil)
)

// HalfBiases implements kernels.HalfBiases: wherever HalfOutputs holds, unless a test
// turned it off (halfBiasOff: the model then keeps no 16-bit bias copies).
func (be *Backend) HalfBiases() bool {
	return be.HalfOutputs() && !be.halfBiasOff
}

// HalfOutputs implements kernels.HalfOutputs: in bf16/fp16 unless 16-bit buffers are off.
func (be *Backend) HalfOutputs() bool {
	return be.precision != FP32 && !be.halfOff && !be.lt.out16Off
}

// product16Half is product16 with beta = 0 into the 16-bit dense m×n c (plan from
// ltPlanDB with the 16-bit dtypeD, nil for none; planBias the bias it adds, fp32 or
// 16-bit as planned), the fp32 bias added and, with relu, ReLU applied before the
// rounding. biasF32 gives the fp32 bias for the fallback (nil: none). The caller holds
// the Backend.
func (be *Backend) product16Half(plan *ltPlan, transA, transB bool, m, n, k int, a uint64, lda int, b uint64, ldb int, c uint64, planBias uint64, biasF32 func() uint64, relu bool) {
	if plan != nil && be.ltRun(plan, a, b, 0, c, planBias) {
		return
	}
	be.lt.halfFallbacks++
	var bias uint64
	if biasF32 != nil {
		bias = biasF32()
	}
	tmp := be.scoped(be.newBuffer(m * n))
	total := m * n
	done := false
	if relu && bias != 0 {
		// ReLU in the fp32 epilogue, as LinearActKeep's float32 path has it (no mask).
		if fp := be.ltPlanEpi(transA, transB, m, n, k, lda, ldb, n, tmp.dptr(), ltEpiReluBias, bias, 0, 0); fp != nil {
			done = be.ltRun(fp, a, b, 0, tmp.dptr(), bias)
			relu = !done
		}
	}
	if !done {
		be.product16(be.ltPlanFor(transA, transB, m, n, k, lda, ldb, n, tmp.dptr(), bias), transA, transB, m, n, k, a, lda, b, ldb, 0, tmp.dptr(), n, bias)
	}
	if relu {
		be.prm.reset().ptr(tmp.dptr()).ptr(tmp.dptr()).i64(total).i32(activationKind(kernels.ReLU))
		be.elem(be.fn.activate, int64(total))
	}
	fn := be.fn.f32ToBF16
	if be.precision == FP16 {
		fn = be.fn.f32ToF16
	}
	be.prm.reset().ptr(c).ptr(tmp.dptr()).i64(total)
	be.elem(fn, int64(total))
}

// linearHalfOut is the forward product of LinearKeep and LinearActKeep into the 16-bit
// y [m,n], with kp's operands; relu for LinearActKeep's ReLU (CUBLASLT_EPILOGUE_RELU_BIAS:
// no auxiliary mask, the backward reads y > 0 instead). bias may be 16-bit, RN16 of the
// float32 bias (the model's copy that the rounding optimizer writes with the weights,
// kernels.HalfBiases): it is then the epilogue's 16-bit bias as it is, instead of the
// copy rounded here at every call; the same bits, since cuBLASLt refuses the float32
// bias with a 16-bit D and so gets the rounded one either way. The caller holds the
// Backend.
func (be *Backend) linearHalfOut(yh *half, kp *kept16, bias kernels.Buffer, m, n, k int, relu bool) {
	if yh.n != m*n {
		panic(fmt.Sprintf("cuda backend: Linear into a 16-bit y of %d elements as %d×%d", yh.n, m, n))
	}
	epi := uint32(ltEpiDefault)
	switch {
	case relu && bias != nil:
		epi = ltEpiReluBias
	case relu:
		panic("cuda backend: a 16-bit ReLU output needs a bias")
	case bias != nil:
		epi = ltEpiBias
	}
	be.lt.halfOuts++
	dt := be.dataType16()
	var plan *ltPlan
	var planBias uint64
	biasF32 := func() uint64 { return addr(bias) }
	if bh := halfOf(bias); bh != nil {
		// The 16-bit copy: the plan with a 16-bit bias type at once; the fallback adds
		// its exact float32 widening.
		if bh.n != n {
			panic(fmt.Sprintf("cuda backend: Linear with a 16-bit bias of %d elements for %d outputs", bh.n, n))
		}
		be.lt.halfBias16++
		planBias = bh.dptr()
		plan = be.ltPlanDB(false, true, m, n, k, k, k, n, yh.dptr(), epi, planBias, 0, 0, dt, dt)
		biasF32 = func() uint64 { return be.widen16(bh).dptr() }
	} else {
		planBias = addr(bias)
		plan = be.ltPlanD(false, true, m, n, k, k, k, n, yh.dptr(), epi, planBias, 0, 0, dt)
		if plan == nil && bias != nil && be.ltReady() {
			b16 := be.scoped(be.newBuffer((n + 1) / 2)).dptr()
			if plan = be.ltPlanDB(false, true, m, n, k, k, k, n, yh.dptr(), epi, b16, 0, 0, dt, dt); plan != nil {
				be.castInto([3]uint64{b16}, [3]operand16{{addr(bias), n}})
				planBias = b16
			}
		}
	}
	be.product16Half(plan, false, true, m, n, k, kp.x, k, kp.w, k, yh.dptr(), planBias, biasF32, relu)
}
