package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// ReLUDropoutBackward against the composition it replaces, ApplyDropout(da) then
// ActivateBackward(ReLU, pre), with a = ApplyDropout(ReLU(pre)) as the forward saves
// it (and with a from DropoutMask + Mul, which the interface also allows). Exact: the
// bits must be the composition's everywhere except at elements the mask drops where
// pre > 0, where the composition's da·0 (−0 for negative da, NaN for non-finite da)
// must have become +0, as kernels.ReLUDropoutBackwarder states. The inputs pair every
// special value (signed zeros, infinities, NaN, the smallest subnormal, MaxFloat32,
// which a scale > 1 overflows) as pre with every one as da, then random values; p
// covers no dropout, the usual rates, the largest finite scale (2²⁴) and p = 1.
func TestReLUDropoutBackwardRelation(t *testing.T) {
	be := New(3)
	specials := []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)),
		float32(math.NaN()), math.SmallestNonzeroFloat32, -math.SmallestNonzeroFloat32, math.MaxFloat32, 1, -1}
	r := rand.New(rand.NewPCG(4, 2))
	const n = 70000 // over parallel's threshold, so the chunked loop runs too
	pre, da := randSlice(r, n), randSlice(r, n)
	ns := len(specials)
	for i := 0; i < ns*ns; i++ {
		pre[i], da[i] = specials[i%ns], specials[i/ns]
	}
	const seed = 0x5eed
	for _, p := range []float64{0, 0.1, 0.5, 1 - 0x1p-24, 1} {
		for _, stored := range []bool{false, true} {
			name := fmt.Sprintf("p %g stored mask %v", p, stored)
			a := be.Upload(pre)
			be.Activate(a, a, kernels.ReLU)
			if stored {
				m := be.Alloc(n)
				be.DropoutMask(m, p, seed)
				be.Mul(a, a, m)
			} else {
				be.ApplyDropout(a, a, p, seed)
			}
			ref := be.Upload(da)
			be.ApplyDropout(ref, ref, p, seed)
			be.ActivateBackward(ref, ref, be.Upload(pre), kernels.ReLU)
			want := f(ref)
			for _, inPlace := range []bool{false, true} {
				g := be.Upload(da)
				out := g
				if !inPlace {
					out = be.Alloc(n)
				}
				be.ReLUDropoutBackward(out, g, a, p)
				got := f(out)
				th := kernels.DropoutThreshold(p)
				bad, changed := 0, 0
				for i := range got {
					gb, wb := math.Float32bits(got[i]), math.Float32bits(want[i])
					ok := gb == wb || got[i] != got[i] && want[i] != want[i]
					if !kernels.DropoutKeep(seed, uint64(i), th) && pre[i] > 0 {
						z := da[i] * 0
						ok = gb == 0 && (wb == math.Float32bits(z) || z != z && want[i] != want[i])
						if gb != wb {
							changed++
						}
					}
					if !ok {
						if bad++; bad <= 3 {
							t.Errorf("%s in place %v: element %d (pre %v, da %v, a %v): got %v (%#x), composition %v (%#x)",
								name, inPlace, i, pre[i], da[i], f(a)[i], got[i], gb, want[i], wb)
						}
					}
				}
				if bad > 3 {
					t.Errorf("%s in place %v: %d elements wrong", name, inPlace, bad)
				}
				// The documented exception must actually occur here, or the test would
				// not be checking it.
				if p > 0 && changed == 0 {
					t.Errorf("%s: no element dropped with pre > 0 and da < 0 or non-finite", name)
				}
			}
		}
	}
}
