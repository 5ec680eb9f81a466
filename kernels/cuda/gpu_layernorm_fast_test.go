package cuda

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// The float residual + LayerNorm of the bf16/fp16 modes (layernorm_fast.cu) against the
// CPU backend's ResidualLayerNorm / ResidualLayerNormBackward.
//
// Tolerance: z is elementwise with the CPU's operations in the CPU's order (products
// rounded, no FMA): exact. Everything else is float instead of double: the row mean and
// variance are float sums of dim ≤ 1024 terms (shuffle trees of depth 5 after per-lane
// sums of ≤ 32), relative error ≲ 40·2⁻²⁴ ≈ 2.4e-6 worst case, ~1e-7 typically, which
// passes through y and dz at the same order; the column sums add ≤ 6000 rows as
// per-lane runs of ~3, then 8 warps, then a fixed tree over ≤ 2·SMs partials, so each
// rounding sees at most a few hundred terms, and with random signs the norm-wise error
// stays ~1e-6 even where the sum cancels (Σ dy over 6000 rows is ~√6000 of its terms'
// size). We allow tolTight = 1e-5, norm-wise (relErr), logging the measured error. A
// wrong formula, a missed row or a dropped partial is off by far more.

// TestResidualLayerNormFast: the float kernels at dims of every NC (1…32, multiples of
// 32 and not) against the CPU; dim 1100 is over lfMaxDim and must take the exact
// kernels, which also gives the FP32 bits.
func TestResidualLayerNormFast(t *testing.T) {
	for _, tc := range []struct {
		rows, dim int
		omega     bool
		alpha     float32
	}{
		{1, 32, true, 0.81}, {7, 32, false, 2.5}, {6000, 32, true, 1},
		{1, 512, false, 1}, {7, 512, true, 0.81}, {6000, 512, true, 0.81}, {6000, 512, false, 1.7},
		{1, 1024, true, 1}, {7, 1024, false, 0.5}, {6000, 1024, true, 0.81},
		{5, 1, true, 0.81}, {37, 33, true, 1}, {300, 100, false, 2.5}, {129, 513, true, 0.81}, {65, 1000, true, 1},
		{7, 1100, true, 0.81}, {300, 1100, false, 1},
	} {
		for _, prec := range []Precision{BF16, FP16} {
			name := fmt.Sprintf("%dx%d_omega=%v_alpha=%v/%v", tc.rows, tc.dim, tc.omega, tc.alpha, prec)
			t.Run(name, func(t *testing.T) {
				g := withPrecision(t, prec)
				p := newPair(t, 71)
				in := newReslnIn(p.r, tc.rows, tc.dim, tc.omega, tc.alpha)
				got := reslnRun(g, g, in)
				want := reslnRun(p.c, p.c, in)
				t.Logf("fast kernels: %v", lnFastDim(tc.dim))
				checkExact(t, "z", got.z, want.z)
				for _, c := range []struct {
					name      string
					got, want []float32
				}{
					{"y", got.y, want.y}, {"dz", got.dz, want.dz}, {"dgamma", got.dgamma, want.dgamma},
					{"dbeta", got.dbeta, want.dbeta}, {"domega", got.domega, want.domega},
				} {
					checkClose(t, c.name, c.got, c.want, tolTight)
				}
				if !lnFastDim(tc.dim) {
					// The exact kernels whatever the precision: the FP32 bits.
					g.precision = FP32
					exact := reslnRun(g, g, in)
					g.precision = prec
					for _, c := range [][2][]float32{{got.y, exact.y}, {got.dz, exact.dz}, {got.dgamma, exact.dgamma},
						{got.dbeta, exact.dbeta}, {got.domega, exact.domega}} {
						checkExact(t, "fallback vs FP32", c[0], c[1])
					}
				}
			})
		}
	}
}

// TestResidualLayerNormFastUsed: at 6000×512 in bf16 the result is not the exact
// kernels' bit for bit, so the float kernels ran.
func TestResidualLayerNormFastUsed(t *testing.T) {
	g := withPrecision(t, BF16)
	in := newReslnIn(rand.New(rand.NewPCG(72, 1)), 6000, 512, true, 0.81)
	fast := reslnRun(g, g, in)
	g.precision = FP32
	exact := reslnRun(g, g, in)
	g.precision = BF16
	if relErr(fast.y, exact.y) == 0 && relErr(fast.dgamma, exact.dgamma) == 0 {
		t.Error("bf16 residual LayerNorm equals the exact kernels bit for bit: the float kernels did not run")
	}
}

// TestResidualLayerNormFastAccumulates: dγ, dβ and dω are added to, not overwritten:
// from zero, two identical calls give exactly twice one call (t + t is exact), and
// from non-zero starts the CPU's accumulated values within tolTight.
func TestResidualLayerNormFastAccumulates(t *testing.T) {
	for _, dim := range []int{32, 512, 1024} {
		t.Run(fmt.Sprint(dim), func(t *testing.T) {
			g := withPrecision(t, BF16)
			p := newPair(t, 73)
			const rows = 700
			in := newReslnIn(p.r, rows, dim, true, 0.81)
			z, dy, x, gm := g.Upload(make([]float32, rows*dim)), g.Upload(in.dy), g.Upload(in.x), g.Upload(in.gamma)
			g.ResidualLayerNorm(z, g.Alloc(rows*dim), x, g.Upload(in.branch), g.Upload(in.omega), in.alpha, gm,
				g.Upload(in.beta), rows, dim, reslnEps)
			grads := func(n int) [3][]float32 {
				dg, db, dom := g.Alloc(dim), g.Alloc(dim), g.Alloc(dim)
				for range n {
					g.ResidualLayerNormBackward(nil, dg, db, dom, dy, z, x, gm, in.alpha, rows, dim, reslnEps)
				}
				return [3][]float32{down(g, dg), down(g, db), down(g, dom)}
			}
			one, two := grads(1), grads(2)
			for i, name := range []string{"dgamma", "dbeta", "domega"} {
				twice := make([]float32, dim)
				for j, v := range one[i] {
					twice[j] = 2 * v
				}
				checkExact(t, name+" after two calls", two[i], twice)
			}

			// Twice from the random starts, on both backends.
			cz, cx, cg, cdy := p.c.Alloc(rows*dim), p.c.Upload(in.x), p.c.Upload(in.gamma), p.c.Upload(in.dy)
			p.c.ResidualLayerNorm(cz, p.c.Alloc(rows*dim), cx, p.c.Upload(in.branch), p.c.Upload(in.omega), in.alpha, cg,
				p.c.Upload(in.beta), rows, dim, reslnEps)
			gd := []kernels.Buffer{g.Upload(in.dgamma), g.Upload(in.dbeta), g.Upload(in.domega0)}
			cd := []kernels.Buffer{p.c.Upload(in.dgamma), p.c.Upload(in.dbeta), p.c.Upload(in.domega0)}
			for range 2 {
				g.ResidualLayerNormBackward(nil, gd[0], gd[1], gd[2], dy, z, x, gm, in.alpha, rows, dim, reslnEps)
				p.c.ResidualLayerNormBackward(nil, cd[0], cd[1], cd[2], cdy, cz, cx, cg, in.alpha, rows, dim, reslnEps)
			}
			for i, name := range []string{"dgamma", "dbeta", "domega"} {
				checkClose(t, name+" accumulated twice vs CPU", down(g, gd[i]), down(p.c, cd[i]), tolTight)
			}
		})
	}
}

// TestResidualLayerNormFastAliasing: the aliasing and nil arguments the interface
// allows give the unaliased float result bit for bit (same kernels, same arithmetic).
func TestResidualLayerNormFastAliasing(t *testing.T) {
	for _, dim := range []int{33, 512} {
		t.Run(fmt.Sprint(dim), func(t *testing.T) {
			g := withPrecision(t, FP16)
			const rows = 300
			in := newReslnIn(rand.New(rand.NewPCG(74, uint64(dim))), rows, dim, true, 0.81)
			want := reslnRun(g, g, in)
			x, br, om := g.Upload(in.x), g.Upload(in.branch), g.Upload(in.omega)
			gm, b := g.Upload(in.gamma), g.Upload(in.beta)
			xi := g.Upload(in.x)
			g.ResidualLayerNorm(nil, xi, xi, br, om, in.alpha, gm, b, rows, dim, reslnEps)
			checkExact(t, "y = x, z nil", down(g, xi), want.y)
			bz, xy := g.Upload(in.branch), g.Upload(in.x)
			g.ResidualLayerNorm(bz, xy, xy, bz, om, in.alpha, gm, b, rows, dim, reslnEps)
			checkExact(t, "z = branch, y = x: z", down(g, bz), want.z)
			checkExact(t, "z = branch, y = x: y", down(g, xy), want.y)

			z := g.Upload(want.z)
			dya, dom := g.Upload(in.dy), g.Upload(in.domega0)
			g.ResidualLayerNormBackward(dya, nil, nil, dom, dya, z, x, gm, in.alpha, rows, dim, reslnEps)
			checkExact(t, "dz = dy: dz", down(g, dya), want.dz)
			checkExact(t, "dz = dy: domega", down(g, dom), want.domega)
			dz := g.Alloc(rows * dim)
			g.ResidualLayerNormBackward(dz, nil, nil, nil, g.Upload(in.dy), z, x, gm, in.alpha, rows, dim, reslnEps)
			checkExact(t, "dz only", down(g, dz), want.dz)
		})
	}
}

// TestResidualLayerNormFastTiming logs the device time per call of the forward and the
// backward at the training shape (6000 rows, dim 512, per-channel ω), float (BF16) vs
// exact (FP32). It checks nothing; -short skips it.
func TestResidualLayerNormFastTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	be := gpu(t)
	old := be.precision
	defer func() { be.precision = old }()
	const rows, dim = 6000, 512
	in := newReslnIn(rand.New(rand.NewPCG(75, 1)), rows, dim, true, 0.81)
	x, br, om := be.Upload(in.x), be.Upload(in.branch), be.Upload(in.omega)
	gm, b, dy := be.Upload(in.gamma), be.Upload(in.beta), be.Upload(in.dy)
	z, y, dz := be.Alloc(rows*dim), be.Alloc(rows*dim), be.Alloc(rows*dim)
	dg, db, dom := be.Alloc(dim), be.Alloc(dim), be.Alloc(dim)
	for _, p := range []Precision{FP32, BF16} {
		be.precision = p
		fwd := timeDevice(t, be, 50, func() { be.ResidualLayerNorm(z, y, x, br, om, in.alpha, gm, b, rows, dim, reslnEps) })
		bwd := timeDevice(t, be, 50, func() {
			be.ResidualLayerNormBackward(dz, dg, db, dom, dy, z, x, gm, in.alpha, rows, dim, reslnEps)
		})
		// Bytes each call must move at least: forward x, branch in, z, y out; backward
		// dy, z, x in, dz out.
		mb := float64(rows*dim*4) / 1e6
		t.Logf("%v %dx%d: ResidualLayerNorm %6.1f µs (%4.0f GB/s)  ResidualLayerNormBackward %6.1f µs (%4.0f GB/s)",
			p, rows, dim, fwd.Seconds()*1e6, 4*mb/fwd.Seconds()/1e3, bwd.Seconds()*1e6, 4*mb/bwd.Seconds()/1e3)
	}
}
