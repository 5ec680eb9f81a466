package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xform-dev/xform/kernels"
)

// cuBLASLt plan reuse (plan_reuse.go) on the GPU. A reused algorithm may sum in another
// order than the heuristic's pick for the exact shape, so results are checked against
// the exact products of the rounded operands in float64 with the derived bounds of
// checkHalfProduct (16-bit outputs) and checkF32Product (fp32 outputs), and bit for bit
// against the run without reuse where both runs used the same algorithm.

// checkF32Product checks an fp32 GEMM output row got against the exact ref: L products
// of 16-bit values (exact in fp32) summed in fp32 in any order, plus the bias or the
// accumulated C, are within (L+2)·2⁻²⁴·mag of the exact value (mag = Σ|products| +
// |bias or C|: the γ bound of a length-L sum and one more add, with a margin of one
// term). It returns the worst ratio of error to bound.
func checkF32Product(t *testing.T, what string, got []float32, ref, mag []float64, L int) float64 {
	t.Helper()
	worst := 0.0
	for j, e := range ref {
		bound := float64(L+2)*math.Ldexp(1, -24)*mag[j] + math.Ldexp(1, -149)
		d := math.Abs(float64(got[j]) - e)
		if !(d <= bound) {
			t.Fatalf("%s[%d] = %v, exact %v: |Δ| %.3g > bound %.3g", what, j, got[j], e, d, bound)
		}
		worst = max(worst, d/bound)
	}
	return worst
}

// ltFlush drops the shared Backend's plans and plan-reuse bookkeeping, so the next
// products plan afresh.
func ltFlush(g *Backend) {
	defer g.enter()()
	s := &g.lt
	for k, p := range s.plans {
		g.ltDestroy(p)
		delete(s.plans, k)
	}
	s.reuse = ltReuse{}
}

// setLtSwitch flushes g's plans and sets one of its plan-making switches (plan reuse,
// autotune) to on for the rest of the test, then flushes again and restores it: plans
// made under the other setting must not be reused.
func setLtSwitch(t *testing.T, g *Backend, sw *bool, on bool) {
	t.Helper()
	old := *sw
	ltFlush(g)
	*sw = on
	t.Cleanup(func() {
		ltFlush(g)
		*sw = old
	})
}

// setPlanReuse is setLtSwitch for plan reuse.
func setPlanReuse(t *testing.T, g *Backend, on bool) { setLtSwitch(t, g, &g.planReuse, on) }

// hasAlgoCheck says whether cuBLASLt is in use and has cublasLtMatmulAlgoCheck.
func hasAlgoCheck(g *Backend) bool {
	defer g.enter()()
	return g.ltReady() && g.lt.lib.algoCheck != 0
}

// ltAlgos snapshots the algorithms of the live plans that have dim among m, n, k
// (refused keys map to a zero algorithm with none set, as ltPlanAlgo).
func ltAlgos(g *Backend, dim int) map[ltKey]ltPlanAlgo {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[ltKey]ltPlanAlgo{}
	for k, p := range g.lt.plans {
		if k.m == dim || k.n == dim || k.k == dim {
			out[k] = ltPlanAlgo{algo: p.algo, none: p.none, reused: p.reused}
		}
	}
	return out
}

type ltPlanAlgo struct {
	algo         [8]uint64
	none, reused bool
}

// sameAlgos says whether the two snapshots hold the same keys matching sel with the same
// algorithms (so the products they ran summed in the same order).
func sameAlgos(a, b map[ltKey]ltPlanAlgo, sel func(ltKey) bool) bool {
	n := 0
	for k, pa := range a {
		if !sel(k) {
			continue
		}
		n++
		pb, ok := b[k]
		if !ok || pa.algo != pb.algo || pa.none != pb.none {
			return false
		}
	}
	for k := range b {
		if sel(k) {
			n--
		}
	}
	return n == 0
}

// reuseOutputs are the products of one shape: LinearKeep's fp32 y (bias),
// LinearActKeep's 16-bit ReLU a (bias), LinearBackwardKept's fp32 dx and 16-bit dx,
// and the dw and db both backward calls accumulate (from the same start).
type reuseOutputs struct {
	y, a, dx, dx16, dw, db []float32
	bgrad                  bool // db came from the BGRADB epilogue (a 16-bit dy summed)
}

// runReuseShape runs the products of an m×n×k Linear on the given operands.
func runReuseShape(t *testing.T, g *Backend, m, n, k int, x, w, b, dy kernels.Buffer, dw0, db0 []float32) reuseOutputs {
	t.Helper()
	y32, a16 := g.Alloc(m*n), g.AllocHalf(m*n)
	kept := g.LinearKeep(y32, x, w, b, m, n, k)
	aux, kept2, ok := g.LinearActKeep(a16, x, w, b, m, n, k, kernels.ReLU)
	if !ok || aux != nil || kept2 == nil {
		t.Fatalf("LinearActKeep into a 16-bit a: ok %v, aux %v", ok, aux)
	}
	dx32, dx16 := g.Alloc(m*k), g.AllocHalf(m*k)
	dw, db := g.Upload(dw0), g.Upload(db0)
	g.LinearBackwardKept(dx32, dw, db, dy, kept, m, n, k)
	dwB, dbB := g.Upload(dw0), g.Upload(db0)
	g.LinearBackwardKept(dx16, dwB, dbB, dy, kept, m, n, k)
	out := reuseOutputs{y: down(g, y32), a: downHalf(t, g, a16), dx: down(g, dx32), dx16: downHalf(t, g, dx16),
		dw: down(g, dw), db: down(g, db), bgrad: bgradUsed(g, m, n, k)}
	// dw and db do not depend on how dx is written.
	checkExact(t, "dw (16-bit dx call vs fp32 dx call)", down(g, dwB), out.dw)
	checkExact(t, "db (16-bit dx call vs fp32 dx call)", down(g, dbB), out.db)
	return out
}

// TestPlanReuseLinear: at fc1's and fc2's shapes, the products at m2 = 8000 rows after
// m1 = 7950 (one class) with plan reuse — plans on the class's algorithm, validated by
// cublasLtMatmulAlgoCheck — against the exact products of the rounded operands within
// the derived bounds, and against the same products without reuse (the heuristic's
// algorithm for 8000 rows): bit-identical for each output whose products ran the same
// algorithms in both runs, within the bounds otherwise. Also m2 with reuse but without
// m1 before it: the same algorithms and bits (a class's algorithm does not depend on
// which of its shapes came first). Must show: no failure, plans at m2 on the class's
// algorithm (none if cublasLtMatmulAlgoCheck is missing). Logged: which outputs took
// another algorithm than the heuristic's, and the plan counters.
func TestPlanReuseLinear(t *testing.T) {
	for _, ft := range formats {
		for _, sh := range []struct{ n, k int }{{2048, 512}, {512, 2048}} {
			t.Run(fmt.Sprintf("%v/n%d_k%d", ft.prec, sh.n, sh.k), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				old := g.syncCheck
				g.syncCheck = false // speed; the results are downloaded anyway
				defer func() { g.syncCheck = old }()
				const m1, m2 = 7950, 8000
				if ltDimClass(m1) != ltDimClass(m2) {
					t.Fatalf("m1 %d and m2 %d in different classes", m1, m2)
				}
				n, k := sh.n, sh.k
				r := rand.New(rand.NewPCG(uint64(n), uint64(k)))
				xv, wv := randVec(r, m2*k), scaled(randVec(r, n*k), 1/math.Sqrt(float64(k)))
				bv, dyv := randVec(r, n), scaled(randVec(r, m2*n), 0.1)
				dw0, db0 := randVec(r, n*k), randVec(r, n)
				x, w, b, dy := g.Upload(xv), g.Upload(wv), g.Upload(bv), g.Upload(dyv)

				setPlanReuse(t, g, true)
				check := hasAlgoCheck(g)
				runReuseShape(t, g, m1, n, k, g.Slice(x, 0, m1*k), w, b, g.Slice(dy, 0, m1*n), dw0, db0)
				st0 := g.HostStats()
				on := runReuseShape(t, g, m2, n, k, x, w, b, dy, dw0, db0)
				st1 := g.HostStats()
				algosOn := ltAlgos(g, m2)
				t.Logf("m %d after %d with reuse: %d plans, %d heuristic queries, %d on the class's algorithm, %d checks refused, %d kind refusals; %s",
					m2, m1, st1.LtPlans-st0.LtPlans, st1.LtQueries-st0.LtQueries, st1.LtReused-st0.LtReused,
					st1.LtCheckRefused-st0.LtCheckRefused, st1.LtSkipped-st0.LtSkipped, g.LtStatus())
				if check && st1.LtReused == st0.LtReused {
					t.Errorf("no plan at %d rows took the algorithm kept for %d rows (cublasLtMatmulAlgoCheck refused all %d)",
						m2, m1, st1.LtCheckRefused-st0.LtCheckRefused)
				}

				// History independence: m2 alone, with reuse, takes the same
				// algorithms (the class's is the representative's, whatever came
				// first) and so gives the same bits.
				setPlanReuse(t, g, true)
				alone := runReuseShape(t, g, m2, n, k, x, w, b, dy, dw0, db0)
				if algosAlone := ltAlgos(g, m2); !sameAlgos(algosOn, algosAlone, func(ltKey) bool { return true }) {
					t.Errorf("m %d with reuse took other algorithms after m %d than alone", m2, m1)
				}
				for _, c := range []struct {
					name      string
					got, want []float32
				}{{"y", alone.y, on.y}, {"a", alone.a, on.a}, {"dx", alone.dx, on.dx}, {"16-bit dx", alone.dx16, on.dx16},
					{"dw", alone.dw, on.dw}, {"db", alone.db, on.db}} {
					checkExact(t, c.name+" (reuse, alone vs after m1)", c.got, c.want)
				}

				setPlanReuse(t, g, false)
				off := runReuseShape(t, g, m2, n, k, x, w, b, dy, dw0, db0)
				algosOff := ltAlgos(g, m2)

				xr, wr, dyr := roundAll(ft, xv), roundAll(ft, wv), roundAll(ft, dyv)
				wt := transpose(wr, n, k)
				rows := halfRows(r, m2)
				dyrT, xT, dyvT := transpose(dyr, m2, n), transpose(xr, m2, k), transpose(dyv, m2, n)
				wrows := fewRows(r, n)
				for _, run := range []struct {
					name string
					o    reuseOutputs
				}{{"reuse", on}, {"no reuse", off}} {
					o := run.o
					dyT := dyrT
					if !o.bgrad {
						dyT = dyvT // db from the column sum of the fp32 dy
					}
					var wy, wa, wd, wd16, wdw, wdb float64
					for _, i := range rows {
						ref, mag := refProduct(xr, wr, bv, i, n, k)
						wy = max(wy, checkF32Product(t, fmt.Sprintf("%s: y row %d", run.name, i), o.y[i*n:(i+1)*n], ref, mag, k))
						wa = max(wa, checkHalfProduct(t, ft, fmt.Sprintf("%s: a row %d", run.name, i), o.a[i*n:(i+1)*n], ref, mag, bv, k, true))
						ref, mag = refProduct(dyr, wt, nil, i, k, n)
						wd = max(wd, checkF32Product(t, fmt.Sprintf("%s: dx row %d", run.name, i), o.dx[i*k:(i+1)*k], ref, mag, n))
						wd16 = max(wd16, checkHalfProduct(t, ft, fmt.Sprintf("%s: 16-bit dx row %d", run.name, i), o.dx16[i*k:(i+1)*k], ref, mag, nil, n, false))
					}
					// dw row j = dw0 row j + Σ_i dy[i,j]·x[i,:]: rows of dyᵀ against rows of xᵀ.
					for _, j := range wrows {
						ref, mag := refProduct(dyrT, xT, dw0[j*k:(j+1)*k], j, k, m2)
						wdw = max(wdw, checkF32Product(t, fmt.Sprintf("%s: dw row %d", run.name, j), o.dw[j*k:(j+1)*k], ref, mag, m2))
					}
					// db = db0 + Σ_i dy[i,:]: each column a sum of m2 terms.
					ones := make([]float32, m2)
					for i := range ones {
						ones[i] = 1
					}
					for j := 0; j < n; j++ {
						ref, mag := refProduct(dyT[j*m2:(j+1)*m2], ones, db0[j:j+1], 0, 1, m2)
						wdb = max(wdb, checkF32Product(t, fmt.Sprintf("%s: db[%d]", run.name, j), o.db[j:j+1], ref, mag, m2))
					}
					t.Logf("%s: worst error/bound y %.3f, a %.3f, dx %.3f, 16-bit dx %.3f, dw %.3f, db %.3f (db from BGRADB: %v)",
						run.name, wy, wa, wd, wd16, wdw, wdb, o.bgrad)
				}

				fwd32 := func(k ltKey) bool { return !k.transA && k.transB && k.dtypeD == cudaR32F && k.epilogue == ltEpiBias }
				fwd16 := func(k ltKey) bool {
					return !k.transA && k.transB && (k.dtypeD != cudaR32F || k.epilogue == ltEpiReluBias)
				}
				dx32 := func(k ltKey) bool { return !k.transA && !k.transB && k.dtypeD == cudaR32F }
				dx16 := func(k ltKey) bool { return !k.transA && !k.transB && k.dtypeD != cudaR32F }
				dwSel := func(k ltKey) bool { return k.transA }
				for _, c := range []struct {
					name      string
					sel       func(ltKey) bool
					got, want []float32
				}{
					{"y", fwd32, on.y, off.y}, {"a", fwd16, on.a, off.a}, {"dx", dx32, on.dx, off.dx},
					{"16-bit dx", dx16, on.dx16, off.dx16}, {"dw", dwSel, on.dw, off.dw}, {"db", dwSel, on.db, off.db},
				} {
					if sameAlgos(algosOn, algosOff, c.sel) {
						checkExact(t, c.name+" (reused algorithm = the heuristic's for this shape)", c.got, c.want)
						t.Logf("%s: same algorithm with and without reuse: bit-identical", c.name)
					} else {
						t.Logf("%s: another algorithm with reuse: %d of %d elements differ (both within the bounds)",
							c.name, countDiff(c.got, c.want), len(c.want))
					}
				}
			})
		}
	}
}

// countDiff is how many elements of a and b differ in bits.
func countDiff(a, b []float32) int {
	c := 0
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			c++
		}
	}
	return c
}

// reuseStep is one training-like pass at m rows: fc1 (n 2048, k 512) forward into a
// 16-bit ReLU a and its backward with an fp32 dx; fc2 (n 512, k 2048) forward into an
// fp32 y and its backward with a 16-bit dx; dw and db accumulated.
type reuseBufs struct {
	x1, w1, b1, dy1, x2, w2, b2, dy2, dw1, db1, dw2, db2 kernels.Buffer
}

func newReuseBufs(g *Backend, r *rand.Rand, maxM int) *reuseBufs {
	up := func(n int, s float64) kernels.Buffer { return g.Upload(scaled(randVec(r, n), s)) }
	return &reuseBufs{
		x1: up(maxM*512, 1), w1: up(2048*512, 1/math.Sqrt(512)), b1: up(2048, 1), dy1: up(maxM*2048, 0.1),
		x2: up(maxM*2048, 1), w2: up(512*2048, 1/math.Sqrt(2048)), b2: up(512, 1), dy2: up(maxM*512, 0.1),
		dw1: up(2048*512, 0), db1: up(2048, 0), dw2: up(512*2048, 0), db2: up(512, 0),
	}
}

func (b *reuseBufs) step(t *testing.T, g *Backend, m int) {
	a16 := g.AllocHalf(m * 2048)
	_, kept1, ok := g.LinearActKeep(a16, g.Slice(b.x1, 0, m*512), b.w1, b.b1, m, 2048, 512, kernels.ReLU)
	if !ok {
		t.Fatal("LinearActKeep into a 16-bit a declined")
	}
	g.LinearBackwardKept(g.Alloc(m*512), b.dw1, b.db1, g.Slice(b.dy1, 0, m*2048), kept1, m, 2048, 512)
	kept2 := g.LinearKeep(g.Alloc(m*512), g.Slice(b.x2, 0, m*2048), b.w2, b.b2, m, 512, 2048)
	g.LinearBackwardKept(g.AllocHalf(m*2048), b.dw2, b.db2, g.Slice(b.dy2, 0, m*512), kept2, m, 512, 2048)
}

// distinctRows returns n distinct row counts in [lo, hi], in random order.
func distinctRows(r *rand.Rand, n, lo, hi int) []int {
	seen := map[int]bool{}
	var out []int
	for len(out) < n {
		m := lo + r.IntN(hi-lo+1)
		if !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	return out
}

// TestPlanReuseQueries: 50 passes of fc1 and fc2 forward and backward (LinearActKeep,
// LinearKeep, LinearBackwardKept), each at a new row count drawn from 7,000–8,200 (six
// classes), count the heuristic queries with and without reuse (HostStats). Without
// reuse every new key is a query (about 7 per pass: the refused fp32-bias 16-bit-D plan
// among them); with it, about one per key and class plus the kind's first refusals.
// Must show: fewer than a third of the queries with reuse, plans on reused algorithms,
// and the fp32-bias 16-bit-D kind answered without a query once it was refused twice
// (where cuBLASLt refuses it, as it did on the H200 at every shape tried).
func TestPlanReuseQueries(t *testing.T) {
	g := withPrecision(t, BF16)
	old := g.syncCheck
	g.syncCheck = false
	defer func() { g.syncCheck = old }()
	const passes, lo, hi = 50, 7000, 8200
	r := rand.New(rand.NewPCG(50, 7))
	bufs := newReuseBufs(g, r, hi)
	ms := distinctRows(r, passes, lo, hi)
	counts := map[bool]HostStats{}
	for _, on := range []bool{false, true} {
		setPlanReuse(t, g, on)
		st0 := g.HostStats()
		for _, m := range ms {
			bufs.step(t, g, m)
		}
		must(g.Synchronize())
		st1 := g.HostStats()
		d := HostStats{LtPlans: st1.LtPlans - st0.LtPlans, LtRefused: st1.LtRefused - st0.LtRefused,
			LtPlanTime: st1.LtPlanTime - st0.LtPlanTime, LtQueries: st1.LtQueries - st0.LtQueries,
			LtReused: st1.LtReused - st0.LtReused, LtCheckRefused: st1.LtCheckRefused - st0.LtCheckRefused,
			LtSkipped: st1.LtSkipped - st0.LtSkipped, Allocs: st1.Allocs - st0.Allocs}
		counts[on] = d
		t.Logf("reuse %v: %d passes at new row counts: %d plans built (%d refused), %d heuristic queries, %d on a class's algorithm, %d checks refused, %d kind refusals, plan host time %.2f ms (%.1f µs per plan), %d device allocations",
			on, passes, d.LtPlans, d.LtRefused, d.LtQueries, d.LtReused, d.LtCheckRefused, d.LtSkipped,
			d.LtPlanTime.Seconds()*1e3, us(d.LtPlanTime)/float64(max(d.LtPlans, 1)), d.Allocs)
	}
	offQ, on := counts[false].LtQueries, counts[true]
	if offQ < passes*5 {
		t.Errorf("without reuse only %d heuristic queries for %d passes at new shapes (≥ 5 per pass expected)", offQ, passes)
	}
	if !hasAlgoCheck(g) {
		t.Skip("cublasLtMatmulAlgoCheck missing: reuse cannot take effect")
	}
	if 3*on.LtQueries >= offQ || on.LtReused == 0 {
		t.Errorf("with reuse %d heuristic queries (%d reused plans) against %d without: want fewer than a third", on.LtQueries, on.LtReused, offQ)
	}
	if counts[false].LtRefused >= passes && on.LtSkipped == 0 {
		t.Errorf("without reuse %d refusals (one kind per pass), with reuse none answered from the kind", counts[false].LtRefused)
	}
}

// TestPlanReuseHostTime prints the host time of a pass (TestPlanReuseQueries' products)
// at a new row count with and without reuse, and of a pass at a row count already
// planned, as µs per pass: the enqueue time (the launch queue does not fill at 20
// passes), and the plan-building time HostStats counts. Must show: new-shape passes
// cheaper with reuse (by about the heuristic queries saved); cached passes alike. It
// only measures and logs.
func TestPlanReuseHostTime(t *testing.T) {
	g := withPrecision(t, BF16)
	old := g.syncCheck
	g.syncCheck = false
	defer func() { g.syncCheck = old }()
	// 20 passes of about 7 keys and the warm-up's stay within ltMaxPlans, so the
	// second round finds every plan without reuse too.
	const passes = 20
	r := rand.New(rand.NewPCG(30, 8))
	bufs := newReuseBufs(g, r, 8200)
	for _, on := range []bool{false, true} {
		setPlanReuse(t, g, on)
		// Warm the block cache at the largest shape, and every class, so that the
		// timed passes allocate nothing new and (with reuse) find their classes.
		bufs.step(t, g, 8200)
		for _, m := range []int{7000, 7300, 7500, 7800, 8100} {
			bufs.step(t, g, m)
		}
		must(g.Synchronize())
		ms := distinctRows(r, passes, 7001, 8199)
		time1 := func() (time.Duration, time.Duration) {
			st0 := g.HostStats()
			start := time.Now()
			for _, m := range ms {
				bufs.step(t, g, m)
			}
			enq := time.Since(start)
			must(g.Synchronize())
			return enq, g.HostStats().LtPlanTime - st0.LtPlanTime
		}
		newEnq, newPlan := time1()
		hitEnq, hitPlan := time1()
		t.Logf("reuse %-5v: new row count %8.1f µs per pass (plans %7.1f µs); planned row count %8.1f µs per pass (plans %5.1f µs)",
			on, us(newEnq)/passes, us(newPlan)/passes, us(hitEnq)/passes, us(hitPlan)/passes)
	}
}

// TestLtPlanHostMemory measures a plan's host memory: 20,000 descriptors with three
// layouts each (ltBuild, no heuristic) in a map like the plan cache, RSS (the C heap
// and the Go heap) and the Go heap before and after. Must show: about 1 KiB per plan
// (the header's sizes: a 256-byte descriptor, 64-byte layouts; the Go plan and its key),
// so ltMaxPlansReuse plans are a few MiB; fails above 16 KiB per plan.
func TestLtPlanHostMemory(t *testing.T) {
	g := withPrecision(t, BF16)
	const n = 20000
	var ms0, ms1 runtime.MemStats
	rss := func() int64 {
		b, err := os.ReadFile("/proc/self/statm")
		if err != nil {
			return -1
		}
		f := strings.Fields(string(b))
		pages, _ := strconv.ParseInt(f[1], 10, 64)
		return pages * int64(os.Getpagesize())
	}
	plans := map[ltKey]*ltPlan{}
	func() {
		defer g.enter()()
		if !g.ltReady() {
			t.Skipf("cuBLASLt not in use: %s", g.LtStatus())
		}
	}()
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	r0 := rss()
	func() {
		defer g.enter()()
		for i := 0; i < n; i++ {
			key := ltKey{transB: true, m: 1 + i, n: 2048, k: 512, lda: 512, ldb: 512, ldc: 2048, dtype: g.dataType16(),
				dtypeD: cudaR32F, biasType: cudaR32F, epilogue: ltEpiDefault, alignAB: halfAlign, alignC: 256}
			p := &ltPlan{key: key, name: fmt.Sprintf("cublasLt %dx%dx%d t01 epi1", key.m, key.n, key.k)}
			if err := g.ltBuild(p, key, 0, 0); err != nil {
				t.Fatalf("ltBuild: %v", err)
			}
			plans[key] = p
		}
	}()
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	r1 := rss()
	goBytes := float64(ms1.HeapAlloc) - float64(ms0.HeapAlloc)
	rssBytes := float64(r1 - r0)
	func() {
		defer g.enter()()
		for _, p := range plans {
			g.ltDestroy(p)
		}
	}()
	perPlan := rssBytes / n
	t.Logf("%d plans: RSS +%.1f MiB (%.0f bytes per plan), Go heap +%.1f MiB (%.0f bytes per plan); %d plans (ltMaxPlansReuse) ≈ %.1f MiB",
		n, rssBytes/(1<<20), perPlan, goBytes/(1<<20), goBytes/n, ltMaxPlansReuse, perPlan*ltMaxPlansReuse/(1<<20))
	if r0 < 0 {
		t.Skip("no /proc/self/statm")
	}
	if perPlan > 16<<10 {
		t.Errorf("%.0f bytes per plan: ltMaxPlansReuse = %d would hold %.0f MiB", perPlan, ltMaxPlansReuse, perPlan*ltMaxPlansReuse/(1<<20))
	}
}
