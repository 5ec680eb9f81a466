package cuda

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/xform-dev/xform/model"
)

// The cuBLASLt autotune (autotune.go) on the GPU. A tuned plan may take another
// algorithm than the heuristic's first, which sums in another order: results are
// compared with the tolerances used where two algorithms meet elsewhere (tolFor of the
// reduction length, gpu_cublaslt_test.go; db 1e-5, gpu_bgrad_test.go), and training
// with checkTrainClose. An eager and a graphed Backend sharing one GEMMTuneMemo take the
// same decisions, so their runs with the autotune on must give the same bits.

// setAutotune is setLtSwitch for the autotune.
func setAutotune(t *testing.T, g *Backend, on bool) { setLtSwitch(t, g, &g.autotune, on) }

// tuneDecisions is how many plan keys got a tuned decision so far (timed here or taken
// from an earlier timing in its GEMMTuneMemo).
func tuneDecisions(g *Backend) int {
	st := g.HostStats()
	return st.LtTuned + st.LtTuneMemo
}

// TestAutotuneLinearBackward: LinearBackward (the dw product with the BGRADB epilogue)
// and a biased Linear at the bench's row counts where the heuristic's first answer was
// slow (8,184 and 8,064 rows) and one where it was fast (7,872), autotune on against
// off: dx, dw, db and y within the tolerances of two algorithms, and decisions made.
func TestAutotuneLinearBackward(t *testing.T) {
	gpu(t)
	for _, prec := range []Precision{BF16, FP16} {
		t.Run(prec.String(), func(t *testing.T) {
			g := withPrecision(t, prec)
			for _, sh := range []struct{ m, n, k int }{{7872, 512, 512}, {8184, 512, 512}, {8064, 512, 512}, {8184, 2048, 512}} {
				m, n, k := sh.m, sh.n, sh.k
				r := rand.New(rand.NewPCG(uint64(m), uint64(n)))
				x, w, b, dy := randVec(r, m*k), randVec(r, n*k), randVec(r, n), randVec(r, m*n)
				gx, gw, gb, gdy := g.Upload(x), g.Upload(w), g.Upload(b), g.Upload(dy)
				type outs struct{ dx, dw, db, y []float32 }
				run := func(on bool) (outs, int) {
					setAutotune(t, g, on)
					before := tuneDecisions(g)
					dx, dw, db, y := g.Alloc(m*k), g.Upload(make([]float32, n*k)), g.Upload(make([]float32, n)), g.Alloc(m*n)
					g.LinearBackward(dx, dw, db, gdy, gx, gw, m, n, k)
					g.Linear(y, gx, gw, gb, m, n, k)
					o := outs{down(g, dx), down(g, dw), down(g, db), down(g, y)}
					if !bgradUsed(g, m, n, k) {
						t.Errorf("%d×%d×%d autotune %v: db did not come from the BGRADB epilogue (%s)", m, n, k, on, g.LtStatus())
					}
					return o, tuneDecisions(g) - before
				}
				off, _ := run(false)
				on, decided := run(true)
				what := fmt.Sprintf("%d×%d×%d", m, n, k)
				t.Logf("%s: %d tuned decisions; %s", what, decided, g.LtStatus())
				if decided == 0 {
					t.Errorf("%s: autotune on made no tuned decision", what)
				}
				checkClose(t, what+" dx tuned vs heuristic", on.dx, off.dx, tolFor(n))
				checkClose(t, what+" dw tuned vs heuristic", on.dw, off.dw, tolFor(m))
				checkClose(t, what+" db tuned vs heuristic", on.db, off.db, 1e-5)
				checkClose(t, what+" y tuned vs heuristic", on.y, off.y, tolFor(k))
			}
		})
	}
}

// TestAutotuneTraining: 9 updates (3 batches, 3 times: eager, captured, replayed) of
// the fixture model and the head-dimension-64 one in bf16 with dropout on: autotune on
// within checkTrainClose's bounds of autotune off, tuned decisions made, and the same
// run graphed with the autotune on the same bits as eager. The graphed Backend's plans
// are made in its eager warm-up step of each key and take the decisions the eager
// Backend timed (the two share a GEMMTuneMemo); a plan first made inside a capture would also take a
// remembered decision, or the heuristic's first if the key was never timed.
func TestAutotuneTraining(t *testing.T) {
	gpu(t)
	rc := sameBitsCases[1]
	for _, mc := range []struct {
		name string
		make func(*testing.T, int) (*model.Model, []*model.TrainBatch)
	}{{"fixture", fixtureTraining}, {"head dim 64", headDim64Training}} {
		t.Run(mc.name, func(t *testing.T) {
			m, ref := mc.make(t, 3)
			var batches []*model.TrainBatch
			for range 3 {
				batches = append(batches, ref...)
			}
			plain := newGraphTestBackend(t, BF16, false)
			plain.autotune = false // whatever XFORM_CUDA_AUTOTUNE says
			base, _ := runTrain(t, m, plain, rc, batches)
			eagerBE := newGraphTestBackend(t, BF16, false)
			eagerBE.autotune = true
			eager, et := runTrain(t, m, eagerBE, rc, batches)
			graphBE := newGraphTestBackend(t, BF16, true)
			graphBE.autotune = true
			// The eager run's decisions: the same algorithms, so the same bits.
			graphBE.tuneMemo = eagerBE.tuneMemo
			graphed, gt := runTrain(t, m, graphBE, rc, batches)
			est, gst := eagerBE.HostStats(), graphBE.HostStats()
			t.Logf("eager %v: %s", et.Round(time.Millisecond), eagerBE.LtStatus())
			t.Logf("graphed %v: %s; %+v", gt.Round(time.Millisecond), graphBE.LtStatus(), graphBE.GraphStats())
			if est.LtTuned+est.LtTuneMemo == 0 {
				t.Errorf("eager with autotune: no tuned decision (%s)", eagerBE.LtStatus())
			}
			if est.LtTuneFailed+gst.LtTuneFailed != 0 {
				t.Errorf("autotune failures: eager %d, graphed %d", est.LtTuneFailed, gst.LtTuneFailed)
			}
			if st := graphBE.GraphStats(); st.Captures != 3 || st.Replays != 3 || st.Divergences != 0 {
				t.Errorf("graph use %+v: want 3 captures, 3 replays, no divergence", st)
			}
			checkTrainClose(t, "autotune", eager, "heuristic", base)
			checkSameRun(t, "autotune graphed", graphed, "autotune eager", eager)
		})
	}
}

// TestAutotuneTiming logs, at the bench's shapes, the device µs per call of the
// heuristic's first algorithm, of the fastest of its first tuneAlgos (timed at the
// exact shape), and of the one the autotune keeps with plan reuse (timed at the
// class's representative, run at the exact shape when cublasLtMatmulAlgoCheck takes
// it), and the host time one tuning takes. bf16, fp32 D. Checks nothing; -short skips.
func TestAutotuneTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	g := withPrecision(t, BF16)
	setAutotune(t, g, false)
	type shape struct {
		name         string
		m, n, k      int
		transA, bias bool
		epi          uint32
	}
	var shapes []shape
	for _, K := range []int{7872, 8064, 8184} {
		for _, mn := range [][2]int{{512, 512}, {512, 2048}, {2048, 512}, {1536, 512}, {1024, 512}} {
			shapes = append(shapes, shape{name: "dW+BGRADB", m: mn[0], n: mn[1], k: K, transA: true, epi: ltEpiBGradB})
		}
	}
	for _, M := range []int{7872, 8184} {
		for _, n := range []int{1536, 2048, 512} {
			shapes = append(shapes, shape{name: "fwd+bias", m: M, n: n, k: 512, epi: ltEpiBias})
		}
	}
	biasBuf := g.Alloc(8192)
	unlock := g.enter()
	defer unlock()
	if !g.ltReady() {
		t.Skipf("cuBLASLt unused: %v", g.lt.err)
	}
	bias := addr(biasBuf)
	const reps = 20
	t.Logf("%-10s %-16s %9s %9s %9s %5s %9s", "product", "m×n×k", "heur µs", "exact µs", "class µs", "pick", "tune ms")
	for _, sh := range shapes {
		key := ltKey{transA: sh.transA, m: sh.m, n: sh.n, k: sh.k, dtype: g.dataType16(), dtypeD: cudaR32F, biasType: cudaR32F,
			epilogue: sh.epi, alignAB: halfAlign, alignC: 256, align: alignOf(bias)}
		if sh.transA { // dw[m,n] += dyᵀ·x: dy is k×m, x k×n
			key.lda, key.ldb, key.ldc = sh.m, sh.n, sh.n
		} else { // y[m,n] = x·wᵀ: x m×k, w n×k
			key.transB = true
			key.lda, key.ldb, key.ldc = sh.k, sh.k, sh.n
		}
		line, err := autotuneTimingLine(g, key, bias, reps)
		if err != nil {
			t.Errorf("%s %d×%d×%d: %v", sh.name, sh.m, sh.n, sh.k, err)
			continue
		}
		t.Logf("%-10s %-16s %s", sh.name, fmt.Sprintf("%d×%d×%d", sh.m, sh.n, sh.k), line)
	}
}

// autotuneTimingLine times key's candidates at the exact shape and the class's tuned
// pick there (the caller holds the Backend).
func autotuneTimingLine(g *Backend, key ltKey, bias uint64, reps int) (string, error) {
	p := &ltPlan{}
	defer g.ltDestroy(p)
	if err := g.ltBuild(p, key, bias, 0); err != nil {
		return "", err
	}
	res, err := g.ltHeuristicN(p, key, g.tuneAlgos)
	if err != nil {
		return "", err
	}
	algos := make([][8]uint64, len(res))
	for i := range res {
		algos[i] = res[i].algo
	}
	us, err := g.ltTimeAlgos(p, key, bias, algos, reps)
	if err != nil {
		return "", err
	}
	pick := ltPickFastest(us)
	// What one tuning costs on the host, at the autotune's own repetitions.
	t0 := time.Now()
	if _, err := g.ltTimeAlgos(p, key, bias, algos, ltTuneReps); err != nil {
		return "", err
	}
	tune := time.Since(t0)
	class := -1.0
	if c := key.classKey(); c != key {
		rp := &ltPlan{}
		defer g.ltDestroy(rp)
		if err := g.ltBuild(rp, c, bias, 0); err != nil {
			return "", err
		}
		if cres, err := g.ltHeuristicN(rp, c, g.tuneAlgos); err == nil {
			calgos := make([][8]uint64, len(cres))
			for i := range cres {
				calgos[i] = cres[i].algo
			}
			cus, err := g.ltTimeAlgos(rp, c, bias, calgos, ltTuneReps)
			if err != nil {
				return "", err
			}
			if ci := ltPickFastest(cus); ci >= 0 && g.ltAlgoFits(p, calgos[ci]) {
				if x, err := g.ltTimeAlgos(p, key, bias, [][8]uint64{calgos[ci]}, reps); err == nil && x[0] >= 0 {
					class = x[0]
				}
			}
		}
	} else {
		class = us[max(pick, 0)]
	}
	best := -1.0
	if pick >= 0 {
		best = us[pick]
	}
	return fmt.Sprintf("%9.1f %9.1f %9.1f %2d/%-2d %9.2f", us[0], best, class, pick, len(algos), tune.Seconds()*1e3), nil
}
