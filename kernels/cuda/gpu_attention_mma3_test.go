package cuda

import (
	"fmt"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// The third tensor-core kernels (attention_mma3_fwd/bwd) do the second kernels' work in
// persistent blocks: the same arithmetic on the same rounded operands in the same order,
// so they must give the second kernels' bits, with no tolerance. The second kernels are
// the reference here because they are checked against independent references (the
// rounded-operand float64 and the fp32 CPU: TestAttentionMMATrainShapes,
// TestAttentionSeededSameBits); the existing tests also run the third kernels wherever
// they take a call (no stored mask). NaNs match any NaN (checkSameBits).

// mma3Cases: the training shapes of seededCases, the timing shapes at a small batch, and
// one case per head count that leaves blocks with unequal numbers of items.
func mma3Cases() []attnCase {
	cs := seededCases()
	for _, T := range []int{20, 28, 35, 41, 64} {
		cs = append(cs, attnCase{name: fmt.Sprintf("self B23 T%d left pad dropout", T), B: 23, H: 8, D: 64, TQ: T, TK: T,
			pad: true, left: true, drop: true, minLen: T / 2})
	}
	return append(cs,
		attnCase{name: "decoder self B19 T33 causal right pad", B: 19, H: 8, D: 64, TQ: 33, TK: 33, causal: true, pad: true, drop: true, minLen: 10},
		attnCase{name: "cross B11 TQ45 TK17 H3", B: 11, H: 3, D: 64, TQ: 45, TK: 17, cross: true, pad: true, left: true, drop: true, minLen: 5})
}

// am3TimingCases are the timing tests' shapes: B·T ≈ 8,000 at the bench's key lengths
// (and T 64), left padding, seeded dropout; one causal.
func am3TimingCases() []attnCase {
	var cs []attnCase
	for _, s := range []struct {
		B, T   int
		causal bool
	}{{666, 12, false}, {400, 20, false}, {286, 28, false}, {229, 35, false}, {200, 41, false}, {200, 41, true}, {125, 64, false}} {
		cs = append(cs, attnCase{B: s.B, H: 8, D: 64, TQ: s.T, TK: s.T, pad: true, left: !s.causal, causal: s.causal, drop: true, minLen: s.T / 2})
	}
	return cs
}

// withMMA3 sets the third kernels' switches for the test's duration.
func withMMA3(t *testing.T, be *Backend, sw am3Switch) {
	t.Helper()
	old := be.setMMA3(sw)
	t.Cleanup(func() { be.setMMA3(old) })
}

// mma3Outputs are a seeded forward and backward's results on the host.
type mma3Outputs struct{ probs, out, dq, dkv []float32 }

// runSeededOnce runs m's case through AttentionForwardSeeded and AttentionBackwardSeeded
// with float32 inputs holding m's values (float32 gradients start from m.dq, m.dkv;
// 16-bit ones are written whole): runIn16's all-float32 seeded run.
func runSeededOnce(t *testing.T, be *Backend, m *mmaData, dropP float64, seed uint64, out16 bool) mma3Outputs {
	t.Helper()
	in := in16Inputs{q32: be.Upload(m.q), dout32: be.Upload(m.dout)}
	in.kv32 = in.q32
	if m.tc.cross {
		in.kv32 = be.Upload(m.kv)
	}
	return runIn16(t, be, m, in, in16Run{}, dropP, seed, out16)
}

// TestAttentionMMA3SameBits compares, for bf16 and fp16, dropout 0.1 and 0, float32 and
// 16-bit outputs, the seeded calls on the third kernels (taken wherever they fit, also
// where the dispatch would keep the second ones; unbounded grid, and a grid of 7 blocks
// so that every block loops over many items and the last items land unevenly) with the
// same calls on the second kernels, bit for bit, for both variants of the third kernels:
// the bits variant (attention_mma3_*_b, the default: keep bits drawn ahead into shared
// memory, branch-free element loops) and the first one (am3Switch.old), so the two also
// match each other. It also checks that the default dispatch takes the third kernels at
// the bench shape in both directions.
func TestAttentionMMA3SameBits(t *testing.T) {
	be := withPrecision(t, BF16)
	if be.info.Major < 8 {
		t.Skip("the tensor-core kernels need sm_80")
	}
	bench := attnCase{B: 200, H: 8, D: 64, TQ: 41, TK: 41}
	vw := bench.views()
	qb := be.Alloc(vw.qn)
	func() {
		defer be.enter()()
		ba := kernels.AttentionArgs{Batch: 200, Heads: 8, HeadDim: 64, TQ: 41, TK: 41}
		if !be.mma3Taken(ba, false, vw.q(qb), vw.k(qb), vw.v(qb)) || !be.mma3Taken(ba, true, vw.q(qb), vw.k(qb), vw.v(qb)) {
			t.Error("the third kernels do not take the bench shape (B 200, T 41)")
		}
	}()
	for ci, tc := range mma3Cases() {
		for _, ft := range formats {
			for _, dropP := range []float64{0.1, 0} {
				for _, out16 := range []bool{false, true} {
					for _, v := range []struct {
						grid      int
						old, wide bool
					}{{0, false, false}, {7, false, false}, {0, true, false}, {7, true, false}, {0, false, true}} {
						grid := v.grid
						t.Run(fmt.Sprintf("%s/%v/p%g/out16=%v/grid%d/old=%v/wide=%v", tc.name, ft.prec, dropP, out16, grid, v.old, v.wide), func(t *testing.T) {
							be := withPrecision(t, ft.prec)
							p := newPair(t, uint64(501+ci))
							a := tc.args(p)
							if tc.name == mmaAllMaskedCase.name {
								maskSentence(a, tc, mmaEmpty)
							}
							if out16 && !be.Attention16(a) {
								t.Fatal("Attention16 false at a shape the second kernels take")
							}
							m := newMMAData(p.r, a, tc)
							seed := 0x3000 + uint64(ci)
							withMMA3(t, be, am3Switch{off: true})
							want := runSeededOnce(t, be, m, dropP, seed, out16)
							be.setMMA3(am3Switch{force: true, maxGrid: grid, old: v.old, wide: v.wide})
							qv := m.vw.q(be.Alloc(m.vw.qn)) // Alloc takes the Backend: before enter
							func() {
								defer be.enter()()
								if !be.mma3Taken(a, false, qv, qv, qv) || !be.mma3Taken(a, true, qv, qv, qv) {
									t.Errorf("not on the third kernels (forward %v, backward %v)",
										be.mma3Taken(a, false, qv, qv, qv), be.mma3Taken(a, true, qv, qv, qv))
								}
							}()
							got := runSeededOnce(t, be, m, dropP, seed, out16)
							checkSameBits(t, "probs", got.probs, want.probs)
							checkSameBits(t, "out", got.out, want.out)
							checkSameBits(t, "dq (dk, dv for self)", got.dq, want.dq)
							if tc.cross {
								checkSameBits(t, "dk, dv", got.dkv, want.dkv)
							}
						})
					}
				}
			}
		}
	}
}

// TestAttentionMMA3ForwardTiles: a forward without dropout of more than 64 query rows
// (several query tiles per (b, h), so items of one block belong to different tiles) on
// the third kernels against the second, bit for bit, bf16, float32 output (Attention16
// declines this shape: the backward has no second kernel for it).
func TestAttentionMMA3ForwardTiles(t *testing.T) {
	be := withPrecision(t, BF16)
	if be.info.Major < 8 {
		t.Skip("the tensor-core kernels need sm_80")
	}
	tc := attnCase{name: "cross B9 TQ100 TK41", B: 9, H: 8, D: 64, TQ: 100, TK: 41, cross: true, pad: true, left: true, minLen: 10}
	for _, v := range []struct {
		grid int
		old  bool
	}{{0, false}, {5, false}, {0, true}, {5, true}} {
		grid := v.grid
		t.Run(fmt.Sprintf("grid%d/old=%v", grid, v.old), func(t *testing.T) {
			p := newPair(t, 577)
			a := tc.args(p)
			m := newMMAData(p.r, a, tc)
			np := tc.B * tc.H * tc.TQ * tc.TK
			run := func() ([]float32, []float32) {
				qb, kvb := be.Upload(m.q), be.Upload(m.kv)
				probs := be.Alloc(np)
				out := be.Alloc(tc.B * tc.TQ * tc.H * tc.D)
				be.AttentionForward(m.outView(out), m.vw.q(qb), m.vw.k(kvb), m.vw.v(kvb), a, probs, nil)
				return down(be, probs), down(be, out)
			}
			withMMA3(t, be, am3Switch{off: true})
			wp, wo := run()
			be.setMMA3(am3Switch{maxGrid: grid, old: v.old})
			qv := m.vw.q(be.Alloc(m.vw.qn)) // Alloc takes the Backend: before enter
			func() {
				defer be.enter()()
				if !be.mma3Taken(a, false, qv, qv, qv) {
					t.Fatal("the third forward does not take TQ 100, TK 41")
				}
			}()
			gp, gout := run()
			checkSameBits(t, "probs", gp, wp)
			checkSameBits(t, "out", gout, wo)
		})
	}
}

// TestAttentionMMA3Plans checks the launch arithmetic without a GPU: the grid spreads the
// items evenly over at most the resident blocks, and the shared memory matches the
// kernels' layouts at the bench shape (T 41: 54,064 bytes forward, 88,468 backward).
func TestAttentionMMA3Plans(t *testing.T) {
	for _, c := range []struct{ items, sms, perSM, maxGrid, want int }{
		{1600, 132, 4, 0, 400}, // ⌈1600/528⌉ = 4 items a block
		{1600, 132, 2, 0, 229}, // 7 items a block
		{10, 132, 4, 0, 10},
		{100, 132, 4, 7, 7}, // 15 items a block: 7 blocks
		{101, 1, 1, 0, 1},
	} {
		if g := am3Grid(c.items, c.sms, c.perSM, c.maxGrid); g != c.want {
			t.Errorf("am3Grid(%d, %d, %d, %d) = %d, want %d", c.items, c.sms, c.perSM, c.maxGrid, g, c.want)
		}
	}
	a := kernels.AttentionArgs{Batch: 200, Heads: 8, HeadDim: 64, TQ: 41, TK: 41}
	const perSM = 228 * 1024
	f := planMMA3Forward(a, 132, perSM, 0)
	// Q [48][72], K, V [48][72] 16-bit; 48 flag bytes; landing [48 + 82][64] fp32.
	if want := 2*72*(48+96) + 48 + 4*64*(48+82); f.shared != want || f.warps != 3 || f.tiles != 1 || f.items != 1600 {
		t.Errorf("forward plan %+v, want shared %d, 3 warps, 1 tile, 1600 items", f, want)
	}
	if f.perSM != perSM/(f.shared+1024) {
		t.Errorf("forward: %d blocks per SM, want %d (shared memory bound)", f.perSM, perSM/(f.shared+1024))
	}
	b := planMMA3Backward(a, 132, perSM, 0)
	// tiles 4·[48][72]; Z1 max(4·41·41, 2·48·56) rounded to 16; Z2 2·48·56; landing 164 rows + P.
	z1 := (max(4*41*41, 2*48*56) + 15) &^ 15
	if want := 2*72*4*48 + z1 + 2*48*56 + 4*64*164 + 4*41*41; b.shared != want || b.warps != 6 || b.items != 1600 {
		t.Errorf("backward plan %+v, want shared %d, 6 warps, 1600 items", b, want)
	}
	// The bits variants add the keep bitmap: ⌈bits/32⌉ + 2 words rounded up to 4 words
	// (forward: the tile's 48 rows × 41 keys, 62 + 2 words; backward 41 × 41, 53 + 2 → 56),
	// and keep the blocks per SM at the bench shape (4 forward, 2 backward).
	if fb := planMMA3ForwardB(a, 132, perSM, 0); fb.shared != f.shared+4*64 || fb.perSM != f.perSM || fb.perSM != 4 || fb.grid != f.grid {
		t.Errorf("bits forward plan %+v, want %+v with %d more bytes shared", fb, f, 4*64)
	}
	if bb := planMMA3BackwardB(a, 132, perSM, 0); bb.shared != b.shared+4*56 || bb.perSM != b.perSM || bb.perSM != 2 || bb.grid != b.grid {
		t.Errorf("bits backward plan %+v, want %+v with %d more bytes shared", bb, b, 4*56)
	}
	for _, c := range []struct{ n, want int }{{1, 16}, {32, 16}, {33, 16}, {64, 16}, {65, 32}, {1681, 224}, {4096, 528}} {
		if got := am3KeepBytes(c.n); got != c.want {
			t.Errorf("am3KeepBytes(%d) = %d, want %d", c.n, got, c.want)
		}
	}
}

// TestAttentionMMA3Timing logs the device time per call of the seeded training calls
// (AttentionForwardSeeded, AttentionBackwardSeeded: bf16, dropout 0.1, 16-bit outputs
// as the training step writes them) on the second and the third kernels, same run, at
// B·T ≈ 8000 for T 20, 28, 35, 41 and 64, with the third kernels' plans (blocks per SM,
// grid); "default dispatch" runs the third kernels' bits variant where the dispatch takes
// them (else the second kernels), "forced" wherever they fit, and the "first variant"
// rows are the same with am3Switch.old (the third kernels before the bits variant: the
// "before" of that change). It checks nothing; -short skips it.
func TestAttentionMMA3Timing(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	be := withPrecision(t, BF16)
	if be.info.Major < 8 {
		t.Skip("the tensor-core kernels need sm_80")
	}
	withMMA3(t, be, am3Switch{})
	for _, tc := range am3TimingCases() {
		p := newPair(t, 313)
		a := tc.args(p)
		if !be.Attention16(a) {
			t.Fatalf("Attention16 false at T %d", tc.TQ)
		}
		vw := tc.views()
		d := tc.H * tc.D
		np := tc.B * tc.H * tc.TQ * tc.TK
		qb := be.Upload(randVec(p.r, vw.qn))
		probs := be.Alloc(np)
		ov := kernels.View{Buf: be.AllocHalf(tc.B * tc.TQ * d), BatchStride: tc.TQ * d, RowStride: d}
		gv := kernels.View{Buf: be.Upload(randVec(p.r, tc.B*tc.TQ*d)), BatchStride: tc.TQ * d, RowStride: d}
		dqb := be.AllocHalf(vw.qn)
		const dropP, seed = 0.1, 17
		fwd := func() {
			if !be.AttentionForwardSeeded(ov, vw.q(qb), vw.k(qb), vw.v(qb), a, probs, dropP, seed) {
				t.Fatal("AttentionForwardSeeded declined")
			}
		}
		bwd := func() {
			if !be.AttentionBackwardSeeded(vw.q(dqb), vw.k(dqb), vw.v(dqb), gv, vw.q(qb), vw.k(qb), vw.v(qb), a, probs, dropP, seed) {
				t.Fatal("AttentionBackwardSeeded declined")
			}
		}
		var pf, pb, pfb, pbb am3Plan
		func() {
			defer be.enter()()
			f := be.mmaFns()
			pf = planMMA3Forward(a, be.info.SMs, f.third.sharedPerSM, 0)
			pb = planMMA3Backward(a, be.info.SMs, f.third.sharedPerSM, 0)
			pfb = planMMA3ForwardB(a, be.info.SMs, f.third.sharedPerSM, 0)
			pbb = planMMA3BackwardB(a, be.info.SMs, f.third.sharedPerSM, 0)
		}()
		variants := []struct {
			name string
			sw   am3Switch
		}{
			{"second kernels", am3Switch{off: true}},
			{"third, first variant (default dispatch)", am3Switch{old: true}},
			{"third, first variant (forced)", am3Switch{old: true, force: true}},
			{"third, bits variant (default dispatch)", am3Switch{}},
			{"third, bits variant (forced)", am3Switch{force: true}},
			{"third, bits variant sized for 4 key blocks (default dispatch)", am3Switch{wide: true}},
		}
		us := make([][2]float64, len(variants))
		for v, vr := range variants {
			be.setMMA3(vr.sw)
			fwd()
			us[v][0] = timeDevice(t, be, 50, fwd).Seconds() * 1e6
			us[v][1] = timeDevice(t, be, 50, bwd).Seconds() * 1e6
			t.Logf("B %d T %d causal=%v: %s: forward %.1f µs, backward %.1f µs per call", tc.B, tc.TQ, tc.causal, vr.name, us[v][0], us[v][1])
		}
		t.Logf("B %d T %d causal=%v: third plans (first variant / bits): forward %d warps, %d / %d B shared, %d / %d blocks/SM, grid %d / %d; backward %d warps, %d / %d B, %d / %d blocks/SM, grid %d / %d",
			tc.B, tc.TQ, tc.causal, pf.warps, pf.shared, pfb.shared, pf.perSM, pfb.perSM, pf.grid, pfb.grid,
			pb.warps, pb.shared, pbb.shared, pb.perSM, pbb.perSM, pb.grid, pbb.grid)
		t.Logf("B %d T %d causal=%v: default dispatch, first variant → bits: forward %.1f → %.1f µs (%.2fx), backward %.1f → %.1f µs (%.2fx); forced: forward %.2fx, backward %.2fx; bits against the second kernels: forward %.2fx, backward %.2fx",
			tc.B, tc.TQ, tc.causal, us[1][0], us[3][0], us[1][0]/us[3][0], us[1][1], us[3][1], us[1][1]/us[3][1],
			us[2][0]/us[4][0], us[2][1]/us[4][1], us[0][0]/us[4][0], us[0][1]/us[4][1])
		t.Logf("B %d T %d causal=%v: bits variant, 4 key blocks → sized for %d: forward %.1f → %.1f µs, backward %.1f → %.1f µs",
			tc.B, tc.TQ, tc.causal, max((tc.TK+15)/16, 2), us[5][0], us[3][0], us[5][1], us[3][1])
	}
}
