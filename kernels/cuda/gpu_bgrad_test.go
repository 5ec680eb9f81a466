package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/xform-dev/xform/kernels/cpu"
)

// LinearBackward's bias gradient in the 16-bit modes from the dw product's BGRADB
// epilogue (precision.go linearBackward16), against the CPU backend's LinearBackward
// (float64 column sums of the fp32 dy, rounded once and added to db) and against
// formulas computed here.
//
// Tolerances:
//   - db vs the CPU, per element and rigorous: the GPU sums the 16-bit copy of dy, each
//     term within u·|dy| + η of the fp32 one (u the unit roundoff, 2⁻⁸ bf16, 2⁻¹¹ fp16;
//     η half the subnormal spacing), in float32 in an order of cuBLASLt's choosing:
//     (m+3)·2⁻²³ of the sum of the magnitudes (γ with the truncating unit, which also
//     covers the CPU's one rounding of its float64 sum), then one float32 add into db on
//     each side. So |Δdb_j| ≤ (u + (m+3)·2⁻²³·(1+u))·A_j + 2mη + 2⁻²⁴·(|gpu_j| + |cpu_j|),
//     A_j = Σ_i |dy_ij|; a second call adds the same again.
//   - db vs dy rounded in Go (round16, independent of cast.cu), summed in float64:
//     norm-wise 1e-5 (dbWant). Only the float32 accumulation differs: a serial float32
//     sum of these columns (m = 8000, n = 512, random normal dy) measured 9e-8 (bf16)
//     and 1.9e-7 (fp16) in Go, a blocked or tree sum does better; summing the fp32 dy
//     instead is 1.7e-3 (bf16) and 2.2e-4 (fp16) off, a db overwritten instead of
//     accumulated 1.2e-2. That tells the epilogue from a silent fallback, which must
//     instead match the fp32 column sum within 1e-6 (float64 sums rounded once, as the
//     CPU's; gpu_backward_test.go).
//   - dx, dw: unchanged by the epilogue. dx is bit-identical to the column-sum path
//     (same plan); dw may take another algorithm, so tolFor(m) against it, and both
//     against the references of gpu_precision_test.go on sampled rows (operands
//     rounded in Go and multiplied in float64, tolFor(length); the rigorous bound
//     against the fp32 operands).
//
// Shapes (m rows, n outputs, k inputs) are the bench step's: fc2, fc1, the output
// projection (which has no bias in the model, but the path is the same), and an odd
// one whose 16-bit rows are not 16-byte aligned, where cuBLASLt may decline.

var bgradShapes = []struct{ m, n, k int }{{8000, 512, 2048}, {8000, 2048, 512}, {8000, 27472, 512}, {37, 203, 72}}

// bgradUsed reports whether LinearBackward's dw product of an m×n×k call has a live
// BGRADB plan, i.e. took db from the epilogue (a refusal at run time marks it none).
func bgradUsed(g *Backend, m, n, k int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for key, p := range g.lt.plans {
		if key.epilogue == ltEpiBGradB && key.transA && !key.transB && key.m == n && key.n == k && key.k == m && !p.none {
			return true
		}
	}
	return false
}

// fewRows is every index below n when n ≤ 16, else the first two, the last two (the
// partial tiles) and four at random, sorted: the float64 references of the longest
// reductions here (27472 terms) take seconds per row.
func fewRows(r *rand.Rand, n int) []int {
	if n <= 16 {
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		return idx
	}
	set := map[int]bool{0: true, 1: true, n - 2: true, n - 1: true}
	for len(set) < 8 {
		set[r.IntN(n)] = true
	}
	var idx []int
	for i := range set {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	return idx
}

// colSums returns, per column of the row-major m×n dy, Σ|dy|, Σ round16(dy) and Σ dy in
// float64.
func colSums(ft format16, dy []float32, m, n int) (abs, rounded, plain []float64) {
	abs, rounded, plain = make([]float64, n), make([]float64, n), make([]float64, n)
	for i := 0; i < m; i++ {
		row := dy[i*n : (i+1)*n]
		for j, v := range row {
			abs[j] += math.Abs(float64(v))
			rounded[j] += float64(ft.round16(v))
			plain[j] += float64(v)
		}
	}
	return abs, rounded, plain
}

// dbWant is what db0 becomes after times calls of LinearBackward on the row-major m×n
// dy, and the norm-wise tolerance (see the top of the file): the sum of the 16-bit dy
// (Go's round16) within 1e-5 when the shape's dw product has a live BGRADB plan, else
// the fp32 column sum within 1e-6. For the other tests of LinearBackward's db in the
// 16-bit modes.
func dbWant(g *Backend, ft format16, dy, db0 []float32, m, n, k int, times float64) ([]float32, float64) {
	used := bgradUsed(g, m, n, k)
	sum := make([]float64, n)
	for i := 0; i < m; i++ {
		for j, v := range dy[i*n : (i+1)*n] {
			if used {
				v = ft.round16(v)
			}
			sum[j] += float64(v)
		}
	}
	want := make([]float32, n)
	for j := range want {
		want[j] = float32(float64(db0[j]) + times*sum[j])
	}
	if used {
		return want, 1e-5
	}
	return want, 1e-6
}

// checkDBBound requires |gpu − cpu| ≤ bound element by element (see the top of the
// file) and returns the bound for the next call's check, which accumulates onto it.
func checkDBBound(t *testing.T, what string, ft format16, m int, gpu, cpuDB []float32, abs, prev []float64) []float64 {
	t.Helper()
	bound := make([]float64, len(gpu))
	worst, at := 0.0, -1
	for j := range gpu {
		g, c := float64(gpu[j]), float64(cpuDB[j])
		bound[j] = (ft.u+float64(m+3)*math.Ldexp(1, -23)*(1+ft.u))*abs[j] + 2*float64(m)*ft.eta +
			math.Ldexp(1, -24)*(math.Abs(g)+math.Abs(c))
		if prev != nil {
			bound[j] += prev[j]
		}
		if r := math.Abs(g-c) / bound[j]; !(r <= worst) {
			worst, at = r, j
		}
	}
	if !(worst <= 1) {
		t.Errorf("%s: db[%d] = %.9g, CPU %.9g, off by %.3g > bound %.3g", what, at, gpu[at], cpuDB[at], math.Abs(float64(gpu[at])-float64(cpuDB[at])), bound[at])
		return bound
	}
	t.Logf("%s: worst element at %.3f of its bound", what, worst)
	return bound
}

func TestLinearBackwardBGrad(t *testing.T) {
	for _, ft := range formats {
		for _, sh := range bgradShapes {
			t.Run(fmt.Sprintf("%v_%dx%dx%d", ft.prec, sh.m, sh.n, sh.k), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				c := cpu.New(0)
				m, n, k := sh.m, sh.n, sh.k
				r := rand.New(rand.NewPCG(53, uint64(m*n*k)))
				x, w, dy := randVec(r, m*k), randVec(r, n*k), randVec(r, m*n)
				dw0, db0 := randVec(r, n*k), randVec(r, n) // gradients accumulate onto these
				gx, gw, gdy := g.Upload(x), g.Upload(w), g.Upload(dy)
				gdx, gdw, gdb := g.Alloc(m*k), g.Upload(dw0), g.Upload(db0)
				g.LinearBackward(gdx, gdw, gdb, gdy, gx, gw, m, n, k)
				used := bgradUsed(g, m, n, k)
				t.Logf("BGRADB used: %v (%s)", used, g.LtStatus())
				if !used && m%8 == 0 && n%8 == 0 && k%8 == 0 {
					// 16-byte rows everywhere, the ordinary case for this epilogue on
					// a weight-gradient GEMM (B = dy, op T): a fallback here points
					// at the binding (enum, pointer attribute), not at cuBLASLt.
					t.Errorf("aligned shape: db fell back to the column sum (%s)", g.LtStatus())
				}
				dx1, dw1, db1 := down(g, gdx), down(g, gdw), down(g, gdb)

				// db against the CPU backend, twice (accumulation).
				cdy, cdb := c.Upload(dy), c.Upload(db0)
				c.LinearBackward(nil, nil, cdb, cdy, nil, nil, m, n, k)
				cdb1 := down(c, cdb)
				abs, rounded, plain := colSums(ft, dy, m, n)
				bound := checkDBBound(t, "db vs CPU", ft, m, db1, cdb1, abs, nil)
				ref16, ref32 := make([]float32, n), make([]float32, n)
				for j := range ref16 {
					ref16[j] = float32(float64(db0[j]) + rounded[j])
					ref32[j] = float32(float64(db0[j]) + plain[j])
				}
				t.Logf("db vs Σ of the %v dy: %.3g; vs Σ of the fp32 dy: %.3g (relative)", ft.prec, relErr(db1, ref16), relErr(db1, ref32))
				if used {
					checkClose(t, "db vs Go-rounded dy", db1, ref16, 1e-5)
				} else {
					checkClose(t, "db (column sum) vs CPU", db1, cdb1, 1e-6)
				}

				// dx and dw against formulas on sampled rows.
				rows := fewRows(r, m)
				tight, exact, eb := refGemm(ft, false, false, len(rows), k, n, 1, pickRows(dy, n, rows), n, w, k, 0, make([]float32, len(rows)*k), k)
				got := pickRows(dx1, k, rows)
				checkClose(t, "dx vs rounded operands", got, tight, tolFor(n))
				checkBound(t, "dx", got, exact, eb)
				wr := fewRows(r, n)
				dw0s := pickRows(dw0, k, wr)
				tight, exact, eb = refGemm(ft, true, false, len(wr), k, m, 1, pickCols(dy, m, n, wr), len(wr), x, k, 1, dw0s, k)
				got = pickRows(dw1, k, wr)
				checkClose(t, "dw vs rounded operands", got, tight, tolFor(m))
				checkBound(t, "dw", got, exact, eb)

				// A second call accumulates again.
				g.LinearBackward(gdx, gdw, gdb, gdy, gx, gw, m, n, k)
				c.LinearBackward(nil, nil, cdb, cdy, nil, nil, m, n, k)
				checkDBBound(t, "db after two calls vs CPU", ft, m, down(g, gdb), down(c, cdb), abs, bound)
				checkExact(t, "dx, second call", down(g, gdx), dx1)

				// The column-sum path on the same inputs: dx the same bits, dw close.
				g.bgradOff = true
				defer func() { g.bgradOff = false }()
				odx, odw, odb := g.Alloc(m*k), g.Upload(dw0), g.Upload(db0)
				g.LinearBackward(odx, odw, odb, gdy, gx, gw, m, n, k)
				checkExact(t, "dx vs the column-sum path", dx1, down(g, odx))
				checkClose(t, "dw vs the column-sum path", dw1, down(g, odw), tolFor(m))
				checkClose(t, "column-sum db vs CPU", down(g, odb), cdb1, 1e-6)
			})
		}
	}
}

// TestLinearBackwardBGradOnlyDB: without dw there is no product to attach the epilogue
// to, so db stays the column sum (exact against the CPU within 1e-6), and without db
// no BGRADB plan is made.
func TestLinearBackwardBGradOnlyDB(t *testing.T) {
	for _, ft := range formats {
		t.Run(ft.prec.String(), func(t *testing.T) {
			g := withPrecision(t, ft.prec)
			c := cpu.New(0)
			const m, n, k = 96, 40, 24
			r := rand.New(rand.NewPCG(59, 61))
			x, w, dy, db0 := randVec(r, m*k), randVec(r, n*k), randVec(r, m*n), randVec(r, n)
			gdb := g.Upload(db0)
			g.LinearBackward(g.Alloc(m*k), nil, gdb, g.Upload(dy), g.Upload(x), g.Upload(w), m, n, k)
			cdb := c.Upload(db0)
			c.LinearBackward(nil, nil, cdb, c.Upload(dy), nil, nil, m, n, k)
			checkClose(t, "db without dw vs CPU", down(g, gdb), down(c, cdb), 1e-6)
			g.LinearBackward(nil, g.Alloc(n*k), nil, g.Upload(dy), g.Upload(x), g.Upload(w), m, n, k)
			if bgradUsed(g, m, n, k) {
				t.Error("a BGRADB plan was made for a call without db")
			}
		})
	}
}

// TestLinearBGradTiming logs the device time per call of the bf16 LinearBackward at the
// bench step's shapes (~8,000 rows), with db from the column sum (before) and from the
// BGRADB epilogue (after), and the parts: the column sum's two launches, the dw product
// without and with the epilogue, and the add into db. A step ran 65 such Linear
// backwards' column sums (XFORM_CUDA_PROFILE=gpu, 6L-6L bf16), at these shapes. It
// only measures; skipped with -short.
func TestLinearBGradTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	be := gpu(t)
	old := be.precision
	be.precision = BF16
	defer func() { be.precision, be.bgradOff = old, false }()
	timeIt := func(f func()) float64 { return timeDevice(t, be, 20, f).Seconds() * 1e6 }
	const m = 8000
	r := rand.New(rand.NewPCG(3, 4))
	var before, after float64
	for _, s := range []struct {
		name string
		n, k int
	}{{"q/out", 512, 512}, {"kv", 1024, 512}, {"qkv", 1536, 512}, {"fc1", 2048, 512}, {"fc2", 512, 2048}} {
		x, w, dy := be.Upload(randVec(r, m*s.k)), be.Upload(randVec(r, s.n*s.k)), be.Upload(randVec(r, m*s.n))
		dx, dw, db := be.Alloc(m*s.k), be.Alloc(s.n*s.k), be.Alloc(s.n)
		be.bgradOff = true
		colPath := timeIt(func() { be.LinearBackward(dx, dw, db, dy, x, w, m, s.n, s.k) })
		be.bgradOff = false
		epiPath := timeIt(func() { be.LinearBackward(dx, dw, db, dy, x, w, m, s.n, s.k) })
		used := bgradUsed(be, m, s.n, s.k)
		before += colPath
		after += epiPath

		colSum := timeIt(func() {
			defer be.enter()()
			part, chunks, nout := be.colReduce(0, addr(dy), 0, 0, m, s.n)
			be.colFinish(db, part, chunks, nout, 0, s.n, 1)
		})
		var p [3]uint64
		var plain, bgrad *ltPlan
		grad := be.Alloc(s.n)
		func() {
			defer be.enter()()
			p = be.cast16([3]operand16{{addr(dy), m * s.n}, {}, {addr(x), m * s.k}})
			plain = be.ltPlanFor(true, false, s.n, s.k, m, s.n, s.k, s.k, addr(dw), 0)
			bgrad = be.ltPlanEpi(true, false, s.n, s.k, m, s.n, s.k, s.k, addr(dw), ltEpiBGradB, addr(grad), 0, 0)
		}()
		dwPlain, dwBGrad := math.NaN(), math.NaN()
		if plain != nil {
			dwPlain = timeIt(func() { defer be.enter()(); be.ltRun(plain, p[0], p[2], 1, addr(dw), 0) })
		}
		if bgrad != nil {
			dwBGrad = timeIt(func() { defer be.enter()(); be.ltRun(bgrad, p[0], p[2], 1, addr(dw), addr(grad)) })
		}
		add := timeIt(func() { be.AddTo(db, grad) })
		t.Logf("%-6s %d×%d×%d: LinearBackward column sum %7.1f µs, BGRADB %7.1f µs (used %v, saves %5.1f µs); parts: col_partial+col_finish %5.1f µs, dw product %6.1f µs plain / %6.1f µs with BGRADB, add_to %4.1f µs",
			s.name, m, s.n, s.k, colPath, epiPath, used, colPath-epiPath, colSum, dwPlain, dwBGrad, add)
	}
	t.Logf("sum over the five shapes: %.1f µs before, %.1f µs after", before, after)
	t.Log(be.LtStatus())
}
