package model_test

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/model"
)

// stepRun is what twoDropoutSteps records of a run: the step results, every
// parameter's gradient afterwards, and the RNG's next draw (which shows whether the
// dropout seeds were drawn in the same order).
type stepRun struct {
	res   []model.StepResult
	grads [][]float32
	next  uint64
}

// twoDropoutSteps runs two accumulated training steps of m on be with all three
// dropouts on (and, when profile is set and the model has ω, an Admin profiling step),
// from an RNG seeded with seed. Tests compare two backends' runs bit for bit.
func twoDropoutSteps(t *testing.T, m *model.Model, be kernels.Trainer, seed uint64, profile bool) stepRun {
	t.Helper()
	net, err := model.NewTrainNet(m, be)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, seed))
	var r stepRun
	for range 2 {
		res, err := net.Step(context.Background(), trainTestBatch(), model.StepOptions{LabelSmoothing: 0.1, Backward: true,
			Train: true, Dropout: 0.3, AttentionDropout: 0.2, ActivationDropout: 0.25, RNG: rng})
		if err != nil {
			t.Fatal(err)
		}
		r.res = append(r.res, res)
	}
	r.grads = gradients(net, be)
	if profile && m.Config.Init.HasOmega() {
		res, err := net.Step(context.Background(), trainTestBatch(), model.StepOptions{Profile: true, Train: true,
			Dropout: 0.3, RNG: rng})
		if err != nil {
			t.Fatal(err)
		}
		r.res = append(r.res, res)
	}
	r.next = rng.Uint64()
	return r
}

// gradients downloads every parameter's gradient of net, in Params order.
func gradients(net *model.TrainNet, be kernels.Trainer) [][]float32 {
	var out [][]float32
	for _, p := range net.Params() {
		g := make([]float32, p.G.Len())
		be.Download(g, p.G)
		out = append(out, g)
	}
	return out
}

// checkSameSteps fails unless every step of got has the loss, nll and Admin profiling
// ratios of ref's, bit for bit, and every gradient is the same bits (gotName and
// refName say which run is which in the messages).
func checkSameSteps(t *testing.T, gotName string, got stepRun, refName string, ref stepRun) {
	t.Helper()
	if len(got.res) != len(ref.res) {
		t.Fatalf("%s ran %d steps, %s %d", gotName, len(got.res), refName, len(ref.res))
	}
	for k := range ref.res {
		g, r := got.res[k], ref.res[k]
		if g.Loss != r.Loss || g.NLL != r.NLL || !equalF64(g.ProfileEncoder, r.ProfileEncoder) || !equalF64(g.ProfileDecoder, r.ProfileDecoder) {
			t.Errorf("step %d: %s %+v, %s %+v", k, gotName, g, refName, r)
		}
	}
	for i := range ref.grads {
		if j := firstDiff(got.grads[i], ref.grads[i]); j >= 0 {
			t.Errorf("gradient %d differs at %d: %s %v, %s %v", i, j, gotName, got.grads[i][j], refName, ref.grads[i][j])
		}
	}
}
