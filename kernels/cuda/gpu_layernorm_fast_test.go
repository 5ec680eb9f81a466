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
// per-lane runs of ~3, then 8 warps, then a fixed tree over ≤ 2·SMs partials (the
// float4 kernels: per-warp runs of rows/(blocks·warps) ≲ 10 rows, ≤ 8 warps, then ≤ 32
// runs of ≤ 6·SMs/32 partials and the 32 run sums), so each rounding sees at most a
// few hundred terms, and with random signs the norm-wise error
// stays ~1e-6 even where the sum cancels (Σ dy over 6000 rows is ~√6000 of its terms'
// size). We allow tolTight = 1e-5, norm-wise (relErr), logging the measured error. A
// wrong formula, a missed row or a dropped partial is off by far more.

// TestResidualLayerNormFast: the float kernels at dims of every NC (1…32, multiples of
// 32 and not) and every float4 NV (dims that are multiples of 4 take the float4
// kernels, the others the scalar ones; "scalar" forces the scalar ones everywhere)
// against the CPU; dim 1100 is over lfMaxDim and must take the exact kernels, which
// also gives the FP32 bits.
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
			for _, scalar := range []bool{false, true} {
				name := fmt.Sprintf("%dx%d_omega=%v_alpha=%v/%v/scalar=%v", tc.rows, tc.dim, tc.omega, tc.alpha, prec, scalar)
				t.Run(name, func(t *testing.T) {
					g := withPrecision(t, prec)
					lnScalar(t, g, scalar)
					p := newPair(t, 71)
					in := newReslnIn(p.r, tc.rows, tc.dim, tc.omega, tc.alpha)
					got := reslnRun(g, g, in)
					want := reslnRun(p.c, p.c, in)
					t.Logf("fast kernels: %v, float4 kernels: %v", lnFastDim(tc.dim), !scalar && tc.dim%4 == 0 && tc.dim <= lfvMaxDim)
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
}

// lnScalar sets the scalar-kernels test switch of g for the rest of the test.
func lnScalar(t *testing.T, g *Backend, on bool) {
	t.Helper()
	f := func() *lnFastFns { defer g.enter()(); return g.lnFns() }()
	old := f.scalar
	f.scalar = on
	t.Cleanup(func() { f.scalar = old })
}

// TestResidualLayerNormVecUsed: at 8000×512 the float4 kernels' results differ from
// the scalar kernels' (another summation order) but both are within tolTight of the
// CPU; so the switch switches, and the default is not the scalar path.
func TestResidualLayerNormVecUsed(t *testing.T) {
	g := withPrecision(t, BF16)
	p := newPair(t, 76)
	in := newReslnIn(p.r, 8000, 512, true, 0.81)
	vec := reslnRun(g, g, in)
	lnScalar(t, g, true)
	scalar := reslnRun(g, g, in)
	if relErr(vec.dz, scalar.dz) == 0 && relErr(vec.y, scalar.y) == 0 {
		t.Error("float4 and scalar kernels give the same bits: the float4 kernels did not run")
	}
	want := reslnRun(p.c, p.c, in)
	for _, c := range []struct {
		name      string
		got, want []float32
	}{{"y", vec.y, want.y}, {"dz", vec.dz, want.dz}, {"dgamma", vec.dgamma, want.dgamma}, {"dbeta", vec.dbeta, want.dbeta},
		{"domega", vec.domega, want.domega}} {
		checkClose(t, c.name+" (float4) vs CPU", c.got, c.want, tolTight)
	}
	checkExact(t, "z (float4) vs CPU", vec.z, want.z)
}

// TestResidualLayerNormVecUnaligned: tensors that are Slices starting at an odd
// element are not 16-byte aligned, so the float4 kernels decline and the scalar ones
// run: the results are the scalar kernels' bits on aligned copies of the same data.
func TestResidualLayerNormVecUnaligned(t *testing.T) {
	g := withPrecision(t, BF16)
	const rows, dim = 300, 512
	n := rows * dim
	in := newReslnIn(rand.New(rand.NewPCG(77, 1)), rows, dim, true, 0.81)
	lnScalar(t, g, true)
	want := reslnRun(g, g, in)
	lnScalar(t, g, false)
	// Each tensor one element into a buffer one element longer.
	off := func(v []float32) kernels.Buffer {
		b := g.Upload(append([]float32{0}, v...))
		return g.Slice(b, 1, len(v))
	}
	x, br, om, gm, b, dy := off(in.x), off(in.branch), off(in.omega), off(in.gamma), off(in.beta), off(in.dy)
	z, y, dz := off(make([]float32, n)), off(make([]float32, n)), off(make([]float32, n))
	dg, db, dom := off(in.dgamma), off(in.dbeta), off(in.domega0)
	g.ResidualLayerNorm(z, y, x, br, om, in.alpha, gm, b, rows, dim, reslnEps)
	g.ResidualLayerNormBackward(dz, dg, db, dom, dy, z, x, gm, in.alpha, rows, dim, reslnEps)
	for _, c := range []struct {
		name string
		got  kernels.Buffer
		want []float32
	}{{"z", z, want.z}, {"y", y, want.y}, {"dz", dz, want.dz}, {"dgamma", dg, want.dgamma}, {"dbeta", db, want.dbeta},
		{"domega", dom, want.domega}} {
		checkExact(t, c.name+" unaligned vs scalar kernels", down(g, c.got), c.want)
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

// TestResidualLayerNormVecTiming logs the device time per call at the bench shape
// (8000 rows, dim 512, per-channel ω, residual dropout 0.1, BF16) of the scalar kernels
// as they ran before (the backward with dropout: the scalar backward + finish, then
// ApplyDropout) against the float4 kernels (the legacy _v ones and the default _w
// ones: 32-bit hash words, the finish in the backward), and of each legacy float4
// backward variant
// (column sums in registers or shared memory, 8 or 4 warps per block). Each variant's dz and dbranch must be the default's bits (the per-row
// arithmetic is the same code; only the launch shape differs) and its dγ within
// tolTight of the default's (another partial count). -short skips it.
func TestResidualLayerNormVecTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	be := withPrecision(t, BF16)
	const rows, dim, p = 8000, 512, 0.1
	in := newReslnIn(rand.New(rand.NewPCG(78, 1)), rows, dim, true, 0.81)
	x, br, om := be.Upload(in.x), be.Upload(in.branch), be.Upload(in.omega)
	gm, b, dy := be.Upload(in.gamma), be.Upload(in.beta), be.Upload(in.dy)
	n := rows * dim
	z, y, dz, dbr := be.Alloc(n), be.Alloc(n), be.Alloc(n), be.Alloc(n)
	dbh := be.AllocHalf(n)
	dg, db, dom := be.Alloc(dim), be.Alloc(dim), be.Alloc(dim)
	mb := float64(n*4) / 1e6
	gbs := func(mb, us float64) float64 { return mb / us * 1e3 }
	fwd := func() {
		be.ResidualLayerNormDropout(z, y, x, br, om, in.alpha, gm, b, rows, dim, reslnEps, p, resdropSeed)
	}
	bwd := func() {
		be.ResidualLayerNormBackwardDropout(dz, dbr, dg, db, dom, dy, z, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
	}
	// Each timed call in its own scope, as in a training step: the backward's column
	// partials go back to the pool at once. Unscoped, they went back when the collector
	// ran, pool misses freed blocks (cuMemFree waits for the device), and the same
	// kernel timed at ~30 or ~65 µs from one loop to the next (H200, two runs).
	scoped := func(f func()) func() {
		return func() {
			be.BeginScope()
			defer be.EndScope()
			f()
		}
	}
	report := func(what string) (fwdT, bwdT float64) {
		f := us(timeDevice(t, be, 50, fwd))
		plain := us(timeDevice(t, be, 50, scoped(func() {
			be.ResidualLayerNormBackward(dz, dg, db, dom, dy, z, x, gm, in.alpha, rows, dim, reslnEps)
		})))
		bd := us(timeDevice(t, be, 50, scoped(bwd)))
		bh := us(timeDevice(t, be, 50, scoped(func() {
			be.ResidualLayerNormBackwardDropout(dz, dbh, dg, db, dom, dy, z, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
		})))
		// Bytes at least: forward x, branch in, z, y out; backward dy, z, x in, dz
		// (and dbranch) out.
		t.Logf("%-28s forward+dropout %6.1f µs (%4.0f GB/s)  backward %6.1f µs (%4.0f GB/s)  backward+dropout %6.1f µs (%4.0f GB/s)  with 16-bit dbranch %6.1f µs",
			what, f, gbs(4*mb, f), plain, gbs(4*mb, plain), bd, gbs(5*mb, bd), bh)
		return f, bd
	}
	f := func() *lnFastFns { defer be.enter()(); return be.lnFns() }()
	lnScalar(t, be, true)
	oldF, oldB := report("scalar kernels (before)")
	lnScalar(t, be, false)
	lnLegacy(t, be, true)
	vF, vB := report("float4 _v kernels (legacy)")
	lnLegacy(t, be, false)
	newF, newB := report("float4 _w kernels (default)")
	t.Logf("forward+dropout %.1f → %.1f → %.1f µs, backward+dropout %.1f → %.1f → %.1f µs per call (scalar → _v → _w)",
		oldF, vF, newF, oldB, vB, newB)
	// The variants below swap the legacy backward's kernel and warps.
	lnLegacy(t, be, true)
	bwd()
	refDz, refDbr := down(be, dz), down(be, dbr)
	zero := func() {
		for _, v := range []kernels.Buffer{dg, db, dom} {
			be.Fill(v, 0)
		}
	}
	zero()
	bwd()
	refDg := down(be, dg)

	idx := lfvIndex(dim)
	def := f.vbwd[idx]
	defer func() { f.vbwd[idx] = def }()
	for _, v := range []struct {
		name  string
		warps int
	}{
		{"layernorm_fast_bwd_vs4", 8}, {"layernorm_fast_bwd_vs4", 4}, {"layernorm_fast_bwd_v4", 8},
		{"layernorm_fast_bwd_v4", 4},
	} {
		func() {
			defer be.enter()()
			f.vbwd[idx] = lfvKernel{fn: be.kernel(v.name), warps: v.warps}
		}()
		d := us(timeDevice(t, be, 50, scoped(bwd)))
		plain := us(timeDevice(t, be, 50, scoped(func() {
			be.ResidualLayerNormBackward(dz, dg, db, dom, dy, z, x, gm, in.alpha, rows, dim, reslnEps)
		})))
		t.Logf("%-28s warps %d, %d blocks per SM: backward+dropout %6.1f µs (%4.0f GB/s), backward %6.1f µs",
			v.name, v.warps, f.vbwd[idx].perSM, d, gbs(5*mb, d), plain)
		bwd()
		checkExact(t, v.name+" dz vs default", down(be, dz), refDz)
		checkExact(t, v.name+" dbranch vs default", down(be, dbr), refDbr)
		zero()
		bwd()
		checkClose(t, v.name+" dgamma vs default", down(be, dg), refDg, tolTight)
	}
}
