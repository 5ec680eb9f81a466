package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// downHalf reads a 16-bit buffer back as the float32 values it holds (widening is
// exact).
func downHalf(t *testing.T, g *Backend, b kernels.Buffer) []float32 {
	t.Helper()
	h := halfOf(b)
	if h == nil {
		t.Fatalf("%T is not a 16-bit buffer", b)
	}
	w := func() *buffer {
		defer g.enter()()
		return g.widen16(h)
	}()
	return down(g, w)
}

// checkRounded: got (a 16-bit output, widened) must be, bit for bit, the format's
// rounding of the float32 output want of the same operation: a writer of a 16-bit
// buffer stores RN16 of the float it would have stored, so there is no tolerance.
func checkRounded(t *testing.T, ft format16, what string, got, want []float32) {
	t.Helper()
	checkRoundedZeros(t, ft, what, got, want, false)
}

// checkRoundedZeros is checkRounded that, with anySignedZero, also takes −0 for +0 and
// the reverse (a 16-bit gradient written rather than added to zeros keeps a −0 that the
// addition would have made +0).
func checkRoundedZeros(t *testing.T, ft format16, what string, got, want []float32, anySignedZero bool) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", what, len(got), len(want))
	}
	for i, w := range want {
		r := ft.round16(w)
		if anySignedZero && r == 0 && got[i] == 0 {
			continue
		}
		if math.Float32bits(got[i]) != math.Float32bits(r) && !(math.IsNaN(float64(r)) && math.IsNaN(float64(got[i]))) {
			t.Fatalf("%s[%d] = %v (%#08x), want RN16(%v) = %v (%#08x)", what, i, got[i], math.Float32bits(got[i]), w, r, math.Float32bits(r))
		}
	}
}

// TestHalfWriters: ApplyDropout (and ApplyDropoutRounded's second output),
// ReLUDropoutBackward and LabelSmoothedLossDeferred into a 16-bit buffer write the
// rounding of what they write into a float32 one, on
// the vectorised path and the scalar tail (sizes not a multiple of 4, a vocabulary not
// a multiple of 4), with an ignored row; the loss sums are unchanged.
func TestHalfWriters(t *testing.T) {
	for _, ft := range formats {
		t.Run(ft.prec.String(), func(t *testing.T) {
			g := withPrecision(t, ft.prec)
			r := rand.New(rand.NewPCG(3, 4))
			for _, n := range []int{1, 7, 4099, 8000 * 512} {
				x := g.Upload(randVec(r, n))
				t.Run(fmt.Sprintf("dropout/%d", n), func(t *testing.T) {
					y, yh := g.Alloc(n), g.AllocHalf(n)
					g.ApplyDropout(y, x, 0.1, 77)
					g.ApplyDropout(yh, x, 0.1, 77)
					want := down(g, y)
					checkRounded(t, ft, "y", downHalf(t, g, yh), want)
					// Both outputs in one pass, in place as the model runs it.
					y2, y16 := g.Upload(down(g, x)), g.AllocHalf(n)
					g.ApplyDropoutRounded(y2, y16, y2, 0.1, 77)
					checkExact(t, "ApplyDropoutRounded y", down(g, y2), want)
					checkRounded(t, ft, "ApplyDropoutRounded y16", downHalf(t, g, y16), want)
				})
				t.Run(fmt.Sprintf("relu_dropout/%d", n), func(t *testing.T) {
					a := g.Alloc(n)
					g.Activate(a, x, kernels.ReLU)
					g.ApplyDropout(a, a, 0.25, 5)
					da := g.Upload(randVec(r, n))
					d, dh := g.Alloc(n), g.AllocHalf(n)
					g.ReLUDropoutBackward(d, da, a, 0.25)
					g.ReLUDropoutBackward(dh, da, a, 0.25)
					checkRounded(t, ft, "dpre", downHalf(t, g, dh), down(g, d))
				})
			}
			for _, sh := range []struct{ rows, V int }{{37, 27472}, {5, 1003}} {
				t.Run(fmt.Sprintf("loss/%dx%d", sh.rows, sh.V), func(t *testing.T) {
					v := randVec(r, sh.rows*sh.V)
					for i := range v {
						v[i] *= 8
					}
					logits := g.Upload(v)
					targets := make([]int32, sh.rows)
					for i := range targets {
						targets[i] = int32(r.IntN(sh.V))
					}
					targets[1] = 1 // the ignore index below: a zero row
					d, dh := g.Alloc(sh.rows*sh.V), g.AllocHalf(sh.rows*sh.V)
					l1, n1 := g.LabelSmoothedLossDeferred(d, logits, targets, sh.rows, sh.V, 0.1, 1, 0.5)()
					l2, n2 := g.LabelSmoothedLossDeferred(dh, logits, targets, sh.rows, sh.V, 0.1, 1, 0.5)()
					if l1 != l2 || n1 != n2 {
						t.Errorf("loss %v nll %v with a 16-bit gradient, %v %v with float32", l2, n2, l1, n1)
					}
					checkRounded(t, ft, "dlogits", downHalf(t, g, dh), down(g, d))
				})
			}
		})
	}
	t.Run("fp32 has none", func(t *testing.T) {
		if b := withPrecision(t, FP32).AllocHalf(8); b != nil {
			t.Fatalf("FP32 AllocHalf returned %T", b)
		}
	})
}

// TestHalfReaders: LinearKeep with a 16-bit x and LinearBackwardKept with a 16-bit dy
// give the same bits as the float32 buffers they round (the products take the same
// 16-bit operands), and so do LinearActKeep + LinearBackwardKept against LinearAct +
// LinearBackward. The 16-bit operands are written by ApplyDropout with p = 0 (RN16 of
// x·1), the float32 ones are the same values, already rounded, so both paths multiply
// identical bits; db goes through the BGRADB epilogue and through its column-sum
// fallback.
func TestHalfReaders(t *testing.T) {
	for _, ft := range formats {
		for _, sh := range []struct{ m, n, k int }{{37, 203, 72}, {8000, 2048, 512}} {
			for _, bgradOff := range []bool{false, true} {
				t.Run(fmt.Sprintf("%v/%dx%dx%d/bgradOff=%v", ft.prec, sh.m, sh.n, sh.k, bgradOff), func(t *testing.T) {
					g := withPrecision(t, ft.prec)
					g.bgradOff = bgradOff
					defer func() { g.bgradOff = false }()
					r := rand.New(rand.NewPCG(uint64(sh.m), 9))
					pair := func(n int) (kernels.Buffer, kernels.Buffer) {
						v := randVec(r, n)
						h := g.AllocHalf(n)
						g.ApplyDropout(h, g.Upload(v), 0, 1)
						for i := range v {
							v[i] = ft.round16(v[i])
						}
						return g.Upload(v), h
					}
					x, xh := pair(sh.m * sh.k)
					dy, dyh := pair(sh.m * sh.n)
					w, b := g.Upload(randVec(r, sh.n*sh.k)), g.Upload(randVec(r, sh.n))
					dw0, db0 := randVec(r, sh.n*sh.k), randVec(r, sh.n)
					run := func(x, dy kernels.Buffer, act bool) (y, dx, dw, db []float32) {
						yb, dxb, dwb, dbb := g.Alloc(sh.m*sh.n), g.Alloc(sh.m*sh.k), g.Upload(dw0), g.Upload(db0)
						kept := keepForward(t, g, yb, x, w, b, sh.m, sh.n, sh.k, act)
						g.LinearBackwardKept(dxb, dwb, dbb, dy, kept, sh.m, sh.n, sh.k)
						return down(g, yb), down(g, dxb), down(g, dwb), down(g, dbb)
					}
					for _, act := range []bool{false, true} {
						y1, dx1, dw1, db1 := run(x, dy, act)
						y2, dx2, dw2, db2 := run(xh, dyh, act)
						checkExact(t, "y", y2, y1)
						checkExact(t, "dx", dx2, dx1)
						checkExact(t, "dw", dw2, dw1)
						// The column-sum fallback sums the widened 16-bit dy, the same
						// values as the float32 dy here.
						checkExact(t, "db", db2, db1)
					}
					// LinearAct + LinearBackward (casting x and w again) is what
					// LinearActKeep's kept copies stand for.
					yb, dxb, dwb, dbb := g.Alloc(sh.m*sh.n), g.Alloc(sh.m*sh.k), g.Upload(dw0), g.Upload(db0)
					if _, ok := g.LinearAct(yb, x, w, b, sh.m, sh.n, sh.k, kernels.ReLU); !ok {
						t.Fatal("LinearAct declined")
					}
					g.LinearBackward(dxb, dwb, dbb, dy, x, w, sh.m, sh.n, sh.k)
					y2, dx2, dw2, db2 := run(xh, dyh, true)
					checkExact(t, "LinearAct y", y2, down(g, yb))
					checkExact(t, "LinearBackward dx", dx2, down(g, dxb))
					checkExact(t, "LinearBackward dw", dw2, down(g, dwb))
					checkExact(t, "LinearBackward db", db2, down(g, dbb))
				})
			}
		}
	}
}

// TestHalfAttention: where Attention16 says so, AttentionForward into a 16-bit output
// writes the rounding of the float32 output, and AttentionBackward into 16-bit dq, dk,
// dv writes the rounding of the float32 gradients accumulated into zeros (up to the
// sign of a zero), on the training shapes the second tensor-core kernels take (self
// with padding and causal masks, cross TQ ≠ TK, dropout masks, an all-masked
// sentence); Attention16 is false for shapes they do not take, and in FP32.
func TestHalfAttention(t *testing.T) {
	for ci, tc := range []attnCase{mmaCases[0], mmaCases[1], mmaCases[2], mmaCases[3], mmaCases[4]} {
		for _, ft := range formats {
			t.Run(fmt.Sprintf("%s/%v", tc.name, ft.prec), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				p := newPair(t, uint64(171+ci))
				a := tc.args(p)
				if ci == 0 {
					maskSentence(a, tc, 1)
				}
				if !g.Attention16(a) {
					t.Fatal("Attention16 false at a shape the second kernels take")
				}
				m := newMMAData(p.r, a, tc)
				d := tc.H * tc.D
				q := g.Upload(m.q)
				kv := q
				if tc.cross {
					kv = g.Upload(m.kv)
				}
				var mask kernels.Buffer
				if m.mask != nil {
					mask = g.Upload(m.mask)
				}
				probs := g.AllocUninit(tc.B * tc.H * tc.TQ * tc.TK)
				out, out16 := g.Alloc(tc.B*tc.TQ*d), g.AllocHalf(tc.B*tc.TQ*d)
				g.AttentionForward(m.outView(out), m.vw.q(q), m.vw.k(kv), m.vw.v(kv), a, probs, mask)
				g.AttentionForward(m.outView(out16), m.vw.q(q), m.vw.k(kv), m.vw.v(kv), a, probs, mask)
				checkRounded(t, ft, "out", downHalf(t, g, out16), down(g, out))

				dout := g.Upload(m.dout)
				dq, dq16 := g.Alloc(m.vw.qn), g.AllocHalf(m.vw.qn)
				dkv, dkv16 := dq, dq16
				if tc.cross {
					dkv, dkv16 = g.Alloc(m.vw.kvn), g.AllocHalf(m.vw.kvn)
				}
				g.AttentionBackward(m.vw.q(dq), m.vw.k(dkv), m.vw.v(dkv), m.outView(dout), m.vw.q(q), m.vw.k(kv), m.vw.v(kv), a, probs, mask)
				g.AttentionBackward(m.vw.q(dq16), m.vw.k(dkv16), m.vw.v(dkv16), m.outView(dout), m.vw.q(q), m.vw.k(kv), m.vw.v(kv), a, probs, mask)
				if tc.cross {
					checkRoundedZeros(t, ft, "dq", downHalf(t, g, dq16), down(g, dq), true)
					checkRoundedZeros(t, ft, "dkv", downHalf(t, g, dkv16), down(g, dkv), true)
				} else {
					checkRoundedZeros(t, ft, "dqkv", downHalf(t, g, dq16), down(g, dq), true)
				}
			})
		}
	}
	t.Run("declined", func(t *testing.T) {
		g := withPrecision(t, BF16)
		for _, c := range []struct{ tq, tk int }{{100, 100}, {41, 65}} {
			if a := (kernels.AttentionArgs{Batch: 8, Heads: 8, HeadDim: 64, TQ: c.tq, TK: c.tk}); g.Attention16(a) {
				t.Errorf("Attention16 true at TQ %d TK %d", c.tq, c.tk)
			}
		}
		if withPrecision(t, FP32).Attention16(kernels.AttentionArgs{Batch: 8, Heads: 8, HeadDim: 64, TQ: 41, TK: 41}) {
			t.Error("Attention16 true in FP32")
		}
	})
}

// TestHalfTrainingSameBits trains the fixture model in bf16 and fp16 with the 16-bit
// buffers (the loss gradient, the feed-forward block's dpre, the weight copies of
// kernels.HalfRounder) and without them (halfOff: float32 buffers the Linears cast):
// every update's loss, nll and gradient norm and the final weights must be the same
// bits, since each 16-bit buffer holds exactly the rounding the Linear would have
// made. The 16-bit GEMM outputs (kernels.HalfOutputs) change results on purpose and
// are off here (lt.out16Off; TestHalfFFNTraining checks them). fp16 runs with its loss
// scale, so the rounded gradients are the scaled ones in both runs. The copies are
// written by the optimizer (kernels.RoundingOptimizer: one RoundAll, at the first step,
// then every update writes them) and, in a third run, by a RoundAll before every step
// (roundedAdamOff): the same bits again.
func TestHalfTrainingSameBits(t *testing.T) {
	gpu(t)
	m, batches := fixtureTraining(t, 3)
	for _, prec := range []Precision{BF16, FP16} {
		for _, rc := range sameBitsCases {
			t.Run(prec.String()+"/"+rc.name, func(t *testing.T) {
				plain := newGraphTestBackend(t, prec, false)
				plain.halfOff = true
				halves := newGraphTestBackend(t, prec, false)
				halves.lt.out16Off = true
				rounds := newGraphTestBackend(t, prec, false)
				rounds.lt.out16Off = true
				rounds.roundedAdamOff = true
				ref, _ := runTrain(t, m, plain, rc, batches)
				got, _ := runTrain(t, m, halves, rc, batches)
				checkSameRun(t, "with 16-bit buffers", got, "without", ref)
				again, _ := runTrain(t, m, rounds, rc, batches)
				checkSameRun(t, "with copies rounded every step", again, "without 16-bit buffers", ref)
				if halves.roundAlls != 1 || halves.roundedUpdates != len(batches) {
					t.Errorf("copies written by %d RoundAll and %d updates, want 1 and %d", halves.roundAlls, halves.roundedUpdates, len(batches))
				}
				if rounds.roundAlls != len(batches) || rounds.roundedUpdates != 0 {
					t.Errorf("with roundedAdamOff: %d RoundAll, %d rounding updates; want %d and 0", rounds.roundAlls, rounds.roundedUpdates, len(batches))
				}
			})
		}
	}
}

// keepForward is the forward of a kept Linear, LinearActKeep with ReLU when act else
// LinearKeep, into y; it returns what the backward takes (LinearBackwardKept's kept).
func keepForward(t *testing.T, g *Backend, y, x, w, b kernels.Buffer, m, n, k int, act bool) kernels.Buffer {
	t.Helper()
	if !act {
		return g.LinearKeep(y, x, w, b, m, n, k)
	}
	_, kept, ok := g.LinearActKeep(y, x, w, b, m, n, k, kernels.ReLU)
	if !ok || kept == nil {
		t.Fatal("LinearActKeep declined")
	}
	return kept
}
