package cuda

import (
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// lfwKeep4 is lfw_keep4 in Go: bit k is element 4q + k's keep decision.
func lfwKeep4(seed uint64, q uint64, threshold uint64) uint32 {
	const g = 0x9E3779B97F4A7C15
	t8, none := uint32(threshold<<8), threshold > 0xffffff
	z := seed + (4*q+1)*g
	var m uint32
	for k := range 4 {
		if dropoutHashHi(z) >= t8 {
			m |= 1 << k
		}
		z += g
	}
	if none {
		return 0
	}
	return m
}

// TestDropoutHashHiWord: the _w LayerNorm kernels' 32-bit form of the dropout hash
// (xf_dropout_hash_hi, lfw_keep4) gives kernels.DropoutHash's top 24 bits and
// kernels.DropoutKeep's decisions for random seeds and indices (small, near 2^32 and
// 2^64) and the thresholds of p = 0, 0.1, 0.5, 1 and the extremes 1 and 2^24 − 1. A GPU
// is not needed: the CUDA function is these operations (the GPU tests compare the
// kernels' outputs with the 64-bit kernels' bit for bit).
func TestDropoutHashHiWord(t *testing.T) {
	r := rand.New(rand.NewPCG(97, 1))
	thresholds := []uint64{0, 1, kernels.DropoutThreshold(0.1), kernels.DropoutThreshold(0.5), 1<<24 - 1,
		kernels.DropoutThreshold(1)}
	bad := 0
	for n := range 200000 {
		seed := r.Uint64()
		var q uint64
		switch n % 3 {
		case 0:
			q = r.Uint64N(1 << 22)
		case 1:
			q = 1<<30 - 8 + r.Uint64N(16) // 4q crosses 2^32
		default:
			q = r.Uint64() >> 2
		}
		for k := range uint64(4) {
			i := 4*q + k
			if got, want := dropoutHashHi(seed+(i+1)*0x9E3779B97F4A7C15)>>8, uint32(kernels.DropoutHash(seed, i)>>40); got != want {
				bad++
				if bad < 5 {
					t.Errorf("seed %#x i %d: top 24 bits %#x, want %#x", seed, i, got, want)
				}
			}
		}
		thr := thresholds[n%len(thresholds)]
		m := lfwKeep4(seed, q, thr)
		for k := range uint64(4) {
			if got, want := m>>k&1 == 1, kernels.DropoutKeep(seed, 4*q+k, thr); got != want {
				bad++
				if bad < 5 {
					t.Errorf("seed %#x i %d threshold %d: keep %v, want %v", seed, 4*q+k, thr, got, want)
				}
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d mismatches", bad)
	}
}
