package train_test

import (
	"context"
	"errors"
	"math"
	"slices"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train"
)

// fusedInf is infBackend that also offers the CPU backend's kernels.ClippedOptimizer,
// so a Stepper on it takes the fused update, while one on infBackend alone (which
// embeds the Trainer interface only) takes the separate multiply, norm, clipping and
// Adam. calls counts the fused updates.
type fusedInf struct {
	*infBackend
	co    kernels.ClippedOptimizer
	calls *int
}

func (b fusedInf) AdamStepClipped(p, g, m, v []kernels.Buffer, pre float32, maxNorm float64, s kernels.OptimStep) func() float64 {
	*b.calls++
	return b.co.AdamStepClipped(p, g, m, v, pre, maxNorm, s)
}

func moments(s *train.Stepper) map[string][]float32 {
	out := map[string][]float32{}
	for i, p := range s.Net.Params() {
		m, v := s.Opt.Moments(i)
		out[p.Name+".m"] = append([]float32(nil), cpu.Data(m)...)
		out[p.Name+".v"] = append([]float32(nil), cpu.Data(v)...)
	}
	return out
}

// TestClippedStepSameBits: Stepper.Step through kernels.ClippedOptimizer (the GPU's
// path; here the CPU backend's reference implementation) gives the bits of the
// separate operations — weights, both moments, the logged norm and every counter —
// without clipping, with clipping at the median norm (so some updates clip and some do
// not), and with fp16 loss scaling whose overflows at batches 3 and 5 must skip the
// update. Without a scaler the same overflows are divergences: both paths stop with
// ErrDiverged and change nothing. The comparison is exact: the fused update promises
// the same float32 products in the same order.
func TestClippedStepSameBits(t *testing.T) {
	sp := fixtureSplit(t, "train")
	m := tinyModel(t, sp)
	batches := epochBatches(t, sp)[:7]
	poison := [][]int32{batches[2].Target, batches[4].Target}

	// The norms of an unclipped run place the clipping threshold.
	probe := newStepper(t, m, &infBackend{Trainer: cpu.New(2)}, nil)
	var norms []float64
	for _, b := range batches {
		lg, err := probe.Step(context.Background(), []*model.TrainBatch{b})
		if err != nil {
			t.Fatal(err)
		}
		norms = append(norms, lg.GNorm)
	}
	slices.Sort(norms)
	median := norms[len(norms)/2]

	for _, c := range []struct {
		name   string
		clip   float64
		scaler bool
		poison bool
	}{
		{"no clipping", 0, false, false},
		{"clipping at the median norm", median, false, false},
		{"fp16 scaling with overflows, clipping", median, true, true},
		{"overflows without a scaler diverge", median, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var pz [][]int32
			if c.poison {
				pz = poison
			}
			newScaler := func() *train.LossScaler {
				if !c.scaler {
					return nil
				}
				return mustScaler(t, train.LossScaleConfig{InitScale: 128, Window: 3, MinScale: 1e-4})
			}
			ref := newStepper(t, m, &infBackend{Trainer: cpu.New(2), poison: pz}, newScaler())
			if _, ok := ref.Net.Backend().(kernels.ClippedOptimizer); ok {
				t.Fatal("the reference backend offers the fused update")
			}
			calls := 0
			got := newStepper(t, m, fusedInf{&infBackend{Trainer: cpu.New(2), poison: pz}, cpu.New(2), &calls}, newScaler())
			ref.Cfg.ClipNorm, got.Cfg.ClipNorm = c.clip, c.clip
			clipped, diverged := 0, 0
			for k, b := range batches {
				rl, rerr := ref.Step(context.Background(), []*model.TrainBatch{b})
				gl, gerr := got.Step(context.Background(), []*model.TrainBatch{b})
				if (rerr == nil) != (gerr == nil) || rerr != nil && rerr.Error() != gerr.Error() {
					t.Fatalf("update %d: errors %v (separate) and %v (fused)", k+1, rerr, gerr)
				}
				if rerr != nil {
					if !errors.Is(gerr, train.ErrDiverged) {
						t.Fatalf("update %d: %v", k+1, gerr)
					}
					diverged++
				}
				if math.IsNaN(gl.GNorm) && math.IsNaN(rl.GNorm) {
					gl.GNorm, rl.GNorm = 0, 0 // NaN ≠ NaN; both NaN is agreement
				}
				if gl != rl {
					t.Fatalf("update %d: fused %+v, separate %+v", k+1, gl, rl)
				}
				if gl.Clipped {
					clipped++
				}
				if got.NumUpdates != ref.NumUpdates || got.Opt.Steps() != ref.Opt.Steps() {
					t.Fatalf("update %d: updates %d/%d, optimizer steps %d/%d (fused/separate)", k+1,
						got.NumUpdates, ref.NumUpdates, got.Opt.Steps(), ref.Opt.Steps())
				}
				if err := sameBits(weights(got.Net), weights(ref.Net)); err != nil {
					t.Fatalf("update %d: weights differ: %v", k+1, err)
				}
				if err := sameBits(moments(got), moments(ref)); err != nil {
					t.Fatalf("update %d: moments differ: %v", k+1, err)
				}
			}
			if calls != len(batches) {
				t.Errorf("%d fused updates for %d batches", calls, len(batches))
			}
			wantDiverged := 0
			if c.poison && !c.scaler {
				wantDiverged = len(poison)
			}
			if diverged != wantDiverged {
				t.Errorf("%d updates diverged, want %d", diverged, wantDiverged)
			}
			if c.clip > 0 && (clipped == 0 || clipped == got.NumUpdates) {
				t.Errorf("%d of %d updates clipped: the case does not cover both sides", clipped, got.NumUpdates)
			}
			t.Logf("%d updates, %d clipped, %d diverged, median norm %.6g", got.NumUpdates, clipped, diverged, median)
		})
	}
}

// The fused update on a non-finite norm leaves the weights and moments alone and says
// so through the norm; the optimizer does not count the step.
func TestClippedStepSkipsNonFinite(t *testing.T) {
	be := cpu.New(1)
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
		p, g := be.Upload([]float32{1, 2, 3}), be.Upload([]float32{0.5, bad, 1})
		m, v := be.Upload([]float32{0.1, 0.2, 0.3}), be.Upload([]float32{0.01, 0.02, 0.03})
		s := kernels.OptimStep{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, StepSize: 1e-3, Update: true}
		n := be.AdamStepClipped([]kernels.Buffer{p}, []kernels.Buffer{g}, []kernels.Buffer{m}, []kernels.Buffer{v}, 0.5, 1, s)()
		if !math.IsNaN(n) && !math.IsInf(n, 0) {
			t.Errorf("gradient with %v: norm %v", bad, n)
		}
		for _, c := range []struct {
			name string
			b    kernels.Buffer
			want []float32
		}{{"p", p, []float32{1, 2, 3}}, {"m", m, []float32{0.1, 0.2, 0.3}}, {"v", v, []float32{0.01, 0.02, 0.03}}} {
			if got := cpu.Data(c.b); !slices.Equal(got, c.want) {
				t.Errorf("gradient with %v: %s = %v, want unchanged %v", bad, c.name, got, c.want)
			}
		}
	}
}
