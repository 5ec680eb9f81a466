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

func trainTestModel(c model.Config, seed uint64) *model.Model {
	r := rand.New(rand.NewPCG(seed, 7))
	m := &model.Model{Config: c, Params: map[string]*tensor.Tensor{}}
	for _, p := range c.Expected() {
		v := make([]float32, tensor.Numel(p.Shape))
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.4)
		}
		m.Params[p.Name] = tensor.FromF32(p.Shape, v)
	}
	return m
}

func trainTestConfig(init model.Init, pre bool) model.Config {
	return model.Config{Arch: "transformer", Init: init, EncoderLayers: 2, DecoderLayers: 2, EncoderEmbedDim: 8, DecoderEmbedDim: 8,
		EncoderFFNDim: 12, DecoderFFNDim: 12, EncoderHeads: 2, DecoderHeads: 2, EncoderNormalizeBefore: pre, DecoderNormalizeBefore: pre,
		ShareAllEmbeddings: true, Activation: "relu", MaxSourcePositions: 64, MaxTargetPositions: 64, SrcVocab: 11, TgtVocab: 11}
}

func trainTestBatch() *model.TrainBatch {
	// Two sentences: the source of the second is left-padded, its target right-padded.
	return &model.TrainBatch{B: 2, S: 4, T: 5,
		Src:    []int32{5, 6, 7, 2, 1, 8, 9, 2},
		Prev:   []int32{2, 4, 5, 6, 7, 2, 8, 9, 1, 1},
		Target: []int32{4, 5, 6, 7, 2, 8, 9, 2, 1, 1}}
}

func trainConfigs() map[string]model.Config {
	cs := map[string]model.Config{
		"postln":  trainTestConfig(model.InitDefault, false),
		"preln":   trainTestConfig(model.InitDefault, true),
		"admin":   trainTestConfig(model.InitAdaptive, false),
		"deepnet": trainTestConfig(model.InitDeepNet, false),
	}
	c := trainTestConfig(model.InitDefault, false)
	c.ShareAllEmbeddings, c.EncoderLearnedPos, c.DecoderLearnedPos, c.Activation = false, true, true, "gelu"
	cs["untied+learned+gelu"] = c
	c = trainTestConfig(model.InitDefault, true)
	c.ShareAllEmbeddings, c.ShareDecoderInputOutputEmbed = false, true
	cs["preln+shared-decoder-io"] = c
	return cs
}

// Every parameter's gradient against central finite differences of the summed loss.
func TestTrainNetGradientsFiniteDifferences(t *testing.T) {
	for name, c := range trainConfigs() {
		// Smooth activations: ReLU's kinks defeat finite differences with a useful step
		// (its derivative is checked on its own in kernels/cpu).
		if c.Activation == "relu" {
			c.Activation = "tanh"
		}
		t.Run(name, func(t *testing.T) {
			m := trainTestModel(c, 1)
			be := cpu.New(1)
			net, err := model.NewTrainNet(m, be)
			if err != nil {
				t.Fatal(err)
			}
			checkFiniteDifferences(t, net, trainTestBatch(), rand.New(rand.NewPCG(2, 3)), 4, func(name string, i int) bool {
				return !((name == model.EncEmbed || name == model.DecEmbed) && i/8 == model.Pad && !c.TiedOutput())
			})
		})
	}
}

// checkFiniteDifferences runs one backward step of net on b (label smoothing 0.1) and
// compares the gradients with central differences of the summed loss (step 1e-2; within
// 3e-3 plus 3 % of the difference) at per random elements of every parameter, skipping
// those keep refuses (the pad embedding row, which gets no gradient); it returns how many
// it compared.
func checkFiniteDifferences(t *testing.T, net *model.TrainNet, b *model.TrainBatch, r *rand.Rand, per int, keep func(name string, i int) bool) int {
	t.Helper()
	ctx := context.Background()
	if _, err := net.Step(ctx, b, model.StepOptions{LabelSmoothing: 0.1, Backward: true}); err != nil {
		t.Fatal(err)
	}
	lossAt := func() float64 {
		res, err := net.Step(ctx, b, model.StepOptions{LabelSmoothing: 0.1})
		if err != nil {
			t.Fatal(err)
		}
		return res.Loss
	}
	const h = 1e-2
	checked := 0
	for _, p := range net.Params() {
		pv, gv := cpu.Data(p.P), cpu.Data(p.G)
		for k := 0; k < per; k++ {
			i := r.IntN(len(pv))
			if !keep(p.Name, i) {
				continue
			}
			old := pv[i]
			pv[i] = old + h
			lp := lossAt()
			pv[i] = old - h
			lm := lossAt()
			pv[i] = old
			num := (lp - lm) / (2 * h)
			if math.Abs(num-float64(gv[i])) > 3e-3+3e-2*math.Abs(num) {
				t.Errorf("%s[%d]: backward %.6g, finite difference %.6g", p.Name, i, gv[i], num)
			}
			checked++
		}
	}
	return checked
}

// With dropout off the training forward computes the inference forward's log-probs.
func TestTrainForwardMatchesRunner(t *testing.T) {
	for name, c := range trainConfigs() {
		t.Run(name, func(t *testing.T) {
			m := trainTestModel(c, 4)
			be := cpu.New(1)
			net, err := model.NewTrainNet(m, be)
			if err != nil {
				t.Fatal(err)
			}
			b := trainTestBatch()
			res, err := net.Step(context.Background(), b, model.StepOptions{})
			if err != nil {
				t.Fatal(err)
			}
			run, err := model.NewRunner(m, be)
			if err != nil {
				t.Fatal(err)
			}
			enc, err := run.Encode(context.Background(), b.Src, b.B, b.S, nil)
			if err != nil {
				t.Fatal(err)
			}
			lp, err := run.Decode(context.Background(), enc, b.Prev, b.T, nil)
			if err != nil {
				t.Fatal(err)
			}
			var nll float64
			for i, tg := range b.Target {
				if tg != model.Pad {
					nll -= float64(lp[i*c.TgtVocab+int(tg)])
				}
			}
			if math.Abs(nll-res.NLL) > 1e-5*math.Abs(nll) || res.NTokens != 8 {
				t.Fatalf("runner nll %.9g, training forward %.9g (ntokens %d)", nll, res.NLL, res.NTokens)
			}
		})
	}
}
