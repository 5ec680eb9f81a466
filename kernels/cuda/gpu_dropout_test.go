package cuda

import (
	"fmt"
	"math"
	"testing"
)

// DropoutMask on the GPU against the CPU backend (whose function the cpu package tests
// against SplitMix64's published outputs). Tolerance: none, bit for bit. The kernel's
// only arithmetic is the 64-bit integer hash and a comparison with the host's integer
// threshold, and the kept value is the host's float32, so any difference is a bug.
// The sizes include odd ones (grid-stride tails) and one over 2²⁴ elements (64 MiB per
// backend), past where a 32-bit float index or a 24-bit counter would go wrong.
func TestDropoutMask(t *testing.T) {
	p := newPair(t, 31)
	type tc struct {
		n    int
		prob float64
		seed uint64
	}
	var cases []tc
	for _, n := range []int{1, 7, 1000, 4097, 65537, 1<<20 + 1} {
		for _, prob := range []float64{0, 0.1, 0.3, 0.5, 1 - 0x1p-24, 1} {
			for _, seed := range []uint64{0, 1, 0x9E3779B97F4A7C15, math.MaxUint64} {
				cases = append(cases, tc{n, prob, seed})
			}
		}
	}
	cases = append(cases, tc{1<<24 + 3, 0.1, 12345}, tc{1<<24 + 3, 0.3, math.MaxUint64 - 1})
	for _, c := range cases {
		// Start from non-zero contents: the kernel must write every element.
		fill := make([]float32, c.n)
		for i := range fill {
			fill[i] = 9
		}
		g, cm := p.up(fill)
		p.g.DropoutMask(g, c.prob, c.seed)
		p.c.DropoutMask(cm, c.prob, c.seed)
		checkExact(t, fmt.Sprintf("n %d p %g seed %#x", c.n, c.prob, c.seed), down(p.g, g), down(p.c, cm))
	}
}

// A mask drawn into a Slice is indexed from the view's start and leaves the rest of
// the allocation alone (the model draws into fresh buffers, but Slice is part of the
// Buffer contract).
func TestDropoutMaskSlice(t *testing.T) {
	p := newPair(t, 32)
	const n, off, m = 3000, 1001, 1500
	fill := make([]float32, n)
	for i := range fill {
		fill[i] = 9
	}
	g, c := p.up(fill)
	p.g.DropoutMask(p.g.Slice(g, off, m), 0.25, 77)
	p.c.DropoutMask(p.c.Slice(c, off, m), 0.25, 77)
	got, want := down(p.g, g), down(p.c, c)
	checkExact(t, "slice", got, want)
	for _, i := range []int{0, off - 1, off + m, n - 1} {
		if got[i] != 9 {
			t.Errorf("element %d outside the slice = %v, want 9 (untouched)", i, got[i])
		}
	}
}

// ApplyDropout on the GPU equals the CPU backend's bit for bit, in place and not, and
// equals DropoutMask followed by Mul on the GPU itself (its contract), including the
// signs of zero and non-finite inputs, which x·0 keeps (−x·0 = −0, Inf·0 = NaN).
func TestApplyDropout(t *testing.T) {
	p := newPair(t, 33)
	for _, n := range []int{1, 7, 4097, 1<<20 + 1} {
		for _, prob := range []float64{0, 0.1, 0.3, 1} {
			x := randVec(p.r, n)
			x[0] = float32(math.Inf(1))
			if n > 1 {
				x[1] = -x[n-1]
			}
			name := fmt.Sprintf("n %d p %g", n, prob)
			xg, xc := p.up(x)
			yg, yc := p.g.Alloc(n), p.c.Alloc(n)
			p.g.ApplyDropout(yg, xg, prob, 99)
			p.c.ApplyDropout(yc, xc, prob, 99)
			checkExact(t, name, down(p.g, yg), down(p.c, yc))
			mask, via := p.g.Alloc(n), p.g.Alloc(n)
			p.g.DropoutMask(mask, prob, 99)
			p.g.Mul(via, xg, mask)
			checkExact(t, name+" vs DropoutMask+Mul", down(p.g, yg), down(p.g, via))
			p.g.ApplyDropout(xg, xg, prob, 99) // in place
			checkExact(t, name+" in place", down(p.g, xg), down(p.c, yc))
		}
	}
}
