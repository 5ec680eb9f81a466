package cuda

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// kernels.ResidualSumNormer and kernels.ResidualRecomputer (layernorm_fast_bwd_vp*,
// _vr*, residual_bwd_dropout4) and the float4 residual_bwd4.
//
// Tolerances: none. Each method is defined as a sequence of existing operations on the
// same backend and precision (ResidualBackward, then ResidualLayerNormBackwardDropout /
// ApplyDropout; for the recompute, z from ResidualLayerNormDropout), the new kernels do
// the same float operations in the same order (--fmad=false) and launch on the old
// kernel's grid, so every output — dz, dbranch, dγ, dβ, dω, and y — must be the same
// bits. The sequences themselves are checked against the CPU by
// gpu_layernorm_fast_test.go and gpu_resdrop_test.go; residual_bwd4 and
// residual_bwd_dropout4 are also checked against the formula computed in Go (float32
// products, each rounded by an explicit conversion so that Go cannot fuse them).

// sumIn is a ResidualSum's inputs: d, dz2 and ω2 of rows×dim.
type sumIn struct {
	d, dz2, omega2 []float32
	alpha2         float32
}

func newSumIn(r *rand.Rand, rows, dim int, omega bool) sumIn {
	s := sumIn{d: randVec(r, rows*dim), dz2: randVec(r, rows*dim), alpha2: 0.87}
	if omega {
		s.omega2 = randVec(r, dim)
	}
	return s
}

// formed is d + (dz2·ω2)·α2 in float32, as residual_bwd computes it.
func (s sumIn) formed(dim int) []float32 {
	out := make([]float32, len(s.d))
	for i := range s.d {
		v := s.dz2[i]
		if s.omega2 != nil {
			v = float32(v * s.omega2[i%dim])
		}
		out[i] = s.d[i] + float32(v*s.alpha2)
	}
	return out
}

func (s sumIn) upload(be kernels.Backend) kernels.ResidualSum {
	return kernels.ResidualSum{D: be.Upload(s.d), DZ: be.Upload(s.dz2), Omega: upload(be, s.omega2), Alpha: s.alpha2}
}

// sumOff sets the legacy-kernels switch of g for the rest of the test.
func sumOff(t *testing.T, g *Backend, on bool) {
	t.Helper()
	f := g.lnFnsOutside()
	old := f.sumOff
	f.sumOff = on
	t.Cleanup(func() { f.sumOff = old })
}

// TestResidualBackward4: residual_bwd4 (dim a multiple of 4, aligned) is the formula's
// bits and the scalar kernel's; dims not a multiple of 4 and unaligned Slices take the
// scalar kernel, the same bits.
func TestResidualBackward4(t *testing.T) {
	g := gpu(t)
	for _, tc := range []struct {
		rows, dim int
		omega     bool
	}{{8000, 512, true}, {8000, 512, false}, {37, 32, true}, {5, 4, true}, {300, 1100, true}, {129, 513, true}, {7, 2048, false}} {
		t.Run(fmt.Sprintf("%dx%d_omega=%v", tc.rows, tc.dim, tc.omega), func(t *testing.T) {
			in := newSumIn(rand.New(rand.NewPCG(91, uint64(tc.dim))), tc.rows, tc.dim, tc.omega)
			want := in.formed(tc.dim)
			run := func(off bool) []float32 {
				sumOff(t, g, off)
				s := in.upload(g)
				g.ResidualBackward(s.D, nil, s.DZ, nil, s.Omega, s.Alpha, tc.rows, tc.dim)
				return down(g, s.D)
			}
			checkExact(t, "residual_bwd4 vs formula", run(false), want)
			checkExact(t, "residual_bwd vs formula", run(true), want)
			// One element in: not 16-byte aligned, the scalar kernel.
			n := tc.rows * tc.dim
			dx := g.Slice(g.Upload(append([]float32{0}, in.d...)), 1, n)
			dy := g.Slice(g.Upload(append([]float32{0}, in.dz2...)), 1, n)
			g.ResidualBackward(dx, nil, dy, nil, upload(g, in.omega2), in.alpha2, tc.rows, tc.dim)
			checkExact(t, "unaligned vs formula", down(g, dx), want)
		})
	}
}

// TestApplyDropoutSum: one pass = ResidualBackward then ApplyDropout (the legacy
// kernels), and = the formula times the mask computed in Go, for p 0.1 and 0, ω per
// column or none, y aliasing D or not; dim 513 takes the two-pass fallback.
func TestApplyDropoutSum(t *testing.T) {
	for _, prec := range []Precision{FP32, BF16} {
		for _, tc := range []struct{ rows, dim int }{{8000, 512}, {37, 32}, {129, 513}} {
			for _, omega := range []bool{true, false} {
				for _, p := range []float64{0.1, 0} {
					t.Run(fmt.Sprintf("%v/%dx%d/omega=%v/p=%v", prec, tc.rows, tc.dim, omega, p), func(t *testing.T) {
						g := withPrecision(t, prec)
						in := newSumIn(rand.New(rand.NewPCG(92, uint64(tc.dim))), tc.rows, tc.dim, omega)
						n := tc.rows * tc.dim
						want := maskTimes(in.formed(tc.dim), p)
						s := in.upload(g)
						y := g.Alloc(n)
						g.ApplyDropoutSum(y, s, tc.rows, tc.dim, p, resdropSeed)
						got := down(g, y)
						checkExact(t, "ApplyDropoutSum vs formula ⊙ mask (Go)", got, want)
						s = in.upload(g)
						g.ApplyDropoutSum(s.D, s, tc.rows, tc.dim, p, resdropSeed)
						checkExact(t, "y = D", down(g, s.D), want)
						sumOff(t, g, true)
						s = in.upload(g)
						ref := g.Alloc(n)
						g.ApplyDropoutSum(ref, s, tc.rows, tc.dim, p, resdropSeed)
						checkExact(t, "vs ResidualBackward + ApplyDropout", got, down(g, ref))
					})
				}
			}
		}
	}
}

// sumOut is what one ResidualSum backward produces.
type sumOut struct{ dz, dbranch, dgamma, dbeta, domega []float32 }

// TestResidualLayerNormBackwardSum: ResidualLayerNormBackwardSum and
// ResidualLayerNormBackwardRecompute give the bits of ResidualBackward followed by
// ResidualLayerNormBackwardDropout (on z from ResidualLayerNormDropout): float32,
// 16-bit or no dbranch, dz or none, ω2 per column or none, p 0.1 and 0, dy.DZ nil (dy
// alone), at the float4 kernels' dims and at the fallbacks' (513: scalar kernels; 1100:
// exact kernels; FP32: exact kernels).
func TestResidualLayerNormBackwardSum(t *testing.T) {
	for _, prec := range []Precision{BF16, FP16, FP32} {
		for _, tc := range []struct{ rows, dim int }{{8000, 512}, {37, 32}, {300, 96}, {65, 1024}, {129, 513}, {7, 1100}} {
			if prec == FP32 && tc.rows == 8000 {
				continue // the exact kernels are slow at this size and the path is the fallback's
			}
			for _, c := range []struct {
				omega2, pair, withDz bool
				dbr                  string
				p                    float64
			}{
				{true, true, true, "16", 0.1}, {false, true, true, "32", 0.1}, {true, true, false, "16", 0},
				{true, false, true, "16", 0.1}, {true, true, true, "none", 0.1},
			} {
				name := fmt.Sprintf("%v/%dx%d/omega2=%v_pair=%v_dz=%v_dbranch=%s_p=%v", prec, tc.rows, tc.dim, c.omega2, c.pair, c.withDz, c.dbr, c.p)
				t.Run(name, func(t *testing.T) {
					g := withPrecision(t, prec)
					if c.dbr == "16" && prec == FP32 {
						t.Skip("no 16-bit buffers in FP32")
					}
					r := rand.New(rand.NewPCG(93, uint64(tc.dim)))
					in := newReslnIn(r, tc.rows, tc.dim, true, 0.81)
					si := newSumIn(r, tc.rows, tc.dim, c.omega2)
					n := tc.rows * tc.dim
					x, br, om, gm := g.Upload(in.x), g.Upload(in.branch), g.Upload(in.omega), g.Upload(in.gamma)
					z := g.Alloc(n)
					g.ResidualLayerNormDropout(z, g.Alloc(n), x, br, om, in.alpha, gm, g.Upload(in.beta), tc.rows, tc.dim, reslnEps, c.p, resdropSeed)
					run := func(call func(dz, dbr, dg, db, dom kernels.Buffer, s kernels.ResidualSum)) sumOut {
						var dz, dbr kernels.Buffer
						if c.withDz {
							dz = g.Alloc(n)
						}
						switch c.dbr {
						case "16":
							dbr = g.AllocHalf(n)
						case "32":
							dbr = g.Alloc(n)
						}
						s := si.upload(g)
						if !c.pair {
							s = kernels.ResidualSum{D: g.Upload(si.d)}
						}
						dg, db, dom := g.Upload(in.dgamma), g.Upload(in.dbeta), g.Upload(in.domega0)
						call(dz, dbr, dg, db, dom, s)
						o := sumOut{dgamma: down(g, dg), dbeta: down(g, db), domega: down(g, dom)}
						if dz != nil {
							o.dz = down(g, dz)
						}
						switch c.dbr {
						case "16":
							o.dbranch = downHalf(t, g, dbr)
						case "32":
							o.dbranch = down(g, dbr)
						}
						return o
					}
					ref := run(func(dz, dbr, dg, db, dom kernels.Buffer, s kernels.ResidualSum) {
						if s.DZ != nil {
							g.ResidualBackward(s.D, nil, s.DZ, nil, s.Omega, s.Alpha, tc.rows, tc.dim)
						}
						if dbr == nil {
							g.ResidualLayerNormBackward(dz, dg, db, dom, s.D, z, x, gm, in.alpha, tc.rows, tc.dim, reslnEps)
							return
						}
						g.ResidualLayerNormBackwardDropout(dz, dbr, dg, db, dom, s.D, z, x, gm, in.alpha, tc.rows, tc.dim, reslnEps, c.p, resdropSeed)
					})
					sum := run(func(dz, dbr, dg, db, dom kernels.Buffer, s kernels.ResidualSum) {
						g.ResidualLayerNormBackwardSum(dz, dbr, dg, db, dom, s, z, x, gm, in.alpha, tc.rows, tc.dim, reslnEps, c.p, resdropSeed)
					})
					rec := run(func(dz, dbr, dg, db, dom kernels.Buffer, s kernels.ResidualSum) {
						g.ResidualLayerNormBackwardRecompute(dz, dbr, dg, db, dom, s, x, br, om, in.alpha, gm, tc.rows, tc.dim, reslnEps, c.p, resdropSeed)
					})
					t.Logf("float4 kernels: %v", g.sumVec(tc.dim))
					for _, v := range []struct {
						name string
						o    sumOut
					}{{"Sum", sum}, {"Recompute", rec}} {
						checkExact(t, v.name+" dz", v.o.dz, ref.dz)
						checkExact(t, v.name+" dbranch", v.o.dbranch, ref.dbranch)
						checkExact(t, v.name+" dgamma", v.o.dgamma, ref.dgamma)
						checkExact(t, v.name+" dbeta", v.o.dbeta, ref.dbeta)
						checkExact(t, v.name+" domega", v.o.domega, ref.domega)
					}
				})
			}
		}
	}
	t.Run("recomputes", func(t *testing.T) {
		g := withPrecision(t, BF16)
		if !g.RecomputesResidual(512) || g.RecomputesResidual(513) || g.RecomputesResidual(2048) {
			t.Error("RecomputesResidual in BF16 by default: want true at 512, false at 513 and 2048")
		}
		recompute(t, g, false)
		if g.RecomputesResidual(512) {
			t.Error("RecomputesResidual(512) true with the switch off")
		}
		if withPrecision(t, FP32).RecomputesResidual(512) {
			t.Error("RecomputesResidual(512) true in FP32")
		}
	})
}

// recompute sets the RecomputesResidual switch of g for the rest of the test.
func recompute(t *testing.T, g *Backend, on bool) {
	t.Helper()
	f := g.lnFnsOutside()
	old := f.recompute
	f.recompute = on
	t.Cleanup(func() { f.recompute = old })
}

// TestResidualSumTrainingSameBits trains the fixture model (Admin, Post-LN) in bf16 and
// fp16 with the ResidualSum kernels, with them and the recompute switch on (z not
// stored), and with sumOff (the sums formed by ResidualBackward before the old
// kernels, z stored): every update's loss, nll and gradient norm and the final weights
// must be the same bits. With the model patch of this change (model.TrainNet handing
// input gradients on as kernels.ResidualSum, and skipping z where RecomputesResidual)
// this runs the new kernels inside training; without it all runs take the same path.
func TestResidualSumTrainingSameBits(t *testing.T) {
	gpu(t)
	m, batches := fixtureTraining(t, 3)
	for _, prec := range []Precision{BF16, FP16} {
		for _, rc := range sameBitsCases {
			t.Run(prec.String()+"/"+rc.name, func(t *testing.T) {
				legacy := newGraphTestBackend(t, prec, false)
				legacy.lnFnsOutside().sumOff = true
				sums := newGraphTestBackend(t, prec, false)
				sums.lnFnsOutside().recompute = false
				rec := newGraphTestBackend(t, prec, false)
				rec.lnFnsOutside().recompute = true
				ref, _ := runTrain(t, m, legacy, rc, batches)
				got, _ := runTrain(t, m, sums, rc, batches)
				checkSameRun(t, "ResidualSum kernels", got, "legacy", ref)
				got, _ = runTrain(t, m, rec, rc, batches)
				checkSameRun(t, "ResidualSum kernels, z recomputed", got, "legacy", ref)
			})
		}
	}
}

// TestResidualSumTiming logs the device time per sub-layer at the bench shape (8000
// rows, dim 512, per-channel ω, p 0.1, BF16, 16-bit dbranch), the old kernels (sumOff)
// against the new, in one run: the forward with and without z; the backward as the
// model ran it (ResidualLayerNormBackwardDropout + ResidualBackward) against
// ResidualLayerNormBackwardSum and ResidualLayerNormBackwardRecompute; the residual
// backward scalar vs float4; the embeddings' dropout of a sum. Checks nothing; -short
// skips it.
func TestResidualSumTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	g := withPrecision(t, BF16)
	const rows, dim, p = benchSumRows, benchSumDim, 0.1
	n := rows * dim
	in, x, br, om, gm, b, s := newBenchSumInputs(g, 94)
	z, y, y16, dz, dbh, dx := g.Alloc(n), g.Alloc(n), g.AllocHalf(n), g.Alloc(n), g.AllocHalf(n), g.Alloc(n)
	dg, db, dom := g.Alloc(dim), g.Alloc(dim), g.Alloc(dim)
	scoped := func(f func()) func() {
		return func() {
			g.BeginScope()
			defer g.EndScope()
			f()
		}
	}
	tm := func(f func()) float64 { return us(timeDevice(t, g, 50, scoped(f))) }
	fwdZ := func() {
		g.ResidualLayerNormDropoutRounded(z, y, y16, x, br, om, in.alpha, gm, b, rows, dim, reslnEps, p, resdropSeed)
	}
	fwdNoZ := func() {
		g.ResidualLayerNormDropoutRounded(nil, y, y16, x, br, om, in.alpha, gm, b, rows, dim, reslnEps, p, resdropSeed)
	}
	bwdOld := func() {
		g.ResidualLayerNormBackwardDropout(dz, dbh, dg, db, dom, s.D, z, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
		g.ResidualBackward(dx, nil, dz, nil, om, in.alpha, rows, dim)
	}
	bwdSum := func() {
		g.ResidualLayerNormBackwardSum(dz, dbh, dg, db, dom, s, z, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
	}
	bwdRec := func() {
		g.ResidualLayerNormBackwardRecompute(dz, dbh, dg, db, dom, s, x, br, om, in.alpha, gm, rows, dim, reslnEps, p, resdropSeed)
	}
	lnOnly := func() {
		g.ResidualLayerNormBackwardDropout(dz, dbh, dg, db, dom, s.D, z, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
	}
	resBwd := func() { g.ResidualBackward(dx, nil, dz, nil, om, in.alpha, rows, dim) }
	embOld := func() {
		g.ResidualBackward(s.D, nil, s.DZ, nil, s.Omega, s.Alpha, rows, dim)
		g.ApplyDropout(dx, s.D, p, resdropSeed)
	}
	embNew := func() { g.ApplyDropoutSum(dx, s, rows, dim, p, resdropSeed) }

	sumOff(t, g, true)
	oF, oLN, oRes, oB, oE := tm(fwdZ), tm(lnOnly), tm(resBwd), tm(bwdOld), tm(embOld)
	sumOff(t, g, false)
	nFZ, nF, nRes, nS, nR, nE := tm(fwdZ), tm(fwdNoZ), tm(resBwd), tm(bwdSum), tm(bwdRec), tm(embNew)
	mb := float64(n*4) / 1e6
	gbs := func(mbs, v float64) float64 { return mbs / v * 1e3 }
	t.Logf("forward (z, y, y16): old %.1f µs, now %.1f µs; without z %.1f µs (%.0f GB/s)", oF, nFZ, nF, gbs(3.5*mb, nF))
	t.Logf("LN backward alone (ResidualLayerNormBackwardDropout, 16-bit dbranch) %.1f µs (%.0f GB/s)", oLN, gbs(4.5*mb, oLN))
	t.Logf("residual_bwd %.1f µs → residual_bwd4 %.1f µs (%.0f GB/s)", oRes, nRes, gbs(3*mb, nRes))
	t.Logf("backward per sub-layer: old (LN backward + residual_bwd) %.1f µs → Sum %.1f µs (%.0f GB/s) / Recompute %.1f µs (%.0f GB/s)",
		oB, nS, gbs(5.5*mb, nS), nR, gbs(5.5*mb, nR))
	t.Logf("embedding dropout of a sum: old (residual_bwd + dropout_apply) %.1f µs → ApplyDropoutSum %.1f µs", oE, nE)
	t.Logf("per sub-layer forward+backward: old %.1f µs → Sum %.1f µs, Recompute (no z) %.1f µs", oF+oB, nFZ+nS, nF+nR)

	// What the finish costs (no column gradients: no finish launch), and the Sum
	// kernel on 4-warp blocks (another grid: timing only).
	noCols := tm(func() {
		g.ResidualLayerNormBackwardSum(dz, dbh, nil, nil, nil, s, z, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
	})
	f := g.lnFnsOutside()
	idx := lfvIndex(dim)
	def := f.vbwd[idx]
	defer func() { f.vbwd[idx] = def }()
	f.vbwd[idx] = lfvKernel{fn: def.fn, warps: 4}
	w4 := tm(bwdSum)
	t.Logf("Sum without column gradients (no finish) %.1f µs; Sum on 4-warp blocks (%d per SM) %.1f µs", noCols, f.vbwd[idx].perSM, w4)
}

// benchSumRows × benchSumDim is the bench shape of the residual+LayerNorm timing tests.
const benchSumRows, benchSumDim = 8000, 512

// newBenchSumInputs uploads the timing tests' inputs at the bench shape (per-channel ω,
// α 0.81), drawn from seed: the reslnIn, then x, the branch, ω, γ, β on the device and
// the incoming gradient as a kernels.ResidualSum.
func newBenchSumInputs(g *Backend, seed uint64) (in reslnIn, x, br, om, gm, b kernels.Buffer, s kernels.ResidualSum) {
	r := rand.New(rand.NewPCG(seed, 1))
	in = newReslnIn(r, benchSumRows, benchSumDim, true, 0.81)
	si := newSumIn(r, benchSumRows, benchSumDim, true)
	x, br, om = g.Upload(in.x), g.Upload(in.branch), g.Upload(in.omega)
	gm, b = g.Upload(in.gamma), g.Upload(in.beta)
	return in, x, br, om, gm, b, si.upload(g)
}
