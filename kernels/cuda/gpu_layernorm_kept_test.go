package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// kernels.KeptMaskNormer: the LayerNorm forward stores the residual dropout's keep
// bits and the Sum backward reads them instead of drawing the mask again.
//
// Tolerances: none. The words are the mask the forward applied, and the backward
// multiplies dz by keep or 0 per element as before, so every output must be the bits
// of the calls without the words.

// TestKeptMaskSameBits: ResidualLayerNormDropoutRoundedKept gives the bits of
// ResidualLayerNormDropoutRounded (z, y, y16) and ResidualLayerNormBackwardSumKept
// those of ResidualLayerNormBackwardSum (dz, the 16-bit dbranch, dγ, dβ, dω), in bf16
// and fp16, at the full-width dims (the step's specialized kernels), at dims the
// float4 kernels take with guards (96, 516) and at one they do not (513: the methods
// fall back, report no words, and still give the bits); p 0.1 and 0.3; one row and
// rows that leave the pipelined forward's warps uneven. The same for the recomputing
// pair: the forward without z (the same y, y16 and words) and
// ResidualLayerNormBackwardRecomputeKept against ResidualLayerNormBackwardRecompute.
// Where the words were stored, each bit must be kernels.DropoutKeep of its element.
func TestKeptMaskSameBits(t *testing.T) {
	for _, prec := range []Precision{BF16, FP16} {
		for _, tc := range []struct{ rows, dim int }{
			{8000, 512}, {8191, 512}, {1, 512}, {7, 1024}, {300, 256}, {129, 128}, {65, 96}, {33, 516}, {37, 513},
		} {
			for _, p := range []float64{0.1, 0.3} {
				t.Run(fmt.Sprintf("%v/%dx%d/p=%v", prec, tc.rows, tc.dim, p), func(t *testing.T) {
					g := withPrecision(t, prec)
					rows, dim, n := tc.rows, tc.dim, tc.rows*tc.dim
					r := rand.New(rand.NewPCG(101, uint64(n)))
					in := newReslnIn(r, rows, dim, true, 0.81)
					si := newSumIn(r, rows, dim, true)
					x, br, om := g.Upload(in.x), g.Upload(in.branch), g.Upload(in.omega)
					gm, bt := g.Upload(in.gamma), g.Upload(in.beta)
					words := g.KeptMaskWords(rows, dim)
					if want := dim%4 == 0; (words > 0) != want {
						t.Fatalf("KeptMaskWords(%d, %d) = %d, want words: %v", rows, dim, words, want)
					}

					z0, y0, h0 := g.Alloc(n), g.Alloc(n), g.AllocHalf(n)
					g.ResidualLayerNormDropoutRounded(z0, y0, h0, x, br, om, in.alpha, gm, bt, rows, dim, reslnEps, p, resdropSeed)
					z1, y1, h1 := g.Alloc(n), g.Alloc(n), g.AllocHalf(n)
					kept := g.Alloc(max(words, 1))
					stored := g.ResidualLayerNormDropoutRoundedKept(z1, y1, h1, kept, x, br, om, in.alpha, gm, bt, rows, dim, reslnEps, p, resdropSeed)
					if stored != (words > 0) {
						t.Fatalf("ResidualLayerNormDropoutRoundedKept stored words: %v, KeptMaskWords %d", stored, words)
					}
					checkExact(t, "z", down(g, z1), down(g, z0))
					checkExact(t, "y", down(g, y1), down(g, y0))
					checkExact(t, "y16", downHalf(t, g, h1), downHalf(t, g, h0))
					if stored {
						checkKeepWords(t, down(g, kept), rows, dim, p)
					}

					back := func(call func(dz, dbr, dg, db, dom kernels.Buffer, s kernels.ResidualSum)) sumOut {
						dz, dbr := g.Alloc(n), g.AllocHalf(n)
						dg, db, dom := g.Upload(in.dgamma), g.Upload(in.dbeta), g.Upload(in.domega0)
						call(dz, dbr, dg, db, dom, si.upload(g))
						return sumOut{dz: down(g, dz), dbranch: downHalf(t, g, dbr), dgamma: down(g, dg), dbeta: down(g, db), domega: down(g, dom)}
					}
					ref := back(func(dz, dbr, dg, db, dom kernels.Buffer, s kernels.ResidualSum) {
						g.ResidualLayerNormBackwardSum(dz, dbr, dg, db, dom, s, z0, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
					})
					before := g.lnFnsOutside().keptBwd
					got := back(func(dz, dbr, dg, db, dom kernels.Buffer, s kernels.ResidualSum) {
						g.ResidualLayerNormBackwardSumKept(dz, dbr, dg, db, dom, s, z1, x, gm, kept, in.alpha, rows, dim, reslnEps, p, resdropSeed)
					})
					if took := g.lnFnsOutside().keptBwd > before; took != stored {
						t.Errorf("the kept backward ran: %v, words stored: %v", took, stored)
					}
					checkSumOutExact(t, "Sum", got, ref)

					// The recomputing pair: the forward stores no z, the backward forms it
					// from x and the branch with the stored words.
					y2, h2 := g.Alloc(n), g.AllocHalf(n)
					kept2 := g.Alloc(max(words, 1))
					if g.ResidualLayerNormDropoutRoundedKept(nil, y2, h2, kept2, x, br, om, in.alpha, gm, bt, rows, dim, reslnEps, p, resdropSeed) != stored {
						t.Fatal("without z the forward stored words differently")
					}
					checkExact(t, "y without z", down(g, y2), down(g, y0))
					checkExact(t, "y16 without z", downHalf(t, g, h2), downHalf(t, g, h0))
					if stored {
						checkExact(t, "words without z", down(g, kept2), down(g, kept))
					}
					refRec := back(func(dz, dbr, dg, db, dom kernels.Buffer, s kernels.ResidualSum) {
						g.ResidualLayerNormBackwardRecompute(dz, dbr, dg, db, dom, s, x, br, om, in.alpha, gm, rows, dim, reslnEps, p, resdropSeed)
					})
					before = g.lnFnsOutside().keptBwd
					gotRec := back(func(dz, dbr, dg, db, dom kernels.Buffer, s kernels.ResidualSum) {
						g.ResidualLayerNormBackwardRecomputeKept(dz, dbr, dg, db, dom, s, x, br, om, in.alpha, gm, kept2, rows, dim, reslnEps, p, resdropSeed)
					})
					if took := g.lnFnsOutside().keptBwd > before; took != stored {
						t.Errorf("the kept recomputing backward ran: %v, words stored: %v", took, stored)
					}
					checkSumOutExact(t, "Recompute", gotRec, refRec)
				})
			}
		}
	}
	t.Run("switch", func(t *testing.T) {
		g := withPrecision(t, BF16)
		if g.KeptMaskWords(8000, 512) != 32*8000 {
			t.Fatalf("KeptMaskWords(8000, 512) = %d by default", g.KeptMaskWords(8000, 512))
		}
		g.lnKeepOff = true
		w := g.KeptMaskWords(8000, 512)
		g.lnKeepOff = false
		if w != 0 {
			t.Errorf("KeptMaskWords with XFORM_CUDA_LN_KEEP=0: %d", w)
		}
		if w := withPrecision(t, FP32).KeptMaskWords(8000, 512); w != 0 {
			t.Errorf("KeptMaskWords in FP32: %d", w)
		}
	})
}

// checkSumOutExact compares every output of two backward calls bit for bit.
func checkSumOutExact(t *testing.T, what string, got, want sumOut) {
	t.Helper()
	checkExact(t, what+" dz", got.dz, want.dz)
	checkExact(t, what+" dbranch", got.dbranch, want.dbranch)
	checkExact(t, what+" dgamma", got.dgamma, want.dgamma)
	checkExact(t, what+" dbeta", got.dbeta, want.dbeta)
	checkExact(t, what+" domega", got.domega, want.domega)
}

// checkKeepWords checks the stored words against the mask: bit 4c + k of row r's word
// l is element 4(l + 32c) + k of the row, kept when kernels.DropoutKeep says so for
// its flat index; bits past dim are set.
func checkKeepWords(t *testing.T, words []float32, rows, dim int, p float64) {
	t.Helper()
	th := kernels.DropoutThreshold(p)
	bad := 0
	for r := range rows {
		for l := range 32 {
			w := math.Float32bits(words[32*r+l])
			for b := range 32 {
				c, k := b/4, b%4
				col := 4*(l+32*c) + k
				want := true
				if col < dim {
					want = kernels.DropoutKeep(resdropSeed, uint64(r*dim+col), th)
				}
				if (w>>b&1 == 1) != want {
					if bad < 5 {
						t.Errorf("row %d word %d bit %d (column %d): kept %v, the mask says %v", r, l, b, col, w>>b&1 == 1, want)
					}
					bad++
				}
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d keep bits differ from the mask", bad)
	}
}

// TestKeptMaskTrainingSameBits trains the fixture model in bf16 and fp16 with the
// dropout recipe, stepped, pipelined and packed, and with the recomputing backward
// (XFORM_CUDA_LN_RECOMPUTE) stepped and packed, with and without the kept words:
// every update's loss, nll and gradient norm and the final weights the same bits; the
// run with them must have taken the kept backward.
func TestKeptMaskTrainingSameBits(t *testing.T) {
	gpu(t)
	m, batches := fixtureTraining(t, 4)
	var rc trainCase
	for _, c := range sameBitsCases {
		if c.dropout > 0 {
			rc = c
		}
	}
	if rc.dropout == 0 {
		t.Fatal("no sameBitsCases recipe with dropout")
	}
	for _, prec := range []Precision{BF16, FP16} {
		for _, mode := range []struct {
			name                       string
			pipelined, pack, recompute bool
		}{
			{"step", false, false, false}, {"pipelined", true, false, false}, {"packed", true, true, false},
			{"step, recompute", false, false, true}, {"packed, recompute", true, true, true},
		} {
			rc := rc
			rc.pipelined, rc.pack = mode.pipelined && prec == BF16, mode.pack
			t.Run(fmt.Sprintf("%v/%s", prec, mode.name), func(t *testing.T) {
				var all func(*Backend)
				if !mode.recompute {
					all = func(g *Backend) { g.lnRecomputeOff = true }
				}
				checkSwitchSameRunWith(t, m, batches, prec, rc, "the kept-mask LayerNorm backward", all,
					func(g *Backend) { g.lnKeepOff = true },
					func(g *Backend) bool { return g.lazy.lnFast != nil && g.lazy.lnFast.keptBwd > 0 })
			})
		}
	}
}

// TestKeptMaskTiming logs the device µs per call of the rounded forward and the Sum
// backward (with its finish) at the bench shape (8000 × 512, bf16, p 0.1), with and
// without the kept words, and of the forward without z and the recomputing backward
// likewise. Checks nothing; -short skips it.
func TestKeptMaskTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	g := withPrecision(t, BF16)
	const rows, dim, p = benchSumRows, benchSumDim, 0.1
	n := rows * dim
	in, x, br, om, gm, bt, s := newBenchSumInputs(g, 102)
	z, y, h := g.Alloc(n), g.Alloc(n), g.AllocHalf(n)
	kept := g.Alloc(g.KeptMaskWords(rows, dim))
	dz, dbr := g.Alloc(n), g.AllocHalf(n)
	dg, db, dom := g.Alloc(dim), g.Alloc(dim), g.Alloc(dim)
	us := func(f func()) float64 { return timeDevice(t, g, 30, f).Seconds() * 1e6 }
	fwd := us(func() {
		g.ResidualLayerNormDropoutRounded(z, y, h, x, br, om, in.alpha, gm, bt, rows, dim, reslnEps, p, resdropSeed)
	})
	fwdKept := us(func() {
		g.ResidualLayerNormDropoutRoundedKept(z, y, h, kept, x, br, om, in.alpha, gm, bt, rows, dim, reslnEps, p, resdropSeed)
	})
	bwd := us(func() {
		g.BeginScope()
		defer g.EndScope()
		g.ResidualLayerNormBackwardSum(dz, dbr, dg, db, dom, s, z, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
	})
	bwdKept := us(func() {
		g.BeginScope()
		defer g.EndScope()
		g.ResidualLayerNormBackwardSumKept(dz, dbr, dg, db, dom, s, z, x, gm, kept, in.alpha, rows, dim, reslnEps, p, resdropSeed)
	})
	t.Logf("forward %.1f µs, with the words stored %.1f µs; Sum backward + finish %.1f µs, reading the words %.1f µs", fwd, fwdKept, bwd, bwdKept)
	fwdNoZ := us(func() {
		g.ResidualLayerNormDropoutRounded(nil, y, h, x, br, om, in.alpha, gm, bt, rows, dim, reslnEps, p, resdropSeed)
	})
	fwdNoZKept := us(func() {
		g.ResidualLayerNormDropoutRoundedKept(nil, y, h, kept, x, br, om, in.alpha, gm, bt, rows, dim, reslnEps, p, resdropSeed)
	})
	rec := us(func() {
		g.BeginScope()
		defer g.EndScope()
		g.ResidualLayerNormBackwardRecompute(dz, dbr, dg, db, dom, s, x, br, om, in.alpha, gm, rows, dim, reslnEps, p, resdropSeed)
	})
	recKept := us(func() {
		g.BeginScope()
		defer g.EndScope()
		g.ResidualLayerNormBackwardRecomputeKept(dz, dbr, dg, db, dom, s, x, br, om, in.alpha, gm, kept, rows, dim, reslnEps, p, resdropSeed)
	})
	t.Logf("without z: forward %.1f µs, with the words %.1f µs; recomputing backward + finish %.1f µs, reading the words %.1f µs", fwdNoZ, fwdNoZKept, rec, recKept)
	t.Logf("per sub-layer, forward + backward: %.1f µs (z stored, mask hashed twice), %.1f (z, words), %.1f (no z, hashed), %.1f (no z, words)",
		fwd+bwd, fwdKept+bwdKept, fwdNoZ+rec, fwdNoZKept+recKept)
}
