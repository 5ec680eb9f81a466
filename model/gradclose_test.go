package model_test

import (
	"math"
	"testing"
)

// gradsClose fails t unless every gradient in got is within 1e-5 of the largest
// magnitude of its tensor in ref, plus 1e-7 of the largest of all tensors: a few float32
// roundings of sums grouped another way. The floor is for gradients that are zero but
// for rounding noise (the self-attention k bias: softmax does not see it), which have no
// scale of their own. It returns the worst difference as a fraction of its bound.
func gradsClose(t *testing.T, gotName string, got map[string][]float32, refName string, ref map[string][]float32) float64 {
	t.Helper()
	largest := func(v []float32) float64 {
		s := 0.0
		for _, x := range v {
			s = max(s, math.Abs(float64(x)))
		}
		return s
	}
	all := 0.0
	for _, r := range ref {
		all = max(all, largest(r))
	}
	worst := 0.0
	for name, r := range ref {
		g, scale := got[name], largest(r)
		if len(g) != len(r) {
			t.Fatalf("%s: %d gradients in %s, %d in %s", name, len(g), gotName, len(r), refName)
		}
		for i := range r {
			bound := 1e-5*scale + 1e-7*all
			d := math.Abs(float64(g[i] - r[i]))
			if !(d <= bound) {
				t.Fatalf("%s[%d]: %s %v, %s %v (largest %.3g, of all %.3g)", name, i, gotName, g[i], refName, r[i], scale, all)
			}
			worst = max(worst, d/bound)
		}
	}
	return worst
}
