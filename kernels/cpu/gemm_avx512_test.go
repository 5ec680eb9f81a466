//go:build amd64

package cpu

import (
	"math"
	"math/rand/v2"
	"testing"
)

func init() {
	if defaultKernel.name == avx512Kernel.name {
		extraTestKernels = append(extraTestKernels, avx2Kernel)
	}
}

// TestAVX512KernelBitsEqualAVX2 checks that the AVX-512VL tile kernel gives exactly the
// AVX2 kernel's results (the reference: the scheme the fixture parity was established
// with), so that which of them a machine picks never changes a hypothesis. Bitwise:
// both must form the same float32 lane chains and the same float64 reduction.
func TestAVX512KernelBitsEqualAVX2(t *testing.T) {
	if !hasAVX512VL() {
		t.Skip("no AVX-512VL on this CPU")
	}
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{0, 8, 16, 24, 64, 136, 512} {
		x, w := randSlice(r, tileM*n+1), randSlice(r, tileN*n+1)
		var xs [tileM]*float32
		var ws [tileN]*float32
		for i := range xs {
			xs[i] = &x[i*n]
		}
		for i := range ws {
			ws[i] = &w[i*n]
		}
		ws[7] = ws[6] // edge tiles repeat rows
		var a, b [tileM * tileN]float64
		for i := range a {
			a[i] = r.NormFloat64()
			b[i] = a[i]
		}
		dot3x8AVX512(&xs, &ws, n, &a)
		dot3x8AVX2(&xs, &ws, n, &b)
		for i := range a {
			if math.Float64bits(a[i]) != math.Float64bits(b[i]) {
				t.Fatalf("n %d output %d: avx512 %v, avx2 %v", n, i, a[i], b[i])
			}
		}
	}
}
