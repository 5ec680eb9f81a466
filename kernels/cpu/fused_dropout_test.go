package cpu

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// ResidualLayerNormDropout and its backward against the plain fused ops fed with the
// branch (forward) or dz (backward) multiplied in Go by refMask, the mask written from
// the sequential SplitMix64 and a float64 threshold (dropout_test.go), so neither the
// mask nor the multiply comes from the code under test. Exact: the same float32
// products in the same order, nothing else differs.
func TestResidualLayerNormDropout(t *testing.T) {
	for _, tc := range []struct {
		rows, dim int
		omega     bool
		p         float64
	}{
		{1, 1, false, 0.1}, {37, 32, true, 0.1}, {37, 32, false, 0}, {65, 512, true, 0.1}, {65, 512, true, 0},
		{300, 96, false, 0.1}, {300, 96, true, 0.5},
	} {
		t.Run(fmt.Sprintf("%dx%d_omega=%v_p=%v", tc.rows, tc.dim, tc.omega, tc.p), func(t *testing.T) {
			be := New(4)
			r := rand.New(rand.NewPCG(uint64(tc.rows), uint64(tc.dim)))
			n, d := tc.rows*tc.dim, tc.dim
			const alpha, eps, seed = 0.81, 1e-5, 0x5eed
			x, br, dy := randVec(r, n, 1.5), randVec(r, n, 1), randVec(r, n, 1)
			gamma, beta := randVec(r, d, 1), randVec(r, d, 1)
			var ob kernels.Buffer
			if tc.omega {
				ob = be.Upload(randVec(r, d, 1))
			}
			dg0, db0, do0 := randVec(r, d, 1), randVec(r, d, 1), randVec(r, d, 1)
			m := refMask(seed, tc.p, n)
			xb, gb, betab := be.Upload(x), be.Upload(gamma), be.Upload(beta)

			// Reference: the mask applied in Go, then the plain fused ops.
			dropped := make([]float32, n)
			for i := range dropped {
				dropped[i] = br[i] * m[i]
			}
			zr, yr := be.Alloc(n), be.Alloc(n)
			be.ResidualLayerNorm(zr, yr, xb, be.Upload(dropped), ob, alpha, gb, betab, tc.rows, d, eps)
			dzr, dgr, dbr, dor := be.Alloc(n), be.Upload(dg0), be.Upload(db0), be.Upload(do0)
			be.ResidualLayerNormBackward(dzr, dgr, dbr, dor, be.Upload(dy), zr, xb, gb, alpha, tc.rows, d, eps)
			dbranchr := make([]float32, n)
			for i, v := range Data(dzr) {
				dbranchr[i] = v * m[i]
			}

			bb := be.Upload(br)
			z, y := be.Alloc(n), be.Alloc(n)
			be.ResidualLayerNormDropout(z, y, xb, bb, ob, alpha, gb, betab, tc.rows, d, eps, tc.p, seed)
			exact(t, "z", Data(z), Data(zr))
			exact(t, "y", Data(y), Data(yr))
			if !slices.Equal(Data(bb), br) {
				t.Error("the forward wrote to branch")
			}

			dz, dbranch, dg, db, do := be.Alloc(n), be.Alloc(n), be.Upload(dg0), be.Upload(db0), be.Upload(do0)
			be.ResidualLayerNormBackwardDropout(dz, dbranch, dg, db, do, be.Upload(dy), z, xb, gb, alpha, tc.rows, d, eps, tc.p, seed)
			exact(t, "dz", Data(dz), Data(dzr))
			exact(t, "dbranch", Data(dbranch), dbranchr)
			exact(t, "dgamma", Data(dg), Data(dgr))
			exact(t, "dbeta", Data(db), Data(dbr))
			exact(t, "domega", Data(do), Data(dor))

			// dbranch in place of dy, dz not wanted.
			dya := be.Upload(dy)
			be.ResidualLayerNormBackwardDropout(nil, dya, nil, nil, nil, dya, z, xb, gb, alpha, tc.rows, d, eps, tc.p, seed)
			exact(t, "dbranch = dy, dz nil", Data(dya), dbranchr)
		})
	}
}
