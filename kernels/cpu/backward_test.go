package cpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// fdCase is one operation checked against central finite differences: forward maps
// the named inputs to an output y, backward maps (inputs, dy) to the input gradients.
// The scalar checked is L = Σ dy⊙y (or the op's own scalar when scalar is set).
type fdCase struct {
	name     string
	inputs   map[string][]float32
	forward  func(be *Backend, in map[string][]float32) []float32
	backward func(be *Backend, in map[string][]float32, dy []float32) map[string][]float32
	scalar   bool // forward returns a single value, L itself
	h        float64
}

func randVec(r *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * scale)
	}
	return v
}

func cloneInputs(in map[string][]float32) map[string][]float32 {
	out := make(map[string][]float32, len(in))
	for k, v := range in {
		out[k] = append([]float32(nil), v...)
	}
	return out
}

func dot64(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

func attnCase(r *rand.Rand, name string, causal, pad, drop bool) fdCase {
	const B, H, D, TQ, TK = 2, 2, 3, 4, 5
	d := H * D
	a := kernels.AttentionArgs{Batch: B, Heads: H, HeadDim: D, TQ: TQ, TK: TK, Scale: float32(1 / math.Sqrt(D)), Causal: causal}
	if causal {
		a.TK = TQ
	}
	tk := a.TK
	if pad {
		a.KeyPadding = make([]bool, B*tk)
		a.KeyPadding[0] = true // left pad of batch 0
		a.KeyPadding[tk+tk-1] = true
		a.KeyPadStride = tk
	}
	var mask []float32
	if drop {
		mask = make([]float32, B*H*TQ*tk)
		for i := range mask {
			if r.Float64() > 0.3 {
				mask[i] = 1 / 0.7
			}
		}
	}
	views := func(in map[string][]float32) (q, k, v kernels.View) {
		return kernels.View{Buf: Wrap(in["q"]), BatchStride: TQ * d, RowStride: d},
			kernels.View{Buf: Wrap(in["k"]), BatchStride: tk * d, RowStride: d},
			kernels.View{Buf: Wrap(in["v"]), BatchStride: tk * d, RowStride: d}
	}
	probs := make([]float32, B*H*TQ*tk)
	var mb kernels.Buffer
	if mask != nil {
		mb = Wrap(mask)
	}
	return fdCase{
		name:   name,
		inputs: map[string][]float32{"q": randVec(r, B*TQ*d, 1), "k": randVec(r, B*tk*d, 1), "v": randVec(r, B*tk*d, 1)},
		forward: func(be *Backend, in map[string][]float32) []float32 {
			out := make([]float32, B*TQ*d)
			q, k, v := views(in)
			be.AttentionForward(kernels.View{Buf: Wrap(out), BatchStride: TQ * d, RowStride: d}, q, k, v, a, Wrap(probs), mb)
			return out
		},
		backward: func(be *Backend, in map[string][]float32, dy []float32) map[string][]float32 {
			out := make([]float32, B*TQ*d)
			q, k, v := views(in)
			be.AttentionForward(kernels.View{Buf: Wrap(out), BatchStride: TQ * d, RowStride: d}, q, k, v, a, Wrap(probs), mb)
			g := map[string][]float32{"q": make([]float32, B*TQ*d), "k": make([]float32, B*tk*d), "v": make([]float32, B*tk*d)}
			dq, dk, dv := views(g)
			be.AttentionBackward(dq, dk, dv, kernels.View{Buf: Wrap(dy), BatchStride: TQ * d, RowStride: d}, q, k, v, a, Wrap(probs), mb)
			return g
		},
	}
}

func fdCases() []fdCase {
	r := rand.New(rand.NewPCG(1, 2))
	const m, n, k = 5, 4, 6
	cases := []fdCase{
		{
			name:   "linear",
			inputs: map[string][]float32{"x": randVec(r, m*k, 1), "w": randVec(r, n*k, 1), "b": randVec(r, n, 1)},
			forward: func(be *Backend, in map[string][]float32) []float32 {
				y := make([]float32, m*n)
				be.Linear(Wrap(y), Wrap(in["x"]), Wrap(in["w"]), Wrap(in["b"]), m, n, k)
				return y
			},
			backward: func(be *Backend, in map[string][]float32, dy []float32) map[string][]float32 {
				g := map[string][]float32{"x": make([]float32, m*k), "w": make([]float32, n*k), "b": make([]float32, n)}
				be.LinearBackward(Wrap(g["x"]), Wrap(g["w"]), Wrap(g["b"]), Wrap(dy), Wrap(in["x"]), Wrap(in["w"]), m, n, k)
				return g
			},
		},
		{
			name:   "layernorm",
			inputs: map[string][]float32{"x": randVec(r, m*k, 2), "g": randVec(r, k, 1), "b": randVec(r, k, 1)},
			forward: func(be *Backend, in map[string][]float32) []float32 {
				y := make([]float32, m*k)
				be.LayerNorm(Wrap(y), Wrap(in["x"]), Wrap(in["g"]), Wrap(in["b"]), m, k, 1e-5)
				return y
			},
			backward: func(be *Backend, in map[string][]float32, dy []float32) map[string][]float32 {
				g := map[string][]float32{"x": make([]float32, m*k), "g": make([]float32, k), "b": make([]float32, k)}
				be.LayerNormBackward(Wrap(g["x"]), Wrap(g["g"]), Wrap(g["b"]), Wrap(dy), Wrap(in["x"]), Wrap(in["g"]), m, k, 1e-5)
				return g
			},
		},
		{
			name:   "admin residual",
			inputs: map[string][]float32{"x": randVec(r, m*k, 1), "br": randVec(r, m*k, 1), "w": randVec(r, k, 1)},
			forward: func(be *Backend, in map[string][]float32) []float32 {
				y := make([]float32, m*k)
				be.Residual(Wrap(y), Wrap(in["x"]), Wrap(in["br"]), Wrap(in["w"]), 1.25, m, k)
				return y
			},
			backward: func(be *Backend, in map[string][]float32, dy []float32) map[string][]float32 {
				g := map[string][]float32{"x": make([]float32, m*k), "br": append([]float32(nil), dy...), "w": make([]float32, k)}
				be.ResidualBackward(Wrap(g["x"]), Wrap(g["w"]), Wrap(dy), Wrap(in["x"]), Wrap(in["w"]), 1.25, m, k)
				return g
			},
		},
		{
			name:   "embedding with scale and padding row",
			inputs: map[string][]float32{"t": randVec(r, 6*k, 1)},
			forward: func(be *Backend, in map[string][]float32) []float32 {
				y := make([]float32, 7*k)
				ids := []int32{2, 1, 5, 2, 0, 1, 3}
				be.Embed(Wrap(y), Wrap(in["t"]), ids, k, 2.5)
				// torch's padding_idx row still reads its (zero) value, but gets no
				// gradient: model the forward as reading a detached copy of row 1.
				for i, id := range ids {
					if id == 1 {
						for j := range k {
							y[i*k+j] = 0
						}
					}
				}
				return y
			},
			backward: func(be *Backend, in map[string][]float32, dy []float32) map[string][]float32 {
				g := map[string][]float32{"t": make([]float32, 6*k)}
				be.EmbedBackward(Wrap(g["t"]), Wrap(dy), []int32{2, 1, 5, 2, 0, 1, 3}, k, 2.5, 1)
				return g
			},
		},
		{
			name:   "dropout mask",
			inputs: map[string][]float32{"x": randVec(r, m*k, 1)},
			forward: func(be *Backend, in map[string][]float32) []float32 {
				y := make([]float32, m*k)
				be.Mul(Wrap(y), Wrap(in["x"]), Wrap(dropMask(m*k)))
				return y
			},
			backward: func(be *Backend, in map[string][]float32, dy []float32) map[string][]float32 {
				g := map[string][]float32{"x": make([]float32, m*k)}
				be.Mul(Wrap(g["x"]), Wrap(dy), Wrap(dropMask(m*k)))
				return g
			},
		},
		{
			name:   "label smoothed loss",
			scalar: true,
			inputs: map[string][]float32{"z": randVec(r, m*n, 2)},
			forward: func(be *Backend, in map[string][]float32) []float32 {
				loss, _ := be.LabelSmoothedLoss(nil, Wrap(in["z"]), []int32{0, 3, 1, 2, 1}, m, n, 0.1, 1, 1)
				return []float32{float32(loss)}
			},
			backward: func(be *Backend, in map[string][]float32, _ []float32) map[string][]float32 {
				g := map[string][]float32{"z": make([]float32, m*n)}
				be.LabelSmoothedLoss(Wrap(g["z"]), Wrap(in["z"]), []int32{0, 3, 1, 2, 1}, m, n, 0.1, 1, 1)
				return g
			},
		},
		attnCase(r, "attention", false, false, false),
		attnCase(r, "attention key padding", false, true, false),
		attnCase(r, "attention causal", true, false, false),
		attnCase(r, "attention causal+padding+dropout", true, true, true),
	}
	for _, act := range []kernels.Activation{kernels.ReLU, kernels.GELU, kernels.GELUAccurate, kernels.Tanh, kernels.Linear} {
		x := randVec(r, m*k, 1)
		for i, v := range x { // keep ReLU's kink away from the finite-difference step
			if math.Abs(float64(v)) < 0.05 {
				x[i] = 0.3
			}
		}
		cases = append(cases, fdCase{
			name:   "activation " + string(act),
			inputs: map[string][]float32{"x": x},
			forward: func(be *Backend, in map[string][]float32) []float32 {
				y := make([]float32, m*k)
				be.Activate(Wrap(y), Wrap(in["x"]), act)
				return y
			},
			backward: func(be *Backend, in map[string][]float32, dy []float32) map[string][]float32 {
				g := map[string][]float32{"x": make([]float32, m*k)}
				be.ActivateBackward(Wrap(g["x"]), Wrap(dy), Wrap(in["x"]), act)
				return g
			},
		})
	}
	return cases
}

func dropMask(n int) []float32 {
	m := make([]float32, n)
	for i := range m {
		if i%3 != 1 {
			m[i] = 1 / 0.75
		}
	}
	return m
}

func TestBackwardFiniteDifferences(t *testing.T) {
	be := New(2)
	for _, c := range fdCases() {
		t.Run(c.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(3, 4))
			in := cloneInputs(c.inputs)
			y := c.forward(be, in)
			dy := randVec(r, len(y), 1)
			grads := c.backward(be, cloneInputs(in), dy)
			L := func(in map[string][]float32) float64 {
				y := c.forward(be, in)
				if c.scalar {
					return float64(y[0])
				}
				return dot64(dy, y)
			}
			h := c.h
			if h == 0 {
				h = 1e-2
			}
			for name, v := range in {
				g := grads[name]
				if len(g) != len(v) {
					t.Fatalf("%s: gradient has %d elements, input %d", name, len(g), len(v))
				}
				for i := range v {
					p := cloneInputs(in)
					p[name][i] = v[i] + float32(h)
					lp := L(p)
					p[name][i] = v[i] - float32(h)
					lm := L(p)
					num := (lp - lm) / (2 * h)
					if diff := math.Abs(num - float64(g[i])); diff > 2e-3+1e-2*math.Abs(num) {
						t.Errorf("%s[%d]: analytic %.6g, finite difference %.6g", name, i, g[i], num)
					}
				}
			}
		})
	}
}

// The training forward of attention must compute what the inference kernel does.
func TestAttentionForwardMatchesInference(t *testing.T) {
	be := New(2)
	r := rand.New(rand.NewPCG(5, 6))
	c := attnCase(r, "x", true, true, false)
	got := c.forward(be, c.inputs)
	const B, H, D, T = 2, 2, 3, 4
	d := H * D
	want := make([]float32, len(got))
	a := kernels.AttentionArgs{Batch: B, Heads: H, HeadDim: D, TQ: T, TK: T, Scale: float32(1 / math.Sqrt(D)), Causal: true,
		KeyPadding: make([]bool, B*T), KeyPadStride: T}
	a.KeyPadding[0], a.KeyPadding[2*T-1] = true, true
	v := func(x []float32) kernels.View { return kernels.View{Buf: Wrap(x), BatchStride: T * d, RowStride: d} }
	be.Attention(v(want), v(c.inputs["q"]), v(c.inputs["k"]), v(c.inputs["v"]), a)
	for i := range got {
		if got[i] != want[i] && !(math.IsNaN(float64(got[i])) && math.IsNaN(float64(want[i]))) {
			t.Fatalf("element %d: training forward %v, inference %v", i, got[i], want[i])
		}
	}
}

func TestAdamStepRectifiedAndDecay(t *testing.T) {
	be := New(1)
	p, g := []float32{1, -2}, []float32{0.5, 0.25}
	m, v := []float32{0, 0}, []float32{0, 0}
	be.AdamStep(Wrap(p), Wrap(g), Wrap(m), Wrap(v), kernels.OptimStep{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02,
		Eps: 1e-8, Decay: -0.01})
	if p[0] != 0.99 || p[1] != -1.98 {
		t.Fatalf("decay only (no update while ρ<5): got %v", p)
	}
	if m[0] != 0.05 || v[1] != float32(0.02)*0.0625 {
		t.Fatalf("moments: m %v v %v", m, v)
	}
}
