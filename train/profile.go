package train

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/xform-dev/xform/admin"
	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

// WithUnitOmega returns a copy of m as an Admin profiling model: Post-LN, every ω
// vector present and 1 (added to a default model, reset in an Admin model), as the
// Clinic fork builds it under --init-type adaptive-profiling. Other parameters are
// shared with m, not copied.
func WithUnitOmega(m *model.Model) (*model.Model, error) {
	c := m.Config
	switch c.Init {
	case model.InitDefault, model.InitAdaptive, model.InitAdaptiveProfiling:
	default:
		return nil, fmt.Errorf("profile: a %s model cannot be profiled (Admin profiles Post-LN default or Admin models)", c.Init)
	}
	if c.EncoderNormalizeBefore || c.DecoderNormalizeBefore {
		return nil, fmt.Errorf("profile: Admin is Post-LN only; the model normalises before")
	}
	c.Init = model.InitAdaptiveProfiling
	out := &model.Model{Config: c, Params: map[string]*tensor.Tensor{}}
	d := c.EncoderEmbedDim
	ones := func() *tensor.Tensor {
		v := make([]float32, d)
		for i := range v {
			v[i] = 1
		}
		return tensor.FromF32([]int{d}, v)
	}
	for _, p := range c.Expected() {
		if t, ok := m.Params[p.Name]; ok && !isOmega(p.Name) {
			out.Params[p.Name] = t
			continue
		}
		if isOmega(p.Name) {
			out.Params[p.Name] = ones()
			continue
		}
		return nil, fmt.Errorf("profile: model has no parameter %s", p.Name)
	}
	return out, out.Validate()
}

func isOmega(name string) bool {
	n := len(name)
	return n > 6 && name[n-6:] == "_omega"
}

// ProfileConfig holds what the profiling forward uses besides the weights.
type ProfileConfig struct {
	Dropout, AttentionDropout, ActivationDropout float64
	Seed                                         uint64
}

// Profile runs Admin's profiling (clinic-spec §1.4) on one training batch: a training
// forward of m with every ω = 1 in which each sub-layer's ω is set from the running
// ratio r and r advances to sqrt(Var(x⊙ω) + Var(branch)). The reference profiles the
// first batch of epoch 1 with the run's dropout; with dropout 0 the result is the
// reference's up to float rounding.
func Profile(ctx context.Context, m *model.Model, be kernels.Trainer, b *model.TrainBatch, cfg ProfileConfig) (*admin.Profile, error) {
	pm, err := WithUnitOmega(m)
	if err != nil {
		return nil, err
	}
	net, err := model.NewTrainNet(pm, be)
	if err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	res, err := net.Step(ctx, b, model.StepOptions{Dropout: cfg.Dropout, AttentionDropout: cfg.AttentionDropout,
		ActivationDropout: cfg.ActivationDropout, RNG: rand.New(rand.NewPCG(cfg.Seed, 0)), Train: true, Profile: true})
	if err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	return &admin.Profile{Encoder: res.ProfileEncoder, Decoder: res.ProfileDecoder, Format: admin.FormatIndexed}, nil
}
