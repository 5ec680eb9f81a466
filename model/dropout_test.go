package model_test

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
)

// storedMasks is the CPU backend without kernels.DropoutApplier: the model then stores
// every dropout mask (DropoutMask, Mul) instead of drawing it again in the backward.
type storedMasks struct {
	kernels.Trainer
	kernels.ResidualNormer
}

// Applying dropout from the seed (forward and backward) gives the same bits as storing
// the mask: losses and every gradient over two steps with all three dropouts on.
func TestDropoutApplierSameBits(t *testing.T) {
	if _, ok := kernels.Backend(cpu.New(1)).(kernels.DropoutApplier); !ok {
		t.Fatal("the CPU backend does not implement kernels.DropoutApplier")
	}
	for name, c := range trainConfigs() {
		t.Run(name, func(t *testing.T) {
			m := trainTestModel(c, 13)
			run := func(be kernels.Trainer) ([]model.StepResult, [][]float32) {
				net, err := model.NewTrainNet(m, be)
				if err != nil {
					t.Fatal(err)
				}
				rng := rand.New(rand.NewPCG(5, 5))
				var res []model.StepResult
				for k := 0; k < 2; k++ {
					r, err := net.Step(context.Background(), trainTestBatch(), model.StepOptions{LabelSmoothing: 0.1, Backward: true,
						Train: true, Dropout: 0.3, AttentionDropout: 0.2, ActivationDropout: 0.25, RNG: rng})
					if err != nil {
						t.Fatal(err)
					}
					res = append(res, r)
				}
				var grads [][]float32
				grads = gradients(net, be)
				return res, grads
			}
			c := cpu.New(1)
			aRes, aGrads := run(c)
			bRes, bGrads := run(storedMasks{c, c})
			for k := range aRes {
				if aRes[k].Loss != bRes[k].Loss || aRes[k].NLL != bRes[k].NLL {
					t.Errorf("step %d: from the seed %+v, stored masks %+v", k, aRes[k], bRes[k])
				}
			}
			for i := range aGrads {
				if j := firstDiff(aGrads[i], bGrads[i]); j >= 0 {
					t.Errorf("gradient %d differs at %d: %v vs %v", i, j, aGrads[i][j], bGrads[i][j])
				}
			}
		})
	}
}
