package model_test

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
)

// kvBatching is a CPU backend that answers kernels.CrossKVBatcher with batch, and counts
// the Linear products of n outputs. Both settings hide the CPU backend's optional
// interfaces alike, so two nets on them differ only in the batching.
type kvBatching struct {
	kernels.Trainer
	batch bool
	outs  map[int]int
}

func (k *kvBatching) BatchCrossKV() bool { return k.batch }

func (k *kvBatching) Linear(y, x, w, bias kernels.Buffer, m, n, kk int) {
	k.outs[n]++
	k.Trainer.Linear(y, x, w, bias, m, n, kk)
}

// TestCrossKVBatchGradients: one training step (backward included, dropout off) of
// each test configuration, with the decoder's cross-attention keys and values batched
// (kernels.CrossKVBatcher) and per layer. The forward's products are the same dot
// products (the CPU sums each over k in order), so the losses are the same bits; the
// gradients of everything above the encoder output too; the encoder's gradients come
// through dEnc, which the batched backward sums over the layers inside one product
// (float64 on the CPU, rounded once) where the per-layer path rounds each layer's
// product and adds in float32: they must agree within 1e-5 of each tensor's largest
// gradient (a few float32 roundings of sums of two layers' terms), plus 1e-7 of the
// step's largest for gradients that are rounding noise around zero. The batched run must
// have made one product of 2·L·d outputs and no 2d-output ones.
func TestCrossKVBatchGradients(t *testing.T) {
	for name, c := range trainConfigs() {
		t.Run(name, func(t *testing.T) {
			L, d := c.DecoderLayers, c.DecoderEmbedDim
			run := func(batch bool) (float64, map[string][]float32, map[int]int) {
				be := &kvBatching{Trainer: cpu.New(1), batch: batch, outs: map[int]int{}}
				net, err := model.NewTrainNet(trainTestModel(c, 1), be)
				if err != nil {
					t.Fatal(err)
				}
				res, grads := stepGrads(t, net, trainTestBatch(), 0)
				return res.Loss, grads, be.outs
			}
			lossB, gB, outsB := run(true)
			lossU, gU, outsU := run(false)
			if outsB[2*L*d] != 1 || outsB[2*d] != 0 || outsU[2*L*d] != 0 || outsU[2*d] != L {
				t.Fatalf("products of 2·L·d and 2d outputs: batched %d, %d; per layer %d, %d", outsB[2*L*d], outsB[2*d], outsU[2*L*d], outsU[2*d])
			}
			if lossB != lossU {
				t.Fatalf("loss batched %v, per layer %v", lossB, lossU)
			}
			gradsClose(t, "batched", gB, "per layer", gU)
		})
	}
}

// TestCrossKVBatchFiniteDifferences: the batched path's gradients of the encoder and of
// the cross-attention's k and v against central finite differences of the loss (as
// TestTrainNetGradientsFiniteDifferences does for the per-layer path), on the Admin and
// Pre-LN configurations with a smooth activation.
func TestCrossKVBatchFiniteDifferences(t *testing.T) {
	for _, name := range []string{"admin", "preln"} {
		c := trainConfigs()[name]
		c.Activation = "tanh"
		t.Run(name, func(t *testing.T) {
			be := &kvBatching{Trainer: cpu.New(1), batch: true, outs: map[int]int{}}
			net, err := model.NewTrainNet(trainTestModel(c, 1), be)
			if err != nil {
				t.Fatal(err)
			}
			checked := checkFiniteDifferences(t, net, trainTestBatch(), rand.New(rand.NewPCG(4, 5)), 3, func(name string, _ int) bool {
				return crossKVOrEncoder(name)
			})
			if checked == 0 || be.outs[2*c.DecoderLayers*c.DecoderEmbedDim] == 0 {
				t.Fatalf("%d values checked, %d batched products", checked, be.outs[2*c.DecoderLayers*c.DecoderEmbedDim])
			}
		})
	}
}

// crossKVOrEncoder says whether a parameter's gradient comes through the batched keys
// and values: the decoder's cross-attention k and v projections, and the encoder.
func crossKVOrEncoder(name string) bool {
	return strings.Contains(name, "encoder_attn.k_proj") || strings.Contains(name, "encoder_attn.v_proj") ||
		strings.HasPrefix(name, "encoder.")
}
