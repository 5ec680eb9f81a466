package model_test

import (
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// noResidualDropoutFusion is the CPU backend without kernels.DropoutResidualNormer:
// the model then applies the residual dropout with ApplyDropout around the fused
// residual+LayerNorm instead of inside it.
type noResidualDropoutFusion struct {
	kernels.Trainer
	kernels.ResidualNormer
	kernels.DropoutApplier
}

// Residual dropout inside the fused residual+LayerNorm gives the same bits as the
// separate passes: losses, every gradient after two accumulated steps with all three
// dropouts on, Admin's profiling ratios (a profiling step keeps the separate pass),
// and the RNG's next draw (the seeds are drawn in the same order).
func TestDropoutResidualNormerSameBits(t *testing.T) {
	if _, ok := kernels.Backend(cpu.New(1)).(kernels.DropoutResidualNormer); !ok {
		t.Fatal("the CPU backend does not implement kernels.DropoutResidualNormer")
	}
	for name, c := range trainConfigs() {
		t.Run(name, func(t *testing.T) {
			m := trainTestModel(c, 17)
			c := cpu.New(1)
			fused, plain := twoDropoutSteps(t, m, c, 7, true), twoDropoutSteps(t, m, noResidualDropoutFusion{c, c, c}, 7, true)
			checkSameSteps(t, "fused dropout", fused, "separate", plain)
			if fused.next != plain.next {
				t.Error("the RNG is at another draw after the steps")
			}
		})
	}
}
