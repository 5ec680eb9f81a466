package cuda

import (
	"context"
	"fmt"
	"testing"

	"github.com/xform-dev/xform/model"
)

// kernels.FreshWeightGrad: the first backward after ZeroGrad writes the layers' Linear
// weight gradients (beta 0) instead of adding them to zeros that ZeroGrad no longer
// writes.
//
// Tolerances: none. Writing x and adding x to +0 store the same value up to the sign of
// a zero, and no result downstream sees that sign (Adam's moments start from +0 and add
// products, the norm squares), so training runs and gradients must be the same bits as
// with every gradient cleared (freshDWOff), gradients compared with ±0 taken as equal.

// TestFreshWeightGradTraining trains the fixture model in bf16 and fp16, every
// sameBitsCases recipe, plain and pipelined, padded and packed, with and without the
// fresh writes: every update's loss, nll and gradient norm and the final weights the
// same bits; the fresh run must have taken LinearBackwardKeptFreshW.
func TestFreshWeightGradTraining(t *testing.T) {
	gpu(t)
	m, batches := fixtureTraining(t, 4)
	for _, prec := range []Precision{BF16, FP16} {
		for _, rc := range sameBitsCases {
			for _, mode := range []struct {
				name            string
				pipelined, pack bool
			}{{"step", false, false}, {"pipelined", true, false}, {"packed", true, true}} {
				rc := rc
				rc.pipelined, rc.pack = mode.pipelined && prec == BF16, mode.pack
				t.Run(fmt.Sprintf("%v/%s/%s", prec, rc.name, mode.name), func(t *testing.T) {
					checkSwitchSameRun(t, m, batches, prec, rc, "LinearBackwardKeptFreshW",
						func(g *Backend) { g.freshDWOff = true }, func(g *Backend) bool { return g.freshDWs > 0 })
				})
			}
		}
	}
}

// TestFreshWeightGradAccumulates: two backward steps after one ZeroGrad (update-freq
// 2) give the gradients of the cleared run: the second adds to what the first wrote;
// a ZeroGrad followed by a forward-only step and Params hands out zeros (settleGrads);
// both eager and graphed (the first and later sub-batches take different graphs).
func TestFreshWeightGradAccumulates(t *testing.T) {
	gpu(t)
	m, batches := fixtureTraining(t, 3)
	grads := func(be *Backend, twoSteps bool) map[string][]float32 {
		net, err := model.NewTrainNet(m, be)
		if err != nil {
			t.Fatal(err)
		}
		opts := model.StepOptions{Train: true, Backward: true, LabelSmoothing: 0.1, GradScale: 1}
		for range 2 { // the second round starts from gradients the first left
			net.ZeroGrad()
			n := 1
			if twoSteps {
				n = 2
			}
			for _, b := range batches[:n] {
				if _, err := net.Step(context.Background(), b, opts); err != nil {
					t.Fatal(err)
				}
			}
		}
		if !twoSteps {
			// A forward-only step after ZeroGrad: every gradient must read as zero.
			net.ZeroGrad()
			fwd := opts
			fwd.Backward = false
			if _, err := net.Step(context.Background(), batches[2], fwd); err != nil {
				t.Fatal(err)
			}
		}
		out := map[string][]float32{}
		for _, p := range net.Params() {
			v := make([]float32, p.G.Len())
			be.Download(v, p.G)
			out[p.Name] = v
		}
		return out
	}
	for _, graphs := range []bool{false, true} {
		t.Run(fmt.Sprintf("graphs=%v", graphs), func(t *testing.T) {
			fresh := newGraphTestBackend(t, BF16, graphs)
			plain := newGraphTestBackend(t, BF16, graphs)
			plain.freshDWOff = true
			got, want := grads(fresh, true), grads(plain, true)
			if fresh.freshDWs == 0 {
				t.Fatal("no LinearBackwardKeptFreshW call")
			}
			for name, w := range want {
				for i := range w {
					if g := got[name][i]; g != w[i] && !(g != g && w[i] != w[i]) {
						t.Fatalf("update-freq 2: %s[%d] = %v, cleared run %v", name, i, g, w[i])
					}
				}
			}
			for name, v := range grads(newFreshBackend(t, graphs), false) {
				for i, x := range v {
					if x != 0 {
						t.Fatalf("after ZeroGrad and a forward-only step %s[%d] = %v, want 0", name, i, x)
					}
				}
			}
		})
	}
}

// checkSwitchSameRun trains rc on a new Backend of prec and on one whose switch off
// turns the path under test off: taken must say that the first took the path (named
// what) and the second did not, and the two runs must be the same bits (checkSameRun).
// switchTraining does the same over eachTrainCase's fixed recipes; this one takes the
// recipe, for paths that only some recipes reach (pipelined, packed, no clipping).
func checkSwitchSameRun(t *testing.T, m *model.Model, batches []*model.TrainBatch, prec Precision, rc trainCase, what string, off func(*Backend), taken func(*Backend) bool) {
	t.Helper()
	checkSwitchSameRunWith(t, m, batches, prec, rc, what, nil, off, taken)
}

// checkSwitchSameRunWith is checkSwitchSameRun with all (nil: none) applied to both
// Backends first, for a path that only some configuration reaches.
func checkSwitchSameRunWith(t *testing.T, m *model.Model, batches []*model.TrainBatch, prec Precision, rc trainCase, what string, all, off func(*Backend), taken func(*Backend) bool) {
	t.Helper()
	on := newGraphTestBackend(t, prec, false)
	without := newGraphTestBackend(t, prec, false)
	if all != nil {
		all(on)
		all(without)
	}
	got, _ := runTrain(t, m, on, rc, batches)
	if !taken(on) {
		t.Fatalf("the run did not take %s", what)
	}
	off(without)
	ref, _ := runTrain(t, m, without, rc, batches)
	if taken(without) {
		t.Fatalf("switched off, the run still took %s", what)
	}
	checkSameRun(t, "with "+what, got, "without", ref)
}

// newFreshBackend is a bf16 test Backend, which must take fresh weight gradients.
func newFreshBackend(t *testing.T, graphs bool) *Backend {
	be := newGraphTestBackend(t, BF16, graphs)
	if !be.FreshWeightGrads() {
		t.Fatal("FreshWeightGrads false in bf16")
	}
	return be
}
