package model_test

import (
	"context"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
)

// poisonScopes is the CPU backend with kernels.Scoper: at EndScope it fills every buffer
// that Alloc or Upload returned inside the scope with NaN, as a GPU backend hands their
// memory to the next user. Any result that still reads such a buffer after its scope
// turns into NaN or differs from a run without scopes, which the tests below detect.
type poisonScopes struct {
	*cpu.Backend
	open   [][]kernels.Buffer
	closed int // scopes ended, and buffers poisoned in them
	bufs   int
}

func (p *poisonScopes) record(b kernels.Buffer) kernels.Buffer {
	if n := len(p.open); n > 0 {
		p.open[n-1] = append(p.open[n-1], b)
	}
	return b
}

func (p *poisonScopes) Alloc(n int) kernels.Buffer        { return p.record(p.Backend.Alloc(n)) }
func (p *poisonScopes) Upload(v []float32) kernels.Buffer { return p.record(p.Backend.Upload(v)) }
func (p *poisonScopes) BeginScope()                       { p.open = append(p.open, nil) }
func (p *poisonScopes) EndScope() {
	top := p.open[len(p.open)-1]
	p.open = p.open[:len(p.open)-1]
	for _, b := range top {
		p.Backend.Fill(b, float32(math.NaN()))
	}
	p.closed++
	p.bufs += len(top)
}

var _ kernels.Scoper = (*poisonScopes)(nil)

// The training step and beam search end their scopes only when nothing they allocated
// is needed any more: with every scoped buffer poisoned at EndScope, two training steps
// (gradients accumulate into buffers made outside the scope) and a beam search give the
// same bits as without scopes.
func TestScopedBuffersAreDeadAtEndScope(t *testing.T) {
	for name, c := range trainConfigs() {
		t.Run(name, func(t *testing.T) {
			m := trainTestModel(c, 11)
			type result struct {
				res   []model.StepResult
				grads [][]float32
				hyps  [][]model.Hypothesis
			}
			run := func(be kernels.Trainer) result {
				var r result
				net, err := model.NewTrainNet(m, be)
				if err != nil {
					t.Fatal(err)
				}
				b := trainTestBatch()
				rng := rand.New(rand.NewPCG(3, 3))
				for k := 0; k < 2; k++ {
					res, err := net.Step(context.Background(), b, model.StepOptions{LabelSmoothing: 0.1, Backward: true,
						Train: true, Dropout: 0.1, AttentionDropout: 0.1, ActivationDropout: 0.1, RNG: rng})
					if err != nil {
						t.Fatal(err)
					}
					r.res = append(r.res, res)
				}
				r.grads = gradients(net, be)
				runner, err := model.NewRunner(m, be)
				if err != nil {
					t.Fatal(err)
				}
				if r.hyps, err = runner.Generate(context.Background(), b.Src, b.B, b.S,
					model.BeamOptions{Beam: 3, NBest: 2, MaxLenA: 0, MaxLenB: 6, LenPenalty: 1}); err != nil {
					t.Fatal(err)
				}
				return r
			}
			ps := &poisonScopes{Backend: cpu.New(1)}
			scoped, plain := run(ps), run(cpu.New(1))
			if ps.closed < 3 || ps.bufs == 0 {
				t.Fatalf("%d scopes with %d buffers ended: the step and the search did not open scopes", ps.closed, ps.bufs)
			}
			checkSameSteps(t, "scoped", stepRun{res: scoped.res, grads: scoped.grads}, "plain", stepRun{res: plain.res, grads: plain.grads})
			if !reflect.DeepEqual(scoped.hyps, plain.hyps) {
				t.Errorf("hypotheses differ:\nscoped %v\nplain  %v", scoped.hyps, plain.hyps)
			}
		})
	}
}
