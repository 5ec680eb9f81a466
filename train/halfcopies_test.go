package train_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train"
)

// The protocol between the trainer and the net's 16-bit weight copies
// (kernels.RoundingOptimizer, model.TrainNet.roundWeights), on the CPU: halfFake gives
// the CPU backend 16-bit buffers that are float32 buffers and a rounding that is the
// identity, so a copy is right exactly when it equals its weight. The CPU Linear does not
// read the copies, so the fake checks them itself where every forward passes (the loss):
// a stale copy there is a step that would have multiplied an old weight.

// halfFake is the CPU backend with kernels.HalfBuffers, kernels.HalfRounder and
// kernels.RoundingOptimizer (rounds: RoundsUpdates). It embeds the Trainer interface
// only, so it is a ClippedOptimizer or MultiTensor only through the wrappers below.
type halfFake struct {
	kernels.Trainer
	c      *cpu.Backend
	rounds bool
	// dst and src are the pairs of the first RoundAll: every copy and its weight.
	dst, src []kernels.Buffer
	// roundAlls and rounded count RoundAll calls and updates that wrote the copies;
	// stale counts forwards that found a copy different from its weight.
	roundAlls, rounded, stale int
	firstStale                string
	poison                    [][]int32
}

func newHalfFake(rounds bool) *halfFake {
	c := cpu.New(2)
	return &halfFake{Trainer: c, c: c, rounds: rounds}
}

func (f *halfFake) AllocHalf(n int) kernels.Buffer { return f.c.Alloc(n) }

func (f *halfFake) RoundAll(dst, src []kernels.Buffer) {
	f.roundAlls++
	if f.dst == nil {
		f.dst, f.src = dst, src
	}
	for i := range dst {
		copy(cpu.Data(dst[i]), cpu.Data(src[i]))
	}
}

func (f *halfFake) RoundsUpdates() bool { return f.rounds }

// writeCopies is what the rounding update promises: every listed copy range holds its
// weight after the call, updated or not.
func (f *halfFake) writeCopies(p []kernels.Buffer, half []kernels.HalfTarget) {
	if !f.rounds {
		panic("rounding update called while RoundsUpdates is false")
	}
	f.rounded++
	for i, t := range half {
		if t.Buf != nil {
			copy(cpu.Data(t.Buf)[t.Off:t.Off+p[i].Len()], cpu.Data(p[i]))
		}
	}
}

func (f *halfFake) AdamStepClippedRounded(p, g, m, v []kernels.Buffer, half []kernels.HalfTarget, pre float32, maxNorm float64, s kernels.OptimStep) func() float64 {
	norm := f.c.AdamStepClipped(p, g, m, v, pre, maxNorm, s)()
	f.writeCopies(p, half)
	return func() float64 { return norm }
}

func (f *halfFake) AdamStepAllRounded(p, g, m, v []kernels.Buffer, half []kernels.HalfTarget, s kernels.OptimStep) {
	for i := range p {
		f.c.AdamStep(p[i], g[i], m[i], v[i], s)
	}
	f.writeCopies(p, half)
}

// LabelSmoothedLoss checks the copies (the forward before it read them), then poisons
// dlogits as infBackend does.
func (f *halfFake) LabelSmoothedLoss(dlogits, logits kernels.Buffer, targets []int32, rows, V int, eps float32, ignore int32, scale float32) (float64, float64) {
	for i := range f.dst {
		d, s := cpu.Data(f.dst[i]), cpu.Data(f.src[i])
		for j := range s {
			if math.Float32bits(d[j]) != math.Float32bits(s[j]) {
				if f.stale == 0 {
					f.firstStale = fmt.Sprintf("copy %d element %d: %v, weight %v (forward %d)", i, j, d[j], s[j], f.roundAlls)
				}
				f.stale++
				break
			}
		}
	}
	loss, nll := f.c.LabelSmoothedLoss(dlogits, logits, targets, rows, V, eps, ignore, scale)
	if dlogits != nil {
		for _, p := range f.poison {
			if slices.Equal(p, targets) {
				f.c.Fill(dlogits, float32(math.Inf(1)))
			}
		}
	}
	return loss, nll
}

// clippedFake adds the CPU's kernels.ClippedOptimizer (the trainer's fused path).
type clippedFake struct{ *halfFake }

func (f clippedFake) AdamStepClipped(p, g, m, v []kernels.Buffer, pre float32, maxNorm float64, s kernels.OptimStep) func() float64 {
	return f.c.AdamStepClipped(p, g, m, v, pre, maxNorm, s)
}

// multiFake adds kernels.MultiTensor from the per-buffer CPU operations (the trainer's
// separate path through Optimizer.Step's list update).
type multiFake struct{ *halfFake }

func (f multiFake) SumSquaresAll(xs []kernels.Buffer) float64 {
	var s float64
	for _, x := range xs {
		s += f.c.SumSquares(x)
	}
	return s
}

func (f multiFake) ScaleAll(xs []kernels.Buffer, a float32) {
	for _, x := range xs {
		f.c.Scale(x, a)
	}
}

func (f multiFake) AdamStepAll(p, g, m, v []kernels.Buffer, s kernels.OptimStep) {
	for i := range p {
		f.c.AdamStep(p[i], g[i], m[i], v[i], s)
	}
}

func (f multiFake) FillAll(xs []kernels.Buffer, v float32) {
	for _, x := range xs {
		f.c.Fill(x, v)
	}
}

func (f *halfFake) checkFresh(t *testing.T, what string) {
	t.Helper()
	if f.stale > 0 {
		t.Fatalf("%s: %d forwards read a stale copy; first: %s", what, f.stale, f.firstStale)
	}
}

// TestHalfCopiesProtocol: with a backend whose update writes the copies (the fused
// clipped update, or the list update of the separate path) only the first step rounds
// them; with one that cannot (RoundsUpdates false) or whose updates the net does not run
// (Optimizer.Step's per-buffer path) every update is followed by a RoundAll. Updates of
// one and of two sub-batches (update-freq 2: the second forward must not round again),
// shared and separate decoder embeddings (the tied projection's copy is the embedding
// parameter's), and in every case no forward reads a stale copy and the weights are the
// bits of the plain CPU run.
func TestHalfCopiesProtocol(t *testing.T) {
	sp := fixtureSplit(t, "train")
	shared := tinyModel(t, sp)
	c := shared.Config
	c.ShareAllEmbeddings, c.ShareDecoderInputOutputEmbed = false, true
	split, err := train.InitModel(c, 8)
	if err != nil {
		t.Fatal(err)
	}
	c.ShareDecoderInputOutputEmbed = false
	untied, err := train.InitModel(c, 9)
	if err != nil {
		t.Fatal(err)
	}
	batches := epochBatches(t, sp)[:6]
	groups := [][]*model.TrainBatch{batches[:1], batches[1:3], batches[3:4], batches[4:6]}
	forwards := len(batches)
	for _, mc := range []struct {
		name string
		m    *model.Model
	}{{"shared embeddings", shared}, {"tied decoder embedding", split}, {"untied output projection", untied}} {
		ref := newStepper(t, mc.m, cpu.New(2), nil)
		for _, g := range groups {
			if _, err := ref.Step(context.Background(), g); err != nil {
				t.Fatal(err)
			}
		}
		want := weights(ref.Net)
		for _, bc := range []struct {
			name              string
			be                func(*halfFake) kernels.Trainer
			rounds            bool
			roundAlls, update int
		}{
			{"fused clipped, rounding", func(f *halfFake) kernels.Trainer { return clippedFake{f} }, true, 1, len(groups)},
			{"fused clipped, not rounding", func(f *halfFake) kernels.Trainer { return clippedFake{f} }, false, len(groups), 0},
			{"list update, rounding", func(f *halfFake) kernels.Trainer { return multiFake{f} }, true, 1, len(groups)},
			{"per-buffer update", func(f *halfFake) kernels.Trainer { return f }, true, len(groups), 0},
		} {
			t.Run(mc.name+"/"+bc.name, func(t *testing.T) {
				f := newHalfFake(bc.rounds)
				s := newStepper(t, mc.m, bc.be(f), nil)
				for _, g := range groups {
					if _, err := s.Step(context.Background(), g); err != nil {
						t.Fatal(err)
					}
				}
				f.checkFresh(t, "training")
				if f.roundAlls != bc.roundAlls || f.rounded != bc.update {
					t.Errorf("%d forwards, %d updates: %d RoundAll, %d rounding updates; want %d and %d",
						forwards, len(groups), f.roundAlls, f.rounded, bc.roundAlls, bc.update)
				}
				if len(f.dst) == 0 {
					t.Fatal("the net made no copies")
				}
				if err := sameBits(weights(s.Net), want); err != nil {
					t.Errorf("weights differ from the plain CPU run: %v", err)
				}
			})
		}
	}
}

// TestHalfCopiesStaleAfterWrites: after fused updates the copies are trusted; anything
// that may write the weights makes the next step round them again: Params (the
// optimizer's checkpoint state reads through it, so a save costs a RoundAll),
// WeightsChanged after writing through buffers held from an earlier Params call, and a
// new net from the saved model (a checkpoint load).
func TestHalfCopiesStaleAfterWrites(t *testing.T) {
	sp := fixtureSplit(t, "train")
	m := tinyModel(t, sp)
	batches := epochBatches(t, sp)[:8]
	f := newHalfFake(true)
	s := newStepper(t, m, clippedFake{f}, nil)
	step := func(i int) {
		t.Helper()
		if _, err := s.Step(context.Background(), batches[i:i+1]); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(what string, n int) {
		t.Helper()
		f.checkFresh(t, what)
		if f.roundAlls != n {
			t.Fatalf("%s: %d RoundAll calls, want %d", what, f.roundAlls, n)
		}
	}
	step(0)
	step(1)
	expect("two fused updates", 1)

	s.Opt.State(s.Net) // a checkpoint save reads the parameters through Params
	step(2)
	expect("after a checkpoint save", 2)
	step(3)
	expect("the update after", 2)

	held := s.Net.Params()
	step(4)
	expect("Params taken", 3)
	for _, p := range held {
		d := cpu.Data(p.P)
		for j := range d {
			d[j] *= 0.5
		}
	}
	s.Net.WeightsChanged()
	step(5)
	expect("weights halved through held buffers", 4)

	// A checkpoint load: a new net from the saved weights rounds its own copies.
	reloaded, err := model.NewTrainNet(s.Net.Model(), clippedFake{f})
	if err != nil {
		t.Fatal(err)
	}
	f.dst, f.src = nil, nil
	s.Net = reloaded
	if err := s.Opt.Restore(s.Net, s.Opt.State(s.Net)); err != nil {
		t.Fatal(err)
	}
	step(6)
	expect("reloaded net", 5)
	step(7)
	expect("its next fused update", 5)
}

// TestHalfCopiesSkippedUpdate: an fp16 overflow (a non-finite gradient) makes the fused
// update change nothing; the copies still equal the unchanged weights, so the next step
// does not round them either, and training goes on with fresh copies.
func TestHalfCopiesSkippedUpdate(t *testing.T) {
	sp := fixtureSplit(t, "train")
	m := tinyModel(t, sp)
	batches := epochBatches(t, sp)[:5]
	f := newHalfFake(true)
	f.poison = [][]int32{batches[2].Target}
	s := newStepper(t, m, clippedFake{f}, mustScaler(t, train.LossScaleConfig{InitScale: 128, Window: 1000, MinScale: 1e-4}))
	overflows := 0
	for _, b := range batches {
		lg, err := s.Step(context.Background(), []*model.TrainBatch{b})
		if err != nil {
			t.Fatal(err)
		}
		if lg.Overflow {
			overflows++
		}
	}
	f.checkFresh(t, "with an overflow")
	if overflows != 1 || f.roundAlls != 1 || f.rounded != len(batches) {
		t.Errorf("%d overflows, %d RoundAll, %d rounding updates; want 1, 1, %d", overflows, f.roundAlls, f.rounded, len(batches))
	}
}

// TestHalfCopiesCPUUnaffected: the CPU backend keeps no copies; the net's update methods
// are its plain ClippedOptimizer update.
func TestHalfCopiesCPUUnaffected(t *testing.T) {
	sp := fixtureSplit(t, "train")
	m := tinyModel(t, sp)
	batches := epochBatches(t, sp)[:3]
	a := newStepper(t, m, cpu.New(2), nil)
	b := newStepper(t, m, &infBackend{Trainer: cpu.New(2)}, nil) // separate operations
	for _, x := range batches {
		for _, s := range []*train.Stepper{a, b} {
			if _, err := s.Step(context.Background(), []*model.TrainBatch{x}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := sameBits(weights(a.Net), weights(b.Net)); err != nil {
		t.Error(err)
	}
}
