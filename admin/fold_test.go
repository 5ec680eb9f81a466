package admin_test

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"math/rand"
	"testing"

	"github.com/xform-dev/xform/admin"
	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

// foldTolerance is the bound of the issue: log-probs within 1e-5 relative on the exact path.
const foldTolerance = 1e-5

func f32(shape []int, v []float32) *tensor.Tensor {
	t := &tensor.Tensor{DType: tensor.F32, Shape: shape, Data: make([]byte, 4*len(v))}
	for i, x := range v {
		binary.LittleEndian.PutUint32(t.Data[4*i:], math.Float32bits(x))
	}
	return t
}

// randomAdmin builds an Admin model with random weights and random per-channel ω (the
// encoder's and decoder's first ω too, so the embedding path is exercised).
func randomAdmin(t *testing.T, layers, d, ffn, heads, vocab int, share bool, seed int64) *model.Model {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	c := model.Config{Arch: "transformer", Init: model.InitAdaptive, EncoderLayers: layers, DecoderLayers: layers,
		EncoderEmbedDim: d, DecoderEmbedDim: d, EncoderFFNDim: ffn, DecoderFFNDim: ffn, EncoderHeads: heads, DecoderHeads: heads,
		ShareAllEmbeddings: share, ShareDecoderInputOutputEmbed: share, Activation: "relu",
		MaxSourcePositions: 64, MaxTargetPositions: 64, SrcVocab: vocab, TgtVocab: vocab}
	m := &model.Model{Config: c, Params: map[string]*tensor.Tensor{}}
	for _, p := range c.Expected() {
		n := tensor.Numel(p.Shape)
		v := make([]float32, n)
		name := p.Name
		switch {
		case hasSuffix(name, "_omega"):
			for i := range v {
				v[i] = float32(0.3 + 3.7*rng.Float64())
			}
		case hasSuffix(name, "layer_norm.weight"):
			for i := range v {
				v[i] = float32(1 + 0.2*rng.NormFloat64())
			}
		case hasSuffix(name, ".bias"):
			for i := range v {
				v[i] = float32(0.1 * rng.NormFloat64())
			}
		default:
			fan := p.Shape[len(p.Shape)-1]
			for i := range v {
				v[i] = float32(rng.NormFloat64() / math.Sqrt(float64(fan)))
			}
		}
		if name == model.EncEmbed || name == model.DecEmbed {
			for j := 0; j < d; j++ {
				v[model.Pad*d+j] = 0
			}
		}
		m.Params[name] = f32(p.Shape, v)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	return m
}

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }

// randomBatches makes n batches of left-padded sources and right-padded targets.
func randomBatches(vocab, n int, seed int64) []admin.Batch {
	rng := rand.New(rand.NewSource(seed))
	var out []admin.Batch
	for k := 0; k < n; k++ {
		B, S, T := 3, 9, 8
		b := admin.Batch{B: B, S: S, T: T, Src: make([]int32, B*S), Prev: make([]int32, B*T)}
		for i := 0; i < B; i++ {
			sl := S - rng.Intn(4)
			tl := T - rng.Intn(4)
			for j := 0; j < S; j++ {
				b.Src[i*S+j] = model.Pad
				if j >= S-sl {
					b.Src[i*S+j] = int32(4 + rng.Intn(vocab-4))
				}
			}
			b.Src[i*S+S-1] = model.EOS
			for j := 0; j < T; j++ {
				b.Prev[i*T+j] = model.Pad
				if j < tl {
					b.Prev[i*T+j] = int32(4 + rng.Intn(vocab-4))
				}
			}
			b.Prev[i*T] = model.EOS
		}
		out = append(out, b)
	}
	return out
}

func checkExact(t *testing.T, rep *admin.FoldReport) {
	t.Helper()
	for _, dl := range append(rep.Layers, rep.LogProbs) {
		if !(dl.MaxRel <= foldTolerance) {
			t.Errorf("%s: max |Δ| %.3g (relative %.3g) > %g", dl.Name, dl.MaxAbs, dl.MaxRel, foldTolerance)
		}
	}
	t.Logf("log-probs max |Δ| %.3g (relative %.3g) over %d sentences; worst layer %s",
		rep.LogProbs.MaxAbs, rep.LogProbs.MaxRel, rep.Sentences, worst(rep).Name)
}

func worst(rep *admin.FoldReport) admin.Delta {
	var w admin.Delta
	for _, dl := range rep.Layers {
		if dl.MaxRel >= w.MaxRel {
			w = dl
		}
	}
	return w
}

func TestFoldRandomDeepExact(t *testing.T) {
	cases := []struct {
		name   string
		layers int
		share  bool
	}{{"18L-18L shared", 18, true}, {"18L-18L untied", 18, false}, {"2L-2L shared", 2, true}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := randomAdmin(t, c.layers, 16, 32, 2, 40, c.share, 7)
			res, err := admin.Fold(m, admin.FoldOptions{})
			if err != nil {
				t.Fatal(err)
			}
			fc := res.Model.Config
			if fc.Init != model.InitDefault || fc.ShareAllEmbeddings || fc.TiedOutput() || !fc.EncoderLearnedPos || !fc.DecoderLearnedPos {
				t.Errorf("folded config %+v: want default init, untied, learned positions", fc)
			}
			if len(res.Changes) == 0 {
				t.Error("architecture changed but no change was reported")
			}
			rep, err := admin.CompareFold(context.Background(), m, res, randomBatches(40, 3, 1), cpu.New(0))
			if err != nil {
				t.Fatal(err)
			}
			checkExact(t, rep)
		})
	}
}

// --keep-architecture keeps sharing and sinusoids and reports a (non-zero) error; every
// layer's ω but the first sub-layer's is still exact, so the error is the first layer's.
func TestFoldKeepArchitecture(t *testing.T) {
	m := randomAdmin(t, 4, 16, 32, 2, 40, true, 3)
	res, err := admin.Fold(m, admin.FoldOptions{KeepArchitecture: true})
	if err != nil {
		t.Fatal(err)
	}
	fc := res.Model.Config
	if !fc.ShareAllEmbeddings || fc.EncoderLearnedPos || fc.DecoderLearnedPos || len(res.Changes) != 0 {
		t.Errorf("architecture changed: %+v %v", fc, res.Changes)
	}
	if len(res.Approximations) != 2 {
		t.Errorf("approximations %v, want one per stack", res.Approximations)
	}
	rep, err := admin.CompareFold(context.Background(), m, res, randomBatches(40, 2, 2), cpu.New(0))
	if err != nil {
		t.Fatal(err)
	}
	if rep.LogProbs.MaxAbs == 0 || math.IsInf(rep.LogProbs.MaxAbs, 0) || math.IsNaN(rep.LogProbs.MaxAbs) {
		t.Errorf("keep-architecture log-prob error %v: want a finite, non-zero error", rep.LogProbs.MaxAbs)
	}
	// With ω_0 ≡ c (a constant), only LayerNorm's ε changes: tiny error.
	for _, n := range []string{model.EncLayer(0) + "self_attn_omega", model.DecLayer(0) + "self_attn_omega"} {
		v := make([]float32, 16)
		for i := range v {
			v[i] = 1.7
		}
		m.Params[n] = f32([]int{16}, v)
	}
	res, err = admin.Fold(m, admin.FoldOptions{KeepArchitecture: true})
	if err != nil {
		t.Fatal(err)
	}
	rep, err = admin.CompareFold(context.Background(), m, res, randomBatches(40, 2, 2), cpu.New(0))
	if err != nil {
		t.Fatal(err)
	}
	if rep.LogProbs.MaxRel > 1e-4 {
		t.Errorf("constant ω_0: log-prob error %.3g, want ≤1e-4 (only LayerNorm ε differs)", rep.LogProbs.MaxRel)
	}
}

var fixtureCheckpoints = []string{
	"../fixtures/clinic/runs/a_admin/ckpt/checkpoint_last.pt",
	"../fixtures/clinic/runs/a_admin/ckpt/checkpoint_12_300.pt",
	"../fixtures/clinic/runs/a_admin/ckpt_u1/checkpoint_last.pt",
	"../fixtures/torch/a_admin_fp16.pt",
}

func TestFoldFixturesExact(t *testing.T) {
	for _, path := range fixtureCheckpoints {
		t.Run(path[len("../fixtures/"):], func(t *testing.T) {
			m, err := convert.LoadCheckpoint(path)
			if err != nil {
				t.Fatal(err)
			}
			res, err := admin.Fold(m, admin.FoldOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if hasSuffix(path, "ckpt_u1/checkpoint_last.pt") {
				// At initialisation the first ω of each stack is exactly 1: nothing to change.
				if len(res.Changes) != 0 || !res.Model.Config.ShareAllEmbeddings {
					t.Errorf("update-1 checkpoint: changes %v, want none", res.Changes)
				}
			}
			rep, err := admin.CompareFold(context.Background(), m, res, randomBatches(m.Config.SrcVocab, 4, 5), cpu.New(0))
			if err != nil {
				t.Fatal(err)
			}
			checkExact(t, rep)
		})
	}
}

func TestFoldBadInput(t *testing.T) {
	plain, err := convert.LoadCheckpoint("../fixtures/clinic/runs/b_postln/ckpt/checkpoint_last.pt")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Fold(plain, admin.FoldOptions{}); !errors.Is(err, admin.ErrNotAdmin) {
		t.Errorf("folding a Post-LN model: err = %v, want ErrNotAdmin", err)
	}
	for _, bad := range []float32{0, 1e-9, float32(math.NaN()), float32(math.Inf(1))} {
		m := randomAdmin(t, 2, 8, 16, 2, 20, true, 1)
		v, _ := m.Params[model.DecLayer(1)+"ffn_omega"].F32()
		v[3] = bad
		m.Params[model.DecLayer(1)+"ffn_omega"] = f32([]int{8}, v)
		if _, err := admin.Fold(m, admin.FoldOptions{}); !errors.Is(err, admin.ErrOmegaZero) {
			t.Errorf("ω = %v: err = %v, want ErrOmegaZero", bad, err)
		}
	}
	// A negative ω is a valid (if odd) residual weight: it folds exactly.
	m := randomAdmin(t, 2, 8, 16, 2, 20, true, 1)
	v, _ := m.Params[model.EncLayer(1)+"ffn_omega"].F32()
	v[0] = -0.5
	m.Params[model.EncLayer(1)+"ffn_omega"] = f32([]int{8}, v)
	res, err := admin.Fold(m, admin.FoldOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := admin.CompareFold(context.Background(), m, res, randomBatches(20, 1, 3), cpu.New(0))
	if err != nil {
		t.Fatal(err)
	}
	checkExact(t, rep)
}
