package cpu

import "math"

// expTable holds the constants of expSumAVX2, each repeated in the 4 lanes of a ymm
// register so the kernel can use them as memory operands.
type expTable [18][4]float64

// Layout of expTable: clamp, log2(e), rounding shifter 1.5·2⁵², ln 2 high and low
// parts, the exponent bias (as int64 bits), then the coefficients 1/k! for k = 11…0.
var expTab = func() *expTable {
	var t expTable
	vals := []float64{-708, math.Log2E, 0x1.8p52, 0x1.62e42fee00000p-1, 0x1.a39ef35793c76p-33, math.Float64frombits(1023)}
	c := 1.0
	coef := make([]float64, 12)
	for k := range coef {
		if k > 0 {
			c /= float64(k)
		}
		coef[11-k] = c
	}
	vals = append(vals, coef...)
	for i, v := range vals {
		t[i] = [4]float64{v, v, v, v}
	}
	return &t
}()

// rowMaxFast is rowMax with the vector kernel on the 8-aligned prefix; it may lose a
// NaN (see maxAVX2), so callers only trust a finite result together with a sum that
// passed through expSum.
func rowMaxFast(x []float32) float32 {
	n := len(x) &^ 7
	if !hasSIMD || n == 0 {
		return rowMax(x)
	}
	m := maxAVX2(&x[0], n)
	for _, v := range x[n:] {
		if v > m || v != v {
			m = v
		}
	}
	return m
}

// expSum returns Σ exp(float64(v − m)) over x.
func expSum(x []float32, m float32) float64 {
	n := len(x) &^ 7
	var s float64
	if hasSIMD && n > 0 {
		s = expSumAVX2(&x[0], n, expTab, m)
	} else {
		n = 0
	}
	for _, v := range x[n:] {
		s += math.Exp(float64(v - m))
	}
	return s
}

// subConst sets y[i] = x[i] − c.
func subConst(y, x []float32, c float32) {
	y = y[:len(x)]
	n := len(x) &^ 7
	if hasSIMD && n > 0 {
		subAVX2(&y[0], &x[0], n, c)
	} else {
		n = 0
	}
	for j := n; j < len(x); j++ {
		y[j] = x[j] - c
	}
}

// dotF64 returns Σ float64(a[i])·float64(b[i]).
func dotF64(a, b []float32) float64 {
	b = b[:len(a)]
	n := len(a) &^ 7
	var s float64
	if hasSIMD && n > 0 {
		s = dot64AVX2(&a[0], &b[0], n)
	} else {
		n = 0
	}
	for j := n; j < len(a); j++ {
		s += float64(a[j]) * float64(b[j])
	}
	return s
}

// axpyF64 sets acc[i] += p·float64(v[i]).
func axpyF64(acc []float64, p float64, v []float32) {
	v = v[:len(acc)]
	n := len(acc) &^ 3
	if hasSIMD && n > 0 {
		axpy64AVX2(&acc[0], p, &v[0], n)
	} else {
		n = 0
	}
	for j := n; j < len(acc); j++ {
		acc[j] += p * float64(v[j])
	}
}

// relu sets y[i] = x[i] if x[i] > 0, else +0 (a NaN becomes 0, as the scalar loop did).
func relu(y, x []float32) {
	y = y[:len(x)]
	n := len(x) &^ 7
	if hasSIMD && n > 0 {
		reluAVX2(&y[0], &x[0], n)
	} else {
		n = 0
	}
	for j := n; j < len(x); j++ {
		if v := x[j]; v > 0 {
			y[j] = v
		} else {
			y[j] = 0
		}
	}
}
