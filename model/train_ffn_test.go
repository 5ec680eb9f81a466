package model_test

import (
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// withoutReLUDropout is the CPU backend, every optional interface included, except
// kernels.ReLUDropoutBackwarder: hideReLUDropout's method of the same name sits at the
// same depth as the one promoted from *cpu.Backend, so the selector is ambiguous and
// neither is in the method set. The model then runs the backward of the activation
// dropout and ReLU as ApplyDropout followed by ActivateBackward.
type withoutReLUDropout struct {
	*cpu.Backend
	hideReLUDropout
}

type hideReLUDropout struct{}

func (hideReLUDropout) ReLUDropoutBackward(_, _, _ kernels.Buffer, _ float64) {
	panic("hidden: never called")
}

// countReLUDropout is the CPU backend counting its ReLUDropoutBackward calls.
type countReLUDropout struct {
	*cpu.Backend
	calls *int
}

func (c countReLUDropout) ReLUDropoutBackward(dpre, da, a kernels.Buffer, p float64) {
	*c.calls++
	c.Backend.ReLUDropoutBackward(dpre, da, a, p)
}

// The feed-forward block's backward through kernels.ReLUDropoutBackwarder gives the
// same bits as ApplyDropout + ActivateBackward: losses and every gradient after two
// accumulated steps with all three dropouts on, and the RNG's next draw (the seeds are
// drawn in the same order). Exact: the one-pass backward differs from the composition
// only by +0 for −0 (and for NaN, from non-finite gradients, absent here) at dropped
// elements, which no sum downstream can see (kernels.ReLUDropoutBackwarder).
func TestReLUDropoutBackwardSameBits(t *testing.T) {
	if _, ok := kernels.Backend(withoutReLUDropout{Backend: cpu.New(1)}).(kernels.ReLUDropoutBackwarder); ok {
		t.Fatal("withoutReLUDropout still has ReLUDropoutBackward")
	}
	for name, c := range trainConfigs() {
		t.Run(name, func(t *testing.T) {
			m := trainTestModel(c, 19)
			calls := 0
			ref := twoDropoutSteps(t, m, withoutReLUDropout{Backend: cpu.New(1)}, 9, false)
			got := twoDropoutSteps(t, m, countReLUDropout{Backend: cpu.New(1), calls: &calls}, 9, false)
			checkSameSteps(t, "one-pass backward", got, "composition", ref)
			if got.next != ref.next {
				t.Errorf("RNG after the steps: %#x, want %#x (seeds drawn in another order)", got.next, ref.next)
			}
			switch {
			case c.Activation != "relu" && calls != 0:
				t.Errorf("ReLUDropoutBackward called %d times for activation %s", calls, c.Activation)
			case c.Activation == "relu" && calls == 0:
				t.Error("model.TrainNet did not call kernels.ReLUDropoutBackwarder: both runs took the composition")
			}
		})
	}
}
