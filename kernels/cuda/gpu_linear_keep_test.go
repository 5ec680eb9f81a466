package cuda

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// TestLinearKeep: LinearKeep + LinearBackwardKept must give the same bits as Linear +
// LinearBackward (the same products of the same rounded operands; only where the
// copies live differs) for y, dx, dw and db, with dw and db accumulating onto nonzero
// values, with and without bias and db, in bf16 and fp16; in FP32 LinearKeep is Linear
// and keeps nothing.
func TestLinearKeep(t *testing.T) {
	for _, prec := range []Precision{BF16, FP16} {
		for _, sh := range []struct{ m, n, k int }{{37, 203, 72}, {8000, 1536, 512}, {640, 27472, 512}, {1, 8, 8}} {
			for _, bias := range []bool{true, false} {
				t.Run(fmt.Sprintf("%v/%dx%dx%d/bias=%v", prec, sh.m, sh.n, sh.k, bias), func(t *testing.T) {
					g := withPrecision(t, prec)
					r := rand.New(rand.NewPCG(uint64(sh.m), uint64(sh.n)))
					up := func(n int) kernels.Buffer { return g.Upload(randVec(r, n)) }
					x, w, dy := up(sh.m*sh.k), up(sh.n*sh.k), up(sh.m*sh.n)
					var b kernels.Buffer
					if bias {
						b = up(sh.n)
					}
					dw0, db0 := randVec(r, sh.n*sh.k), randVec(r, sh.n)
					run := func(keep bool) (y, dx, dw, db []float32) {
						yb, dxb := g.Alloc(sh.m*sh.n), g.Alloc(sh.m*sh.k)
						dwb, dbb := g.Upload(dw0), g.Upload(db0)
						var dbArg kernels.Buffer
						if bias {
							dbArg = dbb
						}
						if keep {
							kept := g.LinearKeep(yb, x, w, b, sh.m, sh.n, sh.k)
							if kept == nil {
								t.Fatal("LinearKeep kept nothing in a 16-bit precision")
							}
							g.LinearBackwardKept(dxb, dwb, dbArg, dy, kept, sh.m, sh.n, sh.k)
						} else {
							g.Linear(yb, x, w, b, sh.m, sh.n, sh.k)
							g.LinearBackward(dxb, dwb, dbArg, dy, x, w, sh.m, sh.n, sh.k)
						}
						return down(g, yb), down(g, dxb), down(g, dwb), down(g, dbb)
					}
					y1, dx1, dw1, db1 := run(false)
					y2, dx2, dw2, db2 := run(true)
					checkExact(t, "y", y2, y1)
					checkExact(t, "dx", dx2, dx1)
					checkExact(t, "dw", dw2, dw1)
					checkExact(t, "db", db2, db1)
				})
			}
		}
	}
	t.Run("fp32 keeps nothing", func(t *testing.T) {
		g := withPrecision(t, FP32)
		x, w, y := g.Upload([]float32{1, 2}), g.Upload([]float32{3, 4}), g.Alloc(1)
		if kept := g.LinearKeep(y, x, w, nil, 1, 1, 2); kept != nil {
			t.Fatal("FP32 LinearKeep returned a kept buffer")
		}
		if got := down(g, y); got[0] != 11 {
			t.Fatalf("FP32 LinearKeep: y = %v, want 11", got[0])
		}
	})
}

// TestLinearBackwardKeptFresh: on a db of zeros, LinearBackwardKeptFresh (the BGRADB
// epilogue writing db itself) gives the values LinearBackwardKept gives (adding the
// epilogue's vector to the zeros; −0 and +0 compare equal, the only difference the
// interface allows), and the same dx and dw bits; with the epilogue off (bgradOff) the
// column sum adds into the zeros on both paths.
func TestLinearBackwardKeptFresh(t *testing.T) {
	for _, prec := range []Precision{BF16, FP16} {
		for _, bgradOff := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/bgradOff=%v", prec, bgradOff), func(t *testing.T) {
				g := withPrecision(t, prec)
				g.bgradOff = bgradOff
				defer func() { g.bgradOff = false }()
				const m, n, k = 8000, 1536, 512
				r := rand.New(rand.NewPCG(5, 6))
				x, w, b, dy := g.Upload(randVec(r, m*k)), g.Upload(randVec(r, n*k)), g.Upload(randVec(r, n)), g.Upload(randVec(r, m*n))
				dw0 := randVec(r, n*k)
				run := func(fresh bool) (dx, dw, db []float32) {
					y, dxb, dwb, dbb := g.Alloc(m*n), g.Alloc(m*k), g.Upload(dw0), g.Alloc(n)
					kept := g.LinearKeep(y, x, w, b, m, n, k)
					if fresh {
						g.LinearBackwardKeptFresh(dxb, dwb, dbb, dy, kept, m, n, k)
					} else {
						g.LinearBackwardKept(dxb, dwb, dbb, dy, kept, m, n, k)
					}
					return down(g, dxb), down(g, dwb), down(g, dbb)
				}
				dx1, dw1, db1 := run(false)
				dx2, dw2, db2 := run(true)
				checkExact(t, "dx", dx2, dx1)
				checkExact(t, "dw", dw2, dw1)
				for i := range db1 {
					if db1[i] != db2[i] {
						t.Fatalf("db[%d]: fresh %v, accumulated %v", i, db2[i], db1[i])
					}
				}
			})
		}
	}
}
