package cuda

import (
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// dropoutHashHi is xform.cuh's xf_dropout_hash_hi written out in Go, operation for
// operation (32-bit words, __funnelshift_r(lo, hi, s) = lo>>s | hi<<(32−s), __umulhi
// the high word of the 64-bit product), so that the algebra the kernels rely on
// (dropout.cu's eight-per-thread kernels, layernorm_fast.cu's _w kernels) is checked on
// any machine.
func dropoutHashHi(z uint64) uint32 {
	umulhi := func(a, b uint32) uint32 { return uint32(uint64(a) * uint64(b) >> 32) }
	lo, hi := uint32(z), uint32(z>>32)
	tlo, thi := lo^(lo>>30|hi<<2), hi^hi>>30
	ulo := tlo * 0x1CE4E5B9
	uhi := umulhi(tlo, 0x1CE4E5B9) + tlo*0xBF58476D + thi*0x1CE4E5B9
	wlo, whi := ulo^(ulo>>27|uhi<<5), uhi^uhi>>27
	return umulhi(wlo, 0x133111EB) + wlo*0x94D049BB + whi*0x133111EB
}

// TestDropoutHash32: the 32-bit evaluation dropout_apply_hh8 uses gives
// kernels.DropoutHash's bits 33…63 (the last xor-shift leaves them alone) for the
// state seed + (i+1)·γ, reached as dropout_apply_hh8 reaches it (the state of element
// 8q+1 plus k·γ), and so kernels.DropoutKeep's decision through the comparison with
// threshold<<8, for the thresholds of p = 0, 0.1, 0.3, 1−2⁻²⁴ and others: random and
// edge seeds and indices (0, near 2⁶³ and 2⁶⁴, where the index arithmetic wraps).
func TestDropoutHash32(t *testing.T) {
	const gamma = 0x9E3779B97F4A7C15
	r := rand.New(rand.NewPCG(5, 6))
	seeds := []uint64{0, 1, 77, 1 << 63, ^uint64(0), gamma, ^uint64(gamma) + 1}
	for range 20 {
		seeds = append(seeds, r.Uint64())
	}
	idx := []uint64{0, 1, 7, 8, 1<<31 - 1, 1 << 32, 1<<63 - 8, 1 << 63, ^uint64(0) - 7}
	for range 2000 {
		idx = append(idx, r.Uint64N(1<<35), r.Uint64())
	}
	var ts []uint64
	for _, p := range []float64{0, 0.1, 0.3, 0.5, 1 - 1.0/(1<<24)} {
		ts = append(ts, kernels.DropoutThreshold(p))
	}
	ts = append(ts, 1, 1<<23, 1<<24-1)
	if ts[len(ts)-1] != kernels.DropoutThreshold(1-1.0/(1<<24)) {
		t.Fatalf("DropoutThreshold(1−2⁻²⁴) = %d, want 2²⁴−1", kernels.DropoutThreshold(1-1.0/(1<<24)))
	}
	kept, total := 0, 0
	for _, seed := range seeds {
		for _, i := range idx {
			q := i / 8
			z := seed + (8*q+1)*gamma + (i-8*q)*gamma
			if want := seed + (i+1)*gamma; z != want {
				t.Fatalf("state of %d: %#x, want %#x", i, z, want)
			}
			top, h := dropoutHashHi(z), kernels.DropoutHash(seed, i)
			if uint64(top>>1) != h>>33 {
				t.Fatalf("seed %#x i %d: xf_dropout_hash_hi %#08x, DropoutHash %#016x", seed, i, top, h)
			}
			for _, th := range ts {
				got, want := top >= uint32(th)<<8, kernels.DropoutKeep(seed, i, th)
				if got != want {
					t.Fatalf("seed %#x i %d threshold %d: kept %v, DropoutKeep %v", seed, i, th, got, want)
				}
				if want {
					kept++
				}
				total++
			}
		}
	}
	t.Logf("%d decisions, %d kept", total, kept)
}
