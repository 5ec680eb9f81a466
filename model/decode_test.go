package model_test

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

func randomModel(t *testing.T, c model.Config) *model.Model {
	t.Helper()
	r := rand.New(rand.NewPCG(7, 8))
	m := &model.Model{Config: c, Params: map[string]*tensor.Tensor{}}
	for _, p := range c.Expected() {
		v := make([]float32, tensor.Numel(p.Shape))
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.3)
		}
		m.Params[p.Name] = tensor.FromF32(p.Shape, v)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestIncrementalMatchesFull checks, on random models of every variant, that the
// KV-cached step-by-step decoder gives the teacher-forced decoder's log-probs.
func TestIncrementalMatchesFull(t *testing.T) {
	base := model.Config{Arch: "transformer", Init: model.InitDefault, EncoderLayers: 2, DecoderLayers: 2,
		EncoderEmbedDim: 16, DecoderEmbedDim: 16, EncoderFFNDim: 24, DecoderFFNDim: 24, EncoderHeads: 4, DecoderHeads: 4,
		Activation: "relu", MaxSourcePositions: 64, MaxTargetPositions: 64, SrcVocab: 20, TgtVocab: 20, ShareAllEmbeddings: true}
	for _, tc := range []struct {
		name string
		mod  func(*model.Config)
	}{
		{"postln", func(*model.Config) {}},
		{"preln", func(c *model.Config) { c.EncoderNormalizeBefore, c.DecoderNormalizeBefore = true, true }},
		{"admin", func(c *model.Config) { c.Init = model.InitAdaptive }},
		{"deepnet/gelu", func(c *model.Config) { c.Init, c.Activation = model.InitDeepNet, "gelu" }},
		{"untied/learned/gelu_accurate", func(c *model.Config) {
			c.ShareAllEmbeddings, c.TgtVocab, c.EncoderLearnedPos, c.DecoderLearnedPos, c.Activation = false, 24, true, true, "gelu_accurate"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			tc.mod(&c)
			r, err := model.NewRunner(randomModel(t, c), cpu.New(1))
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			B, S, T := 2, 5, 4
			src := []int32{1, 1, 5, 6, 2, 7, 8, 9, 10, 2}
			prev := []int32{2, 11, 12, 13, 2, 14, 15, 16}
			enc, err := r.Encode(ctx, src, B, S, nil)
			if err != nil {
				t.Fatal(err)
			}
			full, err := r.Decode(ctx, enc, prev, T, nil)
			if err != nil {
				t.Fatal(err)
			}
			st, err := r.NewDecodeState(enc, 1, T)
			if err != nil {
				t.Fatal(err)
			}
			V := c.TgtVocab
			var worst float64
			for step := 0; step < T; step++ {
				lp, err := st.Step(ctx, []int32{prev[step], prev[T+step]})
				if err != nil {
					t.Fatal(err)
				}
				for b := 0; b < B; b++ {
					for v := 0; v < V; v++ {
						worst = max(worst, math.Abs(float64(lp[b*V+v]-full[(b*T+step)*V+v])))
					}
				}
			}
			t.Logf("max |Δ| incremental vs full = %.2g", worst)
			if worst > 1e-5 || math.IsNaN(worst) {
				t.Fatalf("incremental differs from full decode by %g", worst)
			}
			if _, err := st.Step(ctx, []int32{2, 2}); err == nil {
				t.Fatal("step past max length accepted")
			}
			if _, err := r.Encode(ctx, []int32{5, 99}, 1, 2, nil); err == nil {
				t.Fatal("out-of-vocabulary source id accepted")
			}
		})
	}
}
