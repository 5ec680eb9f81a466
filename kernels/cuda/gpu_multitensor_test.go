package cuda

import (
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// AdamStepAll and FillAll over many buffers (odd lengths, an empty one, slices of one
// storage as the fused q/k/v parameters are) equal the CPU backend's per-buffer AdamStep
// and Fill bit for bit.
func TestAdamStepAllFillAll(t *testing.T) {
	p := newPair(t, 41)
	lens := []int{1, 7, 0, 1000, 4099, 65536 + 3}
	type quad struct{ p, g, m, v kernels.Buffer }
	var gq, cq []quad
	for _, n := range lens {
		var a, b [4]kernels.Buffer
		for j := range a {
			v := randVec(p.r, n)
			if j == 3 {
				for i := range v {
					v[i] *= v[i] // second moments are ≥ 0
				}
			}
			a[j], b[j] = p.up(v)
		}
		gq = append(gq, quad{a[0], a[1], a[2], a[3]})
		cq = append(cq, quad{b[0], b[1], b[2], b[3]})
	}
	// Three slices of one storage.
	w, wc := p.up(randVec(p.r, 3*300))
	gr, grc := p.up(randVec(p.r, 3*300))
	for k := 0; k < 3; k++ {
		m, mc := p.up(randVec(p.r, 300))
		v, vc := p.up(make([]float32, 300))
		gq = append(gq, quad{p.g.Slice(w, 300*k, 300), p.g.Slice(gr, 300*k, 300), m, v})
		cq = append(cq, quad{p.c.Slice(wc, 300*k, 300), p.c.Slice(grc, 300*k, 300), mc, vc})
	}
	for _, s := range []kernels.OptimStep{
		{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, StepSize: 1e-3, Update: true},
		{Beta1: 0.9, Beta2: 0.999, OneMinusBeta1: 0.1, OneMinusBeta2: 0.001, Eps: 1e-8, Decay: -1e-5, StepSize: 5e-4, Update: true},
		{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8}, // RAdam before ρ_t ≥ 5
	} {
		var ps, gs, ms, vs []kernels.Buffer
		for i, q := range gq {
			ps, gs, ms, vs = append(ps, q.p), append(gs, q.g), append(ms, q.m), append(vs, q.v)
			c := cq[i]
			p.c.AdamStep(c.p, c.g, c.m, c.v, s)
		}
		p.g.AdamStepAll(ps, gs, ms, vs, s)
		for i := range gq {
			checkExact(t, "p", down(p.g, gq[i].p), down(p.c, cq[i].p))
			checkExact(t, "m", down(p.g, gq[i].m), down(p.c, cq[i].m))
			checkExact(t, "v", down(p.g, gq[i].v), down(p.c, cq[i].v))
		}
	}
	var gs []kernels.Buffer
	for i, q := range gq {
		gs = append(gs, q.g)
		p.c.Fill(cq[i].g, 0.5)
	}
	p.g.FillAll(gs, 0.5)
	for i := range gq {
		checkExact(t, "filled g", down(p.g, gq[i].g), down(p.c, cq[i].g))
	}
}
