package model_test

import (
	"context"
	"math"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
)

// sumCPU is the CPU backend with kernels.ResidualSumNormer and
// kernels.ResidualRecomputer written as the sequences the interfaces define (the
// reference, independent of any backend's fused kernels). After each call it fills
// the sum's D with NaN, as the interfaces allow (a backend may form the sum there or
// not), so a model that read D again would show it in every gradient. calls counts
// the Sum, Recompute and ApplyDropoutSum calls that got a sum with two parts.
type sumCPU struct {
	*cpu.Backend
	recompute bool
	calls     *[3]int
}

func (b sumCPU) form(s kernels.ResidualSum, rows, dim int) {
	if s.DZ != nil {
		b.ResidualBackward(s.D, nil, s.DZ, nil, s.Omega, s.Alpha, rows, dim)
	}
}

func (b sumCPU) spoil(s kernels.ResidualSum, k int) {
	if s.DZ != nil {
		b.calls[k]++
		b.Fill(s.D, float32(math.NaN()))
	}
}

func (b sumCPU) ResidualLayerNormBackwardSum(dz, dbranch, dgamma, dbeta, domega kernels.Buffer, dy kernels.ResidualSum, z, x, gamma kernels.Buffer, alpha float32, rows, dim int, eps float32, p float64, seed uint64) {
	b.form(dy, rows, dim)
	b.ResidualLayerNormBackwardDropout(dz, dbranch, dgamma, dbeta, domega, dy.D, z, x, gamma, alpha, rows, dim, eps, p, seed)
	b.spoil(dy, 0)
}

func (b sumCPU) ApplyDropoutSum(y kernels.Buffer, s kernels.ResidualSum, rows, dim int, p float64, seed uint64) {
	b.form(s, rows, dim)
	b.ApplyDropout(y, s.D, p, seed)
	b.spoil(s, 2)
}

func (b sumCPU) RecomputesResidual(dim int) bool { return b.recompute }

func (b sumCPU) ResidualLayerNormBackwardRecompute(dz, dbranch, dgamma, dbeta, domega kernels.Buffer, dy kernels.ResidualSum, x, branch, omega kernels.Buffer, alpha float32, gamma kernels.Buffer, rows, dim int, eps float32, p float64, seed uint64) {
	if !b.recompute {
		panic("ResidualLayerNormBackwardRecompute called although RecomputesResidual is false")
	}
	z, y := b.Alloc(rows*dim), b.Alloc(rows*dim)
	b.ResidualLayerNormDropout(z, y, x, branch, omega, alpha, gamma, gamma, rows, dim, eps, p, seed)
	b.form(dy, rows, dim)
	b.ResidualLayerNormBackwardDropout(dz, dbranch, dgamma, dbeta, domega, dy.D, z, x, gamma, alpha, rows, dim, eps, p, seed)
	b.spoil(dy, 1)
}

// The model passing input gradients down a stack as kernels.ResidualSum (and, with
// kernels.ResidualRecomputer, letting the backward form z again) gives the bits of the
// formed sums: losses, every gradient after two accumulated steps with all three
// dropouts on, Admin's profiling ratios, the RNG's next draw. Post-LN stacks must
// have handed sums on (every sub-layer but the stacks' first reads one, the
// embeddings' dropout two); Pre-LN ones have none.
func TestResidualSumSameBits(t *testing.T) {
	for name, c := range trainConfigs() {
		for _, recompute := range []bool{false, true} {
			t.Run(name, func(t *testing.T) {
				m := trainTestModel(c, 19)
				var calls [3]int
				plain := twoDropoutSteps(t, m, cpu.New(1), 9, true)
				got := twoDropoutSteps(t, m, sumCPU{cpu.New(1), recompute, &calls}, 9, true)
				checkSameSteps(t, "sums handed on", got, "formed", plain)
				if got.next != plain.next {
					t.Error("the RNG is at another draw after the steps")
				}
				t.Logf("recompute %v: Sum %d, Recompute %d, ApplyDropoutSum %d calls with two parts", recompute, calls[0], calls[1], calls[2])
				switch {
				case c.EncoderNormalizeBefore:
					if calls != [3]int{} {
						t.Errorf("Pre-LN: %v calls with two parts", calls)
					}
				case calls[0]+calls[1] == 0 || calls[2] == 0:
					t.Errorf("Post-LN: calls %v, want sums read by the sub-layers and the embeddings", calls)
				case recompute != (calls[1] > 0):
					t.Errorf("recompute %v but %d Recompute calls", recompute, calls[1])
				}
			})
		}
	}
}

// Without dropout the fused backward takes the sum with no branch gradient
// (ResidualLayerNormBackwardSum's dbranch nil) and the embeddings form it: the same
// bits as the formed sums, two accumulated steps.
func TestResidualSumSameBitsNoDropout(t *testing.T) {
	for name, c := range trainConfigs() {
		t.Run(name, func(t *testing.T) {
			m := trainTestModel(c, 23)
			run := func(be kernels.Trainer) stepRun {
				net, err := model.NewTrainNet(m, be)
				if err != nil {
					t.Fatal(err)
				}
				var r stepRun
				for range 2 {
					res, err := net.Step(context.Background(), trainTestBatch(), model.StepOptions{LabelSmoothing: 0.1, Backward: true})
					if err != nil {
						t.Fatal(err)
					}
					r.res = append(r.res, res)
				}
				r.grads = gradients(net, be)
				return r
			}
			var calls [3]int
			got, plain := run(sumCPU{cpu.New(1), true, &calls}), run(cpu.New(1))
			checkSameSteps(t, "sums handed on", got, "formed", plain)
			if want := !c.EncoderNormalizeBefore; want != (calls[0] > 0) || calls[1]+calls[2] != 0 {
				t.Errorf("calls with two parts %v (Post-LN %v)", calls, want)
			}
		})
	}
}
