package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// Persistent 16-bit weight copies (kernels.HalfRounder): RoundAll against the rounding
// in Go, LinearKeep / LinearActKeep with a 16-bit w against the float32 w, and the
// copies surviving the step scopes. No tolerance anywhere: a 16-bit copy is RN16 of
// its source, and a product of the same 16-bit operands is the same GEMM.

// TestRoundAll: every element of every destination is RN16 of its source, bit for bit
// (round16 of gpu_precision_test.go, from the definition), on the float4 path and the
// scalar one (a Slice one float off, lengths not a multiple of 4, chunks of 8192 and a
// remainder), with ±0, ±Inf, NaN, subnormals, halfway cases and fp16 overflow in the
// data, and an empty pair in the list.
func TestRoundAll(t *testing.T) {
	for _, ft := range formats {
		t.Run(ft.prec.String(), func(t *testing.T) {
			g := withPrecision(t, ft.prec)
			r := rand.New(rand.NewPCG(21, 22))
			special := []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
				1e-40, -3e-39, 65504, 65519.99, 65520, -1e6, 1 + 1.0/256, 1 + 3.0/256, 1 + 1.0/2048, 1 + 3.0/2048, 6e-8, 3e-8}
			var dst, src []kernels.Buffer
			var want [][]float32
			for _, n := range []int{1, 7, 8192, 8193, 20000, 0, 512 * 512} {
				v := randVec(r, n)
				for i := range v {
					v[i] *= float32(math.Ldexp(1, r.IntN(40)-20))
				}
				copy(v, special)
				src = append(src, g.Upload(v))
				want = append(want, v)
			}
			// Slices: one float off (8-byte-aligned destination, scalar source path)
			// and four floats off (16-byte aligned again).
			base := randVec(r, 10001)
			bb := g.Upload(base)
			for _, off := range []int{1, 4} {
				src = append(src, g.Slice(bb, off, 10001-off))
				want = append(want, base[off:])
			}
			for _, s := range src {
				dst = append(dst, g.AllocHalf(s.Len()))
			}
			g.RoundAll(dst, src)
			for i := range dst {
				checkRounded(t, ft, fmt.Sprintf("dst[%d] (%d elements)", i, dst[i].Len()), downHalf(t, g, dst[i]), want[i])
			}
		})
	}
	t.Run("fp32 takes no pairs", func(t *testing.T) {
		withPrecision(t, FP32).RoundAll(nil, nil)
	})
}

// TestHalfWeightsPersist: a 16-bit copy made outside every scope keeps its address and
// values across scopes that allocate, fill and release many blocks of its size class
// (a copy that joined a scope would be handed back and overwritten).
func TestHalfWeightsPersist(t *testing.T) {
	g := withPrecision(t, BF16)
	r := rand.New(rand.NewPCG(5, 6))
	const n = 1 << 20
	v := randVec(r, n)
	w16 := g.AllocHalf(n)
	g.RoundAll([]kernels.Buffer{w16}, []kernels.Buffer{g.Upload(v)})
	at := halfOf(w16).dptr()
	for range 3 {
		g.BeginScope()
		for range 4 {
			h := g.AllocHalf(n)
			g.ApplyDropout(h, g.Upload(randVec(r, n)), 0, 1)
			g.Fill(g.Alloc(n/2), 7)
		}
		g.EndScope()
	}
	if halfOf(w16).dptr() != at {
		t.Fatalf("the copy moved from %#x to %#x", at, halfOf(w16).dptr())
	}
	checkRounded(t, fmtBF16, "w16 after three scopes", downHalf(t, g, w16), v)
}

// TestLinearKeepHalfWeight: LinearKeep and LinearActKeep with w16 = RoundAll(w), then
// LinearBackwardKept, give the bits of the same calls with the float32 w (y, dx, dw and
// db, dw and db accumulating onto nonzero values), with x float32 and with x 16-bit (then
// nothing is rounded or allocated), and the same bits again after w16 is refreshed from
// an updated w (the copy holds the weight the step started with, as the model uses it).
func TestLinearKeepHalfWeight(t *testing.T) {
	for _, ft := range formats {
		for _, sh := range []struct{ m, n, k int }{{37, 203, 72}, {8000, 2048, 512}, {640, 27472, 512}} {
			t.Run(fmt.Sprintf("%v/%dx%dx%d", ft.prec, sh.m, sh.n, sh.k), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				r := rand.New(rand.NewPCG(uint64(sh.m), 31))
				x, dy := g.Upload(randVec(r, sh.m*sh.k)), g.Upload(randVec(r, sh.m*sh.n))
				xh := g.AllocHalf(sh.m * sh.k)
				g.ApplyDropout(xh, x, 0, 1)
				w, b := g.Upload(scaled(randVec(r, sh.n*sh.k), 0.05)), g.Upload(randVec(r, sh.n))
				w16 := g.AllocHalf(sh.n * sh.k)
				dw0, db0 := randVec(r, sh.n*sh.k), randVec(r, sh.n)
				run := func(x, w kernels.Buffer, act bool) (y, dx, dw, db []float32) {
					yb, dxb, dwb, dbb := g.Alloc(sh.m*sh.n), g.Alloc(sh.m*sh.k), g.Upload(dw0), g.Upload(db0)
					kept := keepForward(t, g, yb, x, w, b, sh.m, sh.n, sh.k, act)
					if kp := kept.(*kept16); (halfOf(x) != nil && halfOf(w) != nil) != (kp.copies == nil) {
						t.Fatalf("x 16-bit %v, w 16-bit %v: copies %v", halfOf(x) != nil, halfOf(w) != nil, kp.copies != nil)
					}
					g.LinearBackwardKept(dxb, dwb, dbb, dy, kept, sh.m, sh.n, sh.k)
					return down(g, yb), down(g, dxb), down(g, dwb), down(g, dbb)
				}
				for step := range 2 {
					if step == 1 {
						// The optimizer moved w: the refreshed copy follows it.
						g.AddTo(w, g.Upload(scaled(randVec(r, sh.n*sh.k), 1e-3)))
					}
					g.RoundAll([]kernels.Buffer{w16}, []kernels.Buffer{w})
					for _, act := range []bool{false, true} {
						for _, xs := range []kernels.Buffer{x, xh} {
							y1, dx1, dw1, db1 := run(xs, w, act)
							y2, dx2, dw2, db2 := run(xs, w16, act)
							what := fmt.Sprintf("step %d act %v x16 %v: ", step, act, halfOf(xs) != nil)
							checkExact(t, what+"y", y2, y1)
							checkExact(t, what+"dx", dx2, dx1)
							checkExact(t, what+"dw", dw2, dw1)
							checkExact(t, what+"db", db2, db1)
						}
					}
				}
			})
		}
	}
}

// TestRoundAllTiming logs device time per 6L-6L training step (d 512, FFN 2048,
// vocabulary 27,472, bf16) for the weights' rounding: one RoundAll over the 67 Linear
// weights (≈58M elements) against the 67 single-operand casts the Linears launch today
// (f32_to_bf16_3 with w alone). Only measures; skipped with -short.
func TestRoundAllTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	g := withPrecision(t, BF16)
	const d, F, V = 512, 2048, 27472
	var shapes [][2]int
	for range 6 {
		shapes = append(shapes, [2]int{3 * d, d}, [2]int{d, d}, [2]int{F, d}, [2]int{d, F})
	}
	for range 6 {
		shapes = append(shapes, [2]int{3 * d, d}, [2]int{d, d}, [2]int{d, d}, [2]int{2 * d, d}, [2]int{d, d}, [2]int{F, d}, [2]int{d, F})
	}
	shapes = append(shapes, [2]int{V, d})
	var dst, src []kernels.Buffer
	total := 0
	for _, s := range shapes {
		n := s[0] * s[1]
		total += n
		src = append(src, g.Alloc(n))
		dst = append(dst, g.AllocHalf(n))
	}
	us := func(f func()) float64 { return timeDevice(t, g, 10, f).Seconds() * 1e6 }
	list := us(func() { g.RoundAll(dst, src) })
	casts := us(func() {
		defer g.enter()()
		for _, s := range src {
			g.cast16([3]operand16{{}, {addr(s), s.Len()}})
		}
	})
	t.Logf("%d weights, %d elements: RoundAll %.1f µs (%.2f TB/s), %d casts %.1f µs", len(src), total, list,
		6*float64(total)/list/1e6, len(src), casts)
}
