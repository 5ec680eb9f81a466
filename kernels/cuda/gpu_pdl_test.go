package cuda

import (
	"fmt"
	"testing"
)

// pdlOn gives g programmatic dependent launch, or skips the test where the GPU or the
// driver cannot, and turns off the per-launch synchronisation of the test Backends
// (with it no kernel could start before the previous one ended).
func pdlOn(t *testing.T, g *Backend) {
	t.Helper()
	if g.info.Major < 9 || g.drv.cuLaunchKernelEx == 0 {
		t.Skipf("programmatic dependent launch needs compute capability 9.0 and cuLaunchKernelEx (have %d.%d, bound %v)",
			g.info.Major, g.info.Minor, g.drv.cuLaunchKernelEx != 0)
	}
	g.syncCheck = false
	g.pdl = newPDLLaunch()
}

// TestPDLTrainingSameBits trains the fixture model with every kernel launched under
// programmatic stream serialization against the ordinary launches, in fp32, bf16 and
// fp16, both recipes, stepped and pipelined, padded and packed: every update's loss,
// nll and gradient norm and the final weights the same bits. A kernel that touched
// memory before its griddepcontrol.wait (XF_PDL_ENTRY) would read its predecessor's
// output half written, or write what that one still reads.
func TestPDLTrainingSameBits(t *testing.T) {
	gpu(t)
	m, batches := fixtureTraining(t, 4)
	for _, prec := range []Precision{FP32, BF16, FP16} {
		for _, base := range sameBitsCases {
			for _, mode := range []struct {
				name            string
				pipelined, pack bool
			}{{"step", false, false}, {"pipelined", true, false}, {"packed", true, true}} {
				if mode.pack && prec == FP32 {
					continue
				}
				rc := base
				rc.pipelined, rc.pack = mode.pipelined && prec != FP16, mode.pack
				t.Run(fmt.Sprintf("%v/%s/%s", prec, rc.name, mode.name), func(t *testing.T) {
					checkSwitchSameRunWith(t, m, batches, prec, rc, "programmatic dependent launch",
						func(g *Backend) { pdlOn(t, g) },
						func(g *Backend) { g.pdl = nil },
						func(g *Backend) bool { return g.pdlLaunches > 0 })
				})
			}
		}
	}
}
