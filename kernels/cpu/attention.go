package cpu

import (
	"math"

	"github.com/xform-dev/xform/kernels"
)

// Attention implements kernels.Backend. Work is split over (batch, head) pairs; each
// pair scales its query rows, forms the scores against every visible key, applies the
// masks, normalises in float32 with a float64 sum and accumulates the weighted values.
func (be *Backend) Attention(out, q, k, v kernels.View, a kernels.AttentionArgs) {
	od, qd, kd, vd := f(out.Buf), f(q.Buf), f(k.Buf), f(v.Buf)
	// Per-head probabilities are kept only when the caller wants their mean.
	var headProbs []float32
	if a.Probs != nil {
		headProbs = make([]float32, a.Batch*a.Heads*a.TQ*a.TK)
	}
	D := a.HeadDim
	pairs := a.Batch * a.Heads
	be.parallel(pairs, a.TQ*a.TK*D*2, func(lo, hi int) {
		scores := make([]float32, a.TK)
		qs := make([]float32, D)
		acc := make([]float64, D)
		for p := lo; p < hi; p++ {
			b, h := p/a.Heads, p%a.Heads
			kb := b
			if a.KVIndex != nil {
				kb = int(a.KVIndex[b])
			}
			var pad []bool
			if a.KeyPadding != nil {
				pad = a.KeyPadding[kb*a.KeyPadStride : kb*a.KeyPadStride+a.TK]
			}
			kBase := k.Off + kb*k.BatchStride + h*D
			vBase := v.Off + kb*v.BatchStride + h*D
			for i := 0; i < a.TQ; i++ {
				qr := qd[q.Off+b*q.BatchStride+i*q.RowStride+h*D:][:D]
				for d, x := range qr {
					qs[d] = x * a.Scale
				}
				last := a.TK - 1
				if a.Causal {
					last = min(last, i+a.QueryOffset)
				}
				negInf := float32(math.Inf(-1))
				m := negInf
				for j := 0; j < a.TK; j++ {
					if j > last || (pad != nil && pad[j]) {
						scores[j] = negInf
						continue
					}
					kr := kd[kBase+j*k.RowStride:][:D]
					s := float32(dotF64(qs, kr))
					scores[j] = s
					if s > m {
						m = s
					}
				}
				inv := expRow(scores, m)
				clear(acc)
				for j, e := range scores {
					pj := float32(float64(e) * inv)
					scores[j] = pj
					if pj == 0 {
						continue
					}
					axpyF64(acc, float64(pj), vd[vBase+j*v.RowStride:][:D])
				}
				or := od[out.Off+b*out.BatchStride+i*out.RowStride+h*D:][:D]
				for d, x := range acc {
					or[d] = float32(x)
				}
				if headProbs != nil {
					copy(headProbs[(p*a.TQ+i)*a.TK:][:a.TK], scores)
				}
			}
		}
	})
	if headProbs != nil {
		probs := f(a.Probs)[:a.Batch*a.TQ*a.TK]
		n := a.TQ * a.TK
		for b := 0; b < a.Batch; b++ {
			dst := probs[b*n : (b+1)*n]
			for j := range dst {
				var s float32
				for h := 0; h < a.Heads; h++ {
					s += headProbs[(b*a.Heads+h)*n+j]
				}
				dst[j] = s / float32(a.Heads)
			}
		}
	}
}

// expRow is the softmax's exponent pass over a row of scores with maximum m: scores[j]
// becomes exp(s_j − m) rounded to float32 and the reciprocal of their float64 sum is
// returned; an all-masked row (m = −inf) gives NaN, as torch does. The inference and
// the training attention share it, so their probabilities are the same bits.
func expRow(scores []float32, m float32) float64 {
	allMasked := math.IsInf(float64(m), -1)
	var sum float64
	for j, s := range scores {
		e := math.Exp(float64(s - m))
		if allMasked {
			e = math.NaN()
		}
		scores[j] = float32(e)
		sum += e
	}
	return 1 / sum
}
