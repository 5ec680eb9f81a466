package cuda

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
)

// The 16-bit GEMM path (Options.Precision BF16 and FP16) against references computed
// here on the CPU, in two ways:
//
//   - tight: the operands rounded to 16 bits in Go (round16, written from the IEEE
//     definition, independent of cast.cu's bit manipulation), then multiplied and
//     summed in float64. The GPU multiplies the very same 16-bit values, and their
//     products are exact in fp32 (8+8 or 11+11 significand bits ≤ 24), so the only
//     difference left is the fp32 accumulation: ≈ √k·2⁻²⁴ ≈ 1.3e-6 of ‖ref‖ for
//     k = 512 with round-to-nearest sums, plus ≈ 3e-9·k ≈ 1.6e-6 if the tensor cores
//     truncate partial sums (as measured on earlier NVIDIA generations). We allow
//     tolTight = 1e-5 and keep every reduction length ≤ 512. An operand that is not
//     rounded, or truncated instead of rounded, is off by ≈ 0.4…0.6·u of ‖ref‖
//     (≥ 2e-4 for fp16), twenty times the bound and more.
//   - loose: the plain product of the unrounded fp32 operands (float64). Rounding to
//     nearest moves an operand by at most u·|a| + η, u the unit roundoff (bf16 2⁻⁸,
//     fp16 2⁻¹¹) and η half the subnormal spacing (bf16 2⁻¹³⁴, fp16 2⁻²⁵), so each
//     product moves by at most (2u+u²)|a||b| + η(1+u)(|a|+|b|) + η². Summed over k and
//     scaled by |α|, plus (k+2)·2⁻²³ of |α|Σ|â||b̂| + |β·c| for the fp32 accumulation
//     (γ_{k+2} with the truncating unit 2⁻²³), this bounds every element rigorously.
const tolTight = 1e-5

// format16 describes a 16-bit operand type for the references.
type format16 struct {
	prec   Precision
	p      int     // significand bits, the implicit one included
	emin   int     // exponent of the smallest normal
	max    float64 // largest finite value
	u, eta float64 // unit roundoff, half the subnormal spacing
}

var (
	fmtBF16 = format16{prec: BF16, p: 8, emin: -126, max: math.Ldexp(2-math.Ldexp(1, -7), 127), u: math.Ldexp(1, -8), eta: math.Ldexp(1, -134)}
	fmtF16  = format16{prec: FP16, p: 11, emin: -14, max: 65504, u: math.Ldexp(1, -11), eta: math.Ldexp(1, -25)}
	formats = []format16{fmtBF16, fmtF16}
)

// round16 rounds f to the nearest value of the format, ties to even, from the
// definition: the representable values in f's binade (or the subnormal range, below
// 2^emin) are the multiples of q = 2^(e−p+1), so f/q is rounded to an even integer; a
// result beyond the largest finite value overflows to ±Inf (IEEE: the rounding is done
// as if the exponent were unbounded, which puts the tie between the largest finite
// value and the next power of two on the power of two, whose significand is even).
func (ft format16) round16(f float32) float32 {
	x := float64(f)
	if x == 0 || math.IsNaN(x) || math.IsInf(x, 0) {
		return f
	}
	_, exp := math.Frexp(x) // |x| = frac·2^exp, frac in [0.5, 1)
	e := max(exp-1, ft.emin)
	q := math.Ldexp(1, e-ft.p+1)
	r := math.RoundToEven(x/q) * q
	if math.Abs(r) > ft.max {
		return float32(math.Copysign(math.Inf(1), x))
	}
	return float32(r)
}

func TestRound16Reference(t *testing.T) {
	l := func(m float64, e int) float32 { return float32(math.Ldexp(m, e)) }
	inf := float32(math.Inf(1))
	for _, tc := range []struct {
		ft      format16
		in, out float32
	}{
		{fmtBF16, 1, 1},
		{fmtBF16, l(1+1.0/256, 0), 1},              // tie, even is 1
		{fmtBF16, l(1+3.0/256, 0), l(1+1.0/64, 0)}, // tie, even is 1+2⁻⁶
		{fmtBF16, l(1+1.0/256+1.0/(1<<20), 0), l(1+1.0/128, 0)},
		{fmtBF16, -l(1+1.0/256+1.0/(1<<20), 0), -l(1+1.0/128, 0)},
		{fmtBF16, math.Float32frombits(0x7f7f0000), math.Float32frombits(0x7f7f0000)}, // largest finite
		{fmtBF16, math.Float32frombits(0x7f7f7fff), math.Float32frombits(0x7f7f0000)},
		{fmtBF16, math.Float32frombits(0x7f7f8000), inf}, // tie with 2^128
		{fmtBF16, math.MaxFloat32, inf},
		{fmtBF16, math.Float32frombits(0x00000001), 0},                                // 2⁻¹⁴⁹
		{fmtBF16, math.Float32frombits(0x00008000), 0},                                // tie with the even 0
		{fmtBF16, math.Float32frombits(0x00008001), math.Float32frombits(0x00010000)}, // smallest subnormal
		{fmtBF16, math.Float32frombits(0x00018000), math.Float32frombits(0x00020000)}, // tie, even is 2 units
		{fmtBF16, -inf, -inf},
		{fmtF16, 0.1, l(1638, -14)}, // 0x2e66
		{fmtF16, 65504, 65504},
		{fmtF16, 65519, 65504},
		{fmtF16, 65520, inf}, // tie with 2^16
		{fmtF16, -65520, -inf},
		{fmtF16, 1e5, inf},
		{fmtF16, l(1+1.0/2048, 0), 1},               // tie, even is 1
		{fmtF16, l(1+3.0/2048, 0), l(1+1.0/512, 0)}, // tie, even is 1+2⁻⁹
		{fmtF16, 2049, 2048},
		{fmtF16, 2051, 2052},
		{fmtF16, l(1, -14), l(1, -14)},             // smallest normal
		{fmtF16, l(1, -14) - l(1, -25), l(1, -14)}, // 1023.5 units: tie, even is 1024
		{fmtF16, l(1, -24), l(1, -24)},             // smallest subnormal
		{fmtF16, l(1, -25), 0},                     // tie with the even 0
		{fmtF16, -l(1, -25), float32(math.Copysign(0, -1))},
		{fmtF16, l(1, -25) + l(1, -40), l(1, -24)},
		{fmtF16, l(3, -25), l(1, -23)}, // 1.5 units: tie, even is 2
		{fmtF16, l(1, -30), 0},
	} {
		got := tc.ft.round16(tc.in)
		if math.Float32bits(got) != math.Float32bits(tc.out) {
			t.Errorf("%v round16(%g = %#08x) = %g (%#08x), want %g (%#08x)", tc.ft.prec, tc.in, math.Float32bits(tc.in),
				got, math.Float32bits(got), tc.out, math.Float32bits(tc.out))
		}
	}
	if v := fmtF16.round16(float32(math.NaN())); !math.IsNaN(float64(v)) {
		t.Errorf("fp16 round16(NaN) = %v", v)
	}
	// The definition and the bit manipulation of gpu_test.go's bf16Round agree on
	// random bit patterns (every exponent, subnormals and overflow included).
	r := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 1<<20; i++ {
		f := math.Float32frombits(r.Uint32())
		a, b := fmtBF16.round16(f), bf16Round(f)
		if math.Float32bits(a) != math.Float32bits(b) && !(a != a && b != b) {
			t.Fatalf("bf16 of %#08x: definition %#08x, bits %#08x", math.Float32bits(f), math.Float32bits(a), math.Float32bits(b))
		}
	}
}

// New rejects a precision it does not know before touching the driver, so this runs
// everywhere; on a GPU it also checks that a Backend made with FP16 reports it and
// rounds its GEMMs.
func TestNewPrecision(t *testing.T) {
	if _, err := New(context.Background(), Options{Precision: Precision(7)}); err == nil || !strings.Contains(err.Error(), "Precision(7)") {
		t.Errorf("New with Precision(7): %v", err)
	}
	gpu(t)
	be, err := New(context.Background(), Options{Precision: FP16, SyncCheck: true, CacheDir: os.Getenv("XFORM_CUDA_TEST_CACHE")})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := be.Close(); err != nil {
			t.Error(err)
		}
	}()
	if be.Precision() != FP16 {
		t.Fatalf("Precision() = %v", be.Precision())
	}
	r := rand.New(rand.NewPCG(1, 2))
	x, w := randVec(r, 7*64), randVec(r, 9*64)
	y := be.Alloc(7 * 9)
	be.Linear(y, be.Upload(x), be.Upload(w), nil, 7, 9, 64)
	ref, _, _ := refGemm(fmtF16, false, true, 7, 9, 64, 1, x, 64, w, 64, 0, make([]float32, 7*9), 9)
	checkClose(t, "Linear fp16 (own Backend)", down(be, y), ref, tolTight)
}

// withPrecision switches the shared test Backend's GEMMs to p for the rest of the test.
func withPrecision(t *testing.T, p Precision) *Backend {
	t.Helper()
	g := gpu(t)
	old := g.precision
	g.precision = p
	t.Cleanup(func() { g.precision = old })
	return g
}

func TestCast16(t *testing.T) {
	for _, ft := range formats {
		t.Run(ft.prec.String(), func(t *testing.T) {
			g := withPrecision(t, ft.prec)
			r := rand.New(rand.NewPCG(9, uint64(ft.prec)))
			// Random bit patterns reach every exponent, NaN payloads, subnormals and
			// overflow; the rest are the hand-picked values of TestRound16Reference.
			var v [3][]float32
			for i, n := range []int{1000, 1, 333} {
				for range n {
					v[i] = append(v[i], math.Float32frombits(r.Uint32()))
				}
			}
			for i := range v[0] {
				if i%3 == 0 { // ordinary magnitudes too, where most data lives
					v[0][i] = float32(r.NormFloat64())
				}
			}
			v[0] = append(v[0], 65504, 65519, 65520, -65520, 1e5, 2049, 2051, 0.1, float32(math.Inf(-1)),
				float32(math.Ldexp(1, -25)), float32(math.Ldexp(3, -25)), float32(math.Ldexp(1, -14)-math.Ldexp(1, -25)),
				math.Float32frombits(0x7f7f8000), math.Float32frombits(0x00008000), math.Float32frombits(0x00018000))
			var bufs [3]kernels.Buffer
			for i := range v {
				bufs[i] = g.Upload(v[i])
			}
			outs := [3]kernels.Buffer{g.Alloc(len(v[0])), g.Alloc(len(v[1])), g.Alloc(len(v[2]))}
			func() {
				defer g.enter()()
				var ops [3]operand16
				for i := range ops {
					ops[i] = operand16{addr(bufs[i]), len(v[i])}
				}
				p := g.cast16(ops)
				back := g.fn.bf16ToF32
				if ft.prec == FP16 {
					back = g.fn.f16ToF32
				}
				for i := range p {
					g.prm.reset().ptr(addr(outs[i])).ptr(p[i]).i64(len(v[i]))
					g.elem(back, int64(len(v[i])))
				}
			}()
			for i := range v {
				want := make([]float32, len(v[i]))
				for j, f := range v[i] {
					want[j] = ft.round16(f)
				}
				checkExact(t, fmt.Sprintf("array %d", i), down(g, outs[i]), want)
			}
			// A source 4 bytes off a 16-byte boundary takes the one-element path for the
			// whole array (the others took the four-element one for all but their tails).
			odd := g.Alloc(len(v[0]) - 1)
			func() {
				defer g.enter()()
				p := g.cast16([3]operand16{{addr(bufs[0]) + 4, len(v[0]) - 1}})
				back := g.fn.bf16ToF32
				if ft.prec == FP16 {
					back = g.fn.f16ToF32
				}
				g.prm.reset().ptr(addr(odd)).ptr(p[0]).i64(len(v[0]) - 1)
				g.elem(back, int64(len(v[0])-1))
			}()
			want := make([]float32, len(v[0])-1)
			for j, f := range v[0][1:] {
				want[j] = ft.round16(f)
			}
			checkExact(t, "misaligned array", down(g, odd), want)
		})
	}
}

// refGemm computes c = α·op(a)·op(b) + β·c0 (row-major, leading dimensions as Gemm's)
// in float64 twice: on operands rounded to ft (tight, returned as float32 like the
// GPU's output) and on the operands as given (exact), with the loose bound of each
// element (see the top of this file). Elements of c0 outside the m×n block are copied.
func refGemm(ft format16, ta, tb bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c0 []float32, ldc int) (tight []float32, exact, bound []float64) {
	at := func(i, l int) float32 {
		if ta {
			return a[l*lda+i]
		}
		return a[i*lda+l]
	}
	bt := func(l, j int) float32 {
		if tb {
			return b[j*ldb+l]
		}
		return b[l*ldb+j]
	}
	tight = slices.Clone(c0)
	exact, bound = make([]float64, len(c0)), make([]float64, len(c0))
	for i, v := range c0 {
		exact[i] = float64(v)
	}
	u, eta := ft.u, ft.eta
	al, bf := float64(alpha), float64(beta)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s16, s, p, p16, q float64
			for l := 0; l < k; l++ {
				x, y := at(i, l), bt(l, j)
				xr, yr := float64(ft.round16(x)), float64(ft.round16(y))
				s16 += xr * yr
				s += float64(x) * float64(y)
				p += math.Abs(float64(x) * float64(y))
				p16 += math.Abs(xr * yr)
				q += math.Abs(float64(x)) + math.Abs(float64(y))
			}
			idx := i*ldc + j
			c := float64(c0[idx])
			if beta == 0 {
				c = 0 // cuBLAS does not read C when β = 0
			}
			tight[idx] = float32(al*s16 + bf*c)
			exact[idx] = al*s + bf*c
			kf := float64(k)
			bound[idx] = math.Abs(al)*((2*u+u*u)*p+eta*(1+u)*q+kf*eta*eta) +
				(kf+2)*math.Ldexp(1, -23)*(math.Abs(al)*p16+math.Abs(bf*c))
		}
	}
	return tight, exact, bound
}

// checkBound requires |got − exact| ≤ bound element by element and logs the worst
// ratio and the relative error.
func checkBound(t *testing.T, what string, got []float32, exact, bound []float64) {
	t.Helper()
	worst, at := 0.0, -1
	var num, den float64
	for i, g := range got {
		d := math.Abs(float64(g) - exact[i])
		num += d * d
		den += exact[i] * exact[i]
		if d == 0 {
			continue
		}
		if r := d / bound[i]; !(r <= worst) {
			worst, at = r, i
		}
	}
	if !(worst <= 1) {
		t.Errorf("%s vs fp32 operands: element %d = %.9g, exact %.9g, off by %.3g > bound %.3g", what, at, got[at], exact[at],
			math.Abs(float64(got[at])-exact[at]), bound[at])
		return
	}
	t.Logf("%s vs fp32 operands: relative error %.3g, worst element at %.2f of its bound", what, math.Sqrt(num/den), worst)
}

func TestGemm16(t *testing.T) {
	for _, ft := range formats {
		for _, tc := range []struct {
			ta, tb      bool
			m, n, k     int
			alpha, beta float32
		}{
			{false, false, 17, 33, 65, 1, 0}, {true, false, 17, 33, 65, 0.5, 1}, {false, true, 64, 64, 512, 1, 0},
			{true, true, 3, 5, 7, -2, 0.25}, {false, false, 1, 1000, 512, 1, 0},
		} {
			t.Run(fmt.Sprintf("%v_%v%v_%dx%dx%d", ft.prec, tc.ta, tc.tb, tc.m, tc.n, tc.k), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				r := rand.New(rand.NewPCG(3, 7))
				ar, ac := tc.m, tc.k
				if tc.ta {
					ar, ac = tc.k, tc.m
				}
				br, bc := tc.k, tc.n
				if tc.tb {
					br, bc = tc.n, tc.k
				}
				// Padded leading dimensions: the gaps are rounded too but never read.
				lda, ldb, ldc := ac+3, bc+1, tc.n+2
				a, b, c := randVec(r, ar*lda), randVec(r, br*ldb), randVec(r, tc.m*ldc)
				gc := g.Upload(c)
				g.Gemm(tc.ta, tc.tb, tc.m, tc.n, tc.k, tc.alpha, g.Upload(a), lda, g.Upload(b), ldb, tc.beta, gc, ldc)
				tight, exact, bound := refGemm(ft, tc.ta, tc.tb, tc.m, tc.n, tc.k, tc.alpha, a, lda, b, ldb, tc.beta, c, ldc)
				got := down(g, gc)
				checkClose(t, "Gemm vs rounded operands", got, tight, tolTight)
				checkBound(t, "Gemm", got, exact, bound)
			})
		}
	}
}

func TestLinear16(t *testing.T) {
	for _, ft := range formats {
		for _, tc := range []struct {
			m, n, k int
			bias    bool
		}{{1, 3, 2, true}, {5, 7, 9, false}, {70, 130, 64, true}, {300, 1536, 512, true}, {8, 9000, 512, false}} {
			t.Run(fmt.Sprintf("%v_%dx%dx%d_%v", ft.prec, tc.m, tc.n, tc.k, tc.bias), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				r := rand.New(rand.NewPCG(4, 7))
				x, w := randVec(r, tc.m*tc.k), randVec(r, tc.n*tc.k)
				c0 := make([]float32, tc.m*tc.n)
				var gbias kernels.Buffer
				beta := float32(0)
				if tc.bias {
					bias := randVec(r, tc.n)
					gbias = g.Upload(bias)
					for i := 0; i < tc.m; i++ {
						copy(c0[i*tc.n:], bias)
					}
					beta = 1
				}
				gy := g.Alloc(tc.m * tc.n)
				g.Linear(gy, g.Upload(x), g.Upload(w), gbias, tc.m, tc.n, tc.k)
				tight, exact, bound := refGemm(ft, false, true, tc.m, tc.n, tc.k, 1, x, tc.k, w, tc.k, beta, c0, tc.n)
				got := down(g, gy)
				checkClose(t, "Linear vs rounded operands", got, tight, tolTight)
				checkBound(t, "Linear", got, exact, bound)
			})
		}
	}
}

func TestLinearBackward16(t *testing.T) {
	for _, ft := range formats {
		// m is dw's reduction length: ≤ 512, see tolTight.
		for _, tc := range []struct{ m, n, k int }{{1, 3, 2}, {70, 130, 64}, {300, 96, 32}, {512, 256, 64}} {
			t.Run(fmt.Sprintf("%v_%dx%dx%d", ft.prec, tc.m, tc.n, tc.k), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				r := rand.New(rand.NewPCG(21, 7))
				m, n, k := tc.m, tc.n, tc.k
				x, w, dy := randVec(r, m*k), randVec(r, n*k), randVec(r, m*n)
				dw0, db0 := randVec(r, n*k), randVec(r, n) // dw and db accumulate onto these
				gx, gw, gdy := g.Upload(x), g.Upload(w), g.Upload(dy)
				gdx, gdw, gdb := g.Alloc(m*k), g.Upload(dw0), g.Upload(db0)
				g.LinearBackward(gdx, gdw, gdb, gdy, gx, gw, m, n, k)

				check := func(what string, got []float32, tight []float32, exact, bound []float64) {
					t.Helper()
					checkClose(t, what+" vs rounded operands", got, tight, tolTight)
					checkBound(t, what, got, exact, bound)
				}
				tight, exact, bound := refGemm(ft, false, false, m, k, n, 1, dy, n, w, k, 0, make([]float32, m*k), k)
				check("dx", down(g, gdx), tight, exact, bound)
				dw1 := down(g, gdw)
				tight, exact, bound = refGemm(ft, true, false, n, k, m, 1, dy, n, x, k, 1, dw0, k)
				check("dw", dw1, tight, exact, bound)
				// db: the sum of the 16-bit dy from the dw product's BGRADB epilogue where
				// cuBLASLt has it for the shape, else the fp32 column sum (dbWant,
				// gpu_bgrad_test.go).
				db, tolDB := dbWant(g, ft, dy, db0, m, n, k, 1)
				checkClose(t, "db", down(g, gdb), db, tolDB)

				// One gradient at a time: the cast launch then has an empty slot.
				g.LinearBackward(nil, gdw, nil, gdy, gx, gw, m, n, k)
				tight, exact, bound = refGemm(ft, true, false, n, k, m, 1, dy, n, x, k, 1, dw1, k)
				check("dw only", down(g, gdw), tight, exact, bound)
				gdx2 := g.Alloc(m * k)
				g.LinearBackward(gdx2, nil, nil, gdy, gx, gw, m, n, k)
				tight, exact, bound = refGemm(ft, false, false, m, k, n, 1, dy, n, w, k, 0, make([]float32, m*k), k)
				check("dx only", down(g, gdx2), tight, exact, bound)
			})
		}
	}
}

// TestFP16Overflow: fp16 operands beyond ±65504 become ±Inf and NaN stays NaN, so the
// product is ±Inf or NaN there (what a loss-scaled trainer detects); bf16 has fp32's
// range, so the same row stays finite.
func TestFP16Overflow(t *testing.T) {
	const m, n, k = 4, 6, 8
	r := rand.New(rand.NewPCG(8, 9))
	x, w := randVec(r, m*k), randVec(r, n*k)
	x[0*k], x[1*k], x[2*k] = 1e5, -1e5, float32(math.NaN())
	for j := 0; j < n; j++ {
		w[j*k] = float32(1 - 2*(j%2)) // +1, −1, … so the infinities alternate in sign
	}
	for _, ft := range formats {
		t.Run(ft.prec.String(), func(t *testing.T) {
			g := withPrecision(t, ft.prec)
			gy := g.Alloc(m * n)
			g.Linear(gy, g.Upload(x), g.Upload(w), g.Upload(randVec(r, n)), m, n, k)
			y := down(g, gy)
			for j := 0; j < n; j++ {
				s := float64(w[j*k])
				if ft.prec == FP16 {
					if got := float64(y[j]); !math.IsInf(got, int(s)) {
						t.Errorf("y[0,%d] = %v, want %v", j, got, math.Inf(int(s)))
					}
					if got := float64(y[n+j]); !math.IsInf(got, -int(s)) {
						t.Errorf("y[1,%d] = %v, want %v", j, got, math.Inf(-int(s)))
					}
				} else if math.IsInf(float64(y[j]), 0) || math.IsInf(float64(y[n+j]), 0) {
					t.Errorf("bf16: y[0,%d] = %v, y[1,%d] = %v, want finite", j, y[j], j, y[n+j])
				}
				if !math.IsNaN(float64(y[2*n+j])) {
					t.Errorf("y[2,%d] = %v, want NaN", j, y[2*n+j])
				}
				if math.IsInf(float64(y[3*n+j]), 0) || math.IsNaN(float64(y[3*n+j])) {
					t.Errorf("y[3,%d] = %v, want finite", j, y[3*n+j])
				}
			}
		})
	}
}

// TestTrainBF16 trains the fixture model 10 updates (the RAdam recipe of
// TestTrainStepsMatchCPU, dropout 0) with bf16 GEMMs on the GPU and in fp32 on the CPU;
// then the head-dimension-64 model of headDim64Training the same way, because the
// fixture's head dimension 8 never reaches the tensor-core attention (nor its 16-bit
// inputs), the bench's attention path.
//
// Tolerance: every GEMM operand is rounded to bf16 (u = 2⁻⁸), which moves each product
// by ≈ 0.6u ≈ 2e-3 relative (norm-wise), and a loss is a mean of log-probabilities
// over the batch's tokens, in which those independent errors largely cancel; the
// weights then drift apart by at most a few learning-rate steps. Loss and nll must
// agree within 1e-2 relative. The gradient norm goes through every backward GEMM of
// both stacks, so it gets 5e-2. That the run used bf16 at all is checked against the
// fp32 GPU run, whose bits it must not reproduce (a GPU run repeats its bits exactly,
// TestTrainStepsMatchCPU).
func TestTrainBF16(t *testing.T) {
	g := gpu(t)
	for _, mc := range []struct {
		name string
		load func(*testing.T, int) (*model.Model, []*model.TrainBatch)
	}{
		{"fixture, head dim 8", fixtureTraining},
		{"d 128, head dim 64", headDim64Training},
	} {
		t.Run(mc.name, func(t *testing.T) {
			m, batches := mc.load(t, 10)
			rc := trainCase{name: "radam recipe, dropout 0", optim: "radam", beta2: 0.98, lr: 3e-3, warmup: 100}
			c, _ := runTrain(t, m, cpu.New(0), rc, batches)
			f32, _ := runTrain(t, m, g, rc, batches)
			withPrecision(t, BF16)
			b, bt := runTrain(t, m, g, rc, batches)
			t.Logf("10 updates with bf16 GEMMs (SyncCheck): %v", bt)
			checkTrainClose(t, "bf16 GPU", b, "fp32 CPU", c)
			if sameWeights(b, f32) {
				t.Error("the bf16 run gave the fp32 GPU run's weights bit for bit: the precision was not used")
			}
		})
	}
}
