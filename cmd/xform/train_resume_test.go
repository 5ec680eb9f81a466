package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train"
)

// TestMain lets the resume tests run this test binary as the xform command, so a real
// process can be killed mid-run without building another binary.
func TestMain(m *testing.M) {
	if os.Getenv("XFORM_TEST_AS_MAIN") == "1" {
		os.Args = append([]string{"xform"}, strings.Fields(os.Getenv("XFORM_TEST_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// tinyTrainArgs is a 1+1-layer d16 Admin model on the fixture corpus: 14 updates per
// epoch at --max-tokens 4096, about 60 ms per update on 2 cores.
func tinyTrainArgs(saveDir string, maxUpdate int, extra ...string) []string {
	a := []string{"train", filepath.Join("..", "..", "fixtures", "clinic", "data-bin"), "--arch", "transformer_iwslt_de_en",
		"--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
		"--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
		"--share-all-embeddings", "--init", "adaptive", "--optimizer", "radam", "--adam-betas", "(0.9,0.98)", "--clip-norm", "0",
		"--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-init-lr", "1e-7", "--warmup-updates", "10", "--label-smoothing", "0.1",
		"--dropout", "0.1", "--attention-dropout", "0.1", "--relu-dropout", "0.1", "--max-tokens", "4096", "--seed", "7",
		"--max-update", fmt.Sprint(maxUpdate), "--save-interval-updates", "5", "--log-interval", "1", "--threads", "2", "--save-dir", saveDir}
	return append(a, extra...)
}

// startXform runs xform as a child process and returns it with a channel of its output lines.
func startXform(t *testing.T, args []string) (*exec.Cmd, <-chan string) {
	t.Helper()
	for _, a := range args {
		if strings.ContainsAny(a, " \t") {
			t.Fatalf("argument %q has spaces (passed through a whitespace-split variable)", a)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "XFORM_TEST_AS_MAIN=1", "XFORM_TEST_ARGS="+strings.Join(args, " "))
	pr, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return cmd, lines
}

// killWhen SIGKILLs the child at the first output line containing marker.
func killWhen(t *testing.T, cmd *exec.Cmd, lines <-chan string, marker string) []string {
	t.Helper()
	var seen []string
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				cmd.Wait()
				t.Fatalf("xform ended before printing %q:\n%s", marker, strings.Join(seen, "\n"))
			}
			seen = append(seen, l)
			if strings.Contains(l, marker) {
				if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				cmd.Wait()
				return seen
			}
		case <-timeout:
			cmd.Process.Kill()
			t.Fatalf("no %q after 2 minutes:\n%s", marker, strings.Join(seen, "\n"))
		}
	}
}

var timingField = regexp.MustCompile(`\b(wps|ups|wall|train_wall)([= ])[0-9.]+|writing took [0-9.e+-]+ seconds`)

// comparable keeps a run's log lines from the first one after prefix-matching start,
// with the timing fields and the save directory blanked.
func comparable(out, afterLine, dir string) []string {
	var keep []string
	on := afterLine == ""
	for _, l := range strings.Split(out, "\n") {
		if !on {
			on = strings.Contains(l, afterLine)
			continue
		}
		if !strings.HasPrefix(l, "| epoch") && !strings.HasPrefix(l, "| saved") {
			continue
		}
		l = strings.ReplaceAll(l, dir, "DIR")
		keep = append(keep, timingField.ReplaceAllString(l, "$1$2T"))
	}
	return keep
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Training that is SIGKILLed and resumed from checkpoint_last.pt logs the same losses,
// learning rates, gradient norms and validation results as an uninterrupted run from the
// resume point on, and ends with a byte-identical checkpoint (weights, RAdam moments,
// progress): dropout masks are a function of (seed, update), the epoch's batch order of
// (seed, epoch), and the checkpoint carries the position in the epoch, the optimizer and
// the log meters. Killing the process while it writes checkpoint_last.pt (the temporary
// file complete, not yet renamed) leaves the previous checkpoint_last.pt whole, and
// resuming from it still ends identical.
func TestTrainResumeAfterKillIsExact(t *testing.T) {
	const maxUpdate = 16 // crosses the end of epoch 1 (14 updates)
	tmp := t.TempDir()
	ref := filepath.Join(tmp, "ref")
	refOut, err := runXform(tinyTrainArgs(ref, maxUpdate)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, refOut)
	}
	refLast := readAll(t, filepath.Join(ref, "checkpoint_last.pt"))

	cases := []struct {
		name       string
		extra      []string
		killAt     string // kill at the first output line with this
		resumeFrom int    // updates in checkpoint_last.pt after the kill
	}{
		// After update 12 the last save was at update 10, mid-epoch 1.
		{"killed during training", nil, "num_updates=12,", 10},
		// The second save onto checkpoint_last.pt is at update 10; the first, at 5, survives.
		{"killed while writing checkpoint_last.pt", []string{"--debug-pause-before-rename", "2"}, "| paused before renaming", 5},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(tmp, strings.ReplaceAll(c.name, " ", "_"))
			cmd, lines := startXform(t, tinyTrainArgs(dir, maxUpdate, c.extra...))
			seen := killWhen(t, cmd, lines, c.killAt)
			last := filepath.Join(dir, "checkpoint_last.pt")
			im, err := convert.Import(last)
			if err != nil {
				t.Fatalf("checkpoint_last.pt after the kill: %v\n%s", err, strings.Join(seen, "\n"))
			}
			st, err := convert.ReadTrainingState(im.Checkpoint, im.Model)
			im.Close()
			if err != nil || st == nil || st.NumUpdates != c.resumeFrom {
				t.Fatalf("checkpoint_last.pt after the kill: state %+v, %v; want %d updates", st, err, c.resumeFrom)
			}
			// The surviving file is the one the uninterrupted run wrote at that update.
			want, err := convert.LoadCheckpoint(filepath.Join(ref, fmt.Sprintf("checkpoint_1_%d.pt", c.resumeFrom)))
			if err != nil {
				t.Fatal(err)
			}
			got, err := convert.LoadCheckpoint(last)
			if err != nil {
				t.Fatal(err)
			}
			for name, w := range want.Params {
				if !bytes.Equal(w.Data, got.Params[name].Data) {
					t.Fatalf("%s in checkpoint_last.pt differs from the uninterrupted run's at update %d", name, c.resumeFrom)
				}
			}

			stale, _ := filepath.Glob(filepath.Join(dir, ".checkpoint_last.pt.tmp-*"))
			out, err := runXform(tinyTrainArgs(dir, maxUpdate)...)
			if err != nil {
				t.Fatalf("resume: %v\n%s", err, out)
			}
			if left, _ := filepath.Glob(filepath.Join(dir, ".checkpoint*.tmp-*")); len(left) > 0 || (c.extra != nil && len(stale) != 1) {
				t.Errorf("temporaries: %d after the kill (want 1 when killed while writing), %v after the resume", len(stale), left)
			}
			if !strings.Contains(out, fmt.Sprintf("%d updates\n", c.resumeFrom)) {
				t.Fatalf("did not resume at update %d:\n%s", c.resumeFrom, out)
			}
			savedAt := fmt.Sprintf("checkpoint_1_%d.pt", c.resumeFrom)
			wantLines := comparable(refOut, savedAt, ref)
			gotLines := comparable(out, "| training on", dir)
			if len(gotLines) != len(wantLines) || len(gotLines) == 0 {
				t.Fatalf("resumed run logged %d lines, the uninterrupted run %d after %s:\n%s\n---\n%s", len(gotLines), len(wantLines),
					savedAt, strings.Join(gotLines, "\n"), strings.Join(wantLines, "\n"))
			}
			for i := range gotLines {
				if gotLines[i] != wantLines[i] {
					t.Errorf("line %d after resume:\n got %s\nwant %s", i, gotLines[i], wantLines[i])
				}
			}
			if !bytes.Equal(readAll(t, last), refLast) {
				t.Errorf("final checkpoint_last.pt differs from the uninterrupted run's")
			}
			t.Logf("resumed at update %d, %d log lines identical to the uninterrupted run's, final checkpoint byte-identical", c.resumeFrom, len(gotLines))
		})
	}
}

// A run stopped by --max-update in the middle of an epoch saves its position in the
// epoch (as fairseq's train_iterator does), so running on with a higher --max-update
// continues the epoch and ends with the uninterrupted run's weights and moments.
func TestTrainContinuesEpochCutByMaxUpdate(t *testing.T) {
	if testing.Short() {
		t.Skip("three training runs; the kill tests cover resume in -short")
	}
	tmp := t.TempDir()
	ref, dir := filepath.Join(tmp, "ref"), filepath.Join(tmp, "cut")
	if out, err := runXform(tinyTrainArgs(ref, 16)...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := runXform(tinyTrainArgs(dir, 12)...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "checkpoint1.pt")); err == nil {
		t.Errorf("checkpoint1.pt written for an epoch cut at update 12 of 14")
	}
	out, err := runXform(tinyTrainArgs(dir, 16)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "resuming at epoch 1 (12 batches in), 12 updates") || !strings.Contains(out, "| epoch 001:     13 / 14 ") {
		t.Fatalf("did not continue epoch 1 at batch 13:\n%s", out)
	}
	states := map[string]*convert.TrainingState{}
	models := map[string]*model.Model{}
	for _, d := range []string{ref, dir} {
		im, err := convert.Import(filepath.Join(d, "checkpoint_last.pt"))
		if err != nil {
			t.Fatal(err)
		}
		st, err := convert.ReadTrainingState(im.Checkpoint, im.Model)
		im.Close()
		if err != nil {
			t.Fatal(err)
		}
		states[d], models[d] = st, im.Model
	}
	for name, w := range models[ref].Params {
		if !bytes.Equal(w.Data, models[dir].Params[name].Data) {
			t.Errorf("%s differs from the uninterrupted run's", name)
		}
		a, b := states[ref], states[dir]
		if fmt.Sprint(a.ExpAvg[name]) != fmt.Sprint(b.ExpAvg[name]) || fmt.Sprint(a.ExpAvgSq[name]) != fmt.Sprint(b.ExpAvgSq[name]) {
			t.Errorf("moments of %s differ from the uninterrupted run's", name)
		}
	}
	if s := states[dir]; s.NumUpdates != 16 || s.Step != 16 || s.Epoch != 2 || s.IterationsInEpoch != 2 {
		t.Errorf("final state: %d updates, step %d, epoch %d batch %d", s.NumUpdates, s.Step, s.Epoch, s.IterationsInEpoch)
	}
}

// Resuming from the Clinic fork's own checkpoint restores its RAdam moments and step
// into the optimizer (bit for bit, through the backend) and continues the update count,
// epoch position and learning-rate schedule.
func TestTrainResumesFromClinicOptimizerState(t *testing.T) {
	path := filepath.Join("..", "..", "fixtures", "clinic", "runs", "a_admin", "ckpt", "checkpoint_last.pt")
	im, err := convert.Import(path)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	fileState, err := convert.ReadTrainingState(im.Checkpoint, im.Model)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	prog, st, ok, err := restoreTraining(im.Checkpoint, im.Model, "radam", &log)
	if err != nil || !ok {
		t.Fatalf("restore: ok %v, %v", ok, err)
	}
	if prog.NumUpdates != 1000 || prog.Epoch != 39 || prog.BatchesInEpoch != 12 || !prog.HaveBest || prog.BestLoss != 2.793501985574577 {
		t.Fatalf("progress %+v", prog)
	}
	net, opt := cpuRAdam(t, im.Model)
	sched, err := train.NewSchedule(train.ScheduleConfig{Name: "inverse_sqrt", LR: []float64{3e-3}, WarmupUpdates: 100, WarmupInitLR: 1e-7})
	if err != nil {
		t.Fatal(err)
	}
	s := &train.Stepper{Net: net, Opt: opt, Sched: sched}
	if err := s.Resume(prog, st); err != nil {
		t.Fatal(err)
	}
	got := opt.State(net)
	if got.Steps != 1000 || s.NumUpdates != 1000 {
		t.Fatalf("steps %d, updates %d", got.Steps, s.NumUpdates)
	}
	for _, p := range got.Params {
		for k, pair := range [][2][]float32{{p.ExpAvg, fileState.ExpAvg[p.Name]}, {p.ExpAvgSq, fileState.ExpAvgSq[p.Name]}} {
			for j := range pair[0] {
				if pair[0][j] != pair[1][j] {
					t.Fatalf("%s moment %d [%d]: %g in the optimizer, %g in the file", p.Name, k+1, j, pair[0][j], pair[1][j])
				}
			}
		}
	}
	// The fork's lr after 1000 updates: 3e-3·sqrt(100/1000), as its param group says.
	if lr := sched.LR(); fmt.Sprintf("%.12g", lr) != fmt.Sprintf("%.12g", fileState.LR) {
		t.Errorf("lr %v after resume, the file's param group %v", lr, fileState.LR)
	}

	// And the command continues the run: two more updates from epoch 39, batch 12.
	dir := t.TempDir()
	out, err := runXform("train", filepath.Join("..", "..", "fixtures", "clinic", "data-bin"), "--restore-file", path,
		"--optimizer", "radam", "--adam-betas", "(0.9,0.98)", "--clip-norm", "0", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt",
		"--warmup-init-lr", "1e-7", "--warmup-updates", "100", "--label-smoothing", "0.1", "--max-tokens", "2048", "--seed", "1111",
		"--max-update", "1002", "--log-interval", "1", "--save-dir", dir, "--no-epoch-checkpoints", "--threads", "2")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"resuming at epoch 39 (12 batches in), 1000 updates", "| epoch 039:     13 / 26 ", "num_updates=1001,",
		"num_updates=1002,", "best_loss 2.7935"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
}
