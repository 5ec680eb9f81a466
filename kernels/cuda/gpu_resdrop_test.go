package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// Residual dropout folded into the fused residual + LayerNorm
// (kernels.DropoutResidualNormer; the _drop kernels of residual_layernorm.cu, the
// scalar _drop forward of layernorm_fast.cu and its float4 kernels, which take the
// dropout as an argument in both directions).
//
// Tolerances: against the unfused sequence on the same backend and precision
// (ApplyDropout then ResidualLayerNorm; ResidualLayerNormBackward then ApplyDropout)
// every output must be exact: the _drop kernels are the plain kernels with the branch
// (or dz) multiplied by the same mask element dropout_apply multiplies by, the product
// rounded to float as when it is stored (the float4 kernels: the same kernel with the
// dropout on or off), so any difference is a bug. dbranch is also
// checked against dz times the mask computed in Go from kernels.DropoutKeep (exact: one
// float32 product). Against the CPU backend the tolerances are those of the plain
// fused kernels (gpu_fused_test.go: 1e-6 for the exact FP32 kernels, z exact;
// gpu_layernorm_fast_test.go: tolTight for the float ones).

const resdropSeed = 0x243F6A8885A308D3

// resdropOut is what one forward + backward produces.
type resdropOut struct{ z, y, dz, dbranch, dgamma, dbeta, domega, branch []float32 }

// resdropRun runs the forward and backward with residual dropout p on be, through
// rd when it is not nil, else as the model's unfused sequence.
func resdropRun(be kernels.Trainer, rd kernels.DropoutResidualNormer, in reslnIn, p float64) resdropOut {
	ap := be.(kernels.DropoutApplier)
	rn := be.(kernels.ResidualNormer)
	n := in.rows * in.dim
	x, br, om := upload(be, in.x), upload(be, in.branch), upload(be, in.omega)
	g, b, dy := upload(be, in.gamma), upload(be, in.beta), upload(be, in.dy)
	dg, db, dom := upload(be, in.dgamma), upload(be, in.dbeta), upload(be, in.domega0)
	z, y, dz, dbr := be.Alloc(n), be.Alloc(n), be.Alloc(n), be.Alloc(n)
	if rd != nil {
		rd.ResidualLayerNormDropout(z, y, x, br, om, in.alpha, g, b, in.rows, in.dim, reslnEps, p, resdropSeed)
		rd.ResidualLayerNormBackwardDropout(dz, dbr, dg, db, dom, dy, z, x, g, in.alpha, in.rows, in.dim, reslnEps, p, resdropSeed)
	} else {
		ap.ApplyDropout(br, br, p, resdropSeed)
		rn.ResidualLayerNorm(z, y, x, br, om, in.alpha, g, b, in.rows, in.dim, reslnEps)
		rn.ResidualLayerNormBackward(dz, dg, db, dom, dy, z, x, g, in.alpha, in.rows, in.dim, reslnEps)
		ap.ApplyDropout(dbr, dz, p, resdropSeed)
	}
	return resdropOut{down(be, z), down(be, y), down(be, dz), down(be, dbr), down(be, dg), down(be, db), down(be, dom),
		down(be, br)}
}

// maskTimes is v ⊙ the mask of (resdropSeed, p), the mask from kernels.DropoutKeep.
func maskTimes(v []float32, p float64) []float32 {
	t, keep := kernels.DropoutThreshold(p), kernels.DropoutScale(p)
	out := make([]float32, len(v))
	for i := range v {
		m := float32(0)
		if kernels.DropoutKeep(resdropSeed, uint64(i), t) {
			m = keep
		}
		out[i] = v[i] * m
	}
	return out
}

// TestResidualLayerNormDropout: fused = unfused bit for bit in FP32 (exact kernels) and
// BF16 (float kernels; dim 1100 is over lfMaxDim and takes the exact _drop kernels
// there too), p 0.1 and 0, ω nil and per channel; dbranch = dz ⊙ mask from Go; the
// branch is left as it was; and the CPU within the plain kernels' tolerance.
func TestResidualLayerNormDropout(t *testing.T) {
	for _, prec := range []Precision{FP32, BF16} {
		for _, tc := range []struct {
			rows, dim int
			alpha     float32
		}{{1, 1, 1}, {37, 32, 0.81}, {300, 96, 2.5}, {129, 513, 1}, {7, 1100, 0.81}, {8000, 512, 0.81}} {
			for _, omega := range []bool{false, true} {
				for _, p := range []float64{0.1, 0} {
					name := fmt.Sprintf("%v/%dx%d_omega=%v_p=%v", prec, tc.rows, tc.dim, omega, p)
					t.Run(name, func(t *testing.T) {
						g := withPrecision(t, prec)
						pr := newPair(t, 81)
						in := newReslnIn(pr.r, tc.rows, tc.dim, omega, tc.alpha)
						unf, fus := resdropRun(g, nil, in, p), resdropRun(g, g, in, p)
						for _, c := range []struct {
							name      string
							got, want []float32
						}{
							{"z", fus.z, unf.z}, {"y", fus.y, unf.y}, {"dz", fus.dz, unf.dz}, {"dbranch", fus.dbranch, unf.dbranch},
							{"dgamma", fus.dgamma, unf.dgamma}, {"dbeta", fus.dbeta, unf.dbeta}, {"domega", fus.domega, unf.domega},
						} {
							checkExact(t, c.name+" fused vs unfused", c.got, c.want)
						}
						checkExact(t, "dbranch vs dz ⊙ mask (Go)", fus.dbranch, maskTimes(fus.dz, p))
						checkExact(t, "branch left unchanged", fus.branch, in.branch)
						if p > 0 {
							zeros := 0
							for _, v := range fus.dbranch {
								if v == 0 {
									zeros++
								}
							}
							frac := float64(zeros) / float64(len(fus.dbranch))
							t.Logf("dropped fraction %.4f", frac)
							if n := len(fus.dbranch); n >= 10000 && math.Abs(frac-p) > 0.01 {
								t.Errorf("dropped fraction %.4f of %d, want about %v", frac, n, p)
							}
						}

						cpu := resdropRun(pr.c, pr.c, in, p)
						limit := 1e-6
						if prec != FP32 && lnFastDim(tc.dim) {
							limit = tolTight
						}
						checkExact(t, "z vs CPU", fus.z, cpu.z)
						for _, c := range []struct {
							name      string
							got, want []float32
						}{
							{"y", fus.y, cpu.y}, {"dz", fus.dz, cpu.dz}, {"dbranch", fus.dbranch, cpu.dbranch},
							{"dgamma", fus.dgamma, cpu.dgamma}, {"dbeta", fus.dbeta, cpu.dbeta}, {"domega", fus.domega, cpu.domega},
						} {
							checkClose(t, c.name+" vs CPU", c.got, c.want, limit)
						}
					})
				}
			}
		}
	}
}

// TestResidualLayerNormDropoutAliasing: the aliasing and nil arguments the interface
// allows (forward: z nil with y = x or y = branch, z = x, z = branch with y = x;
// backward: dbranch = dy, dz = dy, dz nil, dbranch nil) give the unaliased fused
// result bit for bit.
func TestResidualLayerNormDropoutAliasing(t *testing.T) {
	for _, prec := range []Precision{FP32, BF16} {
		for _, dim := range []int{33, 512} {
			t.Run(fmt.Sprintf("%v/%d", prec, dim), func(t *testing.T) {
				g := withPrecision(t, prec)
				const rows, p = 300, 0.1
				in := newReslnIn(rand.New(rand.NewPCG(82, uint64(dim))), rows, dim, true, 0.81)
				want := resdropRun(g, g, in, p)
				n := rows * dim
				x, br, om := g.Upload(in.x), g.Upload(in.branch), g.Upload(in.omega)
				gm, b := g.Upload(in.gamma), g.Upload(in.beta)
				fwd := func(z, y, x, br kernels.Buffer) {
					g.ResidualLayerNormDropout(z, y, x, br, om, in.alpha, gm, b, rows, dim, reslnEps, p, resdropSeed)
				}
				xi := g.Upload(in.x)
				fwd(nil, xi, xi, br)
				checkExact(t, "y = x, z nil", down(g, xi), want.y)
				bi := g.Upload(in.branch)
				fwd(nil, bi, x, bi)
				checkExact(t, "y = branch, z nil", down(g, bi), want.y)
				xz, y := g.Upload(in.x), g.Alloc(n)
				fwd(xz, y, xz, br)
				checkExact(t, "z = x: z", down(g, xz), want.z)
				checkExact(t, "z = x: y", down(g, y), want.y)
				bz, xy := g.Upload(in.branch), g.Upload(in.x)
				fwd(bz, xy, xy, bz)
				checkExact(t, "z = branch, y = x: z", down(g, bz), want.z)
				checkExact(t, "z = branch, y = x: y", down(g, xy), want.y)

				z := g.Upload(want.z)
				back := func(dz, dbr, dom, dy kernels.Buffer) {
					g.ResidualLayerNormBackwardDropout(dz, dbr, nil, nil, dom, dy, z, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
				}
				dya, dz, dom := g.Upload(in.dy), g.Alloc(n), g.Upload(in.domega0)
				back(dz, dya, dom, dya)
				checkExact(t, "dbranch = dy: dbranch", down(g, dya), want.dbranch)
				checkExact(t, "dbranch = dy: dz", down(g, dz), want.dz)
				checkExact(t, "dbranch = dy: domega", down(g, dom), want.domega)
				dya, dbr := g.Upload(in.dy), g.Alloc(n)
				back(dya, dbr, nil, dya)
				checkExact(t, "dz = dy: dz", down(g, dya), want.dz)
				checkExact(t, "dz = dy: dbranch", down(g, dbr), want.dbranch)
				dbr = g.Alloc(n)
				back(nil, dbr, nil, g.Upload(in.dy))
				checkExact(t, "dz nil: dbranch", down(g, dbr), want.dbranch)
				dz = g.Alloc(n)
				back(dz, nil, nil, g.Upload(in.dy))
				checkExact(t, "dbranch nil: dz", down(g, dz), want.dz)
			})
		}
	}
}

// TestResidualLayerNormDropoutTiming logs the device time per sub-layer at the bench
// shape (8000 rows, dim 512, per-channel ω, p 0.1) in FP32 and BF16: the unfused
// sequence (ApplyDropout in place + ResidualLayerNorm; ResidualLayerNormBackward +
// ApplyDropout into the branch gradient) against the fused pair. It checks nothing;
// -short skips it.
func TestResidualLayerNormDropoutTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	be := gpu(t)
	old := be.precision
	defer func() { be.precision = old }()
	const rows, dim, p = 8000, 512, 0.1
	in := newReslnIn(rand.New(rand.NewPCG(83, 1)), rows, dim, true, 0.81)
	x, br, om := be.Upload(in.x), be.Upload(in.branch), be.Upload(in.omega)
	gm, b, dy := be.Upload(in.gamma), be.Upload(in.beta), be.Upload(in.dy)
	z, y, dz, dbr := be.Alloc(rows*dim), be.Alloc(rows*dim), be.Alloc(rows*dim), be.Alloc(rows*dim)
	dg, db, dom := be.Alloc(dim), be.Alloc(dim), be.Alloc(dim)
	for _, prec := range []Precision{FP32, BF16} {
		be.precision = prec
		oldF := timeDevice(t, be, 50, func() {
			be.ApplyDropout(br, br, p, resdropSeed)
			be.ResidualLayerNorm(z, y, x, br, om, in.alpha, gm, b, rows, dim, reslnEps)
		})
		newF := timeDevice(t, be, 50, func() {
			be.ResidualLayerNormDropout(z, y, x, br, om, in.alpha, gm, b, rows, dim, reslnEps, p, resdropSeed)
		})
		oldB := timeDevice(t, be, 50, func() {
			be.ResidualLayerNormBackward(dz, dg, db, dom, dy, z, x, gm, in.alpha, rows, dim, reslnEps)
			be.ApplyDropout(dbr, dz, p, resdropSeed)
		})
		newB := timeDevice(t, be, 50, func() {
			be.ResidualLayerNormBackwardDropout(dz, dbr, dg, db, dom, dy, z, x, gm, in.alpha, rows, dim, reslnEps, p, resdropSeed)
		})
		// Bytes the fused calls must move at least: forward x, branch in, z, y out;
		// backward dy, z, x in, dz, dbranch out.
		mb := float64(rows*dim*4) / 1e6
		t.Logf("%v %dx%d p %v: forward unfused %6.1f µs, fused %6.1f µs (%4.0f GB/s); backward unfused %6.1f µs, fused %6.1f µs (%4.0f GB/s); per sub-layer saved %6.1f µs",
			prec, rows, dim, p, us(oldF), us(newF), 4*mb/newF.Seconds()/1e3, us(oldB), us(newB), 5*mb/newB.Seconds()/1e3,
			us(oldF+oldB-newF-newB))
	}
}

// TestResidualLayerNormBackwardDropoutHalf: a 16-bit dbranch (kernels.HalfBuffers)
// holds, bit for bit, the format's rounding (format16.round16, from the definition) of
// the float32 dbranch the same call writes, and dz, dγ, dβ, dω are the float32 call's
// bits: on the float4 kernel (dims that are multiples of 4, which rounds as it stores),
// on the scalar fallback (dim 513: float dz, then ApplyDropout into the 16-bit buffer)
// and on the exact kernels (dim 1100), with p 0.1 and 0, dz wanted or nil.
func TestResidualLayerNormBackwardDropoutHalf(t *testing.T) {
	for _, ft := range formats {
		for _, tc := range []struct{ rows, dim int }{{8000, 512}, {37, 32}, {300, 96}, {65, 1000}, {129, 513}, {7, 1100}} {
			for _, p := range []float64{0.1, 0} {
				for _, withDz := range []bool{true, false} {
					name := fmt.Sprintf("%v/%dx%d/p=%v/dz=%v", ft.prec, tc.rows, tc.dim, p, withDz)
					t.Run(name, func(t *testing.T) {
						g := withPrecision(t, ft.prec)
						in := newReslnIn(rand.New(rand.NewPCG(84, uint64(tc.dim))), tc.rows, tc.dim, true, 0.81)
						n := tc.rows * tc.dim
						x, gm, dy := g.Upload(in.x), g.Upload(in.gamma), g.Upload(in.dy)
						z := g.Alloc(n)
						g.ResidualLayerNormDropout(z, g.Alloc(n), x, g.Upload(in.branch), g.Upload(in.omega), in.alpha, gm,
							g.Upload(in.beta), tc.rows, tc.dim, reslnEps, p, resdropSeed)
						run := func(dbr kernels.Buffer) (dz kernels.Buffer, grads [3][]float32) {
							if withDz {
								dz = g.Alloc(n)
							}
							dg, db, dom := g.Upload(in.dgamma), g.Upload(in.dbeta), g.Upload(in.domega0)
							g.ResidualLayerNormBackwardDropout(dz, dbr, dg, db, dom, dy, z, x, gm, in.alpha, tc.rows, tc.dim,
								reslnEps, p, resdropSeed)
							return dz, [3][]float32{down(g, dg), down(g, db), down(g, dom)}
						}
						dbr, dbh := g.Alloc(n), g.AllocHalf(n)
						dz32, grads32 := run(dbr)
						dz16, grads16 := run(dbh)
						checkRounded(t, ft, "16-bit dbranch", downHalf(t, g, dbh), down(g, dbr))
						if withDz {
							checkExact(t, "dz with a 16-bit dbranch", down(g, dz16), down(g, dz32))
						}
						for i, what := range []string{"dgamma", "dbeta", "domega"} {
							checkExact(t, what+" with a 16-bit dbranch", grads16[i], grads32[i])
						}
					})
				}
			}
		}
	}
}
