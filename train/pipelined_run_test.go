package train_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/train"
)

// TestRunPipelinedSameLog: Run on a backend with deferred reads (it queues update k+1
// before logging update k) logs, saves and ends exactly as Run updating one step at a
// time: the same log lines (times left out), the saves at the same updates with the
// same progress and weights, the same final weights. The run spans two epochs (the
// last update of an epoch, validation, the meters' resets at the log interval) and
// saves every 3 updates; --max-update 20 ends it in the second epoch (14 updates each).
func TestRunPipelinedSameLog(t *testing.T) {
	sp := fixtureSplit(t, "train")
	m := tinyModel(t, sp)
	dir := t.TempDir() // the same in both runs: the log names the checkpoints
	for _, interval := range []int{1, 2} {
		type saved struct {
			paths   []string
			updates int
			iters   int
			weights map[string][]float32
		}
		run := func(pipelined bool) ([]string, []saved, *train.Stepper) {
			var be kernels.Trainer = cpu.New(2)
			if pipelined {
				be = deferredCPU{cpu.New(2)}
			}
			s := newStepper(t, m, be, nil)
			if s.Pipelined() != pipelined {
				t.Fatalf("Pipelined() = %v, want %v", s.Pipelined(), pipelined)
			}
			var log bytes.Buffer
			var saves []saved
			cfg := train.RunConfig{Batch: tinyBatching(), MaxUpdate: 20, ValidSubset: "valid", SaveDir: dir, SaveIntervalUpdates: 3,
				NoEpochCheckpoints: true, LogFormat: "simple", LogInterval: interval, Log: &log,
				Save: func(paths []string, snap *train.Snapshot) error {
					w := map[string][]float32{}
					for name, p := range snap.Model.Params {
						v, _ := p.F32()
						w[name] = append([]float32(nil), v...)
					}
					var names []string
					for _, p := range paths {
						names = append(names, filepath.Base(p))
					}
					saves = append(saves, saved{names, snap.Progress.NumUpdates, snap.Progress.IterationsInEpoch, w})
					return nil
				}}
			if _, err := train.Run(context.Background(), s, &train.Data{Train: sp, Valid: fixtureSplit(t, "valid")}, cfg, train.Progress{}); err != nil {
				t.Fatal(err)
			}
			return logLines(log.String()), saves, s
		}
		plainLog, plainSaves, ps := run(false)
		pipeLog, pipeSaves, qs := run(true)
		if strings.Join(pipeLog, "\n") != strings.Join(plainLog, "\n") {
			t.Errorf("log interval %d: pipelined log\n%s\nstep by step\n%s", interval, strings.Join(pipeLog, "\n"), strings.Join(plainLog, "\n"))
		}
		if len(plainSaves) < 3 || len(pipeSaves) != len(plainSaves) {
			t.Fatalf("log interval %d: %d saves pipelined, %d step by step (want the same, at least 3)", interval, len(pipeSaves), len(plainSaves))
		}
		for i := range plainSaves {
			a, b := pipeSaves[i], plainSaves[i]
			if a.updates != b.updates || a.iters != b.iters || strings.Join(a.paths, ",") != strings.Join(b.paths, ",") {
				t.Errorf("save %d: pipelined at update %d (iteration %d) %v, step by step %d (%d) %v", i, a.updates, a.iters, a.paths, b.updates, b.iters, b.paths)
			}
			for name, w := range b.weights {
				if err := sameBits(map[string][]float32{name: a.weights[name]}, map[string][]float32{name: w}); err != nil {
					t.Errorf("save %d (update %d): %v", i, b.updates, err)
					break
				}
			}
		}
		if qs.NumUpdates != 20 || ps.NumUpdates != 20 {
			t.Errorf("updates: pipelined %d, step by step %d; want 20", qs.NumUpdates, ps.NumUpdates)
		}
		if err := sameBits(weights(qs.Net), weights(ps.Net)); err != nil {
			t.Errorf("final weights: %v", err)
		}
	}
}
