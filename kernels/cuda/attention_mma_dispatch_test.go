package cuda

import (
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// TestAttentionMMADispatch checks, without a GPU, which attention kernels mmaUsable and
// mma2 pick for every TQ, TK up to 140 at head dimension 64, on a Backend whose kernel
// set is filled in by hand (nothing is launched): the forward on the tensor cores up to
// 128 keys, on the second kernels up to 64; the backward on the tensor cores exactly
// where the second kernels fit (TQ, TK ≤ 64), else on the float kernels. That is the
// rule production followed before the first tensor-core backward was removed (its test
// switch was off by default), on every sm_80-or-newer bound of opted-in shared memory:
// 99 KiB (sm_86, sm_89), 163 KiB (sm_80), 227 KiB (sm_90). The test switches: first
// leaves only the first forward (the backward on the float kernels), off and FP32 take
// nothing, nor does another head dimension.
func TestAttentionMMADispatch(t *testing.T) {
	for _, optin := range []int{99 << 10, 163 << 10, 227 << 10} {
		for _, sw := range []struct {
			name    string
			prec    Precision
			ok, off bool
			first   bool // the switch: the first forward only
			headDim int
			none    bool // nothing taken
		}{
			{name: "bf16", prec: BF16, ok: true, headDim: 64},
			{name: "fp16", prec: FP16, ok: true, headDim: 64},
			{name: "first", prec: BF16, ok: true, first: true, headDim: 64},
			{name: "off", prec: BF16, ok: true, off: true, headDim: 64, none: true},
			{name: "fp32", prec: FP32, ok: true, headDim: 64, none: true},
			{name: "before sm_80", prec: BF16, headDim: 64, none: true},
			{name: "head dim 32", prec: BF16, ok: true, headDim: 32, none: true},
		} {
			be := &Backend{precision: sw.prec}
			be.lazy.mma = &attnMMAFns{ok: sw.ok, off: sw.off, first: sw.first, optinMax: optin}
			bad := 0
			for tq := 1; tq <= 140; tq++ {
				for tk := 1; tk <= 140; tk++ {
					a := kernels.AttentionArgs{Batch: 200, Heads: 8, HeadDim: sw.headDim, TQ: tq, TK: tk}
					fwd, fwd2 := be.mmaUsable(a, false), fwd2Taken(be, a)
					bwd, bwd2 := be.mmaUsable(a, true), bwd2Taken(be, a)
					wantFwd := !sw.none && tk <= amMaxKeys
					wantFwd2 := wantFwd && !sw.first && tk <= am2MaxT
					wantBwd := !sw.none && !sw.first && tq <= am2MaxT && tk <= am2MaxT
					if fwd != wantFwd || fwd2 != wantFwd2 || bwd != wantBwd || bwd2 != wantBwd {
						if bad++; bad <= 5 {
							t.Errorf("optin %d %s TQ %d TK %d: forward %v (second %v), backward %v (second %v); want %v (%v), %v (%v)",
								optin, sw.name, tq, tk, fwd, fwd2, bwd, bwd2, wantFwd, wantFwd2, wantBwd, wantBwd)
						}
					}
				}
			}
		}
	}
}

// fwd2Taken and bwd2Taken are mmaForward's and mmaBackward's tests for the second
// (and third) kernels.
func fwd2Taken(be *Backend, a kernels.AttentionArgs) bool {
	return be.mmaUsable(a, false) && be.mma2(a, false)
}

func bwd2Taken(be *Backend, a kernels.AttentionArgs) bool {
	return be.mmaUsable(a, true) && be.mma2(a, true)
}
