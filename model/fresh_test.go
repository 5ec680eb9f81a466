package model_test

import (
	"context"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
)

// fillCounter is the CPU backend (its optional interfaces hidden, MultiTensor among
// them, so ZeroGrad clears buffer by buffer) counting its Fill calls.
type fillCounter struct {
	kernels.Trainer
	fills int
}

func (f *fillCounter) Fill(x kernels.Buffer, v float32) {
	f.fills++
	f.Trainer.Fill(x, v)
}

// freshCPU is fillCounter claiming kernels.FreshWeightGrad. The CPU backend keeps no
// 16-bit operands (no kernels.LinearKeeper), so its Linear backwards add to their weight
// gradients through LinearBackward: the net must clear each one first (prepW), and at
// the backward's end any that no backward reached (settleGrads), after a ZeroGrad that
// left them.
type freshCPU struct{ fillCounter }

func (f *freshCPU) FreshWeightGrads() bool { return true }

func (f *freshCPU) LinearBackwardKeptFreshW(dx, dw, db, dy, kept kernels.Buffer, m, n, k int, dbFresh bool) {
	panic("LinearBackwardKeptFreshW on a backend without kept operands")
}

// TestFreshWeightGradBookkeeping: with the layers' weight gradients left uncleared by
// ZeroGrad (kernels.FreshWeightGrad), two updates of two backward steps each (update-freq
// 2; the second update starts from the first's gradients) give every gradient bit for
// bit as with everything cleared, for every test configuration; the clears moved from
// ZeroGrad's per-parameter Fills of the layers' Linear weights (q, k, v, out, fc1, fc2,
// and the cross-attention's four) to one prepW Fill per buffer the backward writes (the
// fused qkv, out, fc1, fc2, and the cross-attention's q, out, k/v); and a ZeroGrad
// followed by a forward-only step hands out zero gradients (settleGrads through Params).
func TestFreshWeightGradBookkeeping(t *testing.T) {
	b := trainTestBatch()
	for name, c := range trainConfigs() {
		t.Run(name, func(t *testing.T) {
			run := func(be kernels.Trainer) (map[string][]float32, *model.TrainNet) {
				net, err := model.NewTrainNet(trainTestModel(c, 1), be)
				if err != nil {
					t.Fatal(err)
				}
				o := model.StepOptions{LabelSmoothing: 0.1, Backward: true}
				for range 2 {
					net.ZeroGrad()
					for range 2 {
						if _, err := net.Step(context.Background(), b, o); err != nil {
							t.Fatal(err)
						}
					}
				}
				grads := map[string][]float32{}
				for _, p := range net.Params() {
					grads[p.Name] = append([]float32(nil), cpu.Data(p.G)...)
				}
				return grads, net
			}
			cleared := &fillCounter{Trainer: cpu.New(1)}
			want, _ := run(cleared)
			fb := &freshCPU{fillCounter{Trainer: cpu.New(1)}}
			got, net := run(fb)
			params := 6*c.EncoderLayers + 10*c.DecoderLayers
			buffers := 4*c.EncoderLayers + 7*c.DecoderLayers
			if d := fb.fills - cleared.fills; d != 2*(buffers-params) {
				t.Errorf("Fill calls over two updates: %d with fresh weight gradients, %d cleared: %+d, want %+d", fb.fills, cleared.fills, d, 2*(buffers-params))
			}
			for name, w := range want {
				for i := range w {
					if got[name][i] != w[i] {
						t.Fatalf("%s[%d] = %v, cleared every update: %v", name, i, got[name][i], w[i])
					}
				}
			}
			net.ZeroGrad()
			if _, err := net.Step(context.Background(), b, model.StepOptions{LabelSmoothing: 0.1}); err != nil {
				t.Fatal(err)
			}
			for _, p := range net.Params() {
				for i, x := range cpu.Data(p.G) {
					if x != 0 {
						t.Fatalf("after ZeroGrad and a forward-only step %s[%d] = %v", p.Name, i, x)
					}
				}
			}
		})
	}
}
