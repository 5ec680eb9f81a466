package cpu

import "unsafe"

// A tileKernel computes one 3×8 output tile of x·wᵀ over n elements of k:
// acc[8r+c] += Σ_{l<n} x[r][l]·w[c][l], where x[r] and w[c] point at the first element of
// each row's slice. n is a multiple of step; the driver does the remaining k%step in
// float64 itself. Row pointers may repeat (edge tiles duplicate the last row and drop
// the extra outputs), so a kernel must not assume distinct rows.
type tileKernel struct {
	name string
	fn   func(x *[tileM]*float32, w *[tileN]*float32, n int, acc *[tileM * tileN]float64)
	step int
}

// Tile shape shared by all kernels: 3 rows of x by 8 rows of w. The AVX-512VL kernel
// holds the 24 accumulators in its 32 ymm registers; kernels built on a 3×4 core (12
// accumulators, the most that fit 16 ymm registers with 3 x vectors and 1 w vector
// live) run it on each half of the columns.
const (
	tileM = 3
	tileN = 8
)

// genericKernel runs anywhere. Scalar Go is as fast in float64 as in float32 (no
// SIMD either way), so it accumulates in float64: exact products, no float32 chains.
var genericKernel = tileKernel{name: "generic", fn: dot3x8Generic, step: 1}

// defaultKernel is chosen once from the CPU's features and never changes.
var defaultKernel = bestKernel()

// dot3x8Generic is dot3x4Generic on each half of the columns.
func dot3x8Generic(x *[tileM]*float32, w *[tileN]*float32, n int, acc *[tileM * tileN]float64) {
	for h := 0; h < 2; h++ {
		var t [12]float64
		dot3x4Generic(x, (*[4]*float32)(w[4*h:]), n, &t)
		addHalf(acc, &t, h)
	}
}

// addHalf adds a 3×4 tile's sums (each the kernel's sum of one chunk, added to zero:
// the same value) into columns 4h..4h+3 of a 3×8 tile.
func addHalf(acc *[tileM * tileN]float64, t *[12]float64, h int) {
	for r := range tileM {
		for c := range 4 {
			acc[tileN*r+4*h+c] += t[4*r+c]
		}
	}
}

func dot3x4Generic(x *[3]*float32, w *[4]*float32, n int, acc *[12]float64) {
	if n == 0 {
		return
	}
	x0, x1, x2 := unsafe.Slice(x[0], n), unsafe.Slice(x[1], n), unsafe.Slice(x[2], n)
	w0, w1, w2, w3 := unsafe.Slice(w[0], n), unsafe.Slice(w[1], n), unsafe.Slice(w[2], n), unsafe.Slice(w[3], n)
	var s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23 float64
	for l := range n {
		a0, a1, a2 := float64(x0[l]), float64(x1[l]), float64(x2[l])
		b0, b1, b2, b3 := float64(w0[l]), float64(w1[l]), float64(w2[l]), float64(w3[l])
		s00 += a0 * b0
		s01 += a0 * b1
		s02 += a0 * b2
		s03 += a0 * b3
		s10 += a1 * b0
		s11 += a1 * b1
		s12 += a1 * b2
		s13 += a1 * b3
		s20 += a2 * b0
		s21 += a2 * b1
		s22 += a2 * b2
		s23 += a2 * b3
	}
	acc[0] += s00
	acc[1] += s01
	acc[2] += s02
	acc[3] += s03
	acc[4] += s10
	acc[5] += s11
	acc[6] += s12
	acc[7] += s13
	acc[8] += s20
	acc[9] += s21
	acc[10] += s22
	acc[11] += s23
}
