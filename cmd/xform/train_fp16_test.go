package main

import (
	"io"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/kernels/cuda"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train"
)

// The mixed-precision flags are refused on the CPU before any work (the CPU backend
// has no 16-bit GEMMs), --fp16 and --bf16 exclude each other, and the fairseq spellings
// parse. All are usage errors (exit 2).
func TestMixedPrecisionFlagErrors(t *testing.T) {
	data := fx + "clinic/data-bin"
	base := []string{"train", data, "--max-tokens", "4096", "--no-save", "--max-update", "1"}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"fp16 on cpu", append(base, "--fp16", "--device", "cpu"), "--fp16 needs a GPU (--device cuda)"},
		{"bf16 on cpu", append(base, "--bf16", "--device", "cpu"), "--bf16 needs a GPU (--device cuda)"},
		{"memory-efficient-fp16 on cpu", append(base, "--memory-efficient-fp16", "--device", "cpu"), "--fp16 needs a GPU"},
		{"fp16 and bf16", append(base, "--fp16", "--bf16"), "exclude each other"},
		{"fairseq's flags on cpu", append(base, "--fp16", "--fp16-init-scale", "1024", "--fp16-scale-window", "256",
			"--fp16-scale-tolerance", "0.25", "--threshold-loss-scale", "1", "--min-loss-scale", "0.5", "--device", "cpu"), "needs a GPU"},
		{"per-epoch update-freq without a window", append(base, "--fp16", "--update-freq", "2,4", "--device", "cuda"), "--fp16-scale-window must be given"},
		{"bad window", append(base, "--fp16", "--fp16-scale-window", "0", "--device", "cuda"), "scale window"},
		{"bad init scale", append(base, "--fp16", "--fp16-init-scale", "0", "--device", "cuda"), "initial scale"},
		{"bench fp16 on cpu", []string{"bench", "--fp16", "--device", "cpu", "--updates", "1", "--warmup", "0"}, "--fp16 needs a GPU"},
		{"bench bf16 on cpu, generate", []string{"bench", "--mode", "generate", "--bf16", "--device", "cpu"}, "--bf16 needs a GPU"},
	}
	if !cuda.Probe(cuda.DefaultSearch()).Usable {
		// Without a GPU the automatic device cannot fall back to the CPU either.
		cases = append(cases, struct {
			name string
			args []string
			want string
		}{"fp16, no GPU, automatic device", append(base, "--fp16"), "--fp16 needs a GPU (--device cuda), and none is usable"})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := runXform(c.args...)
			if err == nil || !strings.Contains(err.Error(), c.want) || exitCode(err) != exitUsage {
				t.Fatalf("want a usage error with %q, got %v (exit %d)\n%s", c.want, err, exitCode(err), out)
			}
			if strings.Contains(out, "| epoch") {
				t.Fatalf("training started:\n%s", out)
			}
		})
	}
}

// The precision and the window follow the flags: fairseq's default window is
// 2**14 / update-freq (a float: 5461.33 for 3).
func TestMixedPrecisionFlagValues(t *testing.T) {
	for _, c := range []struct {
		args   []string
		prec   cuda.Precision
		window float64
	}{
		{nil, cuda.FP32, 0},
		{[]string{"--bf16"}, cuda.BF16, 0},
		{[]string{"--fp16"}, cuda.FP16, 16384},
		{[]string{"--memory-efficient-fp16"}, cuda.FP16, 16384},
		{[]string{"--fp16", "--update-freq", "3"}, cuda.FP16, 16384.0 / 3},
		{[]string{"--fp16", "--update-freq", "2,4", "--fp16-scale-window", "100"}, cuda.FP16, 100},
	} {
		var f trainFlags
		cmd := &cobra.Command{Use: "train"}
		f.register(cmd, true)
		f.mixed.register(cmd)
		if err := cmd.ParseFlags(c.args); err != nil {
			t.Fatal(err)
		}
		if err := f.setPrecision(); err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		ufs, _ := parseFloats(f.updateFreq, "update-freq")
		var uf []int
		for _, v := range ufs {
			uf = append(uf, int(v))
		}
		sc, err := f.lossScaler(uf)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if f.device.precision != c.prec || (sc == nil) != (c.window == 0) {
			t.Fatalf("%v: precision %v, scaler %v", c.args, f.device.precision, sc)
		}
		if sc != nil && (sc.Cfg.Window != c.window || sc.Scale() != 128 || sc.Cfg.MinScale != 1e-4 || sc.Cfg.Tolerance != 0 || sc.Cfg.Threshold != 0) {
			t.Errorf("%v: scaler %+v (scale %g), want window %g and fairseq's defaults", c.args, sc.Cfg, sc.Scale(), c.window)
		}
	}
}

// The loss scaler's whole state survives a checkpoint written by xform train (it is part
// of extra_state.xform_progress), so a resumed --fp16 run rescales exactly as the
// uninterrupted one.
func TestCheckpointKeepsLossScaler(t *testing.T) {
	m, err := convert.LoadCheckpoint(fx + "clinic/runs/a_admin/ckpt_u1/checkpoint_last.pt")
	if err != nil {
		t.Fatal(err)
	}
	net, opt := cpuRAdam(t, m)
	want := train.ScalerState{Scale: 0.03125, Iter: 1234, LastOverflowIter: 1200, LastRescaleIter: 1190, OverflowsSinceRescale: 3}
	s := scaledStepper(t, net, opt, want)
	path := filepath.Join(t.TempDir(), "checkpoint_last.pt")
	cs := &checkpointSaver{log: io.Discard}
	if err := cs.save([]string{path}, s.Snapshot(train.Progress{Epoch: 3, IterationsInEpoch: 5, BatchesInEpoch: 5}, math.NaN())); err != nil {
		t.Fatal(err)
	}
	im, err := convert.Import(path)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	prog, _, ok, err := restoreTraining(im.Checkpoint, im.Model, "radam", io.Discard)
	if err != nil || !ok {
		t.Fatalf("restore: %v (ok %v)", err, ok)
	}
	if prog.LossScaler == nil || *prog.LossScaler != want {
		t.Fatalf("restored scaler state %+v, want %+v", prog.LossScaler, want)
	}
	fresh, _ := train.NewLossScaler(train.LossScaleConfig{InitScale: 128, Window: 16384, MinScale: 1e-4})
	s2 := &train.Stepper{Net: net, Opt: opt, Sched: s.Sched, Scaler: fresh}
	if err := s2.Resume(prog, nil); err != nil {
		t.Fatal(err)
	}
	if fresh.State() != want {
		t.Errorf("resumed scaler %+v, want %+v", fresh.State(), want)
	}
	// A run without loss scaling writes no scaler state.
	s.Scaler = nil
	if err := cs.save([]string{path}, s.Snapshot(train.Progress{Epoch: 3}, math.NaN())); err != nil {
		t.Fatal(err)
	}
	im2, err := convert.Import(path)
	if err != nil {
		t.Fatal(err)
	}
	defer im2.Close()
	if prog, _, _, err := restoreTraining(im2.Checkpoint, im2.Model, "radam", io.Discard); err != nil || prog.LossScaler != nil {
		t.Errorf("an fp32 checkpoint restores scaler state %+v (%v)", prog.LossScaler, err)
	}
}

// cpuRAdam places m on the CPU backend for training, with the fixtures' RAdam
// (β 0.9, 0.98, ε 1e-8), for the checkpoint-state tests.
func cpuRAdam(t *testing.T, m *model.Model) (*model.TrainNet, *train.Optimizer) {
	t.Helper()
	net, err := model.NewTrainNet(m, cpu.New(1))
	if err != nil {
		t.Fatal(err)
	}
	opt, err := train.NewOptimizer(net, train.OptimConfig{Name: "radam", Beta1: 0.9, Beta2: 0.98, Eps: 1e-8})
	if err != nil {
		t.Fatal(err)
	}
	return net, opt
}

// scaledStepper is a Stepper of net and opt at update 1000 with a fixed learning rate and
// a dynamic loss scaler in state st, for the checkpoint tests of the fp16 state.
func scaledStepper(t *testing.T, net *model.TrainNet, opt *train.Optimizer, st train.ScalerState) *train.Stepper {
	t.Helper()
	sched, err := train.NewSchedule(train.ScheduleConfig{Name: "fixed", LR: []float64{1e-3}})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := train.NewLossScaler(train.LossScaleConfig{InitScale: 128, Window: 16384, MinScale: 1e-4})
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.SetState(st); err != nil {
		t.Fatal(err)
	}
	return &train.Stepper{Net: net, Opt: opt, Sched: sched, Scaler: sc, NumUpdates: 1000}
}
