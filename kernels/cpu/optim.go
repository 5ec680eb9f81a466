package cpu

import (
	"math"

	"github.com/xform-dev/xform/kernels"
)

var _ kernels.ClippedOptimizer = (*Backend)(nil)

// AdamStepClipped implements kernels.ClippedOptimizer as the reference: each gradient
// is copied into a scratch slice and run through this backend's own Scale, SumSquares
// and AdamStep, so the bits are those of the separate operations by construction (the
// trainer's tests compare the two paths bit for bit). The gradients stay unscaled.
func (be *Backend) AdamStepClipped(p, g, m, v []kernels.Buffer, pre float32, maxNorm float64, s kernels.OptimStep) func() float64 {
	if len(g) != len(p) || len(m) != len(p) || len(v) != len(p) {
		panic("cpu backend: AdamStepClipped lists of different lengths")
	}
	longest := 0
	for _, x := range g {
		longest = max(longest, x.Len())
	}
	tmp := make([]float32, longest)
	scaled := func(x kernels.Buffer) kernels.Buffer {
		t := Wrap(tmp[:x.Len()])
		copy(f(t), f(x))
		be.Scale(t, pre)
		return t
	}
	// Per buffer, then added in buffer order: the trainer's fallback sums
	// SumSquares(g) buffer by buffer.
	var ss float64
	for _, x := range g {
		ss += be.SumSquares(scaled(x))
	}
	norm := math.Sqrt(ss)
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		return func() float64 { return norm }
	}
	clip := maxNorm > 0 && norm > maxNorm
	c := float32(maxNorm / (norm + 1e-6))
	for i := range p {
		gi := scaled(g[i])
		if clip {
			be.Scale(gi, c)
		}
		be.AdamStep(p[i], gi, m[i], v[i], s)
	}
	return func() float64 { return norm }
}
