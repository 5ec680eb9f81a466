package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// The _w float4 LayerNorm kernels (layernorm_fast_fwd_w*, _bwd_ws*, _wp*, _wr*: the
// dropout hash in 32-bit words, the backward's finish done by its last blocks) against
// the kernels they replace (the legacy switch: _fwd_v*, _bwd_vs*, _vp*, _vr* and the
// layernorm_fast_bwd_finish_v launch).
//
// Tolerance: none. The per-row arithmetic is the same code (one template, W only
// changes how the keep bits are computed, and TestDropoutHashHiWord shows those are
// kernels.DropoutKeep's), the backward runs on the same grid and warps, so its
// partials are the same bits, and lfw_finish adds them in finish_v's order. Every
// output must be the same bits: z, y, y16 of the forward, dz, dbranch (float32 and
// 16-bit), dγ, dβ, dω of each backward form. The legacy kernels themselves are checked
// against the CPU by gpu_layernorm_fast_test.go and gpu_resdrop_test.go.

// lnLegacy sets the legacy-kernels switch of g for the rest of the test.
func lnLegacy(t *testing.T, g *Backend, on bool) {
	t.Helper()
	f := g.lnFnsOutside()
	old := f.legacy
	f.legacy = on
	t.Cleanup(func() { f.legacy = old })
}

// namedOut is one output of a sequence of calls, downloaded.
type namedOut struct {
	name string
	v    []float32
}

// lnWSequence runs the forward and every backward form on fresh copies of the inputs
// and returns all outputs. p is the residual dropout (0: none, the kernels' threshold-0
// path). The column gradients start from in's random values (accumulation is part of
// the contract); some calls leave some of them nil.
func lnWSequence(t *testing.T, g *Backend, in reslnIn, si sumIn, p float64) []namedOut {
	t.Helper()
	rows, dim, n := in.rows, in.dim, in.rows*in.dim
	var out []namedOut
	add := func(name string, b kernels.Buffer) {
		if b == nil {
			return
		}
		if halfOf(b) != nil {
			out = append(out, namedOut{name, downHalf(t, g, b)})
			return
		}
		out = append(out, namedOut{name, down(g, b)})
	}
	x, br, om, gm, b := g.Upload(in.x), g.Upload(in.branch), g.Upload(in.omega), g.Upload(in.gamma), g.Upload(in.beta)
	z, y, y16 := g.Alloc(n), g.Alloc(n), g.AllocHalf(n)
	g.ResidualLayerNormDropoutRounded(z, y, y16, x, br, om, in.alpha, gm, b, rows, dim, reslnEps, p, resdropSeed)
	add("forward z", z)
	add("forward y", y)
	add("forward y16", y16)
	z0, y0 := g.Alloc(n), g.Alloc(n)
	g.ResidualLayerNorm(z0, y0, x, br, om, in.alpha, gm, b, rows, dim, reslnEps)
	add("forward (no dropout) y", y0)

	cols := func() (kernels.Buffer, kernels.Buffer, kernels.Buffer) {
		return g.Upload(in.dgamma), g.Upload(in.dbeta), g.Upload(in.domega0)
	}
	for _, c := range []struct {
		name        string
		call        string // "sum", "drop", "plain", "recomp"
		dz, half    bool
		dbr         bool
		dg, db, dom bool
	}{
		{"Sum, 16-bit dbranch (the step's)", "sum", true, true, true, true, true, true},
		{"Sum, float32 dbranch, no dz, dβ only", "sum", false, false, true, false, true, false},
		{"Sum, no column gradients", "sum", true, true, true, false, false, false},
		{"Sum, no dbranch, dω only", "sum", true, false, false, false, false, true},
		{"Dropout backward, 16-bit dbranch", "drop", true, true, true, true, true, true},
		{"Dropout backward, float32 dbranch, dγ only", "drop", false, false, true, true, false, false},
		{"plain backward", "plain", true, false, false, true, true, true},
		{"Recompute, 16-bit dbranch", "recomp", true, true, true, true, true, true},
	} {
		var dz, dbr, dg, db, dom kernels.Buffer
		if c.dz {
			dz = g.Alloc(n)
		}
		if c.dbr {
			if c.half {
				dbr = g.AllocHalf(n)
			} else {
				dbr = g.Alloc(n)
			}
		}
		g0, b0, o0 := cols()
		if c.dg {
			dg = g0
		}
		if c.db {
			db = b0
		}
		if c.dom {
			dom = o0
		}
		s := si.upload(g)
		switch c.call {
		case "sum":
			g.ResidualLayerNormBackwardSum(dz, dbr, dg, db, dom, s, z, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
		case "drop":
			g.ResidualLayerNormBackwardDropout(dz, dbr, dg, db, dom, s.D, z, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
		case "plain":
			g.ResidualLayerNormBackward(dz, dg, db, dom, s.D, z, x, gm, in.alpha, rows, dim, reslnEps)
		case "recomp":
			g.ResidualLayerNormBackwardRecompute(dz, dbr, dg, db, dom, s, x, br, om, in.alpha, gm, rows, dim, reslnEps, p, resdropSeed)
		}
		for _, o := range []struct {
			what string
			b    kernels.Buffer
		}{{"dz", dz}, {"dbranch", dbr}, {"dgamma", dg}, {"dbeta", db}, {"domega", dom}} {
			add(c.name+": "+o.what, o.b)
		}
	}
	return out
}

// lfwCountersZero checks that the _w backward left its arrival counters zero.
func lfwCountersZero(t *testing.T, g *Backend) {
	t.Helper()
	f := g.lnFnsOutside()
	if f.cnt == nil {
		t.Fatal("no lfw counters: the kernels were first looked up inside a graphed step?")
	}
	for i, v := range down(g, &buffer{a: f.cnt, n: lfwCounters}) {
		if u := math.Float32bits(v); u != 0 {
			t.Fatalf("lfw counter %d is %d after the calls, want 0", i, u)
		}
	}
}

// TestLayerNormWSameBits: every output of the forward and of each backward form is
// the legacy kernels' bits, in BF16 and FP16, with residual dropout 0.1 and 0, at the
// bench shapes (7,900–8,191 rows × 512), at 1 and 7 rows (grids of fewer than 32
// blocks: empty classes in the finish), at dim 1024 (the big models' d) and at each
// float4 width (dims 96, 128, 256); the counters are zero after each run, and the _w
// path with the in-kernel finish was taken.
func TestLayerNormWSameBits(t *testing.T) {
	for _, prec := range []Precision{BF16, FP16} {
		for _, tc := range []struct{ rows, dim int }{
			{8000, 512}, {7900, 512}, {8191, 512}, {1, 512}, {7, 512},
			{8191, 1024}, {1, 1024}, {7, 1024}, {300, 96}, {129, 128}, {37, 256},
		} {
			for _, p := range []float64{0.1, 0} {
				t.Run(fmt.Sprintf("%v/%dx%d/p=%v", prec, tc.rows, tc.dim, p), func(t *testing.T) {
					g := withPrecision(t, prec)
					r := rand.New(rand.NewPCG(98, uint64(tc.rows*4096+tc.dim)))
					in := newReslnIn(r, tc.rows, tc.dim, true, 0.81)
					si := newSumIn(r, tc.rows, tc.dim, true)
					lnLegacy(t, g, true)
					want := lnWSequence(t, g, in, si, p)
					lnLegacy(t, g, false)
					f := g.lnFnsOutside()
					before := f.wfinished
					got := lnWSequence(t, g, in, si, p)
					if f.wfinished == before {
						t.Error("no _w backward finished its column sums in-kernel")
					}
					lfwCountersZero(t, g)
					if len(got) != len(want) {
						t.Fatalf("%d outputs, legacy %d", len(got), len(want))
					}
					for i := range want {
						checkExact(t, got[i].name+" (_w vs legacy)", got[i].v, want[i].v)
					}
					// Again: the counters the first run reset serve the second.
					again := lnWSequence(t, g, in, si, p)
					for i := range want {
						checkExact(t, again[i].name+" (_w, second run)", again[i].v, want[i].v)
					}
				})
			}
		}
	}
}

// TestLayerNormWTrainingSameBits trains the fixture model (Admin, d 32: the NV 1
// kernels) in bf16 and fp16, eagerly and graphed (the counters' address is captured
// into the graph and must come back zero for every replay), with the _w kernels and
// with the legacy ones: every update's loss, nll and gradient norm and the final
// weights the same bits.
func TestLayerNormWTrainingSameBits(t *testing.T) {
	gpu(t)
	m, batches := fixtureTraining(t, 3)
	for _, prec := range []Precision{BF16, FP16} {
		for _, rc := range sameBitsCases {
			t.Run(prec.String()+"/"+rc.name, func(t *testing.T) {
				legacy := newGraphTestBackend(t, prec, false)
				legacy.lnFnsOutside().legacy = true
				ref, _ := runTrain(t, m, legacy, rc, batches)
				eager := newGraphTestBackend(t, prec, false)
				eager.lnFnsOutside().legacy = false
				got, _ := runTrain(t, m, eager, rc, batches)
				checkSameRun(t, "_w kernels", got, "legacy", ref)
				graphed := newGraphTestBackend(t, prec, true)
				graphed.lnFnsOutside().legacy = false
				got, _ = runTrain(t, m, graphed, rc, batches)
				checkSameRun(t, "_w kernels, graphed", got, "legacy", ref)
				lfwCountersZero(t, graphed)
			})
		}
	}
}

// TestLayerNormWTiming logs the device time per call at the bench shapes (7,900 and
// 8,000 rows × 512, BF16, per-channel ω, residual dropout 0.1), legacy kernels against
// the _w ones in one run: the forward as the step calls it (z, y and the 16-bit y),
// the backward as the step calls it (a ResidualSum dy, 16-bit dbranch, dz, dγ, dβ, dω:
// legacy _vp + finish_v), the same with the _w kernel but the finish still launched
// (the hash alone), and the plain dropout backward. And the step's total for the
// sub-layers (30 forwards, 28 Sum backwards per update at 6L-6L). Checks nothing;
// -short skips it.
func TestLayerNormWTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	g := withPrecision(t, BF16)
	f := g.lnFnsOutside()
	for _, rows := range []int{8000, 7900} {
		const dim, p = 512, 0.1
		n := rows * dim
		r := rand.New(rand.NewPCG(99, uint64(rows)))
		in := newReslnIn(r, rows, dim, true, 0.81)
		si := newSumIn(r, rows, dim, true)
		x, br, om := g.Upload(in.x), g.Upload(in.branch), g.Upload(in.omega)
		gm, b := g.Upload(in.gamma), g.Upload(in.beta)
		z, y, y16, dz, dbh := g.Alloc(n), g.Alloc(n), g.AllocHalf(n), g.Alloc(n), g.AllocHalf(n)
		dg, db, dom := g.Alloc(dim), g.Alloc(dim), g.Alloc(dim)
		s := si.upload(g)
		tm := func(fn func()) float64 {
			return us(timeDevice(t, g, 100, func() {
				g.BeginScope()
				defer g.EndScope()
				fn()
			}))
		}
		fwd := func() {
			g.ResidualLayerNormDropoutRounded(z, y, y16, x, br, om, in.alpha, gm, b, rows, dim, reslnEps, p, resdropSeed)
		}
		sum := func() {
			g.ResidualLayerNormBackwardSum(dz, dbh, dg, db, dom, s, z, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
		}
		drop := func() {
			g.ResidualLayerNormBackwardDropout(dz, dbh, dg, db, dom, s.D, z, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
		}
		f.legacy = true
		oF, oS, oD := tm(fwd), tm(sum), tm(drop)
		f.legacy = false
		nF, nS, nD := tm(fwd), tm(sum), tm(drop)
		cnt := f.cnt
		f.cnt = nil // the _w kernel, the finish launched
		hS := tm(sum)
		f.cnt = cnt
		mb := float64(n*4) / 1e6
		gbs := func(mbs, v float64) float64 { return mbs / v * 1e3 }
		// Bytes at least: forward x, branch in, z, y, y16 out (4.5 arrays of float32);
		// Sum dy, dz2, z, x in, dz, 16-bit dbranch out (5.5); dropout backward 4.5.
		t.Logf("%d×%d forward (z, y, y16):        legacy %5.1f µs (%4.0f GB/s) → _w %5.1f µs (%4.0f GB/s)", rows, dim, oF, gbs(4.5*mb, oF), nF, gbs(4.5*mb, nF))
		t.Logf("%d×%d backward Sum (the step's):  legacy %5.1f µs (%4.0f GB/s) → _w %5.1f µs (%4.0f GB/s); _w with the finish launched %5.1f µs", rows, dim, oS, gbs(5.5*mb, oS), nS, gbs(5.5*mb, nS), hS)
		t.Logf("%d×%d backward with dropout:      legacy %5.1f µs → _w %5.1f µs", rows, dim, oD, nD)
		t.Logf("%d×%d per update (30 forwards + 28 Sum backwards): legacy %.0f µs → _w %.0f µs (%.0f µs saved)", rows, dim,
			30*oF+28*oS, 30*nF+28*nS, 30*(oF-nF)+28*(oS-nS))
	}
}
