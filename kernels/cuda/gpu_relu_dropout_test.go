package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// reluDropSpecials are pre-activation and gradient values whose handling the
// composition defines: signed zeros, infinities, NaN, the smallest subnormal, values
// that overflow when scaled by 1/(1−p).
var reluDropSpecials = []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)),
	float32(math.NaN()), math.SmallestNonzeroFloat32, -math.SmallestNonzeroFloat32, math.MaxFloat32}

// reluDropInputs returns pre and da of n elements: normal values, with every pair of
// specials (pre, da) in the first 64 elements.
func reluDropInputs(r *rand.Rand, n int) (pre, da []float32) {
	pre, da = randVec(r, n), randVec(r, n)
	ns := len(reluDropSpecials)
	for i := 0; i < n && i < ns*ns; i++ {
		pre[i], da[i] = reluDropSpecials[i%ns], reluDropSpecials[i/ns]
	}
	return pre, da
}

// offsetView returns a view of n elements of a fresh buffer holding v at offset off, so an
// odd offset makes the view 4-byte but not 16-byte aligned (the kernels' scalar path).
func offsetView(be kernels.Backend, v []float32, off int) kernels.Buffer {
	return be.Slice(be.Upload(append(make([]float32, off), v...)), off, len(v))
}

// ReLUDropoutBackward on the GPU against the CPU backend's composition
// ApplyDropout(da) then ActivateBackward(ReLU, pre), the unfused backward the model
// runs today. Tolerance: none. Everywhere except at elements the mask drops with
// pre > 0 the bits must be equal (the same float32 product da·s, or +0). At those
// elements the composition gives da·0 (−0 for negative da, NaN for ±Inf or NaN) and
// the fused kernel +0, as kernels.ReLUDropoutBackwarder documents; the test checks
// both sides of that exactly, so any other difference (a wrong mask, a wrong scale, a
// vector path that skips or shifts elements) fails. It also requires the GPU result
// to be the CPU ReLUDropoutBackward's bits, and the GPU's own composition (vectorized
// activate_bwd after dropout_apply) to be the CPU composition's bits. Sizes cover the
// float4 path's tails (n mod 4 = 1, 3), offsets its scalar path, in place covers
// dpre = da.
func TestReLUDropoutBackward(t *testing.T) {
	p := newPair(t, 41)
	const seed = 99
	for _, n := range []int{1, 3, 64, 4097, 1<<20 + 1} {
		for _, prob := range []float64{0, 0.1, 0.3, 1} {
			for _, off := range [][3]int{{0, 0, 0}, {1, 1, 1}, {0, 2, 1}} {
				for _, inPlace := range []bool{false, true} {
					name := fmt.Sprintf("n %d p %g offsets %v in place %v", n, prob, off, inPlace)
					pre, da := reluDropInputs(p.r, n)
					// The forward on each backend: a = ApplyDropout(ReLU(pre)).
					ag, ac := offsetView(p.g, pre, off[2]), p.c.Upload(pre)
					p.g.Activate(ag, ag, kernels.ReLU)
					p.g.ApplyDropout(ag, ag, prob, seed)
					p.c.Activate(ac, ac, kernels.ReLU)
					p.c.ApplyDropout(ac, ac, prob, seed)
					checkExact(t, name+": forward a", down(p.g, ag), cpu.Data(ac))

					dag := offsetView(p.g, da, off[1])
					dpre := dag
					if !inPlace {
						dpre = offsetView(p.g, make([]float32, n), off[0])
					}
					p.g.ReLUDropoutBackward(dpre, dag, ag, prob)
					got := down(p.g, dpre)

					fused := p.c.Alloc(n)
					p.c.ReLUDropoutBackward(fused, p.c.Upload(da), ac, prob)
					checkExact(t, name+": vs CPU ReLUDropoutBackward", got, cpu.Data(fused))

					ref := p.c.Upload(da)
					p.c.ApplyDropout(ref, ref, prob, seed)
					p.c.ActivateBackward(ref, ref, p.c.Upload(pre), kernels.ReLU)
					want := cpu.Data(ref)
					checkReLUDropRelation(t, name, got, want, pre, da, prob, seed)

					gref := offsetView(p.g, da, off[1])
					p.g.ApplyDropout(gref, gref, prob, seed)
					p.g.ActivateBackward(gref, gref, offsetView(p.g, pre, off[2]), kernels.ReLU)
					checkExact(t, name+": GPU composition vs CPU composition", down(p.g, gref), want)
				}
			}
		}
	}
}

// checkReLUDropRelation checks got (the fused backward) against want (the composition)
// element by element: equal bits, except at elements dropped with pre > 0, where want
// must be da·0 and got +0.
func checkReLUDropRelation(t *testing.T, name string, got, want, pre, da []float32, prob float64, seed uint64) {
	t.Helper()
	th := kernels.DropoutThreshold(prob)
	bad := 0
	for i := range got {
		g, w := math.Float32bits(got[i]), math.Float32bits(want[i])
		if !kernels.DropoutKeep(seed, uint64(i), th) && pre[i] > 0 {
			w0 := da[i] * 0
			if g != 0 || !(w == math.Float32bits(w0) || w0 != w0 && want[i] != want[i]) {
				if bad++; bad <= 3 {
					t.Errorf("%s: element %d (dropped, pre %v, da %v): got %v (%#x), composition %v; want +0 and da·0",
						name, i, pre[i], da[i], got[i], g, want[i])
				}
			}
			continue
		}
		if g != w && !(got[i] != got[i] && want[i] != want[i]) {
			if bad++; bad <= 3 {
				t.Errorf("%s: element %d (pre %v, da %v): got %v (%#x), composition %v (%#x)", name, i, pre[i], da[i], got[i], g, want[i], w)
			}
		}
	}
	if bad > 3 {
		t.Errorf("%s: %d elements wrong in all", name, bad)
	}
}

// The float4 paths of activate and activate_bwd (aligned buffers) give the bits of
// their scalar paths (views at an odd offset), in place and not, for every kind and
// sizes with tails; and ReLU's equal the CPU's bits. The other kinds' comparison with
// the CPU is TestActivate/TestActivateBackward's (1e-7: CUDA's double erf/tanh/exp
// against Go's); here it is repeated on inputs with specials at that tolerance.
func TestActivateVectorPaths(t *testing.T) {
	p := newPair(t, 42)
	for _, act := range []kernels.Activation{kernels.ReLU, kernels.GELU, kernels.GELUAccurate, kernels.Tanh} {
		for _, n := range []int{1, 5, 4099} {
			name := fmt.Sprintf("%s n %d", act, n)
			xs, dy := reluDropInputs(p.r, n)
			ya, yu := p.g.Alloc(n), offsetView(p.g, make([]float32, n), 1)
			p.g.Activate(ya, offsetView(p.g, xs, 0), act)
			p.g.Activate(yu, offsetView(p.g, xs, 3), act)
			fwd := down(p.g, ya)
			checkExact(t, name+": Activate float4 vs scalar", fwd, down(p.g, yu))
			inPlace := offsetView(p.g, xs, 0)
			p.g.Activate(inPlace, inPlace, act)
			checkExact(t, name+": Activate in place", down(p.g, inPlace), fwd)
			cy := p.c.Alloc(n)
			p.c.Activate(cy, p.c.Upload(xs), act)

			dxa, dxu := offsetView(p.g, dy, 0), offsetView(p.g, dy, 1)
			p.g.ActivateBackward(dxa, dxa, offsetView(p.g, xs, 0), act) // in place, as the model calls it
			p.g.ActivateBackward(dxu, dxu, offsetView(p.g, xs, 2), act)
			bwd := down(p.g, dxa)
			checkExact(t, name+": ActivateBackward float4 vs scalar", bwd, down(p.g, dxu))
			cdx := p.c.Upload(dy)
			p.c.ActivateBackward(cdx, cdx, p.c.Upload(xs), act)
			if act == kernels.ReLU {
				checkExact(t, name+": Activate vs CPU", fwd, cpu.Data(cy))
				checkExact(t, name+": ActivateBackward vs CPU", bwd, cpu.Data(cdx))
			} else {
				// Apart, so that the specials' magnitudes (up to MaxFloat32) do not
				// swamp the norm of the ordinary values.
				k := min(n, len(reluDropSpecials)*len(reluDropSpecials))
				checkClose(t, name+": Activate vs CPU, specials", fwd[:k], cpu.Data(cy)[:k], 1e-7)
				checkClose(t, name+": ActivateBackward vs CPU, specials", bwd[:k], cpu.Data(cdx)[:k], 1e-7)
				if n > k {
					checkClose(t, name+": Activate vs CPU", fwd[k:], cpu.Data(cy)[k:], 1e-7)
					checkClose(t, name+": ActivateBackward vs CPU", bwd[k:], cpu.Data(cdx)[k:], 1e-7)
				}
			}
		}
	}
}

// TestReLUDropoutBackwardTiming logs device time per call at the bench shape (8000 rows,
// FFN 2048, d 512, bf16, activation dropout 0.1): the elementwise backward old
// (dropout_apply + activate_bwd) vs new (relu_dropout_bwd); activate and activate_bwd
// on their float4 path vs their scalar path (a view one float off, for scale: the
// profile before this change measured activate 48 µs and activate_bwd 105 µs per call
// here); and the whole FFN forward and backward as model.ffn runs it today vs with
// LinearAct's ReLU epilogue, the dropout in place and the one-pass backward. It only
// measures; skipped with -short.
func TestReLUDropoutBackwardTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	be := withPrecision(t, BF16)
	const m, F, d, prob, seed = 8000, 2048, 512, 0.1, 7
	r := rand.New(rand.NewPCG(3, 4))
	us := func(f func()) float64 { return timeDevice(t, be, 20, f).Seconds() * 1e6 }

	pre, da := be.Upload(randVec(r, m*F)), be.Upload(randVec(r, m*F))
	a, dpre := be.Alloc(m*F), be.Alloc(m*F)
	be.Activate(a, pre, kernels.ReLU)
	be.ApplyDropout(a, a, prob, seed)
	oldBwd := us(func() {
		be.ApplyDropout(dpre, da, prob, seed)
		be.ActivateBackward(dpre, dpre, pre, kernels.ReLU)
	})
	newBwd := us(func() { be.ReLUDropoutBackward(dpre, da, a, prob) })
	t.Logf("[%d×%d] backward of dropout(relu): dropout_apply + activate_bwd %.1f µs, relu_dropout_bwd %.1f µs (%.2f TB/s)",
		m, F, oldBwd, newBwd, 3*4*float64(m*F)/newBwd/1e6)

	off := func(b kernels.Buffer) kernels.Buffer { return be.Slice(b, 1, m*F-1) }
	actVec := us(func() { be.Activate(a, pre, kernels.ReLU) })
	actSc := us(func() { be.Activate(off(a), off(pre), kernels.ReLU) })
	bwdVec := us(func() { be.ActivateBackward(dpre, da, pre, kernels.ReLU) })
	bwdSc := us(func() { be.ActivateBackward(off(dpre), off(da), off(pre), kernels.ReLU) })
	t.Logf("[%d×%d] relu: activate float4 %.1f µs, scalar %.1f µs; activate_bwd float4 %.1f µs, scalar %.1f µs",
		m, F, actVec, actSc, bwdVec, bwdSc)
	for _, act := range []kernels.Activation{kernels.GELU, kernels.GELUAccurate} {
		f := us(func() { be.Activate(a, pre, act) })
		b := us(func() { be.ActivateBackward(dpre, da, pre, act) })
		t.Logf("[%d×%d] %s: activate %.1f µs, activate_bwd %.1f µs", m, F, act, f, b)
	}

	h, w1, b1 := be.Upload(randVec(r, m*d)), be.Upload(scaled(randVec(r, F*d), 0.05)), be.Upload(randVec(r, F))
	w2, b2 := be.Upload(scaled(randVec(r, d*F), 0.02)), be.Upload(randVec(r, d))
	out, dout, dh := be.Alloc(m*d), be.Upload(randVec(r, m*d)), be.Alloc(m*d)
	dw1, db1, dw2, db2 := be.Alloc(F*d), be.Alloc(F), be.Alloc(d*F), be.Alloc(d)
	oldFwd := us(func() {
		be.Linear(pre, h, w1, b1, m, F, d)
		be.Activate(a, pre, kernels.ReLU)
		be.ApplyDropout(a, a, prob, seed)
		be.Linear(out, a, w2, b2, m, d, F)
	})
	oldFFNBwd := us(func() {
		be.LinearBackward(dpre, dw2, db2, dout, a, w2, m, d, F)
		be.ApplyDropout(dpre, dpre, prob, seed)
		be.ActivateBackward(dpre, dpre, pre, kernels.ReLU)
		be.LinearBackward(dh, dw1, db1, dpre, h, w1, m, F, d)
	})
	fused := true
	newFwd := us(func() {
		if _, ok := be.LinearAct(a, h, w1, b1, m, F, d, kernels.ReLU); !ok {
			fused = false
			be.Linear(a, h, w1, b1, m, F, d)
			be.Activate(a, a, kernels.ReLU)
		}
		be.ApplyDropout(a, a, prob, seed)
		be.Linear(out, a, w2, b2, m, d, F)
	})
	newFFNBwd := us(func() {
		be.LinearBackward(dpre, dw2, db2, dout, a, w2, m, d, F)
		be.ReLUDropoutBackward(dpre, dpre, a, prob)
		be.LinearBackward(dh, dw1, db1, dpre, h, w1, m, F, d)
	})
	t.Logf("FFN %d×%d×%d bf16, activation dropout %g: forward %.1f → %.1f µs (ReLU epilogue used: %v), backward %.1f → %.1f µs",
		m, d, F, prob, oldFwd, newFwd, fused, oldFFNBwd, newFFNBwd)
}
