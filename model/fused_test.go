package model_test

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
)

// unfusedTrainer hides every optional interface of the backend it wraps
// (kernels.ResidualNormer in particular), so the model takes its unfused path.
type unfusedTrainer struct{ kernels.Trainer }

// The CPU backend implements kernels.ResidualNormer; the model must give the same bits
// through it as through Residual, LayerNorm and their backwards (the fused backward
// moves dω's accumulation before the branch's backward, which must not matter).
// Losses, every gradient after two accumulated steps with dropout, Admin's profiling
// ratios, and the inference log-probabilities are compared exactly.
func TestResidualNormerSameBits(t *testing.T) {
	if _, ok := kernels.Backend(cpu.New(1)).(kernels.ResidualNormer); !ok {
		t.Fatal("the CPU backend does not implement kernels.ResidualNormer")
	}
	for name, c := range trainConfigs() {
		t.Run(name, func(t *testing.T) {
			m := trainTestModel(c, 5)
			type result struct {
				res   []model.StepResult
				grads [][]float32
				lp    []float32
			}
			run := func(be kernels.Trainer) result {
				net, err := model.NewTrainNet(m, be)
				if err != nil {
					t.Fatal(err)
				}
				b := trainTestBatch()
				rng := rand.New(rand.NewPCG(9, 9))
				var r result
				for _, o := range []model.StepOptions{
					{LabelSmoothing: 0.1, Backward: true, Train: true, Dropout: 0.2, AttentionDropout: 0.1, ActivationDropout: 0.1, RNG: rng},
					{LabelSmoothing: 0.1, Backward: true, GradScale: 4},
				} {
					res, err := net.Step(context.Background(), b, o)
					if err != nil {
						t.Fatal(err)
					}
					r.res = append(r.res, res)
				}
				r.grads = gradients(net, be)
				if c.Init.HasOmega() {
					res, err := net.Step(context.Background(), b, model.StepOptions{Profile: true})
					if err != nil {
						t.Fatal(err)
					}
					r.res = append(r.res, res)
				}
				runner, err := model.NewRunner(m, be)
				if err != nil {
					t.Fatal(err)
				}
				enc, err := runner.Encode(context.Background(), b.Src, b.B, b.S, nil)
				if err != nil {
					t.Fatal(err)
				}
				if r.lp, err = runner.Decode(context.Background(), enc, b.Prev, b.T, nil); err != nil {
					t.Fatal(err)
				}
				return r
			}
			fused, plain := run(cpu.New(1)), run(unfusedTrainer{cpu.New(1)})
			checkSameSteps(t, "fused", stepRun{res: fused.res, grads: fused.grads}, "unfused", stepRun{res: plain.res, grads: plain.grads})
			if j := firstDiff(fused.lp, plain.lp); j >= 0 {
				t.Errorf("inference log-prob %d: fused %v, unfused %v", j, fused.lp[j], plain.lp[j])
			}
		})
	}
}

func equalF64(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float64bits(a[i]) != math.Float64bits(b[i]) {
			return false
		}
	}
	return true
}

// firstDiff is the first index where a and b differ in bits, or -1.
func firstDiff(a, b []float32) int {
	if len(a) != len(b) {
		return 0
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}
