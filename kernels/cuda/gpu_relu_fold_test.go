package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// TestReLUFold: kernels.ReLUDropoutFolder at the bench's FFN shape and a small one, bf16
// and fp16, p 0.1 and 0.3:
//   - ApplyDropoutMask's y is ApplyDropout's, bit for bit, and its mask holds y > 0 at bit
//     i of the little-endian 32-bit words for element i (cuBLASLt's ReLU mask layout,
//     TestDReLU16Probe);
//   - LinearBackwardKeptReLU's g against the exact s·(dy·w2) of the rounded operands,
//     masked (0 exactly where a ≤ 0): within one 16-bit rounding plus the fp32
//     accumulation bound of checkHalfProduct and one fp32 rounding of the scaling;
//   - its dw and db the same bits as LinearBackwardKept's (they do not depend on how dx
//     is written), and the fold counted, not the fallback;
//   - with cuBLASLt off, the fallback: g the same bits as the two steps it replaces
//     (LinearBackwardKept, then ReLUDropoutBackward).
func TestReLUFold(t *testing.T) {
	for _, ft := range formats {
		for _, c := range []struct {
			rows, d, F int
			p          float64
			ltOff      bool
		}{{7872, 512, 2048, 0.1, false}, {300, 128, 256, 0.3, false}, {300, 128, 256, 0.1, true}} {
			t.Run(fmt.Sprintf("%v/%dx%dx%d/p%g/ltOff=%v", ft.prec, c.rows, c.d, c.F, c.p, c.ltOff), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				g.reluFoldOn = true
				defer func() { g.reluFoldOn = false }()
				if c.ltOff {
					g.lt.off = true
					defer func() { g.lt.off = false }()
				}
				rows, d, F := c.rows, c.d, c.F
				r := rand.New(rand.NewPCG(uint64(rows*F), uint64(d)))
				// The activation: ReLU-like (about half zeros), rounded to 16 bits.
				av := randVec(r, rows*F)
				for i := range av {
					av[i] = max(av[i], 0)
				}
				const seed = 99
				aRef, aFold := upload16(g, av), upload16(g, av)
				g.ApplyDropout(aRef, aRef, c.p, seed) // in place, as the model calls both
				masks := g.lt.reluMasks
				mask := g.ApplyDropoutMask(aFold, aFold, rows, F, c.p, seed)
				if mask == nil || g.lt.reluMasks != masks+1 {
					t.Fatal("ApplyDropoutMask declined")
				}
				ah := downHalf(t, g, aFold)
				checkExact(t, "y (ApplyDropoutMask vs ApplyDropout)", ah, downHalf(t, g, aRef))
				words := down(g, mask)
				for i, v := range ah {
					bit := math.Float32bits(words[i/32])>>(i%32)&1 == 1
					if bit != (v > 0) {
						t.Fatalf("mask bit %d = %v, y = %v", i, bit, v)
					}
				}

				// fc2: out [rows, d] = a·w2ᵀ, w2 [d, F]; backward g [rows, F] = dy·w2.
				w2v := scaled(randVec(r, d*F), 1/math.Sqrt(float64(F)))
				dyv := randVec(r, rows*d)
				w2, dy16 := g.Upload(w2v), upload16(g, dyv)
				out := g.Alloc(rows * d)
				kept := g.LinearKeep(out, aFold, w2, nil, rows, d, F)
				dw0, db0 := randVec(r, d*F), randVec(r, d)
				dwF, dbF, dwR, dbR := g.Upload(dw0), g.Upload(db0), g.Upload(dw0), g.Upload(db0)
				gFold, gRef := g.AllocHalf(rows*F), g.AllocHalf(rows*F)
				folds, falls := g.lt.reluFolds, g.lt.reluFoldFallbacks
				g.LinearBackwardKeptReLU(gFold, dwF, dbF, dy16, kept, rows, d, F, aFold, mask, c.p)
				g.LinearBackwardKept(gRef, dwR, dbR, dy16, kept, rows, d, F)
				g.ReLUDropoutBackward(gRef, gRef, aFold, c.p)
				checkExact(t, "dw (folded vs plain)", down(g, dwF), down(g, dwR))
				checkExact(t, "db (folded vs plain)", down(g, dbF), down(g, dbR))
				gf := downHalf(t, g, gFold)
				if c.ltOff {
					if g.lt.reluFoldFallbacks != falls+1 {
						t.Fatalf("%d fallbacks, want 1", g.lt.reluFoldFallbacks-falls)
					}
					checkExact(t, "g (fallback vs the two steps)", gf, downHalf(t, g, gRef))
					return
				}
				if g.lt.reluFolds != folds+1 || g.lt.reluFoldFallbacks != falls {
					t.Fatalf("folds %d, fallbacks %d: want 1, 0", g.lt.reluFolds-folds, g.lt.reluFoldFallbacks-falls)
				}
				s := float64(kernels.DropoutScale(c.p))
				dyr, w2r := roundAll(ft, dyv), roundAll(ft, w2v)
				wt := transpose(w2r, d, F) // [F, d]
				gr := downHalf(t, g, gRef)
				worst, differ := 0.0, 0
				for _, i := range halfRows(r, rows) {
					ref, mag := refProduct(dyr, wt, nil, i, F, d)
					for j := range ref {
						if ah[i*F+j] > 0 {
							ref[j], mag[j] = s*ref[j], s*mag[j]+math.Ldexp(math.Abs(s*ref[j]), -23)
						} else {
							ref[j], mag[j] = 0, 0
						}
					}
					worst = max(worst, checkHalfProduct(t, ft, fmt.Sprintf("g row %d", i), gf[i*F:(i+1)*F], ref, mag, nil, d, false))
					for j := range F {
						if gf[i*F+j] != gr[i*F+j] {
							differ++
						}
					}
				}
				t.Logf("worst error/bound %.3f; on the rows checked, %d elements differ from the two steps' (one rounding against two)", worst, differ)
			})
		}
	}
}

// TestReLUFoldTraining: 12 updates of the head dimension 64 model (FFN 256: the mask's
// 128-column rows) in bf16 and fp16 with dropout 0.1, folded against relu_dropout_bwd's
// pass (the default, reluFoldOn false): the folded g is rounded once where the pass rounds twice, so the
// runs are held to checkTrainClose's 16-bit bounds, and must differ (the fold ran);
// graphed and eager folded runs are the same bits.
func TestReLUFoldTraining(t *testing.T) {
	gpu(t)
	big, batches := headDim64Training(t, 3)
	rc := sameBitsCases[1]
	if rc.dropout == 0 {
		t.Fatal("sameBitsCases[1] has no dropout")
	}
	for _, prec := range []Precision{BF16, FP16} {
		t.Run(prec.String(), func(t *testing.T) {
			offBE := newGraphTestBackend(t, prec, false)
			onBE := newGraphTestBackend(t, prec, false)
			onBE.reluFoldOn = true
			graphBE := newGraphTestBackend(t, prec, true)
			graphBE.reluFoldOn = true
			all := slices.Repeat(batches, 4)
			off, _ := runTrain(t, big, offBE, rc, all)
			on, _ := runTrain(t, big, onBE, rc, all)
			graphed, _ := runTrain(t, big, graphBE, rc, all)
			if offBE.lt.reluMasks != 0 || onBE.lt.reluFolds == 0 || onBE.lt.reluFoldFallbacks != 0 {
				t.Fatalf("masks %d with the fold off; folds %d, fallbacks %d on", offBE.lt.reluMasks, onBE.lt.reluFolds, onBE.lt.reluFoldFallbacks)
			}
			if sameWeights(on, off) {
				t.Error("folded and unfolded runs ended with the same weights: the fold changed nothing")
			}
			checkTrainClose(t, "folded", on, "relu_dropout_bwd", off)
			checkSameRun(t, "folded, graphed", graphed, "folded, eager", on)
		})
	}
}

// TestReLUDropoutBackwardBias: kernels.ReLUDropoutBiasBackwarder at the bench's FFN shape
// and small ones, bf16 and fp16, in place (as the model calls it) and not:
//   - dpre the same bits as ReLUDropoutBackward's;
//   - db = db0 + the float64 column sums of the stored dpre, within the float32
//     summation bound (rows + 16 roundings of the magnitudes), and the same bits on a
//     second run;
//   - declined (false, nothing written) where cols is not a multiple of 8.
func TestReLUDropoutBackwardBias(t *testing.T) {
	for _, ft := range formats {
		for _, c := range []struct {
			rows, cols int
			inPlace    bool
		}{{7872, 2048, true}, {300, 256, false}, {37, 264, true}, {1, 8, false}} {
			t.Run(fmt.Sprintf("%v/%dx%d/inPlace=%v", ft.prec, c.rows, c.cols, c.inPlace), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				rows, cols := c.rows, c.cols
				r := rand.New(rand.NewPCG(uint64(rows), uint64(cols)))
				av := randVec(r, rows*cols)
				for i := range av {
					av[i] = max(av[i], 0)
				}
				dav, db0 := randVec(r, rows*cols), randVec(r, cols)
				const p = 0.1
				a := upload16(g, av)
				ref := upload16(g, dav)
				g.ReLUDropoutBackward(ref, ref, a, p)
				want := downHalf(t, g, ref)
				var got []float32
				var dbs [2][]float32
				for run := range 2 {
					da := upload16(g, dav)
					dpre := da
					if !c.inPlace {
						dpre = g.AllocHalf(rows * cols)
					}
					db := g.Upload(db0)
					calls := g.reluBiasCalls
					if !g.ReLUDropoutBackwardBias(dpre, da, a, db, rows, cols, p) || g.reluBiasCalls != calls+1 {
						t.Fatal("ReLUDropoutBackwardBias declined")
					}
					got = downHalf(t, g, dpre)
					dbs[run] = down(g, db)
				}
				checkExact(t, "dpre (with the bias sums vs ReLUDropoutBackward)", got, want)
				checkExact(t, "db (second run)", dbs[1], dbs[0])
				worst := 0.0
				for j := range cols {
					s, mag := float64(db0[j]), math.Abs(float64(db0[j]))
					for i := range rows {
						v := float64(got[i*cols+j])
						s += v
						mag += math.Abs(v)
					}
					bound := float64(rows+16) * math.Ldexp(1, -24) * mag
					d := math.Abs(float64(dbs[0][j]) - s)
					if !(d <= bound) {
						t.Fatalf("db[%d] = %v, exact %v: |Δ| %.3g > bound %.3g", j, dbs[0][j], s, d, bound)
					}
					worst = max(worst, d/bound)
				}
				t.Logf("db worst error/bound %.3f", worst)
			})
		}
	}
	t.Run("cols 260", func(t *testing.T) {
		g := withPrecision(t, BF16)
		x := g.AllocHalf(4 * 260)
		db := g.Upload(make([]float32, 260))
		if g.ReLUDropoutBackwardBias(x, x, x, db, 4, 260, 0.1) {
			t.Fatal("took 260 columns (not a multiple of 8)")
		}
	})
}

// TestReLUBiasTraining: fc1's bias gradient summed by relu_dropout_bwd_hh8p against
// the deferred flush's column sum (reluBiasOff): another float32 summation order, so
// held to checkTrainClose's bounds; graphed and eager the same bits.
func TestReLUBiasTraining(t *testing.T) {
	switchTraining(t, nil, func(be *Backend) { be.reluBiasOff = true }, func(t *testing.T, offBE, onBE *Backend, off, on, graphed trainResult) {
		if offBE.reluBiasCalls != 0 || onBE.reluBiasCalls == 0 {
			t.Fatalf("ReLUDropoutBackwardBias calls: %d off, %d on", offBE.reluBiasCalls, onBE.reluBiasCalls)
		}
		checkTrainClose(t, "bias summed with relu", on, "deferred column sum", off)
		checkSameRun(t, "graphed", graphed, "eager", on)
	})
}
