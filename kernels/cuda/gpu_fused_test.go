package cuda

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

// The fused residual+LayerNorm (kernels.ResidualNormer, residual_layernorm.cu).
//
// Tolerances: fused against unfused on the GPU must be exact: the fused kernels repeat
// the unfused kernels' arithmetic on the same launch shapes (same block sizes, the
// same column chunks), so any difference is a bug. Against the CPU backend the
// tolerances are the unfused ops' own (gpu_backward_test.go): z is elementwise, exact;
// y, dz and the column sums come from double sums in another order (a block tree,
// fixed chunks) than the CPU's serial ones, so they agree to the last bit except at
// rare float rounding ties: 1e-6 relative, with the measured error logged.

const reslnEps = 1e-5

type reslnIn struct {
	rows, dim                    int
	alpha                        float32
	x, branch, omega, gamma, dy  []float32
	beta, dgamma, dbeta, domega0 []float32
}

type reslnOut struct{ z, y, dz, dgamma, dbeta, domega []float32 }

func newReslnIn(r *rand.Rand, rows, dim int, omega bool, alpha float32) reslnIn {
	n := rows * dim
	in := reslnIn{rows: rows, dim: dim, alpha: alpha, x: randVec(r, n), branch: randVec(r, n), gamma: randVec(r, dim),
		beta: randVec(r, dim), dy: randVec(r, n), dgamma: randVec(r, dim), dbeta: randVec(r, dim), domega0: randVec(r, dim)}
	for i := range in.x {
		in.x[i] = in.x[i]*2 + 0.7 // a non-zero mean exercises the two-pass variance
	}
	if omega {
		in.omega = randVec(r, dim)
	}
	return in
}

// upload returns nil (a nil interface) for a nil slice, as callers pass "no ω".
func upload(be kernels.Backend, v []float32) kernels.Buffer {
	if v == nil {
		return nil
	}
	return be.Upload(v)
}

// reslnRun runs the forward and the backward on be, fused when rn is not nil, else as
// the model's unfused sequence (Residual, LayerNorm, LayerNormBackward, then
// ResidualBackward's ω part). dω is accumulated even without ω (its gradient then
// means "ω = 1"), which exercises the column sum either way.
func reslnRun(be kernels.Trainer, rn kernels.ResidualNormer, in reslnIn) reslnOut {
	n := in.rows * in.dim
	x, br, om := upload(be, in.x), upload(be, in.branch), upload(be, in.omega)
	g, b, dy := upload(be, in.gamma), upload(be, in.beta), upload(be, in.dy)
	dg, db, dom := upload(be, in.dgamma), upload(be, in.dbeta), upload(be, in.domega0)
	z, y, dz := be.Alloc(n), be.Alloc(n), be.Alloc(n)
	if rn != nil {
		rn.ResidualLayerNorm(z, y, x, br, om, in.alpha, g, b, in.rows, in.dim, reslnEps)
		rn.ResidualLayerNormBackward(dz, dg, db, dom, dy, z, x, g, in.alpha, in.rows, in.dim, reslnEps)
	} else {
		be.Residual(z, x, br, om, in.alpha, in.rows, in.dim)
		be.LayerNorm(y, z, g, b, in.rows, in.dim, reslnEps)
		be.LayerNormBackward(dz, dg, db, dy, z, g, in.rows, in.dim, reslnEps)
		be.ResidualBackward(nil, dom, dz, x, om, in.alpha, in.rows, in.dim)
	}
	return reslnOut{down(be, z), down(be, y), down(be, dz), down(be, dg), down(be, db), down(be, dom)}
}

func TestResidualLayerNormFused(t *testing.T) {
	for _, tc := range []struct {
		rows, dim int
		omega     bool
		alpha     float32
	}{
		{1, 1, false, 1}, {1, 7, true, 1}, {7, 1, true, 0.81}, {37, 32, true, 0.81}, {129, 513, true, 1},
		{300, 96, false, 2.5}, {3001, 33, true, 0.5}, {5, 4096, true, 1}, {10000, 64, true, 1.7},
		{8192, 512, true, 1}, {8192, 512, false, 1}, {8192, 512, true, 0.81},
	} {
		t.Run(fmt.Sprintf("%dx%d_omega=%v_alpha=%v", tc.rows, tc.dim, tc.omega, tc.alpha), func(t *testing.T) {
			p := newPair(t, 31)
			in := newReslnIn(p.r, tc.rows, tc.dim, tc.omega, tc.alpha)
			gu, gf := reslnRun(p.g, nil, in), reslnRun(p.g, p.g, in)
			cu := reslnRun(p.c, nil, in)
			for _, c := range []struct {
				name             string
				fused, gpu, host []float32
				limit            float64
			}{
				{"z", gf.z, gu.z, cu.z, 0}, {"y", gf.y, gu.y, cu.y, 1e-6}, {"dz", gf.dz, gu.dz, cu.dz, 1e-6},
				{"dgamma", gf.dgamma, gu.dgamma, cu.dgamma, 1e-6}, {"dbeta", gf.dbeta, gu.dbeta, cu.dbeta, 1e-6},
				{"domega", gf.domega, gu.domega, cu.domega, 1e-6},
			} {
				checkExact(t, c.name+" fused vs unfused (GPU)", c.fused, c.gpu)
				if c.limit == 0 {
					checkExact(t, c.name+" fused GPU vs CPU", c.fused, c.host)
				} else {
					checkClose(t, c.name+" fused GPU vs CPU", c.fused, c.host, c.limit)
				}
			}
		})
	}
}

// The aliasing and nil arguments the model and the interface allow, each against the
// plain unfused GPU result (exact).
func TestResidualLayerNormFusedAliasing(t *testing.T) {
	for _, tc := range []struct {
		rows, dim int
		omega     bool
	}{{37, 32, true}, {129, 513, false}, {300, 512, true}} {
		t.Run(fmt.Sprintf("%dx%d_omega=%v", tc.rows, tc.dim, tc.omega), func(t *testing.T) {
			be := gpu(t)
			in := newReslnIn(rand.New(rand.NewPCG(32, uint64(tc.dim))), tc.rows, tc.dim, tc.omega, 0.81)
			want := reslnRun(be, nil, in)
			n := tc.rows * tc.dim
			x, br, om := upload(be, in.x), upload(be, in.branch), upload(be, in.omega)
			g, b := upload(be, in.gamma), upload(be, in.beta)
			call := func(z, y, x, br kernels.Buffer) {
				be.ResidualLayerNorm(z, y, x, br, om, in.alpha, g, b, tc.rows, tc.dim, reslnEps)
			}

			xi := upload(be, in.x) // inference: in place, no z (model/forward.go)
			call(nil, xi, xi, br)
			checkExact(t, "y = x, z nil", down(be, xi), want.y)
			bi := upload(be, in.branch)
			call(nil, bi, x, bi)
			checkExact(t, "y = branch, z nil", down(be, bi), want.y)
			xz, y := upload(be, in.x), be.Alloc(n)
			call(xz, y, xz, br)
			checkExact(t, "z = x: z", down(be, xz), want.z)
			checkExact(t, "z = x: y", down(be, y), want.y)
			bz, xy := upload(be, in.branch), upload(be, in.x)
			call(bz, xy, xy, bz)
			checkExact(t, "z = branch, y = x: z", down(be, bz), want.z)
			checkExact(t, "z = branch, y = x: y", down(be, xy), want.y)

			z := upload(be, want.z)
			back := func(dz, dg, db, dom, dy kernels.Buffer) {
				be.ResidualLayerNormBackward(dz, dg, db, dom, dy, z, x, g, in.alpha, tc.rows, tc.dim, reslnEps)
			}
			dya := upload(be, in.dy)
			back(dya, nil, nil, nil, dya)
			checkExact(t, "dz = dy", down(be, dya), want.dz)
			dg, db, dom := upload(be, in.dgamma), upload(be, in.dbeta), upload(be, in.domega0)
			back(nil, dg, db, dom, upload(be, in.dy))
			checkExact(t, "dz nil: dgamma", down(be, dg), want.dgamma)
			checkExact(t, "dz nil: dbeta", down(be, db), want.dbeta)
			checkExact(t, "dz nil: domega", down(be, dom), want.domega)
			dom = upload(be, in.domega0)
			dya = upload(be, in.dy)
			back(dya, nil, nil, dom, dya)
			checkExact(t, "dz = dy with domega: dz", down(be, dya), want.dz)
			checkExact(t, "dz = dy with domega: domega", down(be, dom), want.domega)
			dz := be.Alloc(n)
			back(dz, nil, nil, nil, upload(be, in.dy))
			checkExact(t, "dz only", down(be, dz), want.dz)
		})
	}
}

// hideFused hides the GPU backend's optional interfaces (kernels.ResidualNormer among
// them), so the model takes its unfused path on the same device.
type hideFused struct{ kernels.Trainer }

// The model's training step and inference through the fused kernels give the same bits
// as through the unfused ones, on the fixture Admin model (per-channel ω, α = 1) and on
// a random DeepNet model of the same shape (no ω, α ≠ 1): losses, every parameter's
// gradient after two accumulated steps (one with dropout), Admin's profiling ratios,
// and the decoder's log-probabilities.
func TestResidualNormerModelSameBits(t *testing.T) {
	g := gpu(t)
	admin, batches := fixtureTraining(t, 2)
	deep := &model.Model{Config: admin.Config, Params: map[string]*tensor.Tensor{}}
	deep.Config.Init = model.InitDeepNet
	r := rand.New(rand.NewPCG(33, 1))
	for _, p := range deep.Config.Expected() {
		v := randVec(r, tensor.Numel(p.Shape))
		for i := range v {
			v[i] *= 0.3
		}
		deep.Params[p.Name] = tensor.FromF32(p.Shape, v)
	}
	for _, m := range []*model.Model{admin, deep} {
		t.Run(string(m.Config.Init), func(t *testing.T) {
			type result struct {
				res   []model.StepResult
				names []string
				grads [][]float32
				lp    []float32
			}
			run := func(be kernels.Trainer) result {
				net, err := model.NewTrainNet(m, be)
				if err != nil {
					t.Fatal(err)
				}
				var out result
				rng := rand.New(rand.NewPCG(7, 7))
				for k, o := range []model.StepOptions{
					{LabelSmoothing: 0.1, Backward: true, Train: true, Dropout: 0.1, AttentionDropout: 0.1, ActivationDropout: 0.1, RNG: rng},
					{LabelSmoothing: 0.1, Backward: true},
				} {
					res, err := net.Step(context.Background(), batches[k], o)
					if err != nil {
						t.Fatal(err)
					}
					out.res = append(out.res, res)
				}
				for _, p := range net.Params() {
					out.names = append(out.names, p.Name)
					out.grads = append(out.grads, down(be, p.G))
				}
				if m.Config.Init.HasOmega() {
					res, err := net.Step(context.Background(), batches[0], model.StepOptions{Profile: true})
					if err != nil {
						t.Fatal(err)
					}
					out.res = append(out.res, res)
				}
				runner, err := model.NewRunner(m, be)
				if err != nil {
					t.Fatal(err)
				}
				b := batches[1]
				enc, err := runner.Encode(context.Background(), b.Src, b.B, b.S, nil)
				if err != nil {
					t.Fatal(err)
				}
				if out.lp, err = runner.Decode(context.Background(), enc, b.Prev, b.T, nil); err != nil {
					t.Fatal(err)
				}
				return out
			}
			fused, plain := run(g), run(hideFused{g})
			for k := range plain.res {
				f, p := fused.res[k], plain.res[k]
				if f.Loss != p.Loss || f.NLL != p.NLL || fmt.Sprint(f.ProfileEncoder, f.ProfileDecoder) != fmt.Sprint(p.ProfileEncoder, p.ProfileDecoder) {
					t.Errorf("step %d: fused %+v, unfused %+v", k, f, p)
				}
			}
			for i, gr := range plain.grads {
				checkExact(t, "gradient of "+plain.names[i], fused.grads[i], gr)
			}
			checkExact(t, "decoder log-probabilities", fused.lp, plain.lp)
			t.Logf("loss %.9g / %.9g, %d gradients compared", fused.res[0].Loss, fused.res[1].Loss, len(plain.grads))
		})
	}
}
