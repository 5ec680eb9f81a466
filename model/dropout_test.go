package model_test

import (
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
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
			c := cpu.New(1)
			seeded, stored := twoDropoutSteps(t, m, c, 5, false), twoDropoutSteps(t, m, storedMasks{c, c}, 5, false)
			checkSameSteps(t, "from the seed", seeded, "stored masks", stored)
			if seeded.next != stored.next {
				t.Error("the RNG is at another draw after the steps")
			}
		})
	}
}
