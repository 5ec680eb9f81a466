package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// The pipelined float4 forward (layernorm_fast_fwd_p*, _pl*: each warp loops over rows
// with the next row's x and branch in flight and its mask drawn ahead into keep bits;
// _p with the _w kernels' 32-bit hash and the hardware 16-bit rounding, _pl with the
// 64-bit hash and the software rounding) against the default forward
// (layernorm_fast_fwd_v*).
//
// Tolerance: none. Per row the arithmetic is lfv_fwd's, operation for operation
// (lfv_mul4, the branch times keep or 0, lfv_resid4, lfv_rowstats, the same y
// expression; --fmad=false), the keep bits are kernels.DropoutKeep's either way
// (TestDropoutHashHiWord), and
// cvt.rn gives xf_round16's bits for every non-NaN float (TestAttentionMMARounding;
// NaNs take xf_store4). So z, y and y16 must be the same bits; a NaN must be a NaN (its
// payload is the hardware's, and checkExact does not look at it).

// lnPipeCase is one forward call: the dropout call with p (threshold 0 at p 0) or the
// plain one, with or without ω, z and y16, and with y written over x and z over the
// branch (aliases the contract allows; the prefetch reads other rows than those stored).
type lnPipeCase struct {
	name                 string
	drop                 bool
	p                    float64
	omega, z, y16, alias bool
}

var lnPipeCases = []lnPipeCase{
	{"the step's: p 0.1, ω, z, y16", true, 0.1, true, true, true, false},
	{"p 0.1, ω, y16, no z (the recompute backward's)", true, 0.1, true, false, true, false},
	{"p 0.1, no ω, z, no y16", true, 0.1, false, true, false, false},
	{"p 0.1, no ω, no z, no y16", true, 0.1, false, false, false, false},
	{"p 0 (threshold 0), ω, z, y16", true, 0, true, true, true, false},
	{"p 0, no ω, no z, no y16", true, 0, false, false, false, false},
	{"no dropout, ω, z, y16", false, 0, true, true, true, false},
	{"no dropout, no ω, no z, y16", false, 0, false, false, true, false},
	{"in place (y on x, z on branch), p 0.1, ω, y16", true, 0.1, true, true, true, true},
}

// lnPipeVariant is a forward kernel choice: the default (_v, pipe off), or the
// pipelined one (_p, or _pl with plain) with rows rows per warp (0: lfpGrid's choice).
type lnPipeVariant struct {
	name        string
	pipe, plain bool
	rows        int
}

// lnPipeSet sets g's forward choice for the rest of the test; the default's _v, not
// _w, whatever XFORM_CUDA_LNW says.
func lnPipeSet(t *testing.T, g *Backend, v lnPipeVariant) {
	t.Helper()
	f := g.lnFnsOutside()
	old := *f
	f.legacy, f.pipe, f.pipePlain, f.pipeRows = true, v.pipe, v.plain, v.rows
	t.Cleanup(func() { f.legacy, f.pipe, f.pipePlain, f.pipeRows = old.legacy, old.pipe, old.pipePlain, old.pipeRows })
}

// lnPipeOut is one call's outputs, downloaded (z nil without z, y16 nil without y16).
type lnPipeOut struct {
	z, y []float32
	y16  []uint16
}

// lnPipeIn is a case's inputs on the device.
type lnPipeIn struct {
	in               reslnIn
	x, br, om, gm, b kernels.Buffer
}

func uploadLnPipeIn(g *Backend, in reslnIn) lnPipeIn {
	return lnPipeIn{in, g.Upload(in.x), g.Upload(in.branch), g.Upload(in.omega), g.Upload(in.gamma), g.Upload(in.beta)}
}

// lnPipeRun runs c's forward on fresh outputs (on fresh copies of x and the branch for
// the in-place case) and downloads them.
func lnPipeRun(t *testing.T, g *Backend, d lnPipeIn, c lnPipeCase) lnPipeOut {
	t.Helper()
	g.BeginScope()
	defer g.EndScope()
	in := d.in
	n := in.rows * in.dim
	x, br := d.x, d.br
	var om, z, y16 kernels.Buffer
	if c.omega {
		om = d.om
	}
	y := g.Alloc(n)
	if c.z {
		z = g.Alloc(n)
	}
	if c.alias {
		x, br = g.Upload(in.x), g.Upload(in.branch)
		y = x
		if c.z {
			z = br
		}
	}
	if c.y16 {
		y16 = g.AllocHalf(n)
	}
	var dr *resDrop
	if c.drop {
		dr = newResDrop(c.p, resdropSeed)
	}
	wrote := g.residualLayerNorm(z, y, y16, x, br, om, in.alpha, d.gm, d.b, in.rows, in.dim, reslnEps, dr)
	if y16 != nil && !wrote {
		t.Fatalf("%s: the float4 forward did not take y16", c.name)
	}
	var out lnPipeOut
	if z != nil {
		out.z = down(g, z)
	}
	out.y = down(g, y)
	if y16 != nil {
		out.y16 = halfBits(g, y16)
	}
	return out
}

// checkSame16 wants got's patterns to be want's, a NaN for a NaN.
func checkSame16(t *testing.T, prec Precision, what string, got, want []uint16) {
	t.Helper()
	ft := format16{prec: prec}
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", what, len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] && !(isNaN16(ft, got[i]) && isNaN16(ft, want[i])) {
			t.Errorf("%s: element %d = %#04x, want %#04x", what, i, got[i], want[i])
			return
		}
	}
}

// lnPipeSpecials puts NaN and ±Inf into a few rows (their y are NaN, so y16 takes the
// software rounding) and gives three columns γ (β 0 for two) whose y overflow fp16
// (7·10⁴), round to fp16 subnormals (10⁻⁶) or are float32 subnormals (10⁻³⁹). rows ≥ 22,
// dim ≥ 12.
func lnPipeSpecials(in *reslnIn) {
	d := in.dim
	in.x[3*d+5] = float32(math.NaN())
	in.branch[10*d+1] = float32(math.Inf(1))
	in.x[20*d+d-1] = float32(math.Inf(-1))
	in.branch[21*d+2] = float32(math.NaN())
	in.gamma[7] = 7e4
	in.gamma[9], in.beta[9] = 1e-6, 0
	in.gamma[11], in.beta[11] = 1e-39, 0
}

// TestLayerNormPipeSameBits: the pipelined forward (its default grid, 1, 2 and 7 rows
// per warp, and _pl) gives the default forward's z, y and y16 bits in BF16 and FP16 for
// every case of lnPipeCases, at the step's shapes (7,872–8,184 × 512), row counts below
// a warp's and odd ones, and every float4 width (dims 96 and 128: NV 1, 256: NV 2,
// 512: NV 4, 1024: NV 8), with NaN, ±Inf and fp16 overflow and subnormals in some.
func TestLayerNormPipeSameBits(t *testing.T) {
	variants := []lnPipeVariant{
		{"_p", true, false, 0}, {"_p, 1 row per warp", true, false, 1}, {"_p, 2 rows per warp", true, false, 2},
		{"_p, 7 rows per warp", true, false, 7}, {"_pl", true, true, 0},
	}
	for _, prec := range []Precision{BF16, FP16} {
		for _, tc := range []struct {
			rows, dim int
			specials  bool
		}{
			{8000, 512, false}, {7872, 512, true}, {8184, 512, false}, {1, 512, false}, {33, 512, true},
			{7, 512, false}, {2049, 1024, true}, {1, 1024, false}, {1000, 256, true}, {300, 128, false}, {65, 96, true},
		} {
			t.Run(fmt.Sprintf("%v/%dx%d", prec, tc.rows, tc.dim), func(t *testing.T) {
				g := withPrecision(t, prec)
				in := newReslnIn(rand.New(rand.NewPCG(102, uint64(tc.rows*4096+tc.dim))), tc.rows, tc.dim, true, 0.81)
				if tc.specials {
					lnPipeSpecials(&in)
				}
				d := uploadLnPipeIn(g, in)
				f := g.lnFnsOutside()
				for _, c := range lnPipeCases {
					lnPipeSet(t, g, lnPipeVariant{name: "_v"})
					want := lnPipeRun(t, g, d, c)
					for _, v := range variants {
						lnPipeSet(t, g, v)
						before := f.piped
						got := lnPipeRun(t, g, d, c)
						if f.piped == before {
							t.Fatalf("%s, %s: the pipelined forward did not run", c.name, v.name)
						}
						what := c.name + ", " + v.name
						if c.z {
							checkExact(t, what+": z", got.z, want.z)
						}
						checkExact(t, what+": y", got.y, want.y)
						if c.y16 {
							checkSame16(t, prec, what+": y16", got.y16, want.y16)
						}
					}
				}
			})
		}
	}
}

// TestLayerNormPipeTrainingSameBits trains the fixture model (d 32: NV 1) and a random
// one of the step's width (d 512 in 8 heads, FFN 1,024, 2+2 layers: NV 4) in BF16 and
// FP16, both recipes, with the default forward and with the pipelined one (eager, eager
// at 3 rows per warp, graphed): every update's loss, nll and gradient norm and the final
// weights the same bits.
func TestLayerNormPipeTrainingSameBits(t *testing.T) {
	gpu(t)
	fix, fixBatches := fixtureTraining(t, 3)
	wide, wideBatches := randomAdminTraining(t, 3, 512, 8, 1024)
	models := []trainModel{{"fixture", fix, fixBatches}, {"d 512", wide, wideBatches}}
	for _, prec := range []Precision{BF16, FP16} {
		for _, md := range models {
			for _, rc := range sameBitsCases {
				t.Run(prec.String()+"/"+md.name+"/"+rc.name, func(t *testing.T) {
					refBE := newGraphTestBackend(t, prec, false)
					lnPipeSet(t, refBE, lnPipeVariant{name: "_v"})
					ref, _ := runTrain(t, md.m, refBE, rc, md.batches)
					for _, v := range []struct {
						name   string
						graphs bool
						rows   int
					}{{"eager", false, 0}, {"eager, 3 rows per warp", false, 3}, {"graphed", true, 0}} {
						be := newGraphTestBackend(t, prec, v.graphs)
						lnPipeSet(t, be, lnPipeVariant{name: "_p", pipe: true, rows: v.rows})
						got, _ := runTrain(t, md.m, be, rc, md.batches)
						if be.lnFnsOutside().piped == 0 {
							t.Fatalf("%s: the pipelined forward never ran", v.name)
						}
						checkSameRun(t, "_p forward, "+v.name, got, "_v forward", ref)
					}
				})
			}
		}
	}
}

// TestLayerNormPipeTiming logs the device time per call of the forward as the step
// calls it (BF16, per-channel ω, residual dropout 0.1, y16; z written as by default and
// not, as with the recomputing backward) at the step's row counts (7,872 and 8,184 ×
// 512): the default _v, the _w, the pipelined _p and _pl on lfpGrid's grid, and _p at
// 1–8 rows per warp, in two rounds (the order's drift shows), and what the step's 30
// forwards per update would save. Checks nothing; -short skips it.
func TestLayerNormPipeTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	g := withPrecision(t, BF16)
	f := g.lnFnsOutside()
	old := *f
	t.Cleanup(func() { f.legacy, f.pipe, f.pipePlain, f.pipeRows = old.legacy, old.pipe, old.pipePlain, old.pipeRows })
	variants := []struct {
		name                string
		legacy, pipe, plain bool
		rows                int
	}{
		{"_v (default)", true, false, false, 0}, {"_w", false, false, false, 0},
		{"_p", true, true, false, 0}, {"_pl", true, true, true, 0},
		{"_p 1 row/warp", true, true, false, 1}, {"_p 2 rows/warp", true, true, false, 2},
		{"_p 3 rows/warp", true, true, false, 3}, {"_p 4 rows/warp", true, true, false, 4},
		{"_p 6 rows/warp", true, true, false, 6}, {"_p 8 rows/warp", true, true, false, 8},
	}
	const dim, p = 512, 0.1
	for _, rows := range []int{7872, 8184} {
		n := rows * dim
		r := rand.New(rand.NewPCG(103, uint64(rows)))
		in := newReslnIn(r, rows, dim, true, 0.81)
		x, br, om := g.Upload(in.x), g.Upload(in.branch), g.Upload(in.omega)
		gm, b := g.Upload(in.gamma), g.Upload(in.beta)
		zb, y, y16 := g.Alloc(n), g.Alloc(n), g.AllocHalf(n)
		mb := float64(n*4) / 1e6
		for _, withZ := range []bool{true, false} {
			var z kernels.Buffer
			arrays := 3.5 // x, branch in; y, y16 out
			if withZ {
				z, arrays = zb, 4.5
			}
			fwd := func() {
				g.ResidualLayerNormDropoutRounded(z, y, y16, x, br, om, in.alpha, gm, b, rows, dim, reslnEps, p, resdropSeed)
			}
			best := make([]float64, len(variants))
			for round := 1; round <= 2; round++ {
				for i, v := range variants {
					f.legacy, f.pipe, f.pipePlain, f.pipeRows = v.legacy, v.pipe, v.plain, v.rows
					blocks := (rows + lfvMaxWarps - 1) / lfvMaxWarps
					if v.pipe {
						k := &f.pfwd[lfvIndex(dim)]
						if v.plain {
							k = &f.pfwdPlain[lfvIndex(dim)]
						}
						blocks = func() int { defer g.enter()(); return g.lfpGrid(f, k, rows) }()
					}
					u := us(timeDevice(t, g, 100, fwd))
					if round == 1 || u < best[i] {
						best[i] = u
					}
					t.Logf("%d×%d z=%v round %d %-16s %5.1f µs (%4.0f GB/s), %d blocks", rows, dim, withZ, round, v.name, u,
						arrays*mb/u*1e3, blocks)
				}
			}
			t.Logf("%d×%d z=%v best of two: _v %.1f µs, _w %.1f, _p %.1f, _pl %.1f; 30 forwards per update: %.0f µs saved by _p",
				rows, dim, withZ, best[0], best[1], best[2], best[3], 30*(best[0]-best[2]))
		}
	}
}
