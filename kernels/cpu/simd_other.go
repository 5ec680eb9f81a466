//go:build !amd64

package cpu

// Only amd64 has vector row kernels so far; the stubs below are never called
// because hasSIMD is false.
const hasSIMD = false

func maxAVX2(x *float32, n int) float32                              { panic("no SIMD") }
func expSumAVX2(x *float32, n int, tab *expTable, m float32) float64 { panic("no SIMD") }
func subAVX2(y, x *float32, n int, c float32)                        { panic("no SIMD") }
func dot64AVX2(a, b *float32, n int) float64                         { panic("no SIMD") }
func axpy64AVX2(acc *float64, p float64, v *float32, n int)          { panic("no SIMD") }

func reluAVX2(y, x *float32, n int) { panic("no SIMD") }
