package cuda

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// ResidualLayerNormDropoutRounded (kernels.RoundedResidualNormer): the fused residual +
// LayerNorm that also writes its output y rounded to 16 bits.
//
// Tolerance: none. z and y must be ResidualLayerNormDropout's bits (the same kernel
// with one more store, or the same call followed by a cast), and y16 must be, bit for
// bit, the Go reference rounding (format16.round16, nearest even from the definition)
// of the float32 y read back (checkRounded): a writer of a 16-bit buffer stores RN16 of
// the float it stores to y, so any difference is a wrong element, lane or format.

// roundedCase is one shape and path of the tests below.
type roundedCase struct {
	rows, dim int
	scalar    bool // lnFastFns.scalar: the scalar kernels whatever the shape
	fused     bool // whether the float4 kernel writes y16 itself (else the fallback cast)
}

var roundedCases = []roundedCase{
	{8000, 512, false, true},    // the training shape: float4 kernel, NV 4
	{37, 500, false, true},      // float4 with idle lanes (125 float4s of 128)
	{37, 500, true, false},      // the scalar kernels (forced), then the cast
	{37, 501, false, false},     // dim not a multiple of 4: scalar kernels by shape
	{5, 1100, false, false},     // over lfMaxDim: the exact kernels, then the cast
	{1, 1024, false, true},      // one row, NV 8
	{300, 128, false, true},     // NV 1
	{7, 4, false, true},         // one float4 per row
	{3, 2, false, false},        // dim 2: scalar
	{8000, 512, true, false},    // the training shape on the scalar kernels
	{129, 1000, false, true},    // NV 8, idle lanes
	{65, 1000, true, false},     // the same on the scalar kernels
	{2, 1024 + 4, false, false}, // over lfvMaxDim and lfMaxDim
}

// TestResidualLayerNormRounded: for bf16 and fp16, every case above, ω per channel and
// none, p 0 and 0.1: z and y are ResidualLayerNormDropout's bits and y16 is RN16(y);
// the float4 kernel writes y16 itself exactly where expected (so the training shape
// saves the cast).
func TestResidualLayerNormRounded(t *testing.T) {
	for _, ft := range formats {
		for _, tc := range roundedCases {
			for _, omega := range []bool{true, false} {
				for _, p := range []float64{0, 0.1} {
					name := fmt.Sprintf("%v/%dx%d/scalar=%v/omega=%v/p=%v", ft.prec, tc.rows, tc.dim, tc.scalar, omega, p)
					t.Run(name, func(t *testing.T) {
						g := withPrecision(t, ft.prec)
						lnScalar(t, g, tc.scalar)
						in := newReslnIn(rand.New(rand.NewPCG(uint64(tc.rows), uint64(tc.dim))), tc.rows, tc.dim, omega, 0.81)
						n := tc.rows * tc.dim
						x, br, om := g.Upload(in.x), g.Upload(in.branch), upload(g, in.omega)
						gm, b := g.Upload(in.gamma), g.Upload(in.beta)

						z0, y0 := g.Alloc(n), g.Alloc(n)
						g.ResidualLayerNormDropout(z0, y0, x, br, om, in.alpha, gm, b, tc.rows, tc.dim, reslnEps, p, resdropSeed)
						wantZ, wantY := down(g, z0), down(g, y0)

						z, y, y16 := g.Alloc(n), g.Alloc(n), g.AllocHalf(n)
						g.ResidualLayerNormDropoutRounded(z, y, y16, x, br, om, in.alpha, gm, b, tc.rows, tc.dim, reslnEps, p, resdropSeed)
						checkExact(t, "z vs ResidualLayerNormDropout", down(g, z), wantZ)
						checkExact(t, "y vs ResidualLayerNormDropout", down(g, y), wantY)
						checkRounded(t, ft, "y16", downHalf(t, g, y16), wantY)
						checkExact(t, "branch unchanged", down(g, br), in.branch)

						// Which path wrote y16: the internal call reports it, and what it
						// wrote by itself (no cast after it) must already be RN16(y).
						self := g.AllocHalf(n)
						wrote := g.residualLayerNorm(g.Alloc(n), g.Alloc(n), self, x, br, om, in.alpha, gm, b, tc.rows, tc.dim,
							reslnEps, newResDrop(p, resdropSeed))
						if wrote != tc.fused {
							t.Fatalf("the float4 kernel wrote y16: %v, want %v", wrote, tc.fused)
						}
						if wrote {
							checkRounded(t, ft, "y16 from the kernel alone", downHalf(t, g, self), wantY)
						}
					})
				}
			}
		}
	}
}

// TestResidualLayerNormRoundedAliasing: y may alias x and z may alias the branch, as
// ResidualLayerNormDropout allows; y16 is still the rounding of the y written, on the
// float4 kernel and on the scalar one.
func TestResidualLayerNormRoundedAliasing(t *testing.T) {
	for _, ft := range formats {
		for _, tc := range []struct{ rows, dim int }{{300, 512}, {300, 33}} {
			t.Run(fmt.Sprintf("%v/%dx%d", ft.prec, tc.rows, tc.dim), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				in := newReslnIn(rand.New(rand.NewPCG(81, uint64(tc.dim))), tc.rows, tc.dim, true, 0.81)
				n := tc.rows * tc.dim
				om, gm, b := g.Upload(in.omega), g.Upload(in.gamma), g.Upload(in.beta)
				z0, y0 := g.Alloc(n), g.Alloc(n)
				g.ResidualLayerNormDropout(z0, y0, g.Upload(in.x), g.Upload(in.branch), om, in.alpha, gm, b, tc.rows, tc.dim,
					reslnEps, 0.1, resdropSeed)
				wantZ, wantY := down(g, z0), down(g, y0)

				xy, bz, y16 := g.Upload(in.x), g.Upload(in.branch), g.AllocHalf(n)
				g.ResidualLayerNormDropoutRounded(bz, xy, y16, xy, bz, om, in.alpha, gm, b, tc.rows, tc.dim, reslnEps, 0.1, resdropSeed)
				checkExact(t, "z = branch", down(g, bz), wantZ)
				checkExact(t, "y = x", down(g, xy), wantY)
				checkRounded(t, ft, "y16", downHalf(t, g, y16), wantY)
			})
		}
	}
}

// TestResidualLayerNormRoundedRejects: y16 must be a 16-bit buffer of rows·dim
// elements; anything else panics before any work.
func TestResidualLayerNormRoundedRejects(t *testing.T) {
	g := withPrecision(t, BF16)
	const rows, dim = 4, 8
	n := rows * dim
	x, br, gm, b := g.Alloc(n), g.Alloc(n), g.Alloc(dim), g.Alloc(dim)
	for _, c := range []struct {
		name string
		y16  kernels.Buffer
	}{{"nil", nil}, {"float32", g.Alloc(n)}, {"short", g.AllocHalf(n - 1)}, {"long", g.AllocHalf(n + 2)}} {
		t.Run(c.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("y16 %s accepted", c.name)
				}
			}()
			g.ResidualLayerNormDropoutRounded(nil, g.Alloc(n), c.y16, x, br, nil, 1, gm, b, rows, dim, reslnEps, 0.1, 1)
		})
	}
}

// TestResidualLayerNormRoundedTiming logs the device time per call at the bench shape
// (8000×512, per-channel ω, residual dropout 0.1) of the forward without y16, with it,
// and of the unfused pair it replaces (the forward, then a separate rounding of y,
// ApplyDropout(y16, y, 0, 0), as the next Linear's cast does). The saving is the
// difference between the last two. It checks nothing; -short skips it.
func TestResidualLayerNormRoundedTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	for _, prec := range []Precision{BF16, FP16} {
		g := withPrecision(t, prec)
		const rows, dim, p = 8000, 512, 0.1
		n := rows * dim
		in := newReslnIn(rand.New(rand.NewPCG(82, 1)), rows, dim, true, 0.81)
		x, br, om := g.Upload(in.x), g.Upload(in.branch), g.Upload(in.omega)
		gm, b := g.Upload(in.gamma), g.Upload(in.beta)
		z, y, y16 := g.Alloc(n), g.Alloc(n), g.AllocHalf(n)
		plain := us(timeDevice(t, g, 50, func() {
			g.ResidualLayerNormDropout(z, y, x, br, om, in.alpha, gm, b, rows, dim, reslnEps, p, resdropSeed)
		}))
		rounded := us(timeDevice(t, g, 50, func() {
			g.ResidualLayerNormDropoutRounded(z, y, y16, x, br, om, in.alpha, gm, b, rows, dim, reslnEps, p, resdropSeed)
		}))
		unfused := us(timeDevice(t, g, 50, func() {
			g.ResidualLayerNormDropout(z, y, x, br, om, in.alpha, gm, b, rows, dim, reslnEps, p, resdropSeed)
			g.ApplyDropout(y16, y, 0, 0)
		}))
		// Bytes at least: x, branch in, z, y out (16 MB each), y16 out (8 MB).
		mb := float64(n*4) / 1e6
		t.Logf("%v %dx%d: forward %6.1f µs (%4.0f GB/s)  with y16 %6.1f µs (%4.0f GB/s)  forward + separate rounding %6.1f µs: saves %5.1f µs per call",
			prec, rows, dim, plain, 4*mb/plain*1e3, rounded, 4.5*mb/rounded*1e3, unfused, unfused-rounded)
	}
}
