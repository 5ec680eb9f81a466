package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// The 16-bit feed-forward elementwise passes, eight elements per thread
// (dropout_apply_hh8, relu_dropout_bwd_hh8), against the four-per-thread kernels they
// replace (dropout_apply_hh, relu_dropout_bwd_hh, under halfFunctions.hh4): the same
// raw 16-bit patterns, NaN payloads included, since the new kernels redo a group with
// a NaN result with the old arithmetic and are otherwise the same float operations with
// hardware conversions that give the software ones' bits. Independently, against the
// CPU backend on the widened values (its masks from kernels.DropoutKeep, its products in
// float32) rounded in Go (format16.round16): the same value for every non-NaN result,
// a NaN where it has one.

// withHH4 makes the 16-bit elementwise passes take the previous kernels (on) for the
// rest of the test.
func withHH4(t *testing.T, g *Backend, on bool) {
	t.Helper()
	old := g.fn.half.hh4
	g.fn.half.hh4 = on
	t.Cleanup(func() { g.fn.half.hh4 = old })
}

// uploadBits16 writes raw 16-bit patterns to a fresh 16-bit buffer.
func uploadBits16(g *Backend, v []uint16) kernels.Buffer {
	h := g.AllocHalf(len(v))
	if len(v) > 0 {
		defer g.enter()()
		g.upload(halfOf(h).dptr(), unsafe.Pointer(&v[0]), 2*len(v), 2*len(v))
	}
	return h
}

// widenGo is the float32 value of the 16-bit pattern h (exact; a NaN for a NaN).
func widenGo(ft format16, h uint16) float32 {
	if ft.prec != FP16 {
		return math.Float32frombits(uint32(h) << 16)
	}
	sign := float32(1)
	if h&0x8000 != 0 {
		sign = -1
	}
	e, m := int(h>>10)&0x1f, float64(h&0x3ff)
	switch e {
	case 31:
		if m != 0 {
			return float32(math.NaN())
		}
		return sign * float32(math.Inf(1))
	case 0:
		return sign * float32(math.Ldexp(m, -24))
	}
	return sign * float32(math.Ldexp(1024+m, e-25))
}

// hhSpecials are 16-bit patterns the kernels must carry through: ±0, the smallest and
// largest subnormals, the largest finite values (which overflow when scaled by 1/(1−p)),
// ±Inf (NaN when dropped: Inf·0), quiet and signalling NaNs with payloads and signs.
func hhSpecials(ft format16) []uint16 {
	if ft.prec == FP16 {
		return []uint16{0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x83ff, 0x0400, 0x7bff, 0xfbff,
			0x7c00, 0xfc00, 0x7e00, 0xfe00, 0x7c01, 0x7d55, 0xffff, 0x3c00, 0xbc00}
	}
	return []uint16{0x0000, 0x8000, 0x0001, 0x8001, 0x007f, 0x807f, 0x0080, 0x7f7f, 0xff7f,
		0x7f80, 0xff80, 0x7fc0, 0xffc0, 0x7f81, 0x7fa5, 0xffff, 0x3f80, 0xbf80}
}

// hhInputs is n patterns: mostly normal values (of either sign, so the ReLU test sees
// both, and magnitudes whose products neither overflow nor underflow), one in 64 a special, one in 64 a random pattern (every exponent, NaNs), and
// every special among the first elements, so most groups of eight take the kernels'
// fast path and some the NaN path.
func hhInputs(r *rand.Rand, ft format16, n int) []uint16 {
	sp := hhSpecials(ft)
	v := make([]uint16, n)
	for i := range v {
		switch k := r.IntN(64); {
		case i < len(sp):
			v[i] = sp[i]
		case k == 0:
			v[i] = sp[r.IntN(len(sp))]
		case k == 1:
			v[i] = uint16(r.Uint32())
		default:
			// A random sign and significand, magnitude in [2⁻⁴, 2⁴).
			b := r.Uint32()
			if ft.prec == FP16 {
				v[i] = uint16(b&0x8000 | (11+(b>>16)%8)<<10 | b&0x3ff)
			} else {
				v[i] = uint16(b&0x8000 | (123+(b>>16)%8)<<7 | b&0x7f)
			}
		}
	}
	return v
}

// checkHHCPU compares got (16-bit patterns) with RN16 of the CPU's float32 results.
func checkHHCPU(t *testing.T, ft format16, what string, got []uint16, want []float32) {
	t.Helper()
	bad := 0
	for i, w := range want {
		g, r := widenGo(ft, got[i]), ft.round16(w)
		gn, rn := math.IsNaN(float64(g)), math.IsNaN(float64(r))
		if gn != rn || (!gn && math.Float32bits(g) != math.Float32bits(r)) {
			if bad++; bad <= 5 {
				t.Errorf("%s[%d] = %#04x (%v), want RN16(%v) = %v", what, i, got[i], g, w, r)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d elements differ from the CPU", what, bad, len(want))
	}
}

func widenAll(ft format16, v []uint16) []float32 {
	out := make([]float32, len(v))
	for i, h := range v {
		out[i] = widenGo(ft, h)
	}
	return out
}

// hhSizes: single elements, sizes around a group of eight, 8k+3, a tail of 7, and
// the two bench shapes [7872 × 2048] and [8120 × 2048].
var hhSizes = []int{1, 7, 8, 9, 15, 8*1001 + 3, 4099, 7872 * 2048, 8120 * 2048}

// TestHH8SameBits: ApplyDropout (16-bit x into 16-bit y, out of place and in place) and
// ReLUDropoutBackward (16-bit da and a into 16-bit dpre, out of place and in place on
// da and on a) give the raw bits of the previous kernels, and the CPU's values, for
// bf16 and fp16, p = 0.1, 0.3, 0, 1−2⁻²⁴ (threshold 2²⁴−1, the largest the 32-bit
// comparison takes) and 1 (threshold 2²⁴: the per-element path), at hhSizes; the bench
// shapes at p = 0.1 and 0.3 only. It also fails when the new kernels were not the ones
// taken by default.
func TestHH8SameBits(t *testing.T) {
	c := cpu.New(0)
	for _, ft := range formats {
		t.Run(ft.prec.String(), func(t *testing.T) {
			g := withPrecision(t, ft.prec)
			if g.fn.half.hh4 || g.fn.half.dropoutApplyHH8 == 0 || g.fn.half.reluDropoutBwdHH8 == 0 {
				t.Fatal("the eight-per-thread kernels are not the default")
			}
			r := rand.New(rand.NewPCG(21, uint64(ft.prec)))
			for _, n := range hhSizes {
				for _, p := range []float64{0.1, 0.3, 0, 1 - 1.0/(1<<24), 1} {
					if n > 1<<20 && p != 0.1 && p != 0.3 {
						continue
					}
					seed := r.Uint64()
					t.Run(fmt.Sprintf("%d/p%g", n, p), func(t *testing.T) {
						x, da, a := hhInputs(r, ft, n), hhInputs(r, ft, n), hhInputs(r, ft, n)
						// Old and new kernels, out of place and in place.
						run := func(hh4 bool) (y, yIn, d, dInDA, dInA []uint16) {
							g.fn.half.hh4 = hh4
							defer func() { g.fn.half.hh4 = false }()
							xb, yb := uploadBits16(g, x), g.AllocHalf(n)
							g.ApplyDropout(yb, xb, p, seed)
							g.ApplyDropout(xb, xb, p, seed)
							dab, ab, db := uploadBits16(g, da), uploadBits16(g, a), g.AllocHalf(n)
							g.ReLUDropoutBackward(db, dab, ab, p)
							d = halfBits(g, db)
							g.ReLUDropoutBackward(dab, dab, ab, p)
							dInDA = halfBits(g, dab)
							dab = uploadBits16(g, da)
							g.ReLUDropoutBackward(ab, dab, ab, p)
							return halfBits(g, yb), halfBits(g, xb), d, dInDA, halfBits(g, ab)
						}
						y, yIn, d, dInDA, dInA := run(false)
						oy, _, od, _, _ := run(true)
						checkBits16(t, "dropout vs dropout_apply_hh", y, oy)
						checkBits16(t, "dropout in place", yIn, y)
						checkBits16(t, "relu_dropout_bwd vs relu_dropout_bwd_hh", d, od)
						checkBits16(t, "relu_dropout_bwd in place on da", dInDA, d)
						checkBits16(t, "relu_dropout_bwd in place on a", dInA, d)

						xw, daw, aw := widenAll(ft, x), widenAll(ft, da), widenAll(ft, a)
						cy := c.Alloc(n)
						c.ApplyDropout(cy, c.Upload(xw), p, seed)
						checkHHCPU(t, ft, "dropout vs CPU", y, down(c, cy))
						cd := c.Alloc(n)
						c.ReLUDropoutBackward(cd, c.Upload(daw), c.Upload(aw), p)
						checkHHCPU(t, ft, "relu_dropout_bwd vs CPU", d, down(c, cd))
					})
				}
			}
		})
	}
}

// TestHH8Unaligned launches both generations directly at 16-bit element offsets 1…8
// of their buffers (addresses 2…16 bytes past a 256-byte boundary: only offset 8 is
// 16-byte aligned for the new kernels, offsets 4 and 8 8-byte aligned for the old ones),
// out of place and in place, and compares the raw bits: the new kernels' per-element
// path where the old ones vectorise, and the reverse.
func TestHH8Unaligned(t *testing.T) {
	for _, ft := range formats {
		t.Run(ft.prec.String(), func(t *testing.T) {
			g := withPrecision(t, ft.prec)
			r := rand.New(rand.NewPCG(22, uint64(ft.prec)))
			const total = 8*517 + 5
			x, da, a := hhInputs(r, ft, total), hhInputs(r, ft, total), hhInputs(r, ft, total)
			format := g.outFormat()
			drop := func(fn uintptr, per int64, y, xp uint64, n int, seed uint64) {
				defer g.enter()()
				g.prm.reset().ptr(y).ptr(xp).u64(seed).u64(kernels.DropoutThreshold(0.1)).f32(kernels.DropoutScale(0.1)).i64(n).i32(format)
				g.run(fn, [3]uint32{grid1D((int64(n)+per-1)/per, blockElem, g.info.SMs), 1, 1}, blockElem, 0)
			}
			relu := func(fn uintptr, per int64, d, dap, ap uint64, n int) {
				defer g.enter()()
				g.prm.reset().ptr(d).ptr(dap).ptr(ap).f32(kernels.DropoutScale(0.1)).i64(n).i32(format)
				g.run(fn, [3]uint32{grid1D((int64(n)+per-1)/per, blockElem, g.info.SMs), 1, 1}, blockElem, 0)
			}
			f := &g.fn.half
			for off := 1; off <= 8; off++ {
				n := total - off
				at := func(b kernels.Buffer) uint64 { return halfOf(b).dptr() + 2*uint64(off) }
				type result struct{ y, yIn, d, dIn []uint16 }
				gen := func(dfn, rfn uintptr, per int64) result {
					xb, yb := uploadBits16(g, x), uploadBits16(g, make([]uint16, total))
					drop(dfn, per, at(yb), at(xb), n, 99)
					drop(dfn, per, at(xb), at(xb), n, 99)
					dab, ab, db := uploadBits16(g, da), uploadBits16(g, a), uploadBits16(g, make([]uint16, total))
					relu(rfn, per, at(db), at(dab), at(ab), n)
					relu(rfn, per, at(dab), at(dab), at(ab), n)
					return result{halfBits(g, yb), halfBits(g, xb), halfBits(g, db), halfBits(g, dab)}
				}
				nw, old := gen(f.dropoutApplyHH8, f.reluDropoutBwdHH8, 8), gen(f.dropoutApplyHH, f.reluDropoutBwdHH, 4)
				what := fmt.Sprintf("offset %d: ", off)
				checkBits16(t, what+"dropout", nw.y, old.y)
				checkBits16(t, what+"dropout in place", nw.yIn, old.yIn)
				checkBits16(t, what+"relu_dropout_bwd", nw.d, old.d)
				checkBits16(t, what+"relu_dropout_bwd in place", nw.dIn, old.dIn)
				for i := range off {
					if nw.y[i] != 0 || nw.d[i] != 0 || nw.yIn[i] != x[i] || nw.dIn[i] != da[i] {
						t.Fatalf("%selement %d before the view was written", what, i)
					}
				}
			}
		})
	}
}

// TestHH8Timing logs device µs per call of both generations, in place as the training
// step runs them (dropout on fc1's 16-bit output, the ReLU + dropout backward on fc2's
// 16-bit input gradient), at [7872 × 2048] and [8120 × 2048], bf16 and fp16, p = 0.1,
// with the bytes each pass moves and the rate that makes. The repeated in-place calls
// drop most of a and scale the rest (1.11⁵³ ≈ 260): still finite, and the kernels'
// time does not depend on finite values. Only measures; skipped with -short.
func TestHH8Timing(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	for _, ft := range formats {
		t.Run(ft.prec.String(), func(t *testing.T) {
			g := withPrecision(t, ft.prec)
			r := rand.New(rand.NewPCG(23, 24))
			for _, rows := range []int{7872, 8120} {
				n := rows * 2048
				// Finite values, as in training: a NaN in a group of eight sends it to
				// the new kernels' slow path, which training data never takes.
				a, dy := upload16(g, roundAll(ft, randVec(r, n))), upload16(g, roundAll(ft, randVec(r, n)))
				us := func(hh4 bool, f func()) float64 {
					withHH4(t, g, hh4)
					return timeDevice(t, g, 50, f).Seconds() * 1e6
				}
				drop := func() { g.ApplyDropout(a, a, 0.1, 7) }
				relu := func() { g.ReLUDropoutBackward(dy, dy, a, 0.1) }
				dOld, dNew := us(true, drop), us(false, drop)
				rOld, rNew := us(true, relu), us(false, relu)
				withHH4(t, g, false)
				mb := float64(2*n) / 1e6
				t.Logf("%v [%d × 2048]: dropout_apply_hh %.1f µs → dropout_apply_hh8 %.1f µs (%.0f MB, %.2f → %.2f TB/s); "+
					"relu_dropout_bwd_hh %.1f µs → relu_dropout_bwd_hh8 %.1f µs (%.0f MB, %.2f → %.2f TB/s)",
					ft.prec, rows, dOld, dNew, 2*mb, 2*mb/dOld/1e6, 2*mb/dNew/1e6,
					rOld, rNew, 3*mb, 3*mb/rOld/1e6, 3*mb/rNew/1e6)
			}
		})
	}
}

// TestHH8TrainingSameBits trains the fixture model with the 16-bit feed-forward block
// (model.ffn16, whose dropout and ReLU + dropout backward run in place on 16-bit
// buffers) on the new kernels and on the previous ones (hh4), bf16 and fp16, both
// recipes (dropout 0 and 0.1): every update's loss, nll and gradient norm and the final
// weights must be the same bits. It fails when the model wrote no 16-bit GEMM output
// (the block was not taken). fc1's bias gradient takes the pass both runs share.
func TestHH8TrainingSameBits(t *testing.T) {
	gpu(t)
	m, batches := fixtureTraining(t, 3)
	for _, prec := range []Precision{BF16, FP16} {
		for _, rc := range sameBitsCases {
			t.Run(prec.String()+"/"+rc.name, func(t *testing.T) {
				// fc1's bias gradient summed in the ReLU backward (relu_dropout_bwd_hh8p)
				// adds in another order and has no hh4 form: off in both runs
				// (TestReLUBiasTraining covers it).
				old := newGraphTestBackend(t, prec, false)
				old.fn.half.hh4, old.reluBiasOff = true, true
				ref, _ := runTrain(t, m, old, rc, batches)
				nw := newGraphTestBackend(t, prec, false)
				nw.reluBiasOff = true
				got, _ := runTrain(t, m, nw, rc, batches)
				if nw.lt.halfOuts == 0 {
					t.Fatal("the model wrote no 16-bit GEMM outputs: model.TrainNet.ffn16 was not taken")
				}
				checkSameRun(t, "eight-per-thread kernels", got, "previous kernels", ref)
			})
		}
	}
}
