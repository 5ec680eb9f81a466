package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// Training attention with 16-bit inputs (kernels.HalfAttentionInputs, attention_mma16.go).
// The kernels round q·scale, k, v and dout to 16 bits anyway, so 16-bit inputs holding
// values v must give the bits of today's kernels fed float32 buffers holding the same v
// (widened exactly): no tolerance, for any scale (both compute RN16 of the same fp32
// product q·scale). The reference is today's second kernels with float32 inputs, which
// TestAttentionSeededSameBits and TestAttentionMMATrainShapes tie to independent
// references. NaNs match any NaN (checkSameBits).

// in16Run says which inputs of a run are 16-bit and which kernels take it.
type in16Run struct {
	qkv, dout bool      // 16-bit q, k, v; 16-bit dout
	stored    bool      // DropoutMask + AttentionForward/Backward instead of the seeded calls
	sw        am3Switch // third kernels' switches
	name      string    // for messages
	scale     float32   // 0: the case's 1/√D
	shrink    float64   // 0: none; else every input times this (fp16 subnormal products)
	shift     bool      // 16-bit views one element off their buffers' start: unaligned rows
}

// in16Inputs are a case's inputs rounded to the format (so that the float32 and 16-bit
// buffers hold the same values), on the device both ways.
type in16Inputs struct {
	q32, kv32, dout32 kernels.Buffer
	q16, kv16, dout16 kernels.Buffer
}

// to16 returns a 16-bit buffer holding x's values (x already rounded: RN16 leaves them).
func to16(be *Backend, x kernels.Buffer) kernels.Buffer {
	h := be.AllocHalf(x.Len())
	be.ApplyDropout(h, x, 0, 1)
	return h
}

func newIn16Inputs(be *Backend, ft format16, m *mmaData, shrink float64) in16Inputs {
	up := func(v []float32) kernels.Buffer {
		if shrink != 0 {
			v = scaled(v, shrink)
		}
		return be.Upload(roundAll(ft, v))
	}
	var in in16Inputs
	in.q32 = up(m.q)
	in.kv32 = in.q32
	if m.tc.cross {
		in.kv32 = up(m.kv)
	}
	in.dout32 = up(m.dout)
	in.q16, in.dout16 = to16(be, in.q32), to16(be, in.dout32)
	in.kv16 = in.q16
	if m.tc.cross {
		in.kv16 = to16(be, in.kv32)
	}
	return in
}

// runIn16 runs m's case forward and backward with the inputs in r's formats (seeded, or
// stored mask when r.stored), out16 as runSeededOnce.
func runIn16(t *testing.T, be *Backend, m *mmaData, in in16Inputs, r in16Run, dropP float64, seed uint64, out16 bool) mma3Outputs {
	t.Helper()
	tc, vw, a := m.tc, m.vw, m.a
	if r.scale != 0 {
		a.Scale = r.scale
	}
	np := tc.B * tc.H * tc.TQ * tc.TK
	qb, kvb, doutb := in.q32, in.kv32, in.dout32
	if r.qkv {
		qb, kvb = in.q16, in.kv16
	}
	if r.dout {
		doutb = in.dout16
	}
	alloc := func(n int, init []float32) kernels.Buffer {
		if out16 {
			return be.AllocHalf(n)
		}
		if init != nil {
			return be.Upload(init)
		}
		return be.Alloc(n)
	}
	read := func(b kernels.Buffer) []float32 {
		if out16 {
			return downHalf(t, be, b)
		}
		return down(be, b)
	}
	probs, out := be.Alloc(np), alloc(tc.B*tc.TQ*tc.H*tc.D, nil)
	dq := alloc(vw.qn, m.dq)
	dkv := dq
	if tc.cross {
		dkv = alloc(vw.kvn, m.dkv)
	}
	q, k, v := vw.q(qb), vw.k(kvb), vw.v(kvb)
	dov := m.outView(doutb)
	if r.shift {
		// One leading element: every 16-bit row starts 2 bytes past an 8-byte boundary,
		// which the third kernels decline and the second kernels load element by element.
		sq, skv := shift16(t, be, qb), shift16(t, be, kvb)
		q, k, v = vw.q(sq), vw.k(skv), vw.v(skv)
		q.Off++
		k.Off++
		v.Off++
		dov = m.outView(shift16(t, be, doutb))
		dov.Off++
	}
	if r.stored {
		var mask kernels.Buffer
		if dropP > 0 {
			mask = be.Alloc(np)
			be.DropoutMask(mask, dropP, seed)
		}
		be.AttentionForward(m.outView(out), q, k, v, a, probs, mask)
		be.AttentionBackward(vw.q(dq), vw.k(dkv), vw.v(dkv), dov, q, k, v, a, probs, mask)
	} else {
		if !be.AttentionForwardSeeded(m.outView(out), q, k, v, a, probs, dropP, seed) {
			t.Fatal("AttentionForwardSeeded declined a shape the second kernels take")
		}
		if !be.AttentionBackwardSeeded(vw.q(dq), vw.k(dkv), vw.v(dkv), dov, q, k, v, a, probs, dropP, seed) {
			t.Fatal("AttentionBackwardSeeded declined a call its forward took")
		}
	}
	o := mma3Outputs{probs: down(be, probs), out: read(out), dq: read(dq)}
	o.dkv = o.dq
	if tc.cross {
		o.dkv = read(dkv)
	}
	return o
}

// shift16 returns a buffer of x's format (16-bit or float32) holding a zero and then
// x's values: the reference of a shifted variant is the same call with float32 inputs
// at the same one-element offset.
func shift16(t *testing.T, be *Backend, x kernels.Buffer) kernels.Buffer {
	t.Helper()
	if halfOf(x) == nil {
		return be.Upload(append([]float32{0}, down(be, x)...))
	}
	return to16(be, be.Upload(append([]float32{0}, downHalf(t, be, x)...)))
}

// withAttnIn16 switches the 16-bit attention inputs on (the default, which XFORM_CUDA_ATTN16=0 turns off)
// for the test and returns be.
func withAttnIn16(t *testing.T, be *Backend) *Backend {
	t.Helper()
	func() {
		defer be.enter()()
		old := be.attnIn16On
		be.attnIn16On = true
		t.Cleanup(func() {
			defer be.enter()()
			be.attnIn16On = old
		})
	}()
	return be
}

// in16Calls is the count of attention launches with a 16-bit input.
func (be *Backend) in16Calls() int {
	defer be.enter()()
	return be.mmaFns().in16.calls
}

// in16Runs are the variants each case runs: the model's (all 16-bit, seeded) on the
// default dispatch, on the second kernels (attention_mma2_*_h) and forced onto the third
// (attention_mma3_*_h) with an unbounded grid and a grid of 7; mixed formats (the
// second kernels' per-operand path, which the third kernels decline); the stored-mask
// path; rows not 8-byte aligned (the second kernels' element loads); a scale that is
// not a power of two; and, for fp16, inputs small enough that q·scale is subnormal (the
// in-place scaling of attention_mma3_*_h rounds there).
func in16Runs() []in16Run {
	return []in16Run{
		{name: "all 16-bit, default dispatch", qkv: true, dout: true},
		{name: "all 16-bit, second kernels", qkv: true, dout: true, sw: am3Switch{off: true}},
		{name: "all 16-bit, third kernels", qkv: true, dout: true, sw: am3Switch{force: true}},
		{name: "all 16-bit, third kernels, grid 7", qkv: true, dout: true, sw: am3Switch{force: true, maxGrid: 7}},
		{name: "all 16-bit, third kernels, first variant (_h)", qkv: true, dout: true, sw: am3Switch{force: true, old: true}},
		{name: "all 16-bit, third kernels, bits for 4 key blocks (_hb)", qkv: true, dout: true, sw: am3Switch{force: true, wide: true}},
		{name: "16-bit q, k, v, float32 dout", qkv: true, sw: am3Switch{force: true}},
		{name: "float32 q, k, v, 16-bit dout", dout: true, sw: am3Switch{force: true}},
		{name: "all 16-bit, stored mask", qkv: true, dout: true, stored: true},
		{name: "all 16-bit, unaligned rows", qkv: true, dout: true, shift: true, sw: am3Switch{force: true}},
		{name: "all 16-bit, scale 0.1, third kernels", qkv: true, dout: true, scale: 0.1, sw: am3Switch{force: true}},
		{name: "all 16-bit, scale 0.1, second kernels", qkv: true, dout: true, scale: 0.1, sw: am3Switch{off: true}},
		{name: "all 16-bit, inputs ×2⁻¹², third kernels", qkv: true, dout: true, shrink: math.Ldexp(1, -12), sw: am3Switch{force: true}},
	}
}

// TestAttentionInputs16SameBits: for bf16 and fp16, dropout 0.1 and 0, float32 and
// 16-bit outputs, every shape of mma3Cases and every variant of in16Runs against the
// same call with float32 inputs holding the same values (second kernels, seeded or
// stored as the variant), bit for bit: probs, out, dq, dk, dv. It also checks that the
// 16-bit kernels ran (launch count) and that the third kernels take the bench shape
// with 16-bit inputs in both directions by default.
func TestAttentionInputs16SameBits(t *testing.T) {
	be := withAttnIn16(t, withPrecision(t, BF16))
	if be.info.Major < 8 {
		t.Skip("the tensor-core kernels need sm_80")
	}
	bench := attnCase{B: 200, H: 8, D: 64, TQ: 41, TK: 41}
	vw := bench.views()
	h := be.AllocHalf(vw.qn)
	func() {
		defer be.enter()()
		ba := kernels.AttentionArgs{Batch: 200, Heads: 8, HeadDim: 64, TQ: 41, TK: 41}
		if !be.mma3Taken(ba, false, vw.q(h), vw.k(h), vw.v(h)) || !be.mma3Taken(ba, true, vw.q(h), vw.k(h), vw.v(h), vw.q(h)) {
			t.Error("the 16-bit third kernels do not take the bench shape (B 200, T 41)")
		}
	}()
	for ci, tc := range mma3Cases() {
		for _, ft := range formats {
			for _, dropP := range []float64{0.1, 0} {
				for _, out16 := range []bool{false, true} {
					t.Run(fmt.Sprintf("%s/%v/p%g/out16=%v", tc.name, ft.prec, dropP, out16), func(t *testing.T) {
						be := withAttnIn16(t, withPrecision(t, ft.prec))
						p := newPair(t, uint64(701+ci))
						a := tc.args(p)
						if tc.name == mmaAllMaskedCase.name {
							maskSentence(a, tc, mmaEmpty)
						}
						if !be.AttentionInputs16(a) || !be.Attention16(a) {
							t.Fatalf("AttentionInputs16 %v, Attention16 %v at a shape the second kernels take", be.AttentionInputs16(a), be.Attention16(a))
						}
						m := newMMAData(p.r, a, tc)
						seed := 0x7000 + uint64(ci)
						inputs := map[float64]in16Inputs{}
						for _, r := range in16Runs() {
							if r.shrink != 0 && ft.prec != FP16 {
								continue
							}
							if dropP == 0 && r.name != in16Runs()[0].name && r.name != in16Runs()[1].name {
								continue // p 0: the model's path and the second kernels only
							}
							in, ok := inputs[r.shrink]
							if !ok {
								in = newIn16Inputs(be, ft, m, r.shrink)
								inputs[r.shrink] = in
							}
							// The reference keeps the variant's stored mask (same DropoutMask
							// draw), scale, shrunk inputs (in holds them in float32 too) and
							// shift (float32 views one element off).
							ref := r
							ref.qkv, ref.dout, ref.sw = false, false, am3Switch{off: true}
							withMMA3(t, be, ref.sw)
							want := runIn16(t, be, m, in, ref, dropP, seed, out16)
							be.setMMA3(r.sw)
							calls := be.in16Calls()
							got := runIn16(t, be, m, in, r, dropP, seed, out16)
							// The backward reads a 16-bit input in every variant, the forward where q, k, v are.
							if n, want := be.in16Calls()-calls, 1+boolInt(r.qkv); n != want {
								t.Errorf("%s: %d launches with 16-bit inputs, want %d", r.name, n, want)
							}
							checkSameBits(t, r.name+": probs", got.probs, want.probs)
							checkSameBits(t, r.name+": out", got.out, want.out)
							checkSameBits(t, r.name+": dq (dk, dv for self)", got.dq, want.dq)
							if tc.cross {
								checkSameBits(t, r.name+": dk, dv", got.dkv, want.dkv)
							}
						}
					})
				}
			}
		}
	}
}

// TestAttentionInputs16Rejects: AttentionInputs16 is Attention16 (and false when switched
// off or for shapes the second kernels do not take), and a 16-bit input outside its
// calls panics with a message naming the problem instead of being read as float32:
// the float kernels (TK 100 training shape), the inference attention, and the flash
// kernels.
func TestAttentionInputs16Rejects(t *testing.T) {
	be := withAttnIn16(t, withPrecision(t, BF16))
	if be.info.Major < 8 {
		t.Skip("the tensor-core kernels need sm_80")
	}
	ok := kernels.AttentionArgs{Batch: 4, Heads: 8, HeadDim: 64, TQ: 41, TK: 41, Scale: 0.125}
	long := kernels.AttentionArgs{Batch: 2, Heads: 2, HeadDim: 64, TQ: 100, TK: 100, Scale: 0.125}
	if !be.AttentionInputs16(ok) || be.AttentionInputs16(long) {
		t.Fatalf("AttentionInputs16: T 41 %v (want true), T 100 %v (want false)", be.AttentionInputs16(ok), be.AttentionInputs16(long))
	}
	old := be.setAttnIn16Off(true)
	if be.AttentionInputs16(ok) {
		t.Error("AttentionInputs16 true while switched off")
	}
	be.setAttnIn16Off(old)
	wantPanic := func(what string, f func()) {
		t.Helper()
		defer func() {
			r := recover()
			if r == nil || !strings.Contains(fmt.Sprint(r), "16-bit") {
				t.Errorf("%s: panic %v, want one naming the 16-bit input", what, r)
			}
		}()
		f()
	}
	tc := attnCase{B: 2, H: 2, D: 64, TQ: 100, TK: 100}
	vw := tc.views()
	h := be.AllocHalf(vw.qn)
	f := be.Alloc(vw.qn)
	out := kernels.View{Buf: be.Alloc(2 * 100 * 128), BatchStride: 100 * 128, RowStride: 128}
	probs := be.Alloc(2 * 2 * 100 * 100)
	wantPanic("AttentionForward T 100", func() { be.AttentionForward(out, vw.q(h), vw.k(h), vw.v(h), long, probs, nil) })
	wantPanic("AttentionBackward T 100, 16-bit dout", func() {
		be.AttentionBackward(vw.q(f), vw.k(f), vw.v(f), kernels.View{Buf: be.AllocHalf(2 * 100 * 128), BatchStride: 100 * 128, RowStride: 128},
			vw.q(f), vw.k(f), vw.v(f), long, probs, nil)
	})
	wantPanic("Attention (inference)", func() { be.Attention(out, vw.q(h), vw.k(h), vw.v(h), long) })
	// The flash kernels take training attention beyond 128 keys.
	flash := kernels.AttentionArgs{Batch: 1, Heads: 2, HeadDim: 64, TQ: 200, TK: 200, Scale: 0.125}
	fc := attnCase{B: 1, H: 2, D: 64, TQ: 200, TK: 200}
	fv := fc.views()
	fh := be.AllocHalf(fv.qn)
	fout := kernels.View{Buf: be.Alloc(200 * 128), BatchStride: 200 * 128, RowStride: 128}
	wantPanic("AttentionForwardLSE T 200", func() {
		be.AttentionForwardLSE(fout, fv.q(fh), fv.k(fh), fv.v(fh), flash, be.Alloc(2*200), 0, 1)
	})
}

// TestAttentionMMA3HalfPlans checks the 16-bit third kernels' launch arithmetic without a
// GPU at the bench shape (T 41): forward 41,520 bytes (two 16-bit tile sets and the
// flags) for 5 blocks per SM where the float32-input kernel's 54,064 allow 4; backward
// 74,144 bytes (two sets of tiles and Z1, one Z2) against 88,468, still 2 blocks per SM
// (the registers bound it).
func TestAttentionMMA3HalfPlans(t *testing.T) {
	a := kernels.AttentionArgs{Batch: 200, Heads: 8, HeadDim: 64, TQ: 41, TK: 41}
	const perSM = 228 * 1024
	f := planMMA3ForwardH(a, 132, perSM, 0, false)
	if want := 2*2*72*(48+96) + 48; f.shared != want || f.warps != 3 || f.tiles != 1 || f.items != 1600 || f.perSM != 5 {
		t.Errorf("forward plan %+v, want shared %d, 3 warps, 1 tile, 1600 items, 5 blocks per SM", f, want)
	}
	// The bits variants (attention_mma3_*_hb*) add the keep bitmap: 48·41 bits forward
	// (64 words with slack), 41·41 backward (56 words); still 5 and 2 blocks per SM.
	if fb := planMMA3ForwardH(a, 132, perSM, 0, true); fb.shared != f.shared+4*64 || fb.perSM != 5 {
		t.Errorf("forward bits plan %+v, want shared %d, 5 blocks per SM", fb, f.shared+4*64)
	}
	z1 := (max(4*41*41, 2*48*56) + 15) &^ 15
	b := planMMA3BackwardH(a, 132, perSM, 0, false)
	if want := 2*(2*72*4*48+z1) + 2*48*56; b.shared != want || b.warps != 6 || b.items != 1600 || b.perSM != 2 {
		t.Errorf("backward plan %+v, want shared %d, 6 warps, 1600 items, 2 blocks per SM", b, want)
	}
	if bb := planMMA3BackwardH(a, 132, perSM, 0, true); bb.shared != b.shared+4*56 || bb.perSM != 2 {
		t.Errorf("backward bits plan %+v, want shared %d, 2 blocks per SM", bb, b.shared+4*56)
	}
	if am2ZBytes(a) != z1 {
		t.Errorf("am2ZBytes %d, want %d", am2ZBytes(a), z1)
	}
	for _, T := range []int{20, 28, 35, 64} {
		a := kernels.AttentionArgs{Batch: 8000 / T, Heads: 8, HeadDim: 64, TQ: T, TK: T}
		f3, f16 := planMMA3Forward(a, 132, perSM, 0), planMMA3ForwardH(a, 132, perSM, 0, false)
		b3, b16 := planMMA3Backward(a, 132, perSM, 0), planMMA3BackwardH(a, 132, perSM, 0, false)
		if f16.shared >= f3.shared || f16.perSM < f3.perSM || b16.shared >= b3.shared || b16.perSM < b3.perSM {
			t.Errorf("T %d: 16-bit plans forward %+v backward %+v not below the float32 ones %+v %+v", T, f16, b16, f3, b3)
		}
	}
	if !am3Aligned16() || in16Bits() != 0 {
		t.Error("no views: aligned, no 16-bit bits")
	}
}

// TestHalfAttentionInputsTraining trains a head-dimension-64 Admin model
// (headDim64Training: the fixture model's head dimension 8 never reaches the
// tensor-core attention, so it would take no 16-bit input) 10 updates with 16-bit
// attention inputs (model: qkv, cross q and kv and the out projection's dx written
// 16-bit, kernels.HalfAttentionInputs) and checks it within TestTrainBF16's bounds (loss
// and nll 1e-2 relative, gradient norm 5e-2; rounding q, k, v and dout in the GEMM
// epilogue instead of the attention staging moves each by at most one more 16-bit
// rounding, u·|x|, the size of the rounding the attention already applies, on four of
// a layer's attention operands): bf16 against the CPU in fp32, and bf16 and fp16 against
// the same GPU precision with float32 attention inputs (AttentionInputs16 off, every
// other 16-bit output on). Dropout 0 and 0.1. It checks that the 16-bit kernels ran
// and changed the weights.
func TestHalfAttentionInputsTraining(t *testing.T) {
	gpu(t)
	m, batches := headDim64Training(t, 10)
	for _, rc := range sameBitsCases {
		var cpuRun *trainResult
		for _, prec := range []Precision{BF16, FP16} {
			t.Run(prec.String()+"/"+rc.name, func(t *testing.T) {
				half := withAttnIn16(t, newGraphTestBackend(t, prec, false))
				if half.info.Major < 8 {
					t.Skip("the tensor-core kernels need sm_80")
				}
				got, _ := runTrain(t, m, half, rc, batches)
				if half.in16Calls() == 0 {
					t.Fatal("no attention launch with 16-bit inputs: the model did not take them")
				}
				plain := newGraphTestBackend(t, prec, false)
				plain.setAttnIn16Off(true)
				ref, _ := runTrain(t, m, plain, rc, batches)
				if n := plain.in16Calls(); n != 0 {
					t.Fatalf("%d launches with 16-bit inputs while AttentionInputs16 is off", n)
				}
				checkTrainClose(t, "16-bit attention inputs", got, fmt.Sprintf("%v with float32 attention inputs", prec), ref)
				if prec == BF16 {
					if cpuRun == nil {
						c, _ := runTrain(t, m, cpu.New(0), rc, batches)
						cpuRun = &c
					}
					checkTrainClose(t, "16-bit attention inputs", got, "fp32 CPU", *cpuRun)
				}
				if sameWeights(got, ref) {
					t.Error("16-bit attention inputs gave the float32 inputs' weights bit for bit: they were not used")
				}
			})
		}
	}
}

// TestAttentionInputs16Timing logs device time per call of the seeded training calls
// (bf16, dropout 0.1, 16-bit outputs, B·T ≈ 8000 for T 20, 28, 35, 41, 64) with float32
// inputs (today: attention_mma3_* where the dispatch takes them, else attention_mma2_*)
// and with 16-bit inputs (attention_mma3_*_h / attention_mma2_*_h by the same rules), all
// in one run, plus the 16-bit kernels forced each way; then the GEMMs that write the
// inputs: the qkv projection (8000×1536×512) and the out projection's dx (8000×512×512)
// into float32 and into 16-bit outputs. It checks nothing; -short skips it.
func TestAttentionInputs16Timing(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	be := withAttnIn16(t, withPrecision(t, BF16))
	if be.info.Major < 8 {
		t.Skip("the tensor-core kernels need sm_80")
	}
	withMMA3(t, be, am3Switch{})
	us := func(f func()) float64 { return timeDevice(t, be, 50, f).Seconds() * 1e6 }
	for _, tc := range am3TimingCases() {
		p := newPair(t, 313)
		a := tc.args(p)
		if !be.AttentionInputs16(a) {
			t.Fatalf("AttentionInputs16 false at T %d", tc.TQ)
		}
		vw := tc.views()
		d := tc.H * tc.D
		np := tc.B * tc.H * tc.TQ * tc.TK
		q32 := be.Upload(randVec(p.r, vw.qn))
		q16 := to16(be, q32)
		probs := be.Alloc(np)
		ov := kernels.View{Buf: be.AllocHalf(tc.B * tc.TQ * d), BatchStride: tc.TQ * d, RowStride: d}
		g32 := be.Upload(randVec(p.r, tc.B*tc.TQ*d))
		g16 := to16(be, g32)
		dqb := be.AllocHalf(vw.qn)
		const dropP, seed = 0.1, 17
		calls := func(qb, gb kernels.Buffer) (fwd, bwd func()) {
			gv := kernels.View{Buf: gb, BatchStride: tc.TQ * d, RowStride: d}
			fwd = func() {
				if !be.AttentionForwardSeeded(ov, vw.q(qb), vw.k(qb), vw.v(qb), a, probs, dropP, seed) {
					t.Fatal("AttentionForwardSeeded declined")
				}
			}
			bwd = func() {
				if !be.AttentionBackwardSeeded(vw.q(dqb), vw.k(dqb), vw.v(dqb), gv, vw.q(qb), vw.k(qb), vw.v(qb), a, probs, dropP, seed) {
					t.Fatal("AttentionBackwardSeeded declined")
				}
			}
			return fwd, bwd
		}
		var pf, pb, hf, hb am3Plan
		func() {
			defer be.enter()()
			f := be.mmaFns()
			pf, pb = planMMA3Forward(a, be.info.SMs, f.third.sharedPerSM, 0), planMMA3Backward(a, be.info.SMs, f.third.sharedPerSM, 0)
			hf, hb = planMMA3ForwardH(a, be.info.SMs, f.third.sharedPerSM, 0, true), planMMA3BackwardH(a, be.info.SMs, f.third.sharedPerSM, 0, true)
		}()
		var res [4][2]float64
		for v, c := range []struct {
			name string
			h    bool
			sw   am3Switch
		}{
			{"float32 inputs (today's dispatch)", false, am3Switch{}},
			{"16-bit inputs (default dispatch)", true, am3Switch{}},
			{"16-bit inputs, second kernels (_h)", true, am3Switch{off: true}},
			{"16-bit inputs, third kernels forced (_h)", true, am3Switch{force: true}},
		} {
			be.setMMA3(c.sw)
			qb, gb := q32, g32
			if c.h {
				qb, gb = q16, g16
			}
			fwd, bwd := calls(qb, gb)
			fwd()
			res[v] = [2]float64{us(fwd), us(bwd)}
			t.Logf("B %d T %d causal=%v: %s forward %.1f µs, backward %.1f µs per call", tc.B, tc.TQ, tc.causal, c.name, res[v][0], res[v][1])
		}
		t.Logf("B %d T %d causal=%v: plans float32 → 16-bit: forward %d → %d B shared, %d → %d blocks/SM, grid %d → %d; backward %d → %d B, %d → %d blocks/SM; default-dispatch speed-up forward %.2fx, backward %.2fx",
			tc.B, tc.TQ, tc.causal, pf.shared, hf.shared, pf.perSM, hf.perSM, pf.grid, hf.grid, pb.shared, hb.shared, pb.perSM, hb.perSM,
			res[0][0]/res[1][0], res[0][1]/res[1][1])
	}

	// The GEMMs that write the attention's inputs, weights and x as 16-bit copies.
	const m, d = 8000, 512
	r := rand.New(rand.NewPCG(5, 6))
	x16 := to16(be, be.Upload(randVec(r, m*d)))
	wqkv, wo := be.AllocHalf(3*d*d), be.AllocHalf(d*d)
	be.RoundAll([]kernels.Buffer{wqkv, wo}, []kernels.Buffer{be.Upload(scaled(randVec(r, 3*d*d), 0.04)), be.Upload(scaled(randVec(r, d*d), 0.04))})
	bqkv, bo := be.Upload(randVec(r, 3*d)), be.Upload(randVec(r, d))
	y32, y16 := be.Alloc(m*3*d), be.AllocHalf(m*3*d)
	qkvOld := us(func() { be.LinearKeep(y32, x16, wqkv, bqkv, m, 3*d, d) })
	qkvNew := us(func() { be.LinearKeep(y16, x16, wqkv, bqkv, m, 3*d, d) })
	kept := be.LinearKeep(be.Alloc(m*d), x16, wo, bo, m, d, d)
	dy := be.Upload(randVec(r, m*d))
	dx32, dx16 := be.Alloc(m*d), be.AllocHalf(m*d)
	dxOld := us(func() { be.LinearBackwardKept(dx32, nil, nil, dy, kept, m, d, d) })
	dxNew := us(func() { be.LinearBackwardKept(dx16, nil, nil, dy, kept, m, d, d) })
	t.Logf("qkv projection %d×%d×%d: float32 D %.1f µs, 16-bit D %.1f µs; out projection dx %d×%d×%d: float32 %.1f µs, 16-bit %.1f µs",
		m, 3*d, d, qkvOld, qkvNew, m, d, d, dxOld, dxNew)
	logHalfPlans(t, be, m)
}
