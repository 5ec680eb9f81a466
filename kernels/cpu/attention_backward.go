package cpu

import (
	"math"

	"github.com/xform-dev/xform/kernels"
)

// AttentionForward implements kernels.Trainer. The scores and softmax are computed
// exactly as Attention computes them; the probabilities are kept for the backward.
func (be *Backend) AttentionForward(out, q, k, v kernels.View, a kernels.AttentionArgs, probs, dropMask kernels.Buffer) {
	od, qd, kd, vd := f(out.Buf), f(q.Buf), f(k.Buf), f(v.Buf)
	pd, md := f(probs), f(dropMask)
	D := a.HeadDim
	be.parallel(a.Batch*a.Heads, a.TQ*a.TK*D*2, func(lo, hi int) {
		qs := make([]float32, D)
		acc := make([]float64, D)
		negInf := float32(math.Inf(-1))
		for p := lo; p < hi; p++ {
			b, h := p/a.Heads, p%a.Heads
			var pad []bool
			if a.KeyPadding != nil {
				pad = a.KeyPadding[b*a.KeyPadStride : b*a.KeyPadStride+a.TK]
			}
			kBase := k.Off + b*k.BatchStride + h*D
			vBase := v.Off + b*v.BatchStride + h*D
			for i := 0; i < a.TQ; i++ {
				scores := pd[(p*a.TQ+i)*a.TK:][:a.TK]
				qr := qd[q.Off+b*q.BatchStride+i*q.RowStride+h*D:][:D]
				for d, x := range qr {
					qs[d] = x * a.Scale
				}
				last := a.TK - 1
				if a.Causal {
					last = min(last, i+a.QueryOffset)
				}
				m := negInf
				for j := 0; j < a.TK; j++ {
					if j > last || (pad != nil && pad[j]) {
						scores[j] = negInf
						continue
					}
					kr := kd[kBase+j*k.RowStride:][:D]
					var s64 float64
					for d, x := range qs {
						s64 += float64(x) * float64(kr[d])
					}
					s := float32(s64)
					scores[j] = s
					m = max(m, s)
				}
				inv := expRow(scores, m)
				clear(acc)
				var mrow []float32
				if md != nil {
					mrow = md[(p*a.TQ+i)*a.TK:][:a.TK]
				}
				for j, e := range scores {
					pj := float32(float64(e) * inv)
					scores[j] = pj
					if mrow != nil {
						pj *= mrow[j]
					}
					if pj == 0 {
						continue
					}
					vr := vd[vBase+j*v.RowStride:][:D]
					for d, x := range vr {
						acc[d] += float64(pj) * float64(x)
					}
				}
				or := od[out.Off+b*out.BatchStride+i*out.RowStride+h*D:][:D]
				for d, x := range acc {
					or[d] = float32(x)
				}
			}
		}
	})
}

// AttentionBackward implements kernels.Trainer. Work is split over (batch, head) pairs,
// which write disjoint column ranges of dq, dk and dv, so no two goroutines touch the
// same element.
func (be *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v kernels.View, a kernels.AttentionArgs, probs, dropMask kernels.Buffer) {
	dqd, dkd, dvd, dod := f(dq.Buf), f(dk.Buf), f(dv.Buf), f(dout.Buf)
	qd, kd, vd := f(q.Buf), f(k.Buf), f(v.Buf)
	pd, md := f(probs), f(dropMask)
	D := a.HeadDim
	be.parallel(a.Batch*a.Heads, a.TQ*a.TK*D*4, func(lo, hi int) {
		dp := make([]float64, a.TK)
		dqAcc := make([]float64, D)
		dkAcc := make([]float64, a.TK*D)
		dvAcc := make([]float64, a.TK*D)
		for p := lo; p < hi; p++ {
			b, h := p/a.Heads, p%a.Heads
			kBase := k.Off + b*k.BatchStride + h*D
			vBase := v.Off + b*v.BatchStride + h*D
			clear(dkAcc)
			clear(dvAcc)
			for i := 0; i < a.TQ; i++ {
				prow := pd[(p*a.TQ+i)*a.TK:][:a.TK]
				var mrow []float32
				if md != nil {
					mrow = md[(p*a.TQ+i)*a.TK:][:a.TK]
				}
				gor := dod[dout.Off+b*dout.BatchStride+i*dout.RowStride+h*D:][:D]
				qr := qd[q.Off+b*q.BatchStride+i*q.RowStride+h*D:][:D]
				// dP (after the dropout mask is undone) and dV.
				var dot float64
				for j, pj := range prow {
					if pj == 0 {
						dp[j] = 0
						continue
					}
					vr := vd[vBase+j*v.RowStride:][:D]
					pm := float64(pj)
					mj := 1.0
					if mrow != nil {
						mj = float64(mrow[j])
						pm *= mj
					}
					var s float64
					for d, g := range gor {
						s += float64(g) * float64(vr[d])
						dvAcc[j*D+d] += pm * float64(g)
					}
					dp[j] = s * mj
					dot += s * mj * float64(pj)
				}
				// dS = P⊙(dP − Σ P·dP); scores = (scale·q)·k.
				clear(dqAcc)
				for j, pj := range prow {
					if pj == 0 {
						continue
					}
					ds := float64(pj) * (dp[j] - dot)
					kr := kd[kBase+j*k.RowStride:][:D]
					for d := range dqAcc {
						dqAcc[d] += ds * float64(kr[d])
						dkAcc[j*D+d] += ds * float64(qr[d]*a.Scale)
					}
				}
				dqr := dqd[dq.Off+b*dq.BatchStride+i*dq.RowStride+h*D:][:D]
				for d, x := range dqAcc {
					dqr[d] += float32(x * float64(a.Scale))
				}
			}
			for j := 0; j < a.TK; j++ {
				dkr := dkd[dk.Off+b*dk.BatchStride+j*dk.RowStride+h*D:][:D]
				dvr := dvd[dv.Off+b*dv.BatchStride+j*dv.RowStride+h*D:][:D]
				for d := 0; d < D; d++ {
					dkr[d] += float32(dkAcc[j*D+d])
					dvr[d] += float32(dvAcc[j*D+d])
				}
			}
		}
	})
}
