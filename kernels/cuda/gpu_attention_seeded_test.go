package cuda

import (
	"fmt"
	"math"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// kernels.SeededAttention on the second tensor-core kernels: the mask drawn in the
// kernel from its seed must be exactly the one DropoutMask stores, so the seeded calls
// must give the same bits as DropoutMask + AttentionForward / AttentionBackward, with
// no tolerance: the kernels compute the same product p·m (m = keep ? DropoutScale : 0
// either way) and everything else is the same code. The stored-mask path is checked
// against independent references (rounded-operand float64 and the fp32 CPU) by
// TestAttentionMMATrainShapes; here the seeded path is also checked against the fp32
// CPU with the CPU's own DropoutMask (mmaLoose, see gpu_attention_mma_test.go), which
// ties the element order to the CPU's definition independently of the GPU's
// dropout_mask kernel. NaNs (the all-masked sentence) count as equal whatever their
// payload: a product with a mask of ones (p 0) may turn the kernel's NaN into the
// canonical one.

// seededCases are mmaCases' training shapes that the second kernels take in both
// directions (TQ, TK ≤ 64), and the all-masked sentence.
func seededCases() []attnCase {
	var cs []attnCase
	for _, tc := range mmaCases {
		if tc.TQ <= am2MaxT && tc.TK <= am2MaxT {
			cs = append(cs, tc)
		}
	}
	return append(cs, mmaAllMaskedCase)
}

// checkSameBits: got and want must be the same float32 bits (NaN matches any NaN).
func checkSameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", what, len(got), len(want))
	}
	bad := 0
	for i := range want {
		g, w := got[i], want[i]
		if math.Float32bits(g) == math.Float32bits(w) || (g != g && w != w) {
			continue
		}
		if bad++; bad <= 3 {
			t.Errorf("%s[%d] = %v (%#08x), stored-mask path %v (%#08x)", what, i, g, math.Float32bits(g), w, math.Float32bits(w))
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d elements differ", what, bad, len(want))
	}
}

// TestAttentionSeededSameBits runs, for bf16 and fp16, each shape of seededCases,
// dropout p 0.1 and 0, float32 (accumulated gradients) and 16-bit (kernels.HalfAttention:
// written gradients) outputs: the stored path (DropoutMask, AttentionForward,
// AttentionBackward) and the seeded one (AttentionForwardSeeded, AttentionBackwardSeeded)
// with the same seed, and compares out, probs, dq, dk and dv bit for bit. In the
// float32 mode with p 0.1 the seeded results are also checked against the fp32 CPU
// with the CPU's DropoutMask (mmaLoose).
func TestAttentionSeededSameBits(t *testing.T) {
	for ci, tc := range seededCases() {
		for _, ft := range formats {
			for _, dropP := range []float64{0.1, 0} {
				for _, out16 := range []bool{false, true} {
					t.Run(fmt.Sprintf("%s/%v/p%g/out16=%v", tc.name, ft.prec, dropP, out16), func(t *testing.T) {
						be := withPrecision(t, ft.prec)
						if be.info.Major < 8 {
							t.Skip("the tensor-core kernels need sm_80")
						}
						p := newPair(t, uint64(301+ci))
						a := tc.args(p)
						empty := -1
						if tc.name == mmaAllMaskedCase.name {
							empty = mmaEmpty
							maskSentence(a, tc, empty)
						}
						if out16 && !be.Attention16(a) {
							t.Fatal("Attention16 false at a shape the second kernels take")
						}
						m := newMMAData(p.r, a, tc)
						checkSeeded(t, be, ft, m, dropP, 0x5eed0000+uint64(ci), out16)
					})
				}
			}
		}
	}
}

// checkSeeded runs m's case both ways on be and compares them (see
// TestAttentionSeededSameBits).
func checkSeeded(t *testing.T, be *Backend, ft format16, m *mmaData, dropP float64, seed uint64, out16 bool) {
	t.Helper()
	tc, vw, a := m.tc, m.vw, m.a
	np := tc.B * tc.H * tc.TQ * tc.TK
	d := tc.H * tc.D
	qb := be.Upload(m.q)
	kvb := qb
	if tc.cross {
		kvb = be.Upload(m.kv)
	}
	doutb := be.Upload(m.dout)
	alloc := func(n int) kernels.Buffer {
		if out16 {
			return be.AllocHalf(n)
		}
		return be.Alloc(n)
	}
	read := func(b kernels.Buffer) []float32 {
		if out16 {
			return downHalf(t, be, b)
		}
		return down(be, b)
	}
	// Gradients: float32 ones start from m.dq, m.dkv (accumulated into); 16-bit ones
	// are overwritten whole.
	grads := func() (dq, dkv kernels.Buffer) {
		if out16 {
			dq = be.AllocHalf(vw.qn)
			dkv = dq
			if tc.cross {
				dkv = be.AllocHalf(vw.kvn)
			}
			return dq, dkv
		}
		dq = be.Upload(m.dq)
		dkv = dq
		if tc.cross {
			dkv = be.Upload(m.dkv)
		}
		return dq, dkv
	}

	// Stored mask.
	mask := be.Alloc(np)
	be.DropoutMask(mask, dropP, seed)
	probsS, outS := be.Alloc(np), alloc(tc.B*tc.TQ*d)
	be.AttentionForward(m.outView(outS), vw.q(qb), vw.k(kvb), vw.v(kvb), a, probsS, mask)
	dqS, dkvS := grads()
	be.AttentionBackward(vw.q(dqS), vw.k(dkvS), vw.v(dkvS), m.outView(doutb), vw.q(qb), vw.k(kvb), vw.v(kvb), a, probsS, mask)

	// Seeded.
	probsD, outD := be.Alloc(np), alloc(tc.B*tc.TQ*d)
	if !be.AttentionForwardSeeded(m.outView(outD), vw.q(qb), vw.k(kvb), vw.v(kvb), a, probsD, dropP, seed) {
		t.Fatal("AttentionForwardSeeded declined a shape the second kernels take")
	}
	dqD, dkvD := grads()
	if !be.AttentionBackwardSeeded(vw.q(dqD), vw.k(dkvD), vw.v(dkvD), m.outView(doutb), vw.q(qb), vw.k(kvb), vw.v(kvb), a, probsD, dropP, seed) {
		t.Fatal("AttentionBackwardSeeded declined a call its forward took")
	}

	gotP, gotO := down(be, probsD), read(outD)
	checkSameBits(t, "probs", gotP, down(be, probsS))
	checkSameBits(t, "out", gotO, read(outS))
	gotQ := read(dqD)
	checkSameBits(t, "dq (dk, dv for self)", gotQ, read(dqS))
	gotKV := gotQ
	if tc.cross {
		gotKV = read(dkvD)
		checkSameBits(t, "dk, dv", gotKV, read(dkvS))
	}
	if out16 || dropP == 0 {
		return
	}

	// Independent: the CPU's mask for the same seed, and the fp32 CPU attention with it.
	c := cpu.New(0)
	cm := c.Alloc(np)
	c.DropoutMask(cm, dropP, seed)
	m.mask = cpu.Data(cm)
	checkSameBits(t, "GPU DropoutMask vs CPU", down(be, mask), m.mask)
	cp, co, cq, ckv := m.cpuReference()
	loose := mmaLoose(ft)
	checkClose(t, "probs vs fp32 CPU", gotP, cp, loose)
	checkClose(t, "out vs fp32 CPU", gotO, co, loose)
	checkClose(t, "dq vs fp32 CPU", gotQ, cq, loose)
	if tc.cross {
		checkClose(t, "dk, dv vs fp32 CPU", gotKV, ckv, loose)
	}
}

// TestAttentionSeededDeclines: shapes the second kernels do not take in both directions
// (T 100, TK 65, TQ 70), FP32, and the test switches that keep other kernels (the first
// tensor-core kernels, the float kernels) make both methods return false without
// writing anything; bf16 at the bench shape is taken in both directions.
func TestAttentionSeededDeclines(t *testing.T) {
	be := withPrecision(t, BF16)
	if be.info.Major < 8 {
		t.Skip("the tensor-core kernels need sm_80")
	}
	// run calls both methods on data filled with a sentinel and reports whether each
	// was taken; a declined call must leave out, probs and the gradients as they were.
	run := func(t *testing.T, tq, tk int) (fwd, bwd bool) {
		t.Helper()
		tc := attnCase{B: 3, H: 2, D: 64, TQ: tq, TK: tk, cross: true}
		p := newPair(t, 307)
		a := tc.args(p)
		vw := tc.views()
		d := tc.H * tc.D
		fill := func(n int) (kernels.Buffer, []float32) {
			v := make([]float32, n)
			for i := range v {
				v[i] = -1234.5
			}
			return be.Upload(v), v
		}
		qb, kvb := be.Upload(randVec(p.r, vw.qn)), be.Upload(randVec(p.r, vw.kvn))
		np := tc.B * tc.H * tc.TQ * tc.TK
		probs, probs0 := fill(np)
		out, out0 := fill(tc.B * tc.TQ * d)
		dq, dq0 := fill(vw.qn)
		dkv, dkv0 := fill(vw.kvn)
		ov := kernels.View{Buf: out, BatchStride: tc.TQ * d, RowStride: d}
		gv := kernels.View{Buf: be.Upload(randVec(p.r, tc.B*tc.TQ*d)), BatchStride: tc.TQ * d, RowStride: d}
		fwd = be.AttentionForwardSeeded(ov, vw.q(qb), vw.k(kvb), vw.v(kvb), a, probs, 0.1, 9)
		if !fwd {
			checkSameBits(t, "out after a declined forward", down(be, out), out0)
			checkSameBits(t, "probs after a declined forward", down(be, probs), probs0)
		}
		bwd = be.AttentionBackwardSeeded(vw.q(dq), vw.k(dkv), vw.v(dkv), gv, vw.q(qb), vw.k(kvb), vw.v(kvb), a, probs, 0.1, 9)
		if !bwd {
			checkSameBits(t, "dq after a declined backward", down(be, dq), dq0)
			checkSameBits(t, "dk, dv after a declined backward", down(be, dkv), dkv0)
		}
		return fwd, bwd
	}
	for _, c := range []struct{ tq, tk int }{{100, 100}, {41, 65}, {70, 41}, {100, 41}} {
		t.Run(fmt.Sprintf("TQ%d_TK%d", c.tq, c.tk), func(t *testing.T) {
			if f, b := run(t, c.tq, c.tk); f || b {
				t.Errorf("taken: forward %v, backward %v", f, b)
			}
		})
	}
	t.Run("taken", func(t *testing.T) {
		if f, b := run(t, 41, 41); !f || !b {
			t.Errorf("bench shape: forward %v, backward %v, want both taken", f, b)
		}
	})
	t.Run("FP32", func(t *testing.T) {
		withPrecision(t, FP32)
		if f, b := run(t, 41, 41); f || b {
			t.Errorf("taken in FP32: forward %v, backward %v", f, b)
		}
	})
	t.Run("first kernels", func(t *testing.T) {
		withMMAFirst(t, be, true)
		if f, b := run(t, 41, 41); f || b {
			t.Errorf("taken with the first kernels: forward %v, backward %v", f, b)
		}
	})
	t.Run("float kernels", func(t *testing.T) {
		withMMAOff(t, be)
		if f, b := run(t, 41, 41); f || b {
			t.Errorf("taken with the tensor-core kernels off: forward %v, backward %v", f, b)
		}
	})
}

// TestAttentionSeededTiming logs the device time per call at the bench shape (B 200,
// T 41, H 8, D 64, bf16, dropout 0.1) of the stored-mask pair (DropoutMask +
// AttentionForward, then AttentionBackward) against the seeded pair
// (AttentionForwardSeeded, AttentionBackwardSeeded), float32 outputs. It checks
// nothing; -short skips it.
func TestAttentionSeededTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	be := withPrecision(t, BF16)
	if be.info.Major < 8 {
		t.Skip("the tensor-core kernels need sm_80")
	}
	for _, tc := range []attnCase{
		{name: "encoder self", B: 200, H: 8, D: 64, TQ: 41, TK: 41, pad: true, left: true, drop: true, minLen: 20},
		{name: "decoder self causal", B: 200, H: 8, D: 64, TQ: 41, TK: 41, causal: true, pad: true, drop: true, minLen: 20},
		{name: "cross", B: 200, H: 8, D: 64, TQ: 41, TK: 41, cross: true, pad: true, left: true, drop: true, minLen: 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, 311)
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
			ov := kernels.View{Buf: be.Alloc(tc.B * tc.TQ * d), BatchStride: tc.TQ * d, RowStride: d}
			gv := kernels.View{Buf: be.Upload(randVec(p.r, tc.B*tc.TQ*d)), BatchStride: tc.TQ * d, RowStride: d}
			dqb := be.Alloc(vw.qn)
			dkvb := dqb
			if tc.cross {
				dkvb = be.Alloc(vw.kvn)
			}
			const dropP, seed = 0.1, 17
			storedF := func() {
				be.DropoutMask(mask, dropP, seed)
				be.AttentionForward(ov, vw.q(qb), vw.k(kvb), vw.v(kvb), a, probs, mask)
			}
			storedB := func() {
				be.AttentionBackward(vw.q(dqb), vw.k(dkvb), vw.v(dkvb), gv, vw.q(qb), vw.k(kvb), vw.v(kvb), a, probs, mask)
			}
			seededF := func() {
				if !be.AttentionForwardSeeded(ov, vw.q(qb), vw.k(kvb), vw.v(kvb), a, probs, dropP, seed) {
					t.Fatal("AttentionForwardSeeded declined the bench shape")
				}
			}
			seededB := func() {
				if !be.AttentionBackwardSeeded(vw.q(dqb), vw.k(dkvb), vw.v(dkvb), gv, vw.q(qb), vw.k(kvb), vw.v(kvb), a, probs, dropP, seed) {
					t.Fatal("AttentionBackwardSeeded declined the bench shape")
				}
			}
			storedF()
			sf, sb := timeDevice(t, be, 50, storedF), timeDevice(t, be, 50, storedB)
			seededF()
			df, db := timeDevice(t, be, 50, seededF), timeDevice(t, be, 50, seededB)
			us := func(x float64) float64 { return x * 1e6 }
			t.Logf("%s B %d T %d: stored mask forward (with dropout_mask) %.1f µs, backward %.1f µs, sum %.1f; seeded %.1f, %.1f, sum %.1f µs",
				tc.name, tc.B, tc.TQ, us(sf.Seconds()), us(sb.Seconds()), us((sf + sb).Seconds()),
				us(df.Seconds()), us(db.Seconds()), us((df + db).Seconds()))
		})
	}
}

// TestSeededDropoutArgs checks the host side without a GPU: p ≤ 0 draws nothing (the
// kernels then multiply by nothing, the bits of a nil mask), p 0.1 draws with
// DropoutMask's threshold ⌈0.1·2²⁴⌉ and scale float32(1/0.9), and a stored mask is never
// drawn again whatever the other fields hold.
func TestSeededDropoutArgs(t *testing.T) {
	for _, p := range []float64{0, -1} {
		if d := seededDropout(p, 5); d.drawn() || d.threshold != 0 {
			t.Errorf("p %g: %+v drawn", p, d)
		}
	}
	d := seededDropout(0.1, 5)
	if want := uint64(math.Ceil(0.1 * (1 << 24))); !d.drawn() || d.threshold != want || d.keep != float32(1/0.9) || d.seed != 5 {
		t.Errorf("p 0.1: %+v, want threshold %d, keep %v, seed 5", d, want, float32(1/0.9))
	}
	var pr params
	pr.reset().seededArgs(d)
	if pr.n != 3 {
		t.Fatalf("%d kernel arguments, want 3 (seed, threshold, keep)", pr.n)
	}
	if d.mask = (&buffer{}); d.drawn() {
		t.Error("a stored mask counted as drawn")
	}
}
