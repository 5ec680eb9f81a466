package cuda

import (
	"fmt"
	"math"
	"regexp"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// The flash attention kernels (attention_flash.cu, kernels.FlashAttention) in BF16 mode
// against the CPU backend's stored-probabilities path: AttentionForward and
// AttentionBackward with probs stored and the mask DropoutMask draws from the same
// seed, so a wrong dropout index shows as an O(1) error.
//
// Tolerance 1e-5 of ‖ref‖ (tolTight), the fast kernels' bound, by the same reasoning:
// every output is an fp32 FMA chain (scores and dp over D ≤ 64 terms, outputs and dq
// over the TK keys, dk and dv over the TQ queries, here up to 515), each step rounding
// once (2⁻²⁴ ≈ 6e-8 relative), so norm-wise the error grows like √n·2⁻²⁴ (1.4e-6 at
// n = 515; the worst case n·2⁻²⁴ of Σ|terms| is not reached by random signs). The
// online softmax adds a few ulps per key tile (expf ≤ 2 ulp, one rescale per tile), and
// the backward's p = exp(s − lse) carries lse's rounding, ½ulp(|lse|) ≈ 5e-7 relative
// for |lse| < 16 (inputs here are N(0, 1), scores a few units). Δ = dout·out replaces
// the CPU's Σ_j dp_ij·p_ij and carries out's own rounding. A Go emulation of the
// kernels' thread/tile arithmetic (float32 FMA, same order, same reductions) measured
// 3e-8…6.3e-7 against the CPU at these shapes, NaN placements identical. Indexing,
// masking, tiling or dropout-index bugs give errors of order 1.
//
// The gradients are checked as increments: dq, dk, dv start from random values (the
// methods accumulate), and the increment got − start is compared with the CPU's, so the
// starting values do not dilute the relative error.

// TestAttentionFlashKernelNames checks that every kernel the launch code looks up is
// defined in attention_flash.cu (runs without a GPU).
func TestAttentionFlashKernelNames(t *testing.T) {
	b, err := sources.ReadFile("attention_flash.cu")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range flashKernels {
		if !regexp.MustCompile(`extern "C" __global__ void __launch_bounds__\([^)]*\) ` + name + `\(`).Match(b) {
			t.Errorf("kernel %s is looked up but not defined in attention_flash.cu", name)
		}
	}
}

// flashCases are the training shapes: decoder self-attention (causal, right padding),
// encoder self-attention (left padding), cross attention (TK ≠ TQ, left padding), each T
// of the brief (within a tile, tile-crossing, a whole tile, and beyond 2·64 and 8·64
// with partial last tiles).
func flashCases() []attnCase {
	var cs []attnCase
	for _, T := range []int{7, 41, 128, 200, 515} {
		B := min(64, max(2, 1200/T))
		S := T + T/3 + 1
		cs = append(cs,
			attnCase{name: fmt.Sprintf("decoder self causal right pad T%d", T), B: B, H: 8, D: 64, TQ: T, TK: T,
				causal: true, pad: true, minLen: max(1, T/2)},
			attnCase{name: fmt.Sprintf("encoder self left pad T%d", T), B: B, H: 8, D: 64, TQ: T, TK: T,
				pad: true, left: true, minLen: max(1, T/2)},
			attnCase{name: fmt.Sprintf("cross left pad TQ%d TK%d", T, S), B: B, H: 8, D: 64, TQ: T, TK: S,
				cross: true, pad: true, left: true, minLen: max(1, S/2)},
		)
	}
	return append(cs,
		// Left padding under the causal mask: the first rows of a short sentence see only
		// pad keys (NaN rows, whose NaN reaches every key's dk and dv, tiles skipped by
		// the causal mask included).
		attnCase{name: "self causal left pad (all-masked rows) T200", B: 4, H: 4, D: 64, TQ: 200, TK: 200,
			causal: true, pad: true, left: true, minLen: 20},
		attnCase{name: "cross D33 TQ41 TK70 (scalar staging)", B: 5, H: 3, D: 33, TQ: 41, TK: 70,
			cross: true, pad: true, left: true, minLen: 30},
		attnCase{name: "self no masks T100 D16", B: 6, H: 2, D: 16, TQ: 100, TK: 100},
	)
}

func TestAttentionFlashTrainShapes(t *testing.T) {
	for _, tc := range flashCases() {
		for _, dropP := range []float64{0, 0.1} {
			t.Run(fmt.Sprintf("%s/p%v", tc.name, dropP), func(t *testing.T) {
				withPrecision(t, BF16)
				p := newPair(t, 61)
				checkFlash(t, p, tc, tc.args(p), dropP)
			})
		}
	}
}

// TestAttentionFlashAllMasked: a sentence whose every key is padding gives NaN outputs
// and lse and NaN gradients exactly where the CPU's NaN probabilities put them.
func TestAttentionFlashAllMasked(t *testing.T) {
	withPrecision(t, BF16)
	p := newPair(t, 67)
	tc := attnCase{name: "empty sentence", B: 5, H: 4, D: 64, TQ: 70, TK: 90, cross: true, pad: true, left: true, minLen: 5}
	a := tc.args(p)
	const empty = 3
	for j := 0; j < tc.TK; j++ {
		a.KeyPadding[empty*tc.TK+j] = true
	}
	checkFlash(t, p, tc, a, 0.1)
}

// TestAttentionFlashDeclines: FP32 keeps the exact path, head dimensions over 64 and
// calls without keys are declined, empty calls are taken with nothing to do.
func TestAttentionFlashDeclines(t *testing.T) {
	g := gpu(t)
	g.flashAlways = true
	defer func() { g.flashAlways = false }()
	lse := g.Alloc(64)
	v := kernels.View{Buf: g.Alloc(4096), BatchStride: 64, RowStride: 64}
	for _, c := range []struct {
		prec Precision
		a    kernels.AttentionArgs
		want bool
	}{
		{FP32, kernels.AttentionArgs{Batch: 1, Heads: 1, HeadDim: 64, TQ: 4, TK: 4}, false},
		{BF16, kernels.AttentionArgs{Batch: 1, Heads: 1, HeadDim: 65, TQ: 4, TK: 4}, false},
		{BF16, kernels.AttentionArgs{Batch: 1, Heads: 1, HeadDim: 64, TQ: 4, TK: 0}, false},
		{BF16, kernels.AttentionArgs{Batch: 0, Heads: 1, HeadDim: 64, TQ: 4, TK: 4}, true},
		{FP16, kernels.AttentionArgs{Batch: 1, Heads: 1, HeadDim: 64, TQ: 0, TK: 4}, true},
	} {
		withPrecision(t, c.prec)
		if got := g.AttentionForwardLSE(v, v, v, v, c.a, lse, 0, 1); got != c.want {
			t.Errorf("%v %+v: forward took it %v, want %v", c.prec, c.a, got, c.want)
		}
		if got := g.AttentionBackwardLSE(v, v, v, v, v, v, v, v, c.a, lse, 0, 1); got != c.want {
			t.Errorf("%v %+v: backward took it %v, want %v", c.prec, c.a, got, c.want)
		}
	}
}

// lseReference is the log-sum-exp of each row's scores as the CPU forms them (q·scale
// rounded to float, a float64 dot product rounded to float, masked keys left out),
// summed in float64; NaN for a row without a visible key.
func lseReference(a kernels.AttentionArgs, q, k kernels.View) []float32 {
	qd, kd := cpu.Data(q.Buf), cpu.Data(k.Buf)
	D := a.HeadDim
	ref := make([]float32, a.Batch*a.Heads*a.TQ)
	qs := make([]float32, D)
	s := make([]float64, a.TK)
	for b := 0; b < a.Batch; b++ {
		for h := 0; h < a.Heads; h++ {
			for i := 0; i < a.TQ; i++ {
				for d := range qs {
					qs[d] = qd[q.Off+b*q.BatchStride+i*q.RowStride+h*D+d] * a.Scale
				}
				m := math.Inf(-1)
				s = s[:0]
				for j := 0; j < a.TK; j++ {
					if (a.KeyPadding != nil && a.KeyPadding[b*a.KeyPadStride+j]) || (a.Causal && j > i+a.QueryOffset) {
						continue
					}
					var x float64
					for d, qv := range qs {
						x += float64(qv) * float64(kd[k.Off+b*k.BatchStride+j*k.RowStride+h*D+d])
					}
					x = float64(float32(x))
					s = append(s, x)
					m = max(m, x)
				}
				r := math.NaN()
				if len(s) > 0 {
					var sum float64
					for _, x := range s {
						sum += math.Exp(x - m)
					}
					r = m + math.Log(sum)
				}
				ref[(b*a.Heads+h)*a.TQ+i] = float32(r)
			}
		}
	}
	return ref
}

// increment is got − start elementwise (NaN stays NaN).
func increment(got, start []float32) []float32 {
	d := make([]float32, len(got))
	for i := range got {
		d[i] = got[i] - start[i]
	}
	return d
}

// checkFlash runs the flash forward and backward on the GPU and the stored-probabilities
// path on the CPU with the mask DropoutMask draws from the same seed, and compares out,
// lse and the gradient increments.
func checkFlash(t *testing.T, p *pair, tc attnCase, a kernels.AttentionArgs, dropP float64) {
	p.g.flashAlways = true // the bench shapes too, where the model takes the stored-probability kernels
	defer func() { p.g.flashAlways = false }()
	t.Helper()
	const seed = 0x5eed_f1a5
	vw := tc.views()
	qb := p.rnd(vw.qn)
	kvb := qb
	if tc.cross {
		kvb = p.rnd(vw.kvn)
	}
	d := tc.H * tc.D
	ov := func(b kernels.Buffer) kernels.View {
		return kernels.View{Buf: b, BatchStride: tc.TQ * d, RowStride: d}
	}
	np := tc.B * tc.H * tc.TQ * tc.TK
	probs := p.c.Alloc(np)
	var mask kernels.Buffer
	if dropP > 0 {
		mask = p.c.Alloc(np)
		p.c.DropoutMask(mask, dropP, seed)
	}
	out := p.zeros(tc.B * tc.TQ * d)
	lse := p.g.Alloc(tc.B * tc.H * tc.TQ)
	if !p.g.AttentionForwardLSE(ov(out.g), vw.q(qb.g), vw.k(kvb.g), vw.v(kvb.g), a, lse, dropP, seed) {
		t.Fatal("AttentionForwardLSE declined a BF16 training shape")
	}
	p.c.AttentionForward(ov(out.c), vw.q(qb.c), vw.k(kvb.c), vw.v(kvb.c), a, probs, mask)
	p.check(t, "out", out, tolTight)
	checkClose(t, "lse", down(p.g, lse), lseReference(a, vw.q(qb.c), vw.k(kvb.c)), tolTight)

	dout := p.rnd(tc.B * tc.TQ * d)
	dqb := p.rnd(vw.qn)
	dqStart := append([]float32(nil), cpu.Data(dqb.c)...)
	dkvb, dkvStart := dqb, dqStart
	if tc.cross {
		dkvb = p.rnd(vw.kvn)
		dkvStart = append([]float32(nil), cpu.Data(dkvb.c)...)
	}
	// The GPU backward reads the GPU's own out and lse, as training does.
	if !p.g.AttentionBackwardLSE(vw.q(dqb.g), vw.k(dkvb.g), vw.v(dkvb.g), ov(dout.g),
		vw.q(qb.g), vw.k(kvb.g), vw.v(kvb.g), ov(out.g), a, lse, dropP, seed) {
		t.Fatal("AttentionBackwardLSE declined what the forward took")
	}
	p.c.AttentionBackward(vw.q(dqb.c), vw.k(dkvb.c), vw.v(dkvb.c), ov(dout.c),
		vw.q(qb.c), vw.k(kvb.c), vw.v(kvb.c), a, probs, mask)
	inc := func(what string, b both, start []float32) {
		t.Helper()
		checkClose(t, what, increment(down(p.g, b.g), start), increment(cpu.Data(b.c), start), tolTight)
	}
	if tc.cross {
		inc("dq", dqb, dqStart)
		inc("dk, dv", dkvb, dkvStart)
	} else {
		inc("dq, dk, dv", dqb, dqStart)
	}
}

// TestAttentionFlashTiming logs the device time per call of the flash forward and
// backward (BF16, dropout 0.1 drawn from the seed) against the stored-probabilities path
// of the same precision (the fast kernels where TK ≤ 128, else the exact ones; dropout
// mask stored, its DropoutMask draw timed apart) at the bench shape and at long
// sentences. It checks nothing; -short skips it.
func TestAttentionFlashTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	be := gpu(t)
	be.flashAlways = true
	defer func() { be.flashAlways = false }()
	for _, tc := range []attnCase{
		{name: "encoder self", B: 200, H: 8, D: 64, TQ: 41, TK: 41, pad: true, left: true, drop: true, minLen: 20},
		{name: "decoder self causal", B: 200, H: 8, D: 64, TQ: 41, TK: 41, causal: true, pad: true, drop: true, minLen: 20},
		{name: "cross", B: 200, H: 8, D: 64, TQ: 41, TK: 41, cross: true, pad: true, left: true, drop: true, minLen: 20},
		{name: "encoder self T512", B: 12, H: 8, D: 64, TQ: 512, TK: 512, pad: true, left: true, drop: true, minLen: 400},
		{name: "decoder self causal T512", B: 12, H: 8, D: 64, TQ: 512, TK: 512, causal: true, pad: true, drop: true, minLen: 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withPrecision(t, BF16)
			fwd, bwd := attnTimingCalls(t, be, tc)
			p := newPair(t, 71)
			a := tc.args(p)
			vw := tc.views()
			d := tc.H * tc.D
			qb := be.Upload(randVec(p.r, vw.qn))
			kvb := qb
			if tc.cross {
				kvb = be.Upload(randVec(p.r, vw.kvn))
			}
			out, dout := be.Alloc(tc.B*tc.TQ*d), be.Upload(randVec(p.r, tc.B*tc.TQ*d))
			lse := be.Alloc(tc.B * tc.H * tc.TQ)
			dqb := be.Alloc(vw.qn)
			dkvb := dqb
			if tc.cross {
				dkvb = be.Alloc(vw.kvn)
			}
			ov := kernels.View{Buf: out, BatchStride: tc.TQ * d, RowStride: d}
			gv := kernels.View{Buf: dout, BatchStride: tc.TQ * d, RowStride: d}
			ffwd := func() {
				if !be.AttentionForwardLSE(ov, vw.q(qb), vw.k(kvb), vw.v(kvb), a, lse, 0.1, 3) {
					t.Fatal("flash forward declined")
				}
			}
			fbwd := func() {
				be.AttentionBackwardLSE(vw.q(dqb), vw.k(dkvb), vw.v(dkvb), gv, vw.q(qb), vw.k(kvb), vw.v(kvb), ov, a, lse, 0.1, 3)
			}
			mask := be.Alloc(tc.B * tc.H * tc.TQ * tc.TK)
			us := func(f func()) float64 { return timeDevice(t, be, 20, f).Seconds() * 1e6 }
			ff, fb := us(ffwd), us(fbwd)
			sf, sb := us(fwd), us(bwd)
			md := us(func() { be.DropoutMask(mask, 0.1, 3) })
			t.Logf("%s B %d T %d bf16: flash forward %.1f µs, backward %.1f µs; stored probs forward %.1f µs, backward %.1f µs, mask draw %.1f µs",
				tc.name, tc.B, tc.TQ, ff, fb, sf, sb, md)
		})
	}
}
