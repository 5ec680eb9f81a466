package cpu

// Vector kernels for the row operations (gemm_amd64.s holds the GEMM tile). All
// take lengths that are multiples of their vector width; the Go wrappers in simd.go
// handle the rest of a row.

// maxAVX2 returns the largest of x[0:n] (n a multiple of 8, at least 8). NaNs may or
// may not survive; callers check the result for finiteness and recover NaN through
// expSumAVX2.
//
//go:noescape
func maxAVX2(x *float32, n int) float32

// expSumAVX2 returns Σ exp(float64(x[i] − m)) over x[0:n] (n a multiple of 8), the
// difference rounded to float32 first as the scalar loop does. exp runs in float64
// (Cody–Waite reduction by ln 2, degree-11 polynomial, relative error ~1e-15); inputs
// below −708 contribute exp(−708) ≈ 3e−308 instead of a subnormal or zero, which
// leaves any sum that includes exp(0) = 1 unchanged. A NaN difference makes the sum NaN.
//
//go:noescape
func expSumAVX2(x *float32, n int, tab *expTable, m float32) float64

// subAVX2 sets y[i] = x[i] − c over [0,n) (n a multiple of 8).
//
//go:noescape
func subAVX2(y, x *float32, n int, c float32)

// dot64AVX2 returns Σ float64(a[i])·float64(b[i]) over [0,n) (n a multiple of 8),
// exact products summed in float64 in 8 lanes.
//
//go:noescape
func dot64AVX2(a, b *float32, n int) float64

// axpy64AVX2 sets acc[i] += p·float64(v[i]) over [0,n) (n a multiple of 4), one
// rounding per element as the scalar loop (the product is exact in float64).
//
//go:noescape
func axpy64AVX2(acc *float64, p float64, v *float32, n int)

// hasSIMD reports whether the vector row kernels may run.
var hasSIMD = hasAVX2FMA()

// reluAVX2 sets y[i] = x[i] if x[i] > 0, else +0 (NaN too) over [0,n) (n a multiple of 8).
//
//go:noescape
func reluAVX2(y, x *float32, n int)
