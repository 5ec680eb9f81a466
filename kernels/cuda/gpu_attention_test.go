package cuda

import (
	"fmt"
	"math"
	"regexp"
	"testing"
	"time"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// Attention at training and encoder shapes, both launch paths against the CPU backend.
//
// Tolerance: the tiled kernels (attention_tiled, attention_bwd_tiled) do every sum of
// the CPU backend in its order (scores in d order, the softmax sum and Σ_j dp_j·p_j in j
// order, outputs and gradients in j or i order, zero probabilities skipped, no FMA), so
// they must agree bit for bit. The row kernels (the fallback) sum the softmax
// denominator and Σ_j dp_j·p_j with a block tree: the double results differ by ~1e-16
// relative and a float result can move by an ulp at a rounding tie, so they are held to
// 1e-6 relative as in gpu_test.go (their relative error is logged; it has been 0).

func TestAttentionTiledKernelNames(t *testing.T) {
	names, err := sourceNames()
	if err != nil {
		t.Fatal(err)
	}
	var all string
	for _, n := range names {
		b, err := sources.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		all += string(b)
	}
	for _, name := range attnTiledKernels {
		if !regexp.MustCompile(`extern "C" __global__ void __launch_bounds__\([^)]*\) ` + name + `\(`).MatchString(all) {
			t.Errorf("kernel %s is looked up but defined in no .cu file", name)
		}
	}
}

// TestAttnQueryTile checks that the query tiles cover every row with at most
// attnTileMax rows per block (the kernel's shared arrays hold that many).
func TestAttnQueryTile(t *testing.T) {
	for _, tc := range []struct{ b, h, tq, sms int }{
		{200, 8, 41, 132}, {1, 8, 41, 132}, {1, 1, 64, 132}, {2, 2, 65, 132}, {3, 4, 200, 132},
		{64, 8, 1000, 132}, {1, 1, 2, 132}, {1, 1, 9, 0},
	} {
		a := kernels.AttentionArgs{Batch: tc.b, Heads: tc.h, TQ: tc.tq}
		qt := attnQueryTile(a, tc.sms)
		tiles := (tc.tq + qt - 1) / qt
		if qt < 1 || qt > attnTileMax || tiles*qt < tc.tq || (tiles-1)*qt >= tc.tq {
			t.Errorf("B %d H %d TQ %d: tile %d rows, %d tiles", tc.b, tc.h, tc.tq, qt, tiles)
		}
	}
}

// attnCase is one attention shape. Padding: lengths drawn in [minLen, T], pad keys
// on the left (encoder side) or the right (decoder side, where causal rows never see
// only pads).
type attnCase struct {
	name              string
	B, H, D, TQ, TK   int
	causal, pad, left bool
	drop, cross       bool
	minLen            int
}

func (tc attnCase) args(p *pair) kernels.AttentionArgs {
	a := kernels.AttentionArgs{Batch: tc.B, Heads: tc.H, HeadDim: tc.D, TQ: tc.TQ, TK: tc.TK,
		Scale: float32(1 / math.Sqrt(float64(tc.D))), Causal: tc.causal}
	if tc.pad {
		a.KeyPadStride = tc.TK
		a.KeyPadding = make([]bool, tc.B*tc.TK)
		lo := max(min(tc.minLen, tc.TK), 1)
		for b := 0; b < tc.B; b++ {
			n := lo + p.r.IntN(tc.TK-lo+1) // this sentence's length
			for j := 0; j < tc.TK-n; j++ {
				if tc.left {
					a.KeyPadding[b*tc.TK+j] = true
				} else {
					a.KeyPadding[b*tc.TK+n+j] = true
				}
			}
		}
	}
	return a
}

// views lays q, k, v out as the model's projections do: self-attention reads them from
// one fused [rows, 3d] buffer, cross attention q from [B·TQ, d] and k, v from a fused
// [B·TK, 2d] one.
type attnViews struct {
	q, k, v func(b kernels.Buffer) kernels.View
	qn, kvn int // elements of the q buffer and of the k/v buffer (the same for self)
}

func (tc attnCase) views() attnViews {
	d := tc.H * tc.D
	view := func(off, width, rows int) func(kernels.Buffer) kernels.View {
		return func(b kernels.Buffer) kernels.View {
			return kernels.View{Buf: b, Off: off, BatchStride: rows * width, RowStride: width}
		}
	}
	if tc.cross {
		return attnViews{q: view(0, d, tc.TQ), k: view(0, 2*d, tc.TK), v: view(d, 2*d, tc.TK),
			qn: tc.B * tc.TQ * d, kvn: tc.B * tc.TK * 2 * d}
	}
	T := max(tc.TQ, tc.TK)
	return attnViews{q: view(0, 3*d, T), k: view(d, 3*d, T), v: view(2*d, 3*d, T),
		qn: tc.B * T * 3 * d, kvn: tc.B * T * 3 * d}
}

// withPath runs f with the tiled kernels allowed (tiled) or forced off.
func withPath(tiled bool, f func()) {
	if testGPU == nil {
		f()
		return
	}
	old := testGPU.tiledOff
	testGPU.tiledOff = !tiled
	defer func() { testGPU.tiledOff = old }()
	f()
}

func TestAttentionTrainShapes(t *testing.T) {
	for _, tc := range []attnCase{
		{name: "encoder self B64 T41 left pad dropout", B: 64, H: 8, D: 64, TQ: 41, TK: 41, pad: true, left: true, drop: true, minLen: 20},
		{name: "decoder self B128 T33 causal right pad dropout", B: 128, H: 8, D: 64, TQ: 33, TK: 33, causal: true, pad: true, drop: true, minLen: 20},
		{name: "cross B200 TQ37 TK29 left pad dropout", B: 200, H: 8, D: 64, TQ: 37, TK: 29, pad: true, left: true, drop: true, cross: true, minLen: 20},
		{name: "self B256 T20 no masks", B: 256, H: 8, D: 64, TQ: 20, TK: 20},
		{name: "tile bounds T64 D40 causal pad", B: 5, H: 3, D: 40, TQ: 64, TK: 64, causal: true, pad: true, drop: true, minLen: 30},
		{name: "cross TQ64 TK1", B: 7, H: 2, D: 64, TQ: 64, TK: 1, cross: true},
		{name: "cross TQ2 TK63 D1", B: 9, H: 5, D: 1, TQ: 2, TK: 63, cross: true, pad: true, left: true, drop: true, minLen: 1},
		{name: "tiled forward, row backward TQ100 TK50", B: 3, H: 4, D: 64, TQ: 100, TK: 50, cross: true, pad: true, left: true, drop: true, minLen: 10},
		{name: "long TK300 row kernels", B: 2, H: 4, D: 64, TQ: 40, TK: 300, cross: true, pad: true, left: true, drop: true, minLen: 100},
		{name: "head dim 80 row kernels", B: 4, H: 2, D: 80, TQ: 30, TK: 30, pad: true, left: true, drop: true, minLen: 10},
	} {
		for _, tiled := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/tiled=%v", tc.name, tiled), func(t *testing.T) {
				p := newPair(t, 41)
				a := tc.args(p)
				exactF := tiled && testGPU.useTiledForward(a)
				exactB := tiled && testGPU.useTiledBackward(a)
				t.Logf("tiled forward %v, tiled backward %v", exactF, exactB)
				limit := func(exact bool) float64 {
					if exact {
						return 0
					}
					return 1e-6
				}
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
				withPath(tiled, func() {
					p.g.AttentionForward(ov(out.g), vw.q(qb.g), vw.k(kvb.g), vw.v(kvb.g), a, probs.g, mask.g)
				})
				p.c.AttentionForward(ov(out.c), vw.q(qb.c), vw.k(kvb.c), vw.v(kvb.c), a, probs.c, mask.c)
				p.check(t, "out", out, limit(exactF))
				p.check(t, "probs", probs, limit(exactF))

				// Gradients accumulate onto what the buffers hold.
				dout := p.rnd(tc.B * tc.TQ * d)
				dqb := p.rnd(vw.qn)
				dkvb := dqb
				if tc.cross {
					dkvb = p.rnd(vw.kvn)
				}
				// The backward reads the CPU's probabilities on both sides, so a
				// forward difference on the fallback cannot leak into this check.
				gp := p.g.Upload(cpu.Data(probs.c))
				withPath(tiled, func() {
					p.g.AttentionBackward(vw.q(dqb.g), vw.k(dkvb.g), vw.v(dkvb.g), ov(dout.g),
						vw.q(qb.g), vw.k(kvb.g), vw.v(kvb.g), a, gp, mask.g)
				})
				p.c.AttentionBackward(vw.q(dqb.c), vw.k(dkvb.c), vw.v(dkvb.c), ov(dout.c),
					vw.q(qb.c), vw.k(kvb.c), vw.v(kvb.c), a, probs.c, mask.c)
				if tc.cross {
					p.check(t, "dq", dqb, limit(exactB))
					p.check(t, "dk, dv", dkvb, limit(exactB))
				} else {
					p.check(t, "dq, dk, dv", dqb, limit(exactB))
				}
			})
		}
	}
}

// TestAttentionInferenceShapes covers Backend.Attention's paths: the tiled kernel for
// encoder and teacher-forced shapes (KV index, query offset, head-averaged
// probabilities, query tiles split for small batches) and the row kernel for decode
// steps and long keys.
func TestAttentionInferenceShapes(t *testing.T) {
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
		{attnCase: attnCase{name: "long keys", B: 2, H: 2, D: 64, TQ: 70, TK: 500, pad: true, left: true, cross: true, minLen: 400}, probs: true},
	} {
		for _, tiled := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/tiled=%v", tc.name, tiled), func(t *testing.T) {
				p := newPair(t, 43)
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
				exact := tiled && testGPU.useTiledForward(a)
				t.Logf("tiled %v", exact)
				limit := 1e-6
				if exact {
					limit = 0
				}
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
				withPath(tiled, func() { p.g.Attention(ov(out.g), vw.q(qb.g), vw.k(kvb.g), vw.v(kvb.g), ga) })
				p.c.Attention(ov(out.c), vw.q(qb.c), vw.k(kvb.c), vw.v(kvb.c), ca)
				p.check(t, "out", out, limit)
				if tc.probs {
					p.check(t, "probs", probs, limit)
				}
			})
		}
	}
}

// TestAttentionTiming logs the device time per call of AttentionForward and
// AttentionBackward at the xform bench shape (transformer_wmt_en_de: d 512, 8 heads,
// head dim 64, 200 sentences of 20–41 tokens, padded to 41, dropout 0.1), for both
// paths: device events around 50 calls after 3 warm-up calls, no synchronisation in
// between. It checks nothing; -short skips it.
func TestAttentionTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	be := gpu(t)
	for _, tc := range []attnCase{
		{name: "encoder self", B: 200, H: 8, D: 64, TQ: 41, TK: 41, pad: true, left: true, drop: true, minLen: 20},
		{name: "decoder self causal", B: 200, H: 8, D: 64, TQ: 41, TK: 41, causal: true, pad: true, drop: true, minLen: 20},
		{name: "cross", B: 200, H: 8, D: 64, TQ: 41, TK: 41, cross: true, pad: true, left: true, drop: true, minLen: 20},
	} {
		fwd, bwd := attnTimingCalls(t, be, tc)
		for _, tiled := range []bool{true, false} {
			withPath(tiled, func() {
				fwd()
				f := timeDevice(t, be, 50, fwd)
				b := timeDevice(t, be, 50, bwd)
				t.Logf("%s B %d T %d: tiled=%v forward %.1f µs, backward %.1f µs per call",
					tc.name, tc.B, tc.TQ, tiled, f.Seconds()*1e6, b.Seconds()*1e6)
			})
		}
	}
}

// timeDevice is the device time per call of f over n calls (after 3 warm-up calls),
// measured with events on the default stream; the per-launch synchronisation of the
// tests' Backend (SyncCheck) is off meanwhile.
func timeDevice(t *testing.T, be *Backend, n int, f func()) time.Duration {
	t.Helper()
	sync := be.syncCheck
	be.syncCheck = false
	defer func() { be.syncCheck = sync }()
	for range 3 {
		f()
	}
	var start, stop uintptr
	func() {
		defer be.enter()()
		var err error
		if start, err = be.drv.newEvent(); err == nil {
			if stop, err = be.drv.newEvent(); err == nil {
				err = be.drv.record(start)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}()
	for range n {
		f()
	}
	var ms float32
	func() {
		defer be.enter()()
		defer be.drv.destroyEvent(start)
		defer be.drv.destroyEvent(stop)
		err := be.drv.record(stop)
		if err == nil {
			ms, err = be.drv.elapsed(start, stop)
		}
		if err != nil {
			t.Fatal(err)
		}
	}()
	return time.Duration(float64(ms) / float64(n) * 1e6)
}

// attnTimingCalls sets up random training inputs for tc (dropout 0.1) and returns the
// AttentionForward and AttentionBackward calls that the timing tests repeat.
func attnTimingCalls(t *testing.T, be *Backend, tc attnCase) (fwd, bwd func()) {
	p := newPair(t, 47)
	a := tc.args(p)
	vw := tc.views()
	d := tc.H * tc.D
	np := tc.B * tc.H * tc.TQ * tc.TK
	qb := be.Upload(randVec(p.r, vw.qn))
	kvb := qb
	if tc.cross {
		kvb = be.Upload(randVec(p.r, vw.kvn))
	}
	probs, mask := be.Alloc(np), be.Alloc(np)
	be.DropoutMask(mask, 0.1, 1)
	out, dout := be.Alloc(tc.B*tc.TQ*d), be.Upload(randVec(p.r, tc.B*tc.TQ*d))
	dqb := be.Alloc(vw.qn)
	dkvb := dqb
	if tc.cross {
		dkvb = be.Alloc(vw.kvn)
	}
	ov := kernels.View{Buf: out, BatchStride: tc.TQ * d, RowStride: d}
	gv := kernels.View{Buf: dout, BatchStride: tc.TQ * d, RowStride: d}
	fwd = func() { be.AttentionForward(ov, vw.q(qb), vw.k(kvb), vw.v(kvb), a, probs, mask) }
	bwd = func() {
		be.AttentionBackward(vw.q(dqb), vw.k(dkvb), vw.v(dkvb), gv, vw.q(qb), vw.k(kvb), vw.v(kvb), a, probs, mask)
	}
	return fwd, bwd
}
