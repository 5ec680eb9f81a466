package cuda

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

var _ kernels.PackedAttention = (*Backend)(nil)

// rowSpans is the CUDA backend's kernels.RowSpans: three int32 per sentence (base, lo,
// hi: attention_mma.cu's am_span) in device memory of the step.
type rowSpans struct {
	ptr     uint64
	n, rows int
}

func (r *rowSpans) Len() int  { return r.n }
func (r *rowSpans) Rows() int { return r.rows }

// RowSpans implements kernels.PackedAttention: checked here, uploaded once.
func (be *Backend) RowSpans(base, lo, hi []int32, rows int) kernels.RowSpans {
	kernels.CheckRowSpans(base, lo, hi, rows)
	r := &rowSpans{n: len(base), rows: rows}
	if r.n == 0 {
		return r
	}
	v := make([]int32, 0, 3*r.n)
	for b := range base {
		v = append(v, base[b], lo[b], hi[b])
	}
	defer be.enter()()
	r.ptr = be.uploadStepInts(v)
	return r
}

// PackedAttentionTakes implements kernels.PackedAttention. The answer is the shape's:
// XFORM_CUDA_PACKED_ATTN=0 (packedAttnOff) does not change it, so that with the switch off packed steps still pack and expand their rows around
// attention (the comparison the switch is for).
func (be *Backend) PackedAttentionTakes(a kernels.AttentionArgs) bool {
	a.KVIndex = nil
	defer be.enter()()
	be.mmaFns()
	return be.packedShapeTakes(a)
}

// packedTakes says whether a call of a's shape on these views runs on packed rows: the
// 16-bit-input third kernels' bits variant (attention_mma3_fwd/bwd_hr*, the only ones
// with a packed form) in both directions, as the padded call would run them; the views
// 16-bit with 16-byte aligned rows. The caller holds the Backend.
func (be *Backend) packedTakes(a kernels.AttentionArgs, views ...kernels.View) bool {
	// am3Aligned16's BatchStride test passes trivially: packed views have none.
	return !be.packedAttnOff && am3Aligned16(views...) && be.packedShapeTakes(a)
}

// packedShapeTakes is packedTakes without the views and the switch. The caller holds
// the Backend, after mmaFns.
func (be *Backend) packedShapeTakes(a kernels.AttentionArgs) bool {
	if be.precision == FP32 || be.halfOff || be.flashAlways || !be.attnIn16On ||
		!fastAttentionShape(a) || a.KVIndex != nil || a.Batch == 0 || a.TQ == 0 {
		return false
	}
	if !be.mmaUsable(a, false) || !be.mma2(a, false) || !be.mmaUsable(a, true) || !be.mma2(a, true) {
		return false
	}
	f := be.lazy.mma
	t := &f.third
	if f.in16.off || t.firstVariant(a) {
		return false
	}
	return t.fwdTakes(a, planMMA3ForwardH(a, be.info.SMs, t.sharedPerSM, t.sw.maxGrid, true), f.optinMax, t.fwdMinKeysH(a)) &&
		t.bwdTakes(planMMA3BackwardH(a, be.info.SMs, t.sharedPerSM, t.sw.maxGrid, true), f.optinMax)
}

// packedSpans returns qs and ks as the Backend's, checked against a's batch and the
// rows the views hold.
func packedSpans(a kernels.AttentionArgs, qs, ks kernels.RowSpans, qViews, kViews []kernels.View) (*rowSpans, *rowSpans) {
	q, okq := qs.(*rowSpans)
	k, okk := ks.(*rowSpans)
	if !okq || !okk {
		panic(fmt.Sprintf("cuda backend: packed attention with foreign spans %T, %T", qs, ks))
	}
	if q.n != a.Batch || k.n != a.Batch {
		panic(fmt.Sprintf("cuda backend: packed attention of batch %d with spans of %d and %d sentences", a.Batch, q.n, k.n))
	}
	check := func(s *rowSpans, vs []kernels.View) {
		for _, v := range vs {
			need := (s.rows-1)*v.RowStride + v.Off + a.Heads*a.HeadDim
			if s.rows > 0 && halfOf(v.Buf).n < need {
				panic(fmt.Sprintf("cuda backend: packed attention view of %d elements for %d rows (%d needed)", halfOf(v.Buf).n, s.rows, need))
			}
		}
	}
	check(q, qViews)
	check(k, kViews)
	return q, k
}

// AttentionForwardPacked implements kernels.PackedAttention on attention_mma3_fwd_hr*.
func (be *Backend) AttentionForwardPacked(out, q, k, v kernels.View, a kernels.AttentionArgs, qs, ks kernels.RowSpans, probs kernels.Buffer, dropP float64, dropSeed uint64) bool {
	a.KVIndex = nil
	drop := seededDropout(dropP, dropSeed)
	defer be.enter()()
	f := be.mmaFns()
	if !be.packedTakes(a, out, q, k, v) {
		return false
	}
	checkTrainAttention(a, probs, nil)
	qsp, ksp := packedSpans(a, qs, ks, []kernels.View{out, q}, []kernels.View{k, v})
	t := &f.third
	padp := be.stagePadding(a)
	p := planMMA3ForwardH(a, be.info.SMs, t.sharedPerSM, t.sw.maxGrid, true)
	i := f.in16.bitsIndex(a, t.sw.wide)
	f.in16.packed++
	be.launchMMA3ForwardH(f.in16.fwd3R[i], &f.in16.fwd3ROpt[i], p, out, q, k, v, a, padp, probs, drop, &[2]uint64{qsp.ptr, ksp.ptr})
	return true
}

// AttentionBackwardPacked implements kernels.PackedAttention on attention_mma3_bwd_hr*.
func (be *Backend) AttentionBackwardPacked(dq, dk, dv, dout, q, k, v kernels.View, a kernels.AttentionArgs, qs, ks kernels.RowSpans, probs kernels.Buffer, dropP float64, dropSeed uint64) bool {
	a.KVIndex = nil
	drop := seededDropout(dropP, dropSeed)
	defer be.enter()()
	f := be.mmaFns()
	if !be.packedTakes(a, dq, dk, dv, dout, q, k, v) {
		return false
	}
	checkTrainAttention(a, probs, nil)
	qsp, ksp := packedSpans(a, qs, ks, []kernels.View{dq, dout, q}, []kernels.View{dk, dv, k, v})
	t := &f.third
	p := planMMA3BackwardH(a, be.info.SMs, t.sharedPerSM, t.sw.maxGrid, true)
	i := f.in16.bitsIndex(a, t.sw.wide)
	f.in16.packed++
	be.launchMMA3BackwardH(f.in16.bwd3R[i], &f.in16.bwd3ROpt[i], p, dq, dk, dv, dout, q, k, v, a, probs, drop, &[2]uint64{qsp.ptr, ksp.ptr})
	return true
}
