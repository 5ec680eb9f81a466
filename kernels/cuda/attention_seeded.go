package cuda

import "github.com/xform-dev/xform/kernels"

var _ kernels.SeededAttention = (*Backend)(nil)

// mmaSeeded says whether the Backend takes a kernels.SeededAttention call of a's shape:
// those whose forward and backward both run on the second tensor-core kernels
// (attention_mma2_fwd/bwd), the only ones that draw the mask. Deciding on both
// directions in each makes the backward accept whatever the forward accepted. The
// caller holds the Backend.
func (be *Backend) mmaSeeded(a kernels.AttentionArgs) bool {
	return be.precision != FP32 && fastAttentionShape(a) &&
		be.mmaUsable(a, false) && be.mma2(a, false) && be.mmaUsable(a, true) && be.mma2(a, true)
}

// AttentionForwardSeeded implements kernels.SeededAttention on attention_mma2_fwd with
// the mask drawn from dropSeed: the stored-mask launch (mmaForward) with no mask
// buffer and the mask's shared-memory rows left out.
func (be *Backend) AttentionForwardSeeded(out, q, k, v kernels.View, a kernels.AttentionArgs, probs kernels.Buffer, dropP float64, dropSeed uint64) bool {
	a.KVIndex = nil // not used in training (as AttentionForward)
	drop := seededDropout(dropP, dropSeed)
	defer be.enter()()
	if !be.mmaSeeded(a) {
		return false
	}
	checkTrainAttention(a, probs, nil)
	padp := be.stagePadding(a)
	if !be.mmaForward(out, q, k, v, a, padp, probs, drop) {
		panic("cuda backend: the tensor-core attention forward declined a call mmaSeeded took")
	}
	return true
}

// AttentionBackwardSeeded implements kernels.SeededAttention on attention_mma2_bwd with
// the mask drawn again from dropSeed (no M region in shared memory).
func (be *Backend) AttentionBackwardSeeded(dq, dk, dv, dout, q, k, v kernels.View, a kernels.AttentionArgs, probs kernels.Buffer, dropP float64, dropSeed uint64) bool {
	a.KVIndex = nil
	drop := seededDropout(dropP, dropSeed)
	defer be.enter()()
	if !be.mmaSeeded(a) {
		return false
	}
	checkTrainAttention(a, probs, nil)
	if !be.mmaBackward(dq, dk, dv, dout, q, k, v, a, probs, drop) {
		panic("cuda backend: the tensor-core attention backward declined a call mmaSeeded took")
	}
	return true
}
