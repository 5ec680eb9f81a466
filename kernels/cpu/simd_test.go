package cpu

import (
	"math"
	"math/rand/v2"
	"testing"
)

// refLogSoftmax is the float64 reference: x − max − log Σ exp(x − max).
func refLogSoftmax(x []float32) []float64 {
	m := math.Inf(-1)
	for _, v := range x {
		m = math.Max(m, float64(v))
	}
	var s float64
	for _, v := range x {
		s += math.Exp(float64(v) - m)
	}
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v) - m - math.Log(s)
	}
	return out
}

func randRow(r *rand.Rand, n int, scale float32) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64()) * scale
	}
	return x
}

func TestLogSoftmaxRowFast(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	negInf, posInf := float32(math.Inf(-1)), float32(math.Inf(1))
	masked := randRow(r, 1003, 4)
	for i := 0; i < len(masked); i += 3 {
		masked[i] = negInf
	}
	veryNeg := randRow(r, 64, 1)
	for i := range veryNeg {
		veryNeg[i] = -1e30 + veryNeg[i]*1e24
	}
	spread := randRow(r, 40, 1)
	for i := range spread {
		spread[i] = float32(i) * -50 // exp underflows past −745 and −708
	}
	cases := []struct {
		name string
		x    []float32
		nan  bool // every output NaN, as torch
	}{
		{"one", []float32{3.5}, false},
		{"one -inf", []float32{negInf}, true},
		{"seven", randRow(r, 7, 3), false},
		{"eight", randRow(r, 8, 3), false},
		{"vocab", randRow(r, 32008, 5), false},
		{"large logits", randRow(r, 515, 300), false},
		{"masked -inf", masked, false},
		{"very negative", veryNeg, false},
		{"wide spread", spread, false},
		{"all -inf", []float32{negInf, negInf, negInf, negInf, negInf, negInf, negInf, negInf, negInf}, true},
		{"+inf", append(randRow(r, 16, 1), posInf), true},
		{"NaN in vector part", append([]float32{float32(math.NaN())}, randRow(r, 23, 1)...), true},
		{"NaN in tail", append(randRow(r, 16, 1), float32(math.NaN())), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			y := make([]float32, len(tc.x))
			logSoftmaxRow(y, tc.x)
			ys := make([]float32, len(tc.x))
			logSoftmaxRowScalar(ys, tc.x)
			if tc.nan {
				for i, v := range y {
					if v == v {
						t.Fatalf("y[%d] = %v, want NaN", i, v)
					}
				}
				return
			}
			ref := refLogSoftmax(tc.x)
			for i, v := range y {
				w := ref[i]
				if math.IsInf(w, -1) {
					if !math.IsInf(float64(v), -1) {
						t.Fatalf("y[%d] = %v, want -inf", i, v)
					}
					continue
				}
				if v != v {
					t.Fatalf("y[%d] is NaN", i)
				}
				// float32 output: one rounding of x − c plus c's rounding.
				tol := 1e-6*math.Abs(w) + 1e-6
				if d := math.Abs(float64(v) - w); d > tol {
					t.Fatalf("y[%d] = %v, reference %v (diff %g)", i, v, w, d)
				}
				if v != ys[i] && math.Abs(float64(v-ys[i])) > 1e-6*math.Abs(w)+1e-6 {
					t.Fatalf("y[%d] = %v, scalar loop %v", i, v, ys[i])
				}
			}
		})
	}
}

func TestExpSum(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, tc := range []struct {
		name string
		x    []float32
		m    float32
	}{
		{"zero", make([]float32, 16), 0},
		{"uniform", randRow(r, 4096, 3), 0},
		{"shifted", randRow(r, 1000, 10), 40},
		{"reduction edges", []float32{0, -0.3465736, -0.3465737, -0.6931472, -1.0397208, -87.33655, -88.72284, -103.27893, -700, -707.9, -708.1, -744, -746, -1e10, float32(math.Inf(-1)), -1e-30}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want float64
			for _, v := range tc.x {
				want += math.Exp(float64(v - tc.m))
			}
			got := expSum(tc.x, tc.m)
			if math.Abs(got-want) > 1e-14*want+1e-300 {
				t.Fatalf("expSum = %v, want %v (rel %g)", got, want, (got-want)/want)
			}
		})
	}
	// Element by element over a dense range: every exp to 1e-14 relative (the degree-11
	// Taylor remainder at |r| = ln2/2 is 6e-15).
	for v := float32(-720); v <= 0; v += 0.0137 {
		x := []float32{v, v, v, v, v, v, v, v}
		got := expSum(x, 0) / 8
		want := math.Exp(float64(v))
		if v < -708 {
			want = math.Exp(-708)
		}
		if math.Abs(got-want) > 1e-14*want {
			t.Fatalf("exp(%v) = %v, want %v (rel %g)", v, got, want, (got-want)/want)
		}
	}
}

func TestDotAxpyF64(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{0, 1, 3, 4, 5, 8, 13, 64, 100} {
		a, b := randRow(r, n, 2), randRow(r, n, 2)
		var want float64
		for i := range a {
			want += float64(a[i]) * float64(b[i])
		}
		if got := dotF64(a, b); math.Abs(got-want) > 1e-13 {
			t.Fatalf("n %d: dot %v, want %v", n, got, want)
		}
		acc, ref := make([]float64, n), make([]float64, n)
		for i := range acc {
			acc[i] = float64(i) * 0.1
			ref[i] = acc[i]
		}
		p := float64(float32(0.37))
		axpyF64(acc, p, b)
		for i := range ref {
			ref[i] += p * float64(b[i])
			if acc[i] != ref[i] { // exact product, one rounding: bit-identical
				t.Fatalf("n %d: axpy[%d] = %v, want %v", n, i, acc[i], ref[i])
			}
		}
	}
}

func TestReLU(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	negZero := float32(math.Copysign(0, -1))
	for _, tc := range []struct {
		name string
		x    []float32
	}{
		{"one", []float32{-1}},
		{"specials", []float32{nan, inf, -inf, negZero, 0, 1e-45, -1e-45, 3, -3}},
		{"seventeen", randRow(rand.New(rand.NewPCG(9, 10)), 17, 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := make([]float32, len(tc.x))
			relu(y, tc.x)
			for i, v := range tc.x {
				want := float32(0) // +0 for ≤ 0, −0 and NaN
				if v > 0 {
					want = v
				}
				if math.Float32bits(y[i]) != math.Float32bits(want) {
					t.Fatalf("relu(%v) = %v, want %v", v, y[i], want)
				}
			}
		})
	}
}
