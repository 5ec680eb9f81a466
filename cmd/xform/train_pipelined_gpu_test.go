package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/xform-dev/xform/convert"
)

// timingFields are the wall-clock parts of fairseq's log lines and the save directory.
var timingFields = regexp.MustCompile(`(wps|ups|wall|train_wall)[= ][0-9.]+|\((writing took )?[0-9.e-]+ seconds\)|/\S+/(pipe|sync)/`)

// TestTrainPipelinedGPU: xform train --bf16 on the GPU queues update k+1 before logging
// update k; with --sync-each-update it reads each update first. Both must log the same
// numbers, save at the same updates and leave the same weights, bit for bit (the device
// runs the same kernels on the same data either way). 12 updates over the fixture's
// epochs with a save every 5 updates (tinyTrainArgs), dropout on, so the saves and the
// epoch ends (where the loop finishes an update before queueing the next) are crossed.
func TestTrainPipelinedGPU(t *testing.T) {
	needGPU(t)
	tmp := t.TempDir()
	run := func(name string, extra ...string) []string {
		args := tinyTrainArgs(filepath.Join(tmp, name), 12, append([]string{"--device", "cuda", "--bf16"}, extra...)...)
		out, err := runXform(args...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "| epoch") || strings.HasPrefix(l, "| saved") {
				lines = append(lines, timingFields.ReplaceAllString(l, "T"))
			}
		}
		return lines
	}
	piped := run("pipe")
	synced := run("sync", "--sync-each-update")
	if len(piped) == 0 || strings.Join(piped, "\n") != strings.Join(synced, "\n") {
		t.Fatalf("pipelined log\n%s\nwith --sync-each-update\n%s", strings.Join(piped, "\n"), strings.Join(synced, "\n"))
	}
	ckpts, _ := filepath.Glob(filepath.Join(tmp, "sync", "*.pt"))
	if len(ckpts) < 3 {
		t.Fatalf("%d checkpoints saved, want the two interval saves and the last at least: %v", len(ckpts), ckpts)
	}
	for _, c := range ckpts {
		name := filepath.Base(c)
		a, err := convert.LoadCheckpoint(filepath.Join(tmp, "pipe", name))
		if err != nil {
			t.Fatalf("pipelined run: %v", err)
		}
		b, err := convert.LoadCheckpoint(c)
		if err != nil {
			t.Fatal(err)
		}
		for k, w := range b.Params {
			x, _ := a.Params[k].F32()
			y, _ := w.F32()
			for i := range y {
				if x[i] != y[i] {
					t.Fatalf("%s: %s[%d] pipelined %v, step by step %v", name, k, i, x[i], y[i])
				}
			}
		}
	}
	if _, err := os.Stat(filepath.Join(tmp, "pipe", "checkpoint_last.pt")); err != nil {
		t.Error(err)
	}
}
