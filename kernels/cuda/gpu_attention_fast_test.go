package cuda

import (
	"fmt"
	"strings"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// The float attention kernels (attention_fast.cu), used when the Backend's precision is
// BF16 or FP16, against the CPU backend (double sums in the CPU's order).
//
// Tolerance 1e-5 of ‖ref‖. Every output is an fp32 FMA chain over at most 128 terms (D
// ≤ 64 for scores and dp, TK ≤ 128 for outputs and dq, TQ ≤ 128 for dk and dv): each
// step rounds once (relative 2⁻²⁴ ≈ 6e-8), so a sum of n terms is off by at most about
// n·2⁻²⁴ of Σ|terms| (7.6e-6 at n = 128) and typically √n·2⁻²⁴ (7e-7). The softmax adds
// a few ulps (expf ≤ 2 ulp, one division, one product) and the shuffle-tree sums of the
// row maximum and denominator ⌈log₂ 32⌉ + NC roundings. ds = p·(dp − dot) can cancel,
// but only where |ds| is small against the row, so the norm-wise error stays at the
// level of the terms. A CPU-thread emulation of the kernels measured 5e-8…3e-7 at these
// shapes. Indexing, masking or layout bugs give errors of order 1.

// TestAttentionFastKernelNames checks that every kernel the launch code looks up is
// instantiated in attention_fast.cu (the names come from the AF_FWD/AF_BWD macros).
func TestAttentionFastKernelNames(t *testing.T) {
	b, err := sources.ReadFile("attention_fast.cu")
	if err != nil {
		t.Fatal(err)
	}
	src := string(b)
	for _, macro := range []string{"AF_FWD", "AF_BWD"} {
		name := map[string]string{"AF_FWD": "attention_fast_fwd", "AF_BWD": "attention_fast_bwd"}[macro]
		if !strings.Contains(src, "__launch_bounds__(AF_THREADS) "+name+"##NC(") {
			t.Errorf("macro %s does not define %s##NC", macro, name)
		}
	}
	for _, name := range afKernels {
		nc := name[len(name)-1:]
		macro := "AF_FWD"
		if strings.Contains(name, "bwd") {
			macro = "AF_BWD"
		}
		if !strings.Contains(src, "\n"+macro+"("+nc+")\n") {
			t.Errorf("kernel %s is looked up but %s(%s) is not instantiated", name, macro, nc)
		}
	}
}

// TestAttentionFastLayout checks the launch geometry on the host: the query tiles cover
// every row with no empty tile, the forward stays within 48 KiB without opting in, the
// float4 key rows (stride ldk) put the 8 lanes of a quarter-warp on distinct 16-byte
// bank groups, and the bench shape's backward needs no opt-in either.
func TestAttentionFastLayout(t *testing.T) {
	for d := 1; d <= afMaxDim; d++ {
		ldk := afLdk(d)
		if ldk < d || ldk%4 != 0 || ldk > afQuad(d)+4 {
			t.Fatalf("D %d: ldk %d", d, ldk)
		}
		seen := map[int]bool{}
		for lane := 0; lane < 8; lane++ {
			seen[(lane*ldk*4)%128/16] = true
		}
		if len(seen) != 8 {
			t.Errorf("D %d: ldk %d: a quarter-warp hits %d bank groups, want 8", d, ldk, len(seen))
		}
	}
	for _, tc := range []struct{ b, h, d, tq, tk, sms int }{
		{200, 8, 64, 41, 41, 132}, {1, 8, 64, 41, 41, 132}, {1, 1, 64, 128, 128, 132},
		{2, 4, 64, 1000, 128, 132}, {8, 4, 64, 1, 17, 132}, {3, 2, 1, 2, 63, 132},
		{64, 8, 64, 64, 64, 132}, {5, 3, 40, 64, 64, 0}, {1, 1, 64, 5, 128, 132},
	} {
		a := kernels.AttentionArgs{Batch: tc.b, Heads: tc.h, HeadDim: tc.d, TQ: tc.tq, TK: tc.tk}
		if !fastAttentionShape(a) {
			t.Fatalf("%+v: not a fast shape", tc)
		}
		p := planFastForward(a, tc.sms)
		rows := p.warps * afRows
		if p.warps < 1 || p.warps > afThreads/32 || p.tiles*rows < tc.tq || (p.tiles-1)*rows >= tc.tq {
			t.Errorf("%+v: %d warps × %d tiles", tc, p.warps, p.tiles)
		}
		if p.shared > afShared || p.lds < afQuad(tc.d) || p.lds < afQuad(tc.tk) || p.lds%4 != 0 {
			t.Errorf("%+v: forward shared %d bytes, lds %d", tc, p.shared, p.lds)
		}
		_, bs := afBackwardShared(a)
		t.Logf("B %d H %d D %d TQ %d TK %d: forward %d warps × %d tiles, %d B; backward %d B",
			tc.b, tc.h, tc.d, tc.tq, tc.tk, p.warps, p.tiles, p.shared, bs)
	}
	if _, bs := afBackwardShared(kernels.AttentionArgs{HeadDim: 64, TQ: 41, TK: 41}); bs > afShared {
		t.Errorf("bench shape backward needs %d bytes of shared memory, over %d", bs, afShared)
	}
	for _, a := range []kernels.AttentionArgs{
		{Batch: 1, Heads: 1, HeadDim: 65, TQ: 4, TK: 4}, {Batch: 1, Heads: 1, HeadDim: 64, TQ: 4, TK: 129},
		{Batch: 0, Heads: 1, HeadDim: 64, TQ: 4, TK: 4}, {Batch: 1, Heads: 1, HeadDim: 64, TQ: 4, TK: 0},
	} {
		if fastAttentionShape(a) {
			t.Errorf("%+v taken by the fast kernels", a)
		}
	}
}

// fastPaths says which kernels a 16-bit call of this shape takes (for the logs).
func fastPaths(be *Backend, a kernels.AttentionArgs) (fwd, bwd bool) {
	if !fastAttentionShape(a) {
		return false, false
	}
	_, bs := afBackwardShared(a)
	defer be.enter()()
	return true, bs <= be.fastFns().optinMax
}

func TestAttentionFastTrainShapes(t *testing.T) {
	for _, tc := range []attnCase{
		{name: "encoder self B64 T41 left pad dropout", B: 64, H: 8, D: 64, TQ: 41, TK: 41, pad: true, left: true, drop: true, minLen: 20},
		{name: "decoder self B128 T33 causal right pad dropout", B: 128, H: 8, D: 64, TQ: 33, TK: 33, causal: true, pad: true, drop: true, minLen: 20},
		{name: "cross B200 TQ37 TK29 left pad dropout", B: 200, H: 8, D: 64, TQ: 37, TK: 29, pad: true, left: true, drop: true, cross: true, minLen: 20},
		{name: "self B256 T20 no masks", B: 256, H: 8, D: 64, TQ: 20, TK: 20},
		{name: "T64 D40 causal pad", B: 5, H: 3, D: 40, TQ: 64, TK: 64, causal: true, pad: true, drop: true, minLen: 30},
		{name: "cross TQ64 TK1", B: 7, H: 2, D: 64, TQ: 64, TK: 1, cross: true},
		{name: "cross TQ2 TK63 D1", B: 9, H: 5, D: 1, TQ: 2, TK: 63, cross: true, pad: true, left: true, drop: true, minLen: 1},
		{name: "cross TQ100 TK128 (backward beyond 48 KiB)", B: 3, H: 4, D: 64, TQ: 100, TK: 128, cross: true, pad: true, left: true, drop: true, minLen: 10},
		{name: "self T128 causal right pad", B: 4, H: 4, D: 64, TQ: 128, TK: 128, causal: true, pad: true, drop: true, minLen: 60},
		{name: "cross TQ5 TK97 D33", B: 6, H: 3, D: 33, TQ: 5, TK: 97, cross: true, pad: true, left: true, minLen: 50},
		{name: "long TK300 (exact kernels)", B: 2, H: 4, D: 64, TQ: 40, TK: 300, cross: true, pad: true, left: true, drop: true, minLen: 100},
		{name: "head dim 80 (exact kernels)", B: 4, H: 2, D: 80, TQ: 30, TK: 30, pad: true, left: true, drop: true, minLen: 10},
	} {
		for _, prec := range []Precision{BF16, FP16} {
			t.Run(fmt.Sprintf("%s/%v", tc.name, prec), func(t *testing.T) {
				withMMAOff(t, withPrecision(t, prec)) // the float kernels, not the tensor-core ones
				p := newPair(t, 51)
				a := tc.args(p)
				fastF, fastB := fastPaths(p.g, a)
				t.Logf("fast forward %v, fast backward %v", fastF, fastB)
				checkFastTrain(t, p, tc, a, -1)
			})
		}
	}
}

// TestAttentionFastAllMasked: a sentence whose every key is padding gives NaN
// probabilities, a NaN output and NaN gradients for its rows and keys, as the CPU (and
// torch) do, while the other sentences stay finite and within the bound.
func TestAttentionFastAllMasked(t *testing.T) {
	withMMAOff(t, withPrecision(t, BF16))
	p := newPair(t, 53)
	tc := attnCase{name: "empty sentence", B: 6, H: 4, D: 64, TQ: 19, TK: 23, cross: true, pad: true, left: true, drop: true, minLen: 5}
	a := tc.args(p)
	const empty = 2
	for j := 0; j < tc.TK; j++ {
		a.KeyPadding[empty*tc.TK+j] = true
	}
	checkFastTrain(t, p, tc, a, empty)
}

// checkFastTrain runs AttentionForward and AttentionBackward on both backends and
// compares them. empty ≥ 0 names a batch whose keys are all masked: its outputs and
// gradients must be NaN, everything else finite.
func checkFastTrain(t *testing.T, p *pair, tc attnCase, a kernels.AttentionArgs, empty int) {
	t.Helper()
	vw := tc.views()
	qb := p.rnd(vw.qn)
	kvb := qb
	if tc.cross {
		kvb = p.rnd(vw.kvn)
	}
	np := tc.B * tc.H * tc.TQ * tc.TK
	probs := p.zeros(np)
	var mask both
	if tc.drop {
		mv := make([]float32, np)
		for i := range mv {
			if p.r.Float64() >= 0.1 {
				mv[i] = float32(1 / 0.9)
			}
		}
		mask.g, mask.c = p.up(mv)
	}
	d := tc.H * tc.D
	out := p.zeros(tc.B * tc.TQ * d)
	ov := func(b kernels.Buffer) kernels.View {
		return kernels.View{Buf: b, BatchStride: tc.TQ * d, RowStride: d}
	}
	p.g.AttentionForward(ov(out.g), vw.q(qb.g), vw.k(kvb.g), vw.v(kvb.g), a, probs.g, mask.g)
	p.c.AttentionForward(ov(out.c), vw.q(qb.c), vw.k(kvb.c), vw.v(kvb.c), a, probs.c, mask.c)
	p.check(t, "out", out, tolTight)
	p.check(t, "probs", probs, tolTight)

	dout := p.rnd(tc.B * tc.TQ * d)
	dqb := p.rnd(vw.qn)
	dkvb := dqb
	if tc.cross {
		dkvb = p.rnd(vw.kvn)
	}
	// Both backwards read the CPU's probabilities, so the forward's error stays out.
	gp := p.g.Upload(cpu.Data(probs.c))
	p.g.AttentionBackward(vw.q(dqb.g), vw.k(dkvb.g), vw.v(dkvb.g), ov(dout.g),
		vw.q(qb.g), vw.k(kvb.g), vw.v(kvb.g), a, gp, mask.g)
	p.c.AttentionBackward(vw.q(dqb.c), vw.k(dkvb.c), vw.v(dkvb.c), ov(dout.c),
		vw.q(qb.c), vw.k(kvb.c), vw.v(kvb.c), a, probs.c, mask.c)
	if tc.cross {
		p.check(t, "dq", dqb, tolTight)
		p.check(t, "dk, dv", dkvb, tolTight)
	} else {
		p.check(t, "dq, dk, dv", dqb, tolTight)
	}
	if empty < 0 {
		return
	}
	// The NaNs must be exactly the empty sentence's (relErr only checks they match the
	// CPU's): its output rows, and in the gradient buffers its rows, heads' columns.
	nanOnly := func(what string, got []float32, batchLen, rowLen, rows int) {
		t.Helper()
		for b := 0; b < tc.B; b++ {
			for i := 0; i < rows; i++ {
				for c := 0; c < rowLen; c++ {
					x := got[b*batchLen+i*rowLen+c]
					if isNaN := x != x; isNaN != (b == empty) {
						t.Errorf("%s: batch %d row %d column %d = %v (empty sentence %d)", what, b, i, c, x, empty)
						return
					}
				}
			}
		}
	}
	nanOnly("out", down(p.g, out.g), tc.TQ*d, d, tc.TQ)
	nanOnly("probs", down(p.g, probs.g), tc.H*tc.TQ*tc.TK, tc.TK, tc.H*tc.TQ)
	nanOnly("dq", down(p.g, dqb.g), tc.TQ*d, d, tc.TQ)
	nanOnly("dk, dv", down(p.g, dkvb.g), tc.TK*2*d, 2*d, tc.TK)
}

// TestAttentionFastInferenceShapes covers Backend.Attention in 16 bits: encoder and
// teacher-forced shapes (KV index, query offset, head-averaged probabilities, small
// batches split in tiles), the decode step, and long keys (the exact kernels).
func TestAttentionFastInferenceShapes(t *testing.T) {
	type icase struct {
		attnCase
		kvb, qOff int // key/value batches (KV index b·kvb/B when kvb > 0)
		probs     bool
	}
	for _, tc := range []icase{
		{attnCase: attnCase{name: "encoder B64 T41 left pad", B: 64, H: 8, D: 64, TQ: 41, TK: 41, pad: true, left: true, minLen: 20}, probs: true},
		{attnCase: attnCase{name: "encoder B1 T60 split tiles", B: 1, H: 2, D: 64, TQ: 60, TK: 60, pad: true, left: true, minLen: 50}},
		{attnCase: attnCase{name: "beams teacher-forced KV index", B: 12, H: 4, D: 32, TQ: 20, TK: 30, pad: true, left: true, cross: true, minLen: 10}, kvb: 3, probs: true},
		{attnCase: attnCase{name: "incremental causal query offset", B: 6, H: 4, D: 64, TQ: 5, TK: 13, causal: true, cross: true}, qOff: 8},
		{attnCase: attnCase{name: "decode step KV index", B: 8, H: 4, D: 64, TQ: 1, TK: 17, pad: true, left: true, cross: true, minLen: 5}, kvb: 2, probs: true},
		{attnCase: attnCase{name: "decode step causal TK 120", B: 10, H: 8, D: 64, TQ: 1, TK: 120, causal: true, cross: true}, qOff: 119, probs: true},
		{attnCase: attnCase{name: "long keys (exact kernels)", B: 2, H: 2, D: 64, TQ: 70, TK: 500, pad: true, left: true, cross: true, minLen: 400}, probs: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withPrecision(t, BF16)
			p := newPair(t, 57)
			kvB := tc.B
			if tc.kvb > 0 {
				kvB = tc.kvb
			}
			// Padding is indexed by key/value batch.
			full := tc.attnCase
			full.B = kvB
			a := full.args(p)
			a.Batch, a.QueryOffset = tc.B, tc.qOff
			if tc.kvb > 0 {
				for b := 0; b < tc.B; b++ {
					a.KVIndex = append(a.KVIndex, int32(b*tc.kvb/tc.B))
				}
			}
			t.Logf("fast %v", fastAttentionShape(a))
			vw := tc.views()
			qb, kvb := p.rnd(vw.qn), p.rnd(kvB*tc.TK*2*tc.H*tc.D)
			if !tc.cross {
				kvb = qb
			}
			d := tc.H * tc.D
			out := p.zeros(tc.B * tc.TQ * d)
			ov := func(b kernels.Buffer) kernels.View {
				return kernels.View{Buf: b, BatchStride: tc.TQ * d, RowStride: d}
			}
			ga, ca := a, a
			var probs both
			if tc.probs {
				probs = p.zeros(tc.B * tc.TQ * tc.TK)
				ga.Probs, ca.Probs = probs.g, probs.c
			}
			p.g.Attention(ov(out.g), vw.q(qb.g), vw.k(kvb.g), vw.v(kvb.g), ga)
			p.c.Attention(ov(out.c), vw.q(qb.c), vw.k(kvb.c), vw.v(kvb.c), ca)
			p.check(t, "out", out, tolTight)
			if tc.probs {
				p.check(t, "probs", probs, tolTight)
			}
		})
	}
}

// TestAttentionFastUsed guards against the dispatch silently keeping the exact kernels:
// at a training shape the float kernels cannot reproduce the CPU's double sums bit for
// bit everywhere, while the exact kernels always do.
func TestAttentionFastUsed(t *testing.T) {
	withMMAOff(t, withPrecision(t, BF16))
	p := newPair(t, 59)
	tc := attnCase{B: 32, H: 8, D: 64, TQ: 41, TK: 41, pad: true, left: true, minLen: 20}
	a := tc.args(p)
	vw := tc.views()
	qb := p.rnd(vw.qn)
	d := tc.H * tc.D
	out, probs := p.zeros(tc.B*tc.TQ*d), p.zeros(tc.B*tc.H*tc.TQ*tc.TK)
	ov := func(b kernels.Buffer) kernels.View {
		return kernels.View{Buf: b, BatchStride: tc.TQ * d, RowStride: d}
	}
	p.g.AttentionForward(ov(out.g), vw.q(qb.g), vw.k(qb.g), vw.v(qb.g), a, probs.g, nil)
	p.c.AttentionForward(ov(out.c), vw.q(qb.c), vw.k(qb.c), vw.v(qb.c), a, probs.c, nil)
	if e := relErr(down(p.g, out.g), cpu.Data(out.c)); e == 0 {
		t.Error("bf16 attention equals the CPU bit for bit: the fast kernels did not run")
	} else if !(e <= tolTight) {
		t.Errorf("relative error %.3g > %.1g", e, tolTight)
	}
}

// TestAttentionFastTiming logs the device time per call of AttentionForward and
// AttentionBackward at the xform bench shape (as TestAttentionTiming) for the float
// kernels (BF16) and the exact ones (FP32). It checks nothing; -short skips it.
func TestAttentionFastTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	be := gpu(t)
	for _, tc := range []attnCase{
		{name: "encoder self", B: 200, H: 8, D: 64, TQ: 41, TK: 41, pad: true, left: true, drop: true, minLen: 20},
		{name: "decoder self causal", B: 200, H: 8, D: 64, TQ: 41, TK: 41, causal: true, pad: true, drop: true, minLen: 20},
		{name: "cross", B: 200, H: 8, D: 64, TQ: 41, TK: 41, cross: true, pad: true, left: true, drop: true, minLen: 20},
		{name: "self T100", B: 80, H: 8, D: 64, TQ: 100, TK: 100, pad: true, left: true, drop: true, minLen: 50},
	} {
		fwd, bwd := attnTimingCalls(t, be, tc)
		for _, prec := range []Precision{BF16, FP32} {
			t.Run(fmt.Sprintf("%s/%v", tc.name, prec), func(t *testing.T) {
				withMMAOff(t, withPrecision(t, prec)) // attention_mma's own timing test compares the two
				fwd()
				f := timeDevice(t, be, 50, fwd)
				b := timeDevice(t, be, 50, bwd)
				t.Logf("%s B %d T %d: %v forward %.1f µs, backward %.1f µs per call",
					tc.name, tc.B, tc.TQ, prec, f.Seconds()*1e6, b.Seconds()*1e6)
			})
		}
	}
}
