package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// Tests of AdamStepClipped (kernels.ClippedOptimizer: the gradient multiply, norm,
// clipping, non-finite skip and Adam in sumsq_partial + sum_strided + adam_list).
//
// References and tolerances:
//   - The CPU backend's separate operations (Scale by pre, SumSquares per buffer, Scale by
//     the clip coefficient, AdamStep): p, m and v exactly (the same float32 products in
//     the same order, as TestListKernels* check for AdamStepAll). The norm within 1e-12
//     relative: double sums in another order (as SumSquaresAll against the CPU). The clip
//     coefficient float32(max/(n+1e-6)) is taken from the GPU's norm for the reference, so
//     a last-bit difference of the two sums cannot move a rounding tie of the coefficient;
//     the test also logs whether the CPU's own norm gives the same coefficient.
//   - The GPU's own separate operations (ScaleAll, SumSquaresAll, ScaleAll, AdamStepAll):
//     every bit, the norm included (same kernels, same order).

// clippedStep is one AdamStepClipped configuration.
type clippedStep struct {
	pre     float32
	maxNorm float64 // <0: set below the norm (clips); 0: no clipping; >0: as given
}

// refClipped is the CPU reference: the separate operations on copies of g, with the clip
// coefficient from norm (see the tolerances above). It returns the CPU's own norm.
func refClipped(p *pair, lc listCase, pre float32, maxNorm, norm float64, s kernels.OptimStep) float64 {
	var ss float64
	gs := make([]kernels.Buffer, len(lc.g))
	for i, b := range lc.g {
		gs[i] = p.c.Upload(down(p.c, b.c))
		p.c.Scale(gs[i], pre)
		ss += p.c.SumSquares(gs[i])
	}
	if maxNorm > 0 && norm > maxNorm {
		c := float32(maxNorm / (norm + 1e-6))
		for _, g := range gs {
			p.c.Scale(g, c)
		}
	}
	for i := range lc.p {
		p.c.AdamStep(lc.p[i].c, gs[i], lc.m[i].c, lc.v[i].c, s)
	}
	return math.Sqrt(ss)
}

// TestAdamStepClippedMatchesCPU: chunk-boundary lengths and unaligned buffers (the
// float4 and the scalar paths), with a loss-scale-like pre, with and without clipping,
// Adam and RAdam-before-rectification scalars.
func TestAdamStepClippedMatchesCPU(t *testing.T) {
	p := newPair(t, 91)
	lens := []int{1, 3, 4, 5, 0, 8191, 8192, 8193, 3*8192 + 3, 65536 + 7, 512, 1536}
	offs := []int{0, 1, 0, 2, 0, 0, 1, 0, 3, 0, 4, 1}
	lc := p.listCase(lens, offs)
	steps := []kernels.OptimStep{
		{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, StepSize: 1e-3, Update: true},
		{Beta1: 0.9, Beta2: 0.999, OneMinusBeta1: 0.1, OneMinusBeta2: 0.001, Eps: 1e-8, Decay: -1e-5, StepSize: 5e-4, Update: true},
		{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8}, // RAdam before ρ_t ≥ 5
	}
	for k, c := range []clippedStep{
		{pre: 1, maxNorm: 0},
		{pre: float32(1.0 / 3870 / 128), maxNorm: 0},
		{pre: float32(1.0 / 3870 / 128), maxNorm: -1},
		{pre: float32(1.0 / 6703), maxNorm: 1e9}, // threshold above the norm: no clipping
		{pre: 0.37, maxNorm: -1},
	} {
		t.Run(fmt.Sprintf("pre %g max %g", c.pre, c.maxNorm), func(t *testing.T) {
			s := steps[k%len(steps)]
			gBefore := make([][]float32, len(lc.g))
			for i, b := range lc.g {
				gBefore[i] = down(p.g, b.g)
			}
			maxNorm := c.maxNorm
			if maxNorm < 0 {
				var ss float64
				for _, b := range lc.g {
					g := p.c.Upload(down(p.c, b.c))
					p.c.Scale(g, c.pre)
					ss += p.c.SumSquares(g)
				}
				maxNorm = 0.5 * math.Sqrt(ss)
			}
			norm := p.g.AdamStepClipped(gpuSide(lc.p), gpuSide(lc.g), gpuSide(lc.m), gpuSide(lc.v), c.pre, maxNorm, s)()
			cpuNorm := refClipped(p, lc, c.pre, maxNorm, norm, s)
			if rel := math.Abs(norm-cpuNorm) / cpuNorm; !(rel <= 1e-12) {
				t.Errorf("norm %.17g, CPU %.17g (relative %.3g > 1e-12)", norm, cpuNorm, rel)
			}
			if maxNorm > 0 && norm > maxNorm {
				same := float32(maxNorm/(norm+1e-6)) == float32(maxNorm/(cpuNorm+1e-6))
				t.Logf("clipped: norm %.17g (CPU %.17g), coefficient from the CPU's norm the same: %v", norm, cpuNorm, same)
			}
			for i := range lc.p {
				p.check(t, fmt.Sprintf("p[%d]", i), lc.p[i], 0)
				p.check(t, fmt.Sprintf("m[%d]", i), lc.m[i], 0)
				p.check(t, fmt.Sprintf("v[%d]", i), lc.v[i], 0)
				checkExact(t, fmt.Sprintf("g[%d] left unscaled", i), down(p.g, lc.g[i].g), gBefore[i])
			}
		})
	}
}

// TestAdamStepClippedSameBitsAsSeparate: on the 6L-6L parameter list, the fused update
// against the GPU's own ScaleAll, SumSquaresAll, ScaleAll (clipping), AdamStepAll on a
// copy of the same state: every bit of p, m, v and of the norm.
func TestAdamStepClippedSameBitsAsSeparate(t *testing.T) {
	be := gpu(t)
	net := sixLayerNet(t, be)
	r := rand.New(rand.NewPCG(93, 94))
	type state struct{ p, g, m, v []kernels.Buffer }
	var a, b state
	for _, np := range net.Params() {
		n := np.P.Len()
		pv, gv, mv, vv := down(be, np.P), randVec(r, n), randVec(r, n), randVec(r, n)
		for j := range vv {
			vv[j] *= vv[j] * 1e-3
			gv[j] *= 200 // a summed, not yet normalised gradient
		}
		for _, st := range []*state{&a, &b} {
			st.p, st.g = append(st.p, be.Upload(pv)), append(st.g, be.Upload(gv))
			st.m, st.v = append(st.m, be.Upload(mv)), append(st.v, be.Upload(vv))
		}
	}
	s := kernels.OptimStep{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, Decay: -1e-6, StepSize: 1e-4, Update: true}
	pre := float32(1.0 / 6703 / 64)
	for k, maxNorm := range []float64{0, 1e-3, 1e9} {
		normFused := be.AdamStepClipped(a.p, a.g, a.m, a.v, pre, maxNorm, s)()
		be.ScaleAll(b.g, pre)
		ss := be.SumSquaresAll(b.g)
		norm := math.Sqrt(ss)
		if maxNorm > 0 && norm > maxNorm {
			be.ScaleAll(b.g, float32(maxNorm/(norm+1e-6)))
		}
		be.AdamStepAll(b.p, b.g, b.m, b.v, s)
		if math.Float64bits(normFused) != math.Float64bits(norm) {
			t.Errorf("update %d (max %g): norm %.17g fused, %.17g separate", k+1, maxNorm, normFused, norm)
		}
		for i := range a.p {
			checkExact(t, fmt.Sprintf("update %d: p[%d]", k+1, i), down(be, a.p[i]), down(be, b.p[i]))
			checkExact(t, fmt.Sprintf("update %d: m[%d]", k+1, i), down(be, a.m[i]), down(be, b.m[i]))
			checkExact(t, fmt.Sprintf("update %d: v[%d]", k+1, i), down(be, a.v[i]), down(be, b.v[i]))
		}
		// The separate path scaled its gradients in place; start the next update from
		// the same gradients again.
		for i := range a.g {
			b.g[i] = be.Upload(down(be, a.g[i]))
		}
		t.Logf("update %d: max %g, norm %.17g, clipped %v", k+1, maxNorm, norm, maxNorm > 0 && norm > maxNorm)
	}
}

// A gradient holding NaN or ±Inf: the norm says so and nothing is written (the update is
// skipped, as fairseq skips an fp16 overflow), whichever block holds the bad element.
func TestAdamStepClippedSkipsNonFinite(t *testing.T) {
	p := newPair(t, 95)
	lens := []int{5, 8192 + 3, 70000}
	s := kernels.OptimStep{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, StepSize: 1e-3, Update: true}
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
		lc := p.listCase(lens, nil)
		gv := down(p.g, lc.g[2].g)
		gv[len(gv)-1] = bad
		lc.g[2] = p.offsetUp(gv, 0)
		before := func(bs []both) [][]float32 {
			out := make([][]float32, len(bs))
			for i, b := range bs {
				out[i] = down(p.g, b.g)
			}
			return out
		}
		pb, mb, vb := before(lc.p), before(lc.m), before(lc.v)
		norm := p.g.AdamStepClipped(gpuSide(lc.p), gpuSide(lc.g), gpuSide(lc.m), gpuSide(lc.v), 1.0/1000, 1, s)()
		if !math.IsNaN(norm) && !math.IsInf(norm, 0) {
			t.Errorf("gradient with %v: norm %v", bad, norm)
		}
		for i := range lc.p {
			checkExact(t, fmt.Sprintf("%v: p[%d] unchanged", bad, i), down(p.g, lc.p[i].g), pb[i])
			checkExact(t, fmt.Sprintf("%v: m[%d] unchanged", bad, i), down(p.g, lc.m[i].g), mb[i])
			checkExact(t, fmt.Sprintf("%v: v[%d] unchanged", bad, i), down(p.g, lc.v[i].g), vb[i])
		}
	}
}

// TestAdamStepClippedTiming logs the device time of one update's gradient bookkeeping
// and Adam over the 6L-6L parameter list: the separate launches the trainer made
// (ScaleAll by 1/(sample size·scale), Σg² and its sum, ScaleAll when clipping,
// AdamStepAll) against AdamStepClipped. Neither reads the norm inside the timed loop.
// It only measures; skipped with -short.
func TestAdamStepClippedTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	be := gpu(t)
	net := sixLayerNet(t, be)
	r := rand.New(rand.NewPCG(97, 98))
	var ps, gs, ms, vs []kernels.Buffer
	total := 0
	for _, np := range net.Params() {
		n := np.P.Len()
		total += n
		ps, gs = append(ps, np.P), append(gs, be.Upload(randVec(r, n)))
		ms, vs = append(ms, be.Upload(randVec(r, n))), append(vs, be.Alloc(n))
	}
	// StepSize 0 and pre 1 keep the state from drifting over the repetitions.
	s := kernels.OptimStep{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, Update: true}
	us := func(f func()) float64 { return timeDevice(t, be, 20, f).Seconds() * 1e6 }
	for _, clip := range []bool{false, true} {
		sep := func() {
			be.ScaleAll(gs, 1)
			func() { defer be.enter()(); be.sumSquares(gs) }()
			if clip {
				be.ScaleAll(gs, 1)
			}
			be.AdamStepAll(ps, gs, ms, vs, s)
		}
		maxNorm := 0.0
		if clip {
			maxNorm = 1e-30 // always clips
		}
		fused := func() { be.AdamStepClipped(ps, gs, ms, vs, 1, maxNorm, s) }
		a, b := us(sep), us(fused)
		// Bytes: separate 2 (scale) + 1 (Σg²) [+ 2 (clip)] + 7 (Adam) passes of 4·total;
		// fused 1 + 7.
		passes := 10.0
		if clip {
			passes = 12
		}
		mb := float64(4*total) / 1e6
		t.Logf("clipping %v, %d tensors, %.1f MB per pass: separate %.1f µs (%.0f GB/s), fused %.1f µs (%.0f GB/s, %.1f µs saved)",
			clip, len(gs), mb, a, passes*mb/a*1e3, b, 8*mb/b*1e3, a-b)
	}
}
