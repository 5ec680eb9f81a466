package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// The fused feed-forward Linear + activation of linear_act.go against the CPU backend's
// Linear + Activate and LinearBackward + ActivateBackward on the same operands rounded
// to 16 bits in Go (round16 of gpu_precision_test.go), and against the unfused GPU path.
//
// Tolerances (relative ‖Δ‖/‖ref‖ unless said otherwise):
//   - GEMM outputs on rounded operands: tolFor(L) (1e-5 for reduction lengths L ≤ 512,
//     growing with L, see gpu_cublaslt_test.go): the GPU multiplies the same 16-bit values
//     exactly and only its fp32 accumulation differs. ReLU and its mask add nothing: an
//     element whose sign the accumulation could flip is within that error of 0.
//   - The ReLU mask: wherever |pre| exceeds the rigorous fp32 accumulation bound,
//     (d+3)·2⁻²³·(Σ|x̂ŵ| + |b|), the fused output's sign must be the reference's.
//   - gelu_accurate: tolGELU = 1e-3. cuBLASLt documents the formula (the tanh form)
//     but not how accurately it evaluates tanh in float; 1e-3 admits the hardware
//     tanh.approx.f32 (relative error 2⁻¹⁰·⁹⁹) and still catches a wrong argument or
//     a missing bias (O(1)). The errors against the tanh and the erf forms are logged.
//   - db1 (summed by the BGRAD epilogue in float32, order unknown) per element:
//     |Δ| ≤ (m+2)·2⁻²³·Σ_rows|dpre| + 2⁻²³·(|db1₀| + |ref|), against the float64 sum
//     of the GPU's own dpre (itself checked on sampled rows against the CPU).
//   - dw2 and db2 are LinearBackward's products and column sums: tolFor(m) / 1e-6
//     against the CPU, and bit-identical to the unfused path unless that one took db2
//     from the BGRADB epilogue (gpu_bgrad_test.go's dbWant then checks it).
//
// At the training shape only sampled rows (and, for dw2, columns) are compared with
// the CPU, as gpu_cublaslt_test.go does.

const tolGELU = 1e-3

// laShapes are (m tokens, F = fc1's output, d = fc1's input) of the feed-forward block.
// 37×203×72 has a width no 16-byte alignment fits: fusing may be declined there.
var laShapes = []struct{ m, f, d int }{{37, 200, 72}, {64, 512, 256}, {6000, 2048, 512}, {37, 203, 72}}

func roundAll(ft format16, v []float32) []float32 {
	out := make([]float32, len(v))
	for i, f := range v {
		out[i] = ft.round16(f)
	}
	return out
}

func scaled(v []float32, s float64) []float32 {
	for i := range v {
		v[i] = float32(float64(v[i]) * s)
	}
	return v
}

// cpuRef runs fn on a zeroed CPU buffer of out elements and returns its contents.
func cpuRef(c *cpu.Backend, out int, fn func(y kernels.Buffer)) []float32 {
	y := c.Alloc(out)
	fn(y)
	return down(c, y)
}

// geluForms is the erf and tanh GELU of x, in float64.
func geluForms(x float64) (erfForm, tanhForm float64) {
	erfForm = 0.5 * x * (1 + math.Erf(x/math.Sqrt2))
	tanhForm = 0.5 * x * (1 + math.Tanh(0.7978845608028654*(x+0.044715*x*x*x)))
	return
}

// usedEpilogue reports whether cuBLASLt holds a working plan with epilogue epi for an
// m×n×k product (LinearAct's and LinearActBackward's dx product share m, n = F, k = d).
func usedEpilogue(g *Backend, epi uint32, m, n, k int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for key, p := range g.lt.plans {
		if key.epilogue == epi && key.m == m && key.n == n && key.k == k && !p.none {
			return true
		}
	}
	return false
}

func TestLinearAct(t *testing.T) {
	gpu(t)
	for _, ft := range formats {
		for _, act := range []kernels.Activation{kernels.ReLU, kernels.GELUAccurate} {
			for _, sh := range laShapes {
				for _, force := range []int{0, 1, 2} {
					if force > 0 && sh.m != 64 {
						continue // the fallbacks once, at a small aligned shape
					}
					name := fmt.Sprintf("%v_%s_%dx%dx%d_fallback%d", ft.prec, act, sh.m, sh.f, sh.d, force)
					t.Run(name, func(t *testing.T) { testLinearAct(t, ft, act, sh.m, sh.f, sh.d, force) })
				}
			}
		}
	}
}

func testLinearAct(t *testing.T, ft format16, act kernels.Activation, m, F, d, force int) {
	g := withPrecision(t, ft.prec)
	old := g.linearActForce
	g.linearActForce = force
	t.Cleanup(func() { g.linearActForce = old })
	c := cpu.New(0)
	r := rand.New(rand.NewPCG(77, uint64(m*F*d+force)))
	// Weights scaled as by their fan-in, so pre and dpre are O(1) and GELU's curved
	// part is exercised.
	x := randVec(r, m*d)
	w1 := scaled(randVec(r, F*d), 1/math.Sqrt(float64(d)))
	b1 := scaled(randVec(r, F), 0.5)
	w2 := scaled(randVec(r, d*F), 1/math.Sqrt(float64(F)))
	dy := randVec(r, m*d)
	dw20, db20, db10 := randVec(r, d*F), randVec(r, d), randVec(r, F)
	gx, gw1, gb1, gw2, gdy := g.Upload(x), g.Upload(w1), g.Upload(b1), g.Upload(w2), g.Upload(dy)

	// Forward. The output is poisoned (NaN): the epilogue must write all of it.
	ga := g.AllocUninit(m * F)
	before := ltCalls(g)
	aux, ok := g.LinearAct(ga, gx, gw1, gb1, m, F, d, act)
	aligned := F%8 == 0 && d%8 == 0
	if !ok {
		if aligned {
			t.Fatalf("LinearAct declined an aligned shape: %s", g.LtStatus())
		}
		if ltCalls(g) != before {
			t.Fatalf("LinearAct declined after running a matmul")
		}
		t.Logf("declined (unaligned width %d): %s", F, g.LtStatus())
		return
	}
	if act == kernels.GELUAccurate && F%8 != 0 {
		t.Fatalf("LinearAct fused gelu_accurate at width %d, which the aux layout cannot hold densely", F)
	}
	a := down(g, ga)

	rows := sampleRows(r, m, false)
	xr, w1r := roundAll(ft, pickRows(x, d, rows)), roundAll(ft, w1)
	nr := len(rows)
	pre := cpuRef(c, nr*F, func(y kernels.Buffer) { c.Linear(y, c.Upload(xr), c.Upload(w1r), c.Upload(b1), nr, F, d) })
	aRef := cpuRef(c, nr*F, func(y kernels.Buffer) { c.Activate(y, c.Upload(pre), act) })
	aGot := pickRows(a, F, rows)
	if act == kernels.ReLU {
		checkClose(t, "a vs CPU", aGot, aRef, tolFor(d))
		flips := 0
		for i := 0; i < nr; i++ {
			for j := 0; j < F; j++ {
				var s float64
				for l := 0; l < d; l++ {
					s += math.Abs(float64(xr[i*d+l]) * float64(w1r[j*d+l]))
				}
				bound := float64(d+3) * math.Ldexp(1, -23) * (s + math.Abs(float64(b1[j])))
				p := float64(pre[i*F+j])
				if math.Abs(p) > bound && (p > 0) != (aGot[i*F+j] > 0) {
					flips++
				}
			}
		}
		if flips > 0 {
			t.Errorf("ReLU: %d elements of clear sign (beyond the accumulation bound) masked wrongly", flips)
		}
	} else {
		checkClose(t, "a vs CPU gelu_accurate", aGot, aRef, tolGELU)
		var dt, de, den float64
		for i, p := range pre {
			e, th := geluForms(float64(p))
			v := float64(aGot[i])
			dt += (v - th) * (v - th)
			de += (v - e) * (v - e)
			den += th * th
		}
		t.Logf("fused GELU vs tanh form %.3g, vs erf form %.3g (relative)", math.Sqrt(dt/den), math.Sqrt(de/den))
	}

	// The unfused GPU path on the same inputs.
	gpre, ga2 := g.AllocUninit(m*F), g.AllocUninit(m*F)
	g.Linear(gpre, gx, gw1, gb1, m, F, d)
	g.Activate(ga2, gpre, act)
	a2 := down(g, ga2)
	same := 0
	for i := range a {
		if math.Float32bits(a[i]) == math.Float32bits(a2[i]) {
			same++
		}
	}
	t.Logf("fused vs unfused forward: %d of %d elements bit-identical", same, len(a))
	tolA := tolFor(d)
	if act == kernels.GELUAccurate {
		tolA = tolGELU
	}
	checkClose(t, "a vs unfused GPU", a, a2, tolA)

	// Backward, fused.
	gdpre := g.AllocUninit(m * F)
	gdw2, gdb2, gdb1 := g.Upload(dw20), g.Upload(db20), g.Upload(db10)
	g.LinearActBackward(gdpre, gdw2, gdb2, gdb1, gdy, ga, gw2, aux, m, d, F, act)
	dpre, dw2, db2, db1 := down(g, gdpre), down(g, gdw2), down(g, gdb2), down(g, gdb1)
	fwd, epiGrad, epiPlain, _ := actEpilogues(act)
	withGrad, plain := usedEpilogue(g, epiGrad, m, F, d), usedEpilogue(g, epiPlain, m, F, d)
	t.Logf("epilogues planned: forward %v, backward with bias gradient %v, backward %v; %s",
		usedEpilogue(g, fwd, m, F, d), withGrad, plain, g.LtStatus())
	if aligned && force == 0 && !withGrad && !plain {
		t.Errorf("the backward epilogue fell back at an aligned shape: %s", g.LtStatus())
	}

	// dpre on the sampled rows: (round(dy)·round(w2)) ⊙ act'(pre), the CPU's
	// LinearBackward and ActivateBackward. ReLU's act' is taken at the fused forward's
	// output (a > 0 exactly where its pre > 0, checked above against the CPU's pre).
	dyr, w2r := roundAll(ft, pickRows(dy, d, rows)), roundAll(ft, w2)
	dx := cpuRef(c, nr*F, func(y kernels.Buffer) { c.LinearBackward(y, nil, nil, c.Upload(dyr), nil, c.Upload(w2r), nr, d, F) })
	at := pre
	if act == kernels.ReLU {
		at = aGot
	}
	dpreRef := cpuRef(c, nr*F, func(y kernels.Buffer) { c.ActivateBackward(y, c.Upload(dx), c.Upload(at), act) })
	tolD := tolFor(d)
	if act == kernels.GELUAccurate {
		tolD = tolGELU
	}
	checkClose(t, "dpre vs CPU", pickRows(dpre, F, rows), dpreRef, tolD)

	// dw2 on sampled columns, over every row: dw2₀ + round(dy)ᵀ·round(a).
	cols := sampleRows(r, F, true)
	dyAll, aCols := roundAll(ft, dy), roundAll(ft, pickCols(a, m, F, cols))
	nc := len(cols)
	dwRef := c.Upload(pickCols(dw20, d, F, cols))
	c.LinearBackward(nil, dwRef, nil, c.Upload(dyAll), c.Upload(aCols), nil, m, d, nc)
	checkClose(t, "dw2 vs CPU", pickCols(dw2, d, F, cols), down(c, dwRef), tolFor(m))

	// db2 = db2₀ + Σ_rows dy, in float64 as the CPU's LinearBackward.
	db2Ref := c.Upload(db20)
	c.LinearBackward(nil, nil, db2Ref, c.Upload(dy), nil, nil, m, d, F)
	checkClose(t, "db2 vs CPU", db2, down(c, db2Ref), 1e-6)

	// db1 = db1₀ + Σ_rows dpre (the GPU's dpre, all rows), element by element.
	worst := 0.0
	for j := 0; j < F; j++ {
		var s, sa float64
		for i := 0; i < m; i++ {
			v := float64(dpre[i*F+j])
			s += v
			sa += math.Abs(v)
		}
		ref := float64(db10[j]) + s
		bound := float64(m+2)*math.Ldexp(1, -23)*sa + math.Ldexp(1, -23)*(math.Abs(float64(db10[j]))+math.Abs(ref))
		e := math.Abs(float64(db1[j]) - ref)
		if !(e <= bound) {
			t.Fatalf("db1[%d] = %.9g, want %.9g ± %.3g", j, db1[j], ref, bound)
		}
		if bound > 0 {
			worst = max(worst, e/bound)
		}
	}
	t.Logf("db1: worst element at %.3f of its bound", worst)

	// The unfused GPU backward on the same inputs (the mask at the fused a for ReLU, the
	// unfused pre for GELU): dw2 and db2 are the same calls, so the same bits.
	gda := g.AllocUninit(m * F)
	udw2, udb2, udb1 := g.Upload(dw20), g.Upload(db20), g.Upload(db10)
	g.LinearBackward(gda, udw2, udb2, gdy, ga, gw2, m, d, F)
	mask := gpre
	if act == kernels.ReLU {
		mask = ga
	}
	g.ActivateBackward(gda, gda, mask, act)
	g.LinearBackward(nil, nil, udb1, gda, nil, nil, m, F, d)
	checkClose(t, "dpre vs unfused GPU", dpre, down(g, gda), tolD)
	if bgradUsed(g, m, d, F) {
		// The unfused LinearBackward took db2 from its dw product's BGRADB epilogue
		// (gpu_bgrad_test.go): the sum of the 16-bit dy, and the product possibly by
		// another algorithm than the fused path's plain one.
		checkClose(t, "dw2 vs unfused GPU", dw2, down(g, udw2), tolFor(m))
		want, tol := dbWant(g, ft, dy, db20, m, d, F, 1)
		checkClose(t, "unfused db2 (BGRADB)", down(g, udb2), want, tol)
	} else {
		checkExact(t, "dw2 vs unfused GPU", dw2, down(g, udw2))
		checkExact(t, "db2 vs unfused GPU", db2, down(g, udb2))
	}
	// float32 sums of m terms (BGRAD) against double ones: about √m·2⁻²⁴ of Σ|dpre|,
	// which for random signs is √m times |Σ dpre|, so 1e-4 rather than 1e-5.
	checkClose(t, "db1 vs unfused GPU", db1, down(g, udb1), 1e-4)
}

// TestLinearActDeclines: FP32 keeps the exact path, and only ReLU and gelu_accurate
// have epilogues (fairseq's gelu is the erf form; cuBLASLt's GELU is the tanh form).
func TestLinearActDeclines(t *testing.T) {
	for _, tc := range []struct {
		prec Precision
		act  kernels.Activation
	}{{FP32, kernels.ReLU}, {FP32, kernels.GELUAccurate}, {BF16, kernels.GELU}, {BF16, kernels.Tanh}, {FP16, kernels.Linear}} {
		g := withPrecision(t, tc.prec)
		m, n, k := 8, 16, 8
		before := ltCalls(g)
		if _, ok := g.LinearAct(g.Alloc(m*n), g.Alloc(m*k), g.Alloc(n*k), g.Alloc(n), m, n, k, tc.act); ok {
			t.Errorf("%v %s: LinearAct fused", tc.prec, tc.act)
		}
		if ltCalls(g) != before {
			t.Errorf("%v %s: a matmul ran", tc.prec, tc.act)
		}
	}
}

// TestActAux checks the aux layouts against cuBLASLt's documented rules without a GPU.
func TestActAux(t *testing.T) {
	for _, tc := range []struct {
		act         kernels.Activation
		m, n        int
		ld, elems   int
		description string
	}{
		{kernels.ReLU, 37, 200, 256, 8 * 37, "bits, multiple of 128 ≥ rows"},
		{kernels.ReLU, 6000, 2048, 2048, 64 * 6000, "already a multiple of 128"},
		{kernels.ReLU, 3, 1, 128, 4 * 3, "one row"},
		{kernels.GELUAccurate, 37, 200, 200, 200 * 37, "floats, pre itself"},
		{kernels.GELUAccurate, 37, 203, 0, 0, "not a multiple of 8: not fused"},
		{kernels.Tanh, 37, 200, 0, 0, "no epilogue"},
	} {
		ld, elems := actAux(tc.act, tc.m, tc.n)
		if ld != tc.ld || elems != tc.elems {
			t.Errorf("%s %d×%d (%s): ld %d, %d elements; want %d, %d", tc.act, tc.m, tc.n, tc.description, ld, elems, tc.ld, tc.elems)
		}
	}
	for _, e := range []uint32{ltEpiReluAuxBias, ltEpiGeluAuxBias} {
		if e&ltEpiFlagBias == 0 || e&ltEpiFlagAux == 0 || e&ltEpiFlagBGrad != 0 {
			t.Errorf("forward epilogue %d: flags wrong", e)
		}
	}
	for _, e := range []uint32{ltEpiDReluBGrad, ltEpiDGeluBGrad} {
		if e&ltEpiFlagBGrad == 0 || e&ltEpiFlagAux == 0 || e&ltEpiFlagBias != 0 {
			t.Errorf("backward epilogue %d: flags wrong", e)
		}
	}
	for _, e := range []uint32{ltEpiDRelu, ltEpiDGelu} {
		if e&ltEpiFlagAux == 0 || e&(ltEpiFlagBias|ltEpiFlagBGrad) != 0 {
			t.Errorf("backward epilogue %d: flags wrong", e)
		}
	}
}
