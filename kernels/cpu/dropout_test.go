package cpu

import (
	"math"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// splitMix64 is SplitMix64 written as the sequential generator of Steele, Lea and
// Flood (state += γ, then the finaliser), independently of kernels.DropoutHash, which
// claims its i-th output is element i's hash.
type splitMix64 uint64

func (s *splitMix64) next() uint64 {
	*s += 0x9E3779B97F4A7C15
	z := uint64(*s)
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// refMask is the spec with the float64 comparison u ≥ p instead of the integer
// threshold the implementation uses, so a wrong threshold shows up.
func refMask(seed uint64, p float64, n int) []float32 {
	s := splitMix64(seed)
	keep := float32(1 / (1 - p))
	m := make([]float32, n)
	for i := range m {
		u := float64(s.next()>>40) * 0x1p-24
		if u >= p {
			m[i] = keep
		}
	}
	return m
}

func dropoutMask(be *Backend, n int, p float64, seed uint64) []float32 {
	m := be.Alloc(n)
	be.DropoutMask(m, p, seed)
	return Data(m)
}

// The generator itself: SplitMix64's published outputs (the test vectors of Vigna's
// reference splitmix64.c, seeds 0 and 1234567) must come out of DropoutHash.
func TestDropoutHashVectors(t *testing.T) {
	for _, tc := range []struct {
		seed uint64
		want []uint64
	}{
		{0, []uint64{0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f}},
		{1234567, []uint64{6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431, 16408922859458223821}},
	} {
		s := splitMix64(tc.seed)
		for i, w := range tc.want {
			if got := kernels.DropoutHash(tc.seed, uint64(i)); got != w {
				t.Errorf("DropoutHash(%d, %d) = %#x, want %#x", tc.seed, i, got, w)
			}
			if got := s.next(); got != w {
				t.Errorf("test's splitMix64(%d) output %d = %#x, want %#x", tc.seed, i, got, w)
			}
		}
	}
}

// Hand-computed elements: seed 1234567, p = 0.3. T = ⌈0.3·2²⁴⌉ = ⌈5033164.8⌉ = 5033165;
// the published outputs above shifted right by 40 (computed with Python's integers)
// are 5873360, 2913264, 8928956, 4177655 and 14923828, so elements 0, 2 and 4 are
// kept (1/0.7 in float32) and 1 and 3 dropped.
func TestDropoutMaskHandComputed(t *testing.T) {
	got := dropoutMask(New(1), 5, 0.3, 1234567)
	k := float32(1 / 0.7)
	want := []float32{k, 0, k, 0, k}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("element %d = %v, want %v", i, got[i], want[i])
		}
	}
	if th := kernels.DropoutThreshold(0.3); th != 5033165 {
		t.Errorf("DropoutThreshold(0.3) = %d, want 5033165", th)
	}
}

// The threshold at its edge: with p = r₀·2⁻²⁴ exactly, where r₀ is element 0's 24-bit
// value, u = p so element 0 is kept; one step of 2⁻²⁴ higher it is dropped.
func TestDropoutMaskThresholdEdge(t *testing.T) {
	const seed = 42
	s := splitMix64(seed)
	r0 := s.next() >> 40
	be := New(1)
	if m := dropoutMask(be, 1, float64(r0)*0x1p-24, seed); m[0] == 0 {
		t.Errorf("p = u₀ = %d·2⁻²⁴: element 0 dropped, want kept", r0)
	}
	if m := dropoutMask(be, 1, float64(r0+1)*0x1p-24, seed); m[0] != 0 {
		t.Errorf("p = u₀+2⁻²⁴: element 0 = %v, want dropped", m[0])
	}
}

// Whole masks against the sequential reference, with several workers (any split of
// the index range must give the same mask), and the kept fraction of 10⁶ draws within
// 5 standard deviations (√(p(1−p)/n): 1.5e-3 at p = 0.1, 2.3e-3 at p = 0.3).
func TestDropoutMaskMatchesReference(t *testing.T) {
	const n = 1_000_000
	for _, p := range []float64{0.1, 0.3} {
		for _, seed := range []uint64{0, 7, 1 << 63, math.MaxUint64} {
			want := refMask(seed, p, n)
			for _, workers := range []int{1, 5} {
				got := dropoutMask(New(workers), n, p, seed)
				for i := range want {
					if got[i] != want[i] {
						t.Fatalf("p %g seed %d workers %d: element %d = %v, want %v", p, seed, workers, i, got[i], want[i])
					}
				}
			}
			kept := 0
			for _, v := range want {
				if v != 0 {
					kept++
				}
			}
			frac, sd := float64(kept)/n, math.Sqrt(p*(1-p)/n)
			if math.Abs(frac-(1-p)) > 5*sd {
				t.Errorf("p %g seed %d: kept fraction %.6f, want %.6f ± %.2g (5σ)", p, seed, frac, 1-p, 5*sd)
			}
		}
	}
	a, b := dropoutMask(New(1), 1000, 0.5, 1), dropoutMask(New(1), 1000, 0.5, 2)
	same := 0
	for i := range a {
		if a[i] == b[i] {
			same++
		}
	}
	if same > 600 { // independent masks agree on ~500 of 1000 (σ ≈ 16)
		t.Errorf("seeds 1 and 2 agree on %d of 1000 elements", same)
	}
}

// p ≤ 0 keeps every element with scale 1, p ≥ 1 drops every one; the mask is written
// whatever the buffer held.
func TestDropoutMaskEdges(t *testing.T) {
	be := New(2)
	for _, tc := range []struct {
		p    float64
		want float32
	}{{0, 1}, {-0.5, 1}, {1, 0}, {1.5, 0}} {
		m := be.Upload([]float32{9, 9, 9, 9, 9, 9, 9})
		be.DropoutMask(m, tc.p, 3)
		for i, v := range Data(m) {
			if v != tc.want {
				t.Errorf("p %g: element %d = %v, want %v", tc.p, i, v, tc.want)
			}
		}
	}
	be.DropoutMask(be.Alloc(0), 0.1, 3) // empty: nothing to do, no panic
}

// ApplyDropout is DropoutMask followed by Mul, bit for bit, in place or not, with
// negative and non-finite inputs (x·0 keeps −0 and turns Inf into NaN as Mul does).
func TestApplyDropoutEqualsMaskThenMul(t *testing.T) {
	be := New(3)
	x := make([]float32, 10007)
	for i := range x {
		x[i] = float32(i%17) - 8.5
	}
	x[3] = float32(math.Inf(-1))
	for _, p := range []float64{0, 0.1, 0.5, 1} {
		xb := be.Upload(x)
		mask, want, got := be.Alloc(len(x)), be.Alloc(len(x)), be.Alloc(len(x))
		be.DropoutMask(mask, p, 42)
		be.Mul(want, xb, mask)
		be.ApplyDropout(got, xb, p, 42)
		be.ApplyDropout(xb, xb, p, 42)
		w, g, in := make([]float32, len(x)), make([]float32, len(x)), make([]float32, len(x))
		be.Download(w, want)
		be.Download(g, got)
		be.Download(in, xb)
		for i := range w {
			if math.Float32bits(g[i]) != math.Float32bits(w[i]) || math.Float32bits(in[i]) != math.Float32bits(w[i]) {
				t.Fatalf("p %g element %d: ApplyDropout %v, in place %v, DropoutMask+Mul %v", p, i, g[i], in[i], w[i])
			}
		}
	}
}
