package cpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// refGemm is the float64 reference: exact products, float64 sums, one rounding.
// It also returns Σ|a·b| per output, the scale that float32 accumulation errors
// are proportional to.
func refGemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) (want, scale []float64) {
	want, scale = make([]float64, m*n), make([]float64, m*n)
	for i := range m {
		for j := range n {
			var s, abs float64
			for l := range k {
				ai, bi := i*lda+l, l*ldb+j
				if transA {
					ai = l*lda + i
				}
				if transB {
					bi = j*ldb + l
				}
				av, bv := a[ai], b[bi]
				p := float64(av) * float64(bv)
				s += p
				abs += math.Abs(p)
			}
			s *= float64(alpha)
			if beta != 0 {
				s += float64(beta) * float64(c[i*ldc+j])
			}
			want[i*n+j], scale[i*n+j] = s, math.Abs(float64(alpha))*abs
		}
	}
	return want, scale
}

// extraTestKernels are the CPU's kernels other than the default and the portable one
// (the AVX2 kernel where AVX-512VL is the default); set by architecture test files.
var extraTestKernels []tileKernel

// testKernels returns every tile kernel this CPU can run, the portable one included.
func testKernels() []tileKernel {
	if defaultKernel.name == genericKernel.name {
		return []tileKernel{genericKernel}
	}
	return append([]tileKernel{defaultKernel, genericKernel}, extraTestKernels...)
}

func TestGemmMatchesFloat64(t *testing.T) {
	const u32 = 1.0 / (1 << 24)
	for _, kern := range testKernels() {
		for _, tc := range []struct {
			name        string
			ta, tb      bool
			m, n, k     int
			pad         int // extra leading-dimension elements
			alpha, beta float32
			workers     int
			nanC        bool // c holds NaNs that beta = 0 must not read
		}{
			{name: "1x1x1", m: 1, n: 1, k: 1, tb: true, alpha: 1},
			{name: "M=1 linear", m: 1, n: 37, k: 64, tb: true, alpha: 1},
			{name: "k%8!=0", m: 5, n: 7, k: 13, tb: true, alpha: 1},
			{name: "k=0 beta", m: 4, n: 5, k: 0, tb: true, alpha: 1, beta: 0.5},
			{name: "odd", m: 7, n: 11, k: 517, tb: true, alpha: 1, workers: 3},
			{name: "multi-chunk", m: 10, n: 9, k: 2048 + 5, tb: true, alpha: 1, workers: 2},
			{name: "NN padded", m: 13, n: 6, k: 33, pad: 3, alpha: 1, beta: 1},
			{name: "TN alpha beta", ta: true, m: 9, n: 22, k: 40, alpha: 0.5, beta: -2},
			{name: "TT", ta: true, tb: true, m: 8, n: 5, k: 19, pad: 1, alpha: 2},
			{name: "beta0 NaN c", m: 6, n: 6, k: 16, tb: true, alpha: 1, nanC: true},
			{name: "large", m: 64, n: 130, k: 512, tb: true, alpha: 1, workers: 4},
		} {
			t.Run(kern.name+"/"+tc.name, func(t *testing.T) {
				r := rand.New(rand.NewPCG(7, uint64(tc.m*1000+tc.n)))
				ar, ac := tc.m, tc.k
				if tc.ta {
					ar, ac = tc.k, tc.m
				}
				br, bc := tc.k, tc.n
				if tc.tb {
					br, bc = tc.n, tc.k
				}
				lda, ldb, ldc := ac+tc.pad, bc+tc.pad, tc.n+tc.pad
				a, b, c := randSlice(r, ar*lda), randSlice(r, br*ldb), randSlice(r, tc.m*ldc)
				if tc.nanC {
					for i := range c {
						c[i] = float32(math.NaN())
					}
				}
				want, scale := refGemm(tc.ta, tc.tb, tc.m, tc.n, tc.k, tc.alpha, a, lda, b, ldb, tc.beta, c, ldc)
				be := New(tc.workers, withKernel(kern))
				be.Gemm(tc.ta, tc.tb, tc.m, tc.n, tc.k, tc.alpha, Wrap(a), lda, Wrap(b), ldb, tc.beta, Wrap(c), ldc)
				var worst float64
				for i := range tc.m {
					for j := range tc.n {
						got, w := float64(c[i*ldc+j]), want[i*tc.n+j]
						// One rounding of the result plus float32 chains of ≤ kcChunk/8
						// products: a few u32 times the sum of |products| in practice.
						tol := u32*math.Abs(w) + 4*u32*scale[i*tc.n+j]
						d := math.Abs(got - w)
						if !(d <= tol) {
							t.Fatalf("c[%d,%d] = %g, want %g (|Δ| %g > %g)", i, j, got, w, d, tol)
						}
						worst = max(worst, d)
					}
				}
				t.Logf("max |Δ| vs float64: %.3g", worst)
			})
		}
	}
}

func TestLinearKernels(t *testing.T) {
	for _, kern := range testKernels() {
		for _, tc := range []struct {
			m, n, k int
			bias    bool
		}{{1, 1, 1, true}, {2, 3, 8, false}, {3, 4, 512, true}, {31, 33, 64, true}, {128, 50, 2048, true}} {
			r := rand.New(rand.NewPCG(3, uint64(tc.k)))
			x, w, bias := randSlice(r, tc.m*tc.k), randSlice(r, tc.n*tc.k), randSlice(r, tc.n)
			var bb []float32
			if tc.bias {
				bb = bias
			}
			got := make([]float32, tc.m*tc.n)
			New(2, withKernel(kern)).Linear(Wrap(got), Wrap(x), Wrap(w), wrapOrNil(bb), tc.m, tc.n, tc.k)
			ref := make([]float32, tc.m*tc.n)
			New(2, WithFloat64Linear()).Linear(Wrap(ref), Wrap(x), Wrap(w), wrapOrNil(bb), tc.m, tc.n, tc.k)
			var worst float64
			for i := range got {
				worst = max(worst, math.Abs(float64(got[i])-float64(ref[i])))
			}
			// |x·w| ≲ 3·sqrt(k) here; a few float32 ulps of that.
			if lim := 1e-6 * math.Sqrt(float64(tc.k)) * 4; worst > lim {
				t.Errorf("%s %dx%dx%d: max |Δ| vs float64 Linear %.3g > %.3g", kern.name, tc.m, tc.n, tc.k, worst, lim)
			}
			t.Logf("%s %dx%dx%d: max |Δ| vs float64 Linear %.3g", kern.name, tc.m, tc.n, tc.k, worst)
		}
	}
}

func wrapOrNil(v []float32) kernels.Buffer {
	if v == nil {
		return nil
	}
	return Wrap(v)
}
