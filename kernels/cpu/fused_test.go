package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// ResidualLayerNorm and its backward against (1) the unfused ops, bit for bit,
// including the aliasing the model uses (inference normalises in place with z nil),
// and (2) the textbook formulas in float64, independent of the code under test:
//
//	z = α·(ω⊙x) + b, x̂ = (z − μ)/σ, y = γ⊙x̂ + β
//	dz = (gy − mean(gy) − x̂·mean(gy⊙x̂))/σ with gy = γ⊙dy
//	dγ = Σ dy⊙x̂, dβ = Σ dy, dω = α·Σ x⊙dz
//
// Tolerance for (2): the backend rounds z, x̂ and the outputs to float32, so results
// agree to a few float32 ulps of the row's scale; 1e-5 relative to the largest
// magnitude of each output is far above that and far below any indexing error.
func TestResidualLayerNorm(t *testing.T) {
	for _, tc := range []struct {
		rows, dim int
		omega     bool
		alpha     float32
	}{{1, 1, false, 1}, {1, 7, true, 1}, {37, 32, true, 0.81}, {300, 96, false, 2.5}, {65, 512, true, 1}} {
		t.Run(fmt.Sprintf("%dx%d_omega=%v_alpha=%v", tc.rows, tc.dim, tc.omega, tc.alpha), func(t *testing.T) {
			be := New(4)
			r := rand.New(rand.NewPCG(uint64(tc.rows), uint64(tc.dim)))
			n, d := tc.rows*tc.dim, tc.dim
			x, br, dy := randVec(r, n, 1.5), randVec(r, n, 1), randVec(r, n, 1)
			gamma, beta := randVec(r, d, 1), randVec(r, d, 1)
			var omega []float32
			if tc.omega {
				omega = randVec(r, d, 1)
			}
			dg0, db0, do0 := randVec(r, d, 1), randVec(r, d, 1), randVec(r, d, 1)
			up := func(v []float32) kernels.Buffer {
				if v == nil {
					return nil // a nil interface, as callers pass "no ω"
				}
				return be.Upload(v)
			}
			const eps = 1e-5
			xb, bb, gb, betab, ob := up(x), up(br), up(gamma), up(beta), up(omega)

			// Unfused reference sequence.
			zr, yr := be.Alloc(n), be.Alloc(n)
			be.Residual(zr, xb, bb, ob, tc.alpha, tc.rows, d)
			be.LayerNorm(yr, zr, gb, betab, tc.rows, d, eps)
			dzr, dgr, dbr, dor := be.Alloc(n), up(dg0), up(db0), up(do0)
			be.LayerNormBackward(dzr, dgr, dbr, up(dy), zr, gb, tc.rows, d, eps)
			be.ResidualBackward(nil, dor, dzr, xb, nil, tc.alpha, tc.rows, d)

			// Fused, training shape.
			z, y := be.Alloc(n), be.Alloc(n)
			be.ResidualLayerNorm(z, y, xb, bb, ob, tc.alpha, gb, betab, tc.rows, d, eps)
			exact(t, "z", Data(z), Data(zr))
			exact(t, "y", Data(y), Data(yr))
			dz, dg, db, do := be.Alloc(n), up(dg0), up(db0), up(do0)
			be.ResidualLayerNormBackward(dz, dg, db, do, up(dy), z, xb, gb, tc.alpha, tc.rows, d, eps)
			exact(t, "dz", Data(dz), Data(dzr))
			exact(t, "dgamma", Data(dg), Data(dgr))
			exact(t, "dbeta", Data(db), Data(dbr))
			exact(t, "domega", Data(do), Data(dor))

			// Inference shape: z nil, y aliasing x.
			xi := up(x)
			be.ResidualLayerNorm(nil, xi, xi, bb, ob, tc.alpha, gb, betab, tc.rows, d, eps)
			exact(t, "y in place", Data(xi), Data(yr))
			// dz nil with dω wanted; dz aliasing dy.
			do2 := up(do0)
			be.ResidualLayerNormBackward(nil, nil, nil, do2, up(dy), z, xb, gb, tc.alpha, tc.rows, d, eps)
			exact(t, "domega without dz", Data(do2), Data(dor))
			dya := up(dy)
			be.ResidualLayerNormBackward(dya, nil, nil, nil, dya, z, xb, gb, tc.alpha, tc.rows, d, eps)
			exact(t, "dz aliasing dy", Data(dya), Data(dzr))

			// Formulas in float64.
			wy, wdz := make([]float64, n), make([]float64, n)
			wdg, wdb, wdo := make([]float64, d), make([]float64, d), make([]float64, d)
			for row := 0; row < tc.rows; row++ {
				o := row * d
				zz := make([]float64, d)
				var mu, va, mg, mgx float64
				for j := range zz {
					w := 1.0
					if omega != nil {
						w = float64(omega[j])
					}
					zz[j] = float64(tc.alpha)*w*float64(x[o+j]) + float64(br[o+j])
					mu += zz[j] / float64(d)
				}
				for _, v := range zz {
					va += (v - mu) * (v - mu) / float64(d)
				}
				sd := math.Sqrt(va + eps)
				for j, v := range zz {
					xh := (v - mu) / sd
					wy[o+j] = float64(gamma[j])*xh + float64(beta[j])
					gy := float64(gamma[j]) * float64(dy[o+j])
					mg += gy / float64(d)
					mgx += gy * xh / float64(d)
					wdg[j] += float64(dy[o+j]) * xh
					wdb[j] += float64(dy[o+j])
				}
				for j, v := range zz {
					xh := (v - mu) / sd
					wdz[o+j] = (float64(gamma[j])*float64(dy[o+j]) - mg - xh*mgx) / sd
					wdo[j] += float64(tc.alpha) * float64(x[o+j]) * wdz[o+j]
				}
			}
			for j := range wdg {
				wdg[j] += float64(dg0[j])
				wdb[j] += float64(db0[j])
				wdo[j] += float64(do0[j])
			}
			near(t, "y", Data(y), wy)
			near(t, "dz", Data(dz), wdz)
			near(t, "dgamma", Data(dg), wdg)
			near(t, "dbeta", Data(db), wdb)
			near(t, "domega", Data(do), wdo)
		})
	}
}

func exact(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Errorf("%s[%d] = %v, unfused %v", what, i, got[i], want[i])
			return
		}
	}
}

func near(t *testing.T, what string, got []float32, want []float64) {
	t.Helper()
	scale := 1e-30
	for _, w := range want {
		scale = max(scale, math.Abs(w))
	}
	for i, w := range want {
		if d := math.Abs(float64(got[i]) - w); !(d <= 1e-5*scale) {
			t.Errorf("%s[%d] = %v, formula %v (|Δ| %.3g, scale %.3g)", what, i, got[i], w, d, scale)
			return
		}
	}
}
