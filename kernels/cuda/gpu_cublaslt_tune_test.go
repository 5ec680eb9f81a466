package cuda

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
)

// TestGemmTune: with Options.TuneGEMMs a plan times its candidate algorithms at its
// second use and keeps the fastest; the results of every later use must still be the
// product of the same 16-bit operands. The reference is the untuned backend (the
// heuristic's first algorithm, checked against rounded operands in float64 by
// gpu_precision_test.go and gpu_cublaslt_test.go): both multiply identical 16-bit
// operands exactly and differ only in the order of the float32 accumulation, at most
// ≈ 2·(√k·2⁻²⁴ + 3e-9·k) of ‖ref‖ norm-wise (gpu_precision_test.go's reasoning, for
// each side), 9e-5 at k = 8,064 and 2e-4 at k = 27,472 — so 3e-4. The shapes are the
// 6L-6L bench's slowest under the heuristic (the bucket of 8,064 rows): a Linear with
// bias, a weight gradient with the bias-gradient epilogue, the output projection and
// its input gradient. The timed runs write scratch blocks: the caller's dw and db
// accumulate exactly once per call (checked through the third call's results, which
// would be off by a multiple otherwise).
func TestGemmTune(t *testing.T) {
	gu := withPrecision(t, BF16)
	if gu.tuneGEMMs {
		t.Skip("XFORM_CUDA_TUNE=1 tunes the reference backend too")
	}
	gt, err := New(context.Background(), Options{Precision: BF16, TuneGEMMs: true, CacheDir: os.Getenv("XFORM_CUDA_TEST_CACHE")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gt.Close() })
	if !gt.tuneGEMMs {
		t.Skip("XFORM_CUDA_TUNE=0")
	}
	const tol = 3e-4
	for _, sh := range []struct{ m, n, k int }{{8064, 1536, 512}, {8064, 512, 512}, {8064, 27472, 512}} {
		t.Run(fmt.Sprintf("%dx%dx%d", sh.m, sh.n, sh.k), func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(sh.n), 3))
			x, w, dy := randVec(r, sh.m*sh.k), randVec(r, sh.n*sh.k), randVec(r, sh.m*sh.n)
			bias, dw0, db0 := randVec(r, sh.n), randVec(r, sh.n*sh.k), randVec(r, sh.n)
			run := func(g *Backend) (y, dx, dw, db []float32) {
				gx, gw, gdy, gb := g.Upload(x), g.Upload(w), g.Upload(dy), g.Upload(bias)
				for i := 0; i < 3; i++ {
					gy, gdx, gdw, gdb := g.AllocUninit(sh.m*sh.n), g.AllocUninit(sh.m*sh.k), g.Upload(dw0), g.Upload(db0)
					g.Linear(gy, gx, gw, gb, sh.m, sh.n, sh.k)
					g.LinearBackward(gdx, gdw, gdb, gdy, gx, gw, sh.m, sh.n, sh.k)
					y, dx, dw, db = down(g, gy), down(g, gdx), down(g, gdw), down(g, gdb)
				}
				return
			}
			y1, dx1, dw1, db1 := run(gu)
			y2, dx2, dw2, db2 := run(gt)
			checkClose(t, "y", y2, y1, tol)
			checkClose(t, "dx", dx2, dx1, tol)
			checkClose(t, "dw", dw2, dw1, tol)
			checkClose(t, "db", db2, db1, tol)
		})
	}
	tuned, picks := 0, map[int]int{}
	for _, p := range gt.lt.plans {
		if p.tuned {
			tuned++
			picks[p.tunedPick]++
			t.Logf("%s: %d candidates, chose %d", p.name, len(p.cands), p.tunedPick)
		}
	}
	if tuned == 0 {
		t.Fatal("no plan was tuned")
	}
	t.Logf("%d plans tuned; chosen candidate → plans: %v", tuned, picks)
}
