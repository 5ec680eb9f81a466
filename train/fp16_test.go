package train_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/internal/pyfmt"
	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train"
)

// infBackend is the CPU Trainer with an fp16 overflow simulated: when the targets of a
// backward's loss are one of poison, its loss gradient becomes +Inf, as the GPU's fp16
// GEMM operands do when the scaled gradient exceeds 65504. It embeds the Trainer
// interface only, so the run takes the same (single-tensor) code paths with and
// without injection.
type infBackend struct {
	kernels.Trainer
	poison [][]int32
}

func (b *infBackend) LabelSmoothedLoss(dlogits, logits kernels.Buffer, targets []int32, rows, V int, eps float32, ignore int32, scale float32) (float64, float64) {
	loss, nll := b.Trainer.LabelSmoothedLoss(dlogits, logits, targets, rows, V, eps, ignore, scale)
	if dlogits != nil {
		for _, p := range b.poison {
			if slices.Equal(p, targets) {
				b.Trainer.Fill(dlogits, float32(math.Inf(1)))
			}
		}
	}
	return loss, nll
}

// tinyModel is a 1+1-layer d16 Admin Transformer for the fixture corpus.
func tinyModel(t *testing.T, sp *generate.Split) *model.Model {
	t.Helper()
	c := model.Config{Init: model.InitAdaptive, EncoderLayers: 1, DecoderLayers: 1, EncoderEmbedDim: 16, DecoderEmbedDim: 16,
		EncoderFFNDim: 32, DecoderFFNDim: 32, EncoderHeads: 2, DecoderHeads: 2, ShareAllEmbeddings: true,
		SrcVocab: sp.SrcDict.Len(), TgtVocab: sp.TgtDict.Len(), SourceLang: sp.SrcLang, TargetLang: sp.TgtLang}
	if _, _, _, err := train.ArchDefaults("transformer_iwslt_de_en", &c); err != nil {
		t.Fatal(err)
	}
	c.Dropout, c.AttentionDropout, c.ActivationDropout = 0.1, 0.1, 0.1
	m, err := train.InitModel(c, 7)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func tinyBatching() train.BatchConfig {
	return train.BatchConfig{MaxTokens: 4096, Multiple: 8, Seed: 7, MaxSourcePos: 1024, MaxTargetPos: 1024, SkipInvalidAll: true}
}

// epochBatches returns epoch 1's collated batches in training order.
func epochBatches(t *testing.T, sp *generate.Split) []*model.TrainBatch {
	t.Helper()
	frozen, _, err := train.Batches(sp, tinyBatching())
	if err != nil {
		t.Fatal(err)
	}
	var out []*model.TrainBatch
	for _, b := range train.EpochOrder(frozen, tinyBatching().Seed, 1) {
		tb, _ := train.Collate(b, sp)
		out = append(out, tb)
	}
	return out
}

// newStepper builds the fork's recipe (RAdam, inverse_sqrt, label smoothing and dropout
// 0.1, no clipping) on be from m; sc is the loss scaler or nil.
func newStepper(t *testing.T, m *model.Model, be kernels.Trainer, sc *train.LossScaler) *train.Stepper {
	t.Helper()
	net, err := model.NewTrainNet(m, be)
	if err != nil {
		t.Fatal(err)
	}
	opt, err := train.NewOptimizer(net, train.OptimConfig{Name: "radam", Beta1: 0.9, Beta2: 0.98, Eps: 1e-8})
	if err != nil {
		t.Fatal(err)
	}
	sched, err := train.NewSchedule(train.ScheduleConfig{Name: "inverse_sqrt", LR: []float64{3e-3}, WarmupUpdates: 10, WarmupInitLR: 1e-7})
	if err != nil {
		t.Fatal(err)
	}
	return &train.Stepper{Net: net, Opt: opt, Sched: sched, Scaler: sc, Cfg: train.StepConfig{LabelSmoothing: 0.1,
		Dropout: 0.1, AttentionDropout: 0.1, ActivationDropout: 0.1, Seed: 7}}
}

func weights(net *model.TrainNet) map[string][]float32 {
	out := map[string][]float32{}
	for _, p := range net.Params() {
		out[p.Name] = append([]float32(nil), cpu.Data(p.P)...)
	}
	return out
}

// sameBits reports the first parameter element whose bits differ.
func sameBits(a, b map[string][]float32) error {
	for name, av := range a {
		bv := b[name]
		for i := range av {
			if math.Float32bits(av[i]) != math.Float32bits(bv[i]) {
				return fmt.Errorf("%s[%d]: %v vs %v", name, i, av[i], bv[i])
			}
		}
	}
	return nil
}

func mustScaler(t *testing.T, cfg train.LossScaleConfig) *train.LossScaler {
	t.Helper()
	sc, err := train.NewLossScaler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

// Loss scaling by a power of two, with no overflow, changes no bit: the scaled loss
// gradient and every backward product are exact multiples of the unscaled ones (no
// fp32 value here comes near the overflow or subnormal range), and the unscaling factor
// 1/(sample size · 2^k) rounds to the unscaled run's 1/(sample size) times 2^-k. The
// scale also doubles twice during the run (window 3), so a changing scale is covered.
func TestLossScalingWithoutOverflowEqualsFP32(t *testing.T) {
	sp := fixtureSplit(t, "train")
	m := tinyModel(t, sp)
	batches := epochBatches(t, sp)[:7]
	ref := newStepper(t, m, &infBackend{Trainer: cpu.New(2)}, nil)
	sc := mustScaler(t, train.LossScaleConfig{InitScale: 128, Window: 3, MinScale: 1e-4})
	got := newStepper(t, m, &infBackend{Trainer: cpu.New(2)}, sc)
	for k, b := range batches {
		rl, err := ref.Step(context.Background(), []*model.TrainBatch{b})
		if err != nil {
			t.Fatal(err)
		}
		gl, err := got.Step(context.Background(), []*model.TrainBatch{b})
		if err != nil {
			t.Fatal(err)
		}
		if gl.Overflow || gl.Loss != rl.Loss || gl.NLL != rl.NLL || gl.GNorm != rl.GNorm {
			t.Fatalf("update %d: scaled %+v, fp32 %+v", k+1, gl, rl)
		}
	}
	if sc.Scale() != 512 {
		t.Errorf("scale after 7 updates with window 3: %g, want 128·2·2 = 512", sc.Scale())
	}
	if err := sameBits(weights(got.Net), weights(ref.Net)); err != nil {
		t.Errorf("weights differ from the fp32 run: %v", err)
	}
}

// An overflow skips the update as the fork does: no weight changes, the optimizer's
// step count and NumUpdates stay, the scale halves and the warning is printed. The
// next update then draws the dropout masks and the learning rate of the update index
// that was skipped, so a run with overflows at batches 3 and 5 equals, bit for bit, an
// fp32 run that never saw those batches.
func TestLossScalingOverflowSkipsUpdate(t *testing.T) {
	sp := fixtureSplit(t, "train")
	m := tinyModel(t, sp)
	batches := epochBatches(t, sp)[:7]
	sc := mustScaler(t, train.LossScaleConfig{InitScale: 128, Window: 1000, MinScale: 1e-4})
	be := &infBackend{Trainer: cpu.New(2), poison: [][]int32{batches[2].Target, batches[4].Target}}
	s := newStepper(t, m, be, sc)
	var log bytes.Buffer
	s.Log = &log
	for k, b := range batches {
		before, updates, steps, scale, lr := weights(s.Net), s.NumUpdates, s.Opt.Steps(), sc.Scale(), s.Sched.LR()
		log.Reset()
		lg, err := s.Step(context.Background(), []*model.TrainBatch{b})
		if err != nil {
			t.Fatal(err)
		}
		poisoned := k == 2 || k == 4
		if lg.Overflow != poisoned {
			t.Fatalf("batch %d: overflow %v", k+1, lg.Overflow)
		}
		if !poisoned {
			if s.NumUpdates != updates+1 || log.Len() != 0 {
				t.Fatalf("batch %d: updates %d → %d, log %q", k+1, updates, s.NumUpdates, log.String())
			}
			continue
		}
		if err := sameBits(weights(s.Net), before); err != nil {
			t.Errorf("batch %d overflowed but the weights moved: %v", k+1, err)
		}
		if s.NumUpdates != updates || s.Opt.Steps() != steps || s.Sched.LR() != lr {
			t.Errorf("batch %d overflowed but updates %d → %d, optimizer steps %d → %d, lr %g → %g",
				k+1, updates, s.NumUpdates, steps, s.Opt.Steps(), lr, s.Sched.LR())
		}
		if sc.Scale() != scale/2 || lg.LossScale != scale/2 {
			t.Errorf("batch %d overflowed: scale %g → %g (logged %g), want halved", k+1, scale, sc.Scale(), lg.LossScale)
		}
		want := fmt.Sprintf("| WARNING: overflow detected, setting loss scale to: %s\n", pyfmt.Float(scale/2))
		if log.String() != want {
			t.Errorf("batch %d: log %q, want %q", k+1, log.String(), want)
		}
		for _, p := range s.Net.Params() {
			if ss := be.SumSquares(p.G); ss != 0 {
				t.Fatalf("batch %d: gradient of %s not zeroed (Σg² = %g)", k+1, p.Name, ss)
			}
		}
	}
	if s.NumUpdates != 5 || sc.Scale() != 32 {
		t.Errorf("after 7 batches with 2 overflows: %d updates, scale %g; want 5 and 32", s.NumUpdates, sc.Scale())
	}
	ref := newStepper(t, m, &infBackend{Trainer: cpu.New(2)}, nil)
	for _, k := range []int{0, 1, 3, 5, 6} {
		if _, err := ref.Step(context.Background(), []*model.TrainBatch{batches[k]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := sameBits(weights(s.Net), weights(ref.Net)); err != nil {
		t.Errorf("weights differ from the fp32 run without batches 3 and 5: %v", err)
	}
}

// The fork stops training with its FloatingPointError once an overflow leaves the scale
// at or below --min-loss-scale: init 2, minimum 1, so the first overflow ends it.
func TestLossScalingMinimumStops(t *testing.T) {
	sp := fixtureSplit(t, "train")
	m := tinyModel(t, sp)
	batches := epochBatches(t, sp)
	s := newStepper(t, m, &infBackend{Trainer: cpu.New(2), poison: [][]int32{batches[0].Target}},
		mustScaler(t, train.LossScaleConfig{InitScale: 2, Window: 1000, MinScale: 1}))
	_, err := s.Step(context.Background(), []*model.TrainBatch{batches[0]})
	var me *train.MinLossScaleError
	if !errors.As(err, &me) || !strings.Contains(err.Error(), "Minimum loss scale reached (1.0)") {
		t.Fatalf("want the minimum-scale error, got %v", err)
	}
}

var timing = regexp.MustCompile(`\b(wps|ups|wall|train_wall)([= ])[0-9.]+|writing took [0-9.e+-]+`)

// logLines keeps the epoch, warning and save lines of a Run log with timings blanked.
func logLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "| epoch") || strings.HasPrefix(l, "| WARNING") || strings.HasPrefix(l, "| saved") {
			out = append(out, timing.ReplaceAllString(l, "${1}${2}T"))
		}
	}
	return out
}

// Through Run: the overflow warning is printed before the log line of its batch, which
// repeats the stats of the last update that had some (fairseq's simple progress bar
// prints what its last log() call formatted, so the loss_scale there is the one before
// the overflow); loss_scale stands between oom and wall in every train line; nothing is
// saved at an overflowed batch; and a run resumed from the checkpoint at update 3
// carries the scaler's counters, so it logs (loss_scale included) and ends exactly as
// the uninterrupted run. With window 3 and an overflow at batch 2, the scale grows at
// batch 5: a resume that kept only the scale (fairseq's) would not.
func TestLossScalingRunLogAndResume(t *testing.T) {
	sp := fixtureSplit(t, "train")
	m := tinyModel(t, sp)
	batches := epochBatches(t, sp)
	poison := [][]int32{batches[1].Target, batches[6].Target}
	scfg := train.LossScaleConfig{InitScale: 128, Window: 3, MinScale: 1e-4}
	dir := t.TempDir()
	type saved struct {
		paths []string
		snap  *train.Snapshot
	}
	run := func(m *model.Model, prog *train.Snapshot) (string, []saved, *train.Stepper) {
		s := newStepper(t, m, &infBackend{Trainer: cpu.New(2), poison: poison}, mustScaler(t, scfg))
		var p train.Progress
		if prog != nil {
			if err := s.Resume(prog.Progress, &prog.Optim); err != nil {
				t.Fatal(err)
			}
			p = prog.Progress
		}
		var log bytes.Buffer
		var saves []saved
		cfg := train.RunConfig{Batch: tinyBatching(), MaxUpdate: 8, NoValidate: true, SaveDir: dir, SaveIntervalUpdates: 3,
			NoEpochCheckpoints: true, LogFormat: "simple", LogInterval: 1, Log: &log,
			Save: func(paths []string, snap *train.Snapshot) error {
				saves = append(saves, saved{paths, snap})
				return nil
			}}
		if _, err := train.Run(context.Background(), s, &train.Data{Train: sp}, cfg, p); err != nil {
			t.Fatal(err)
		}
		return log.String(), saves, s
	}
	full, saves, s := run(m, nil)
	lines := logLines(full)
	t.Logf("uninterrupted run:\n%s", strings.Join(lines, "\n"))
	// Batch: 1 2(x) 3 4 5 6 7(x) 8 9 10; update: 1 - 2 3 4 5 - 6 7 8.
	// Scale after: 128, 64, 64, 64, 128 (3 clean since the overflow), 128, 64, 64, 64, 128.
	wantScale := []string{"128.000", "128.000", "64.000", "64.000", "128.000", "128.000", "128.000", "64.000", "64.000", "128.000"}
	wantUpd := []string{"1", "1", "2", "3", "4", "5", "5", "6", "7", "8"}
	var mids []string
	for _, l := range lines {
		if strings.HasPrefix(l, "| epoch 001:") {
			mids = append(mids, l)
		}
	}
	if len(mids) != len(wantScale) {
		t.Fatalf("%d mid-epoch lines, want %d", len(mids), len(wantScale))
	}
	for i, l := range mids {
		if !strings.Contains(l, ", oom=0.000, loss_scale="+wantScale[i]+", wall=") || !strings.Contains(l, " num_updates="+wantUpd[i]+",") {
			t.Errorf("line %d: want num_updates %s and loss_scale %s between oom and wall:\n%s", i+1, wantUpd[i], wantScale[i], l)
		}
	}
	if mids[1][strings.Index(mids[1], "loss="):] != mids[0][strings.Index(mids[0], "loss="):] {
		t.Errorf("the overflowed batch's line does not repeat the previous update's stats:\n%s\n%s", mids[0], mids[1])
	}
	if n := strings.Count(full, "| WARNING: overflow detected, setting loss scale to: 64.0\n"); n != 2 {
		t.Errorf("%d overflow warnings saying 64.0, want 2", n)
	}
	if !strings.Contains(full, "| epoch 001 | loss ") || !strings.Contains(full, " | oom 0.000 | loss_scale 128.000 | wall ") {
		t.Errorf("end-of-epoch line lacks loss_scale 128.000 after oom:\n%s", full)
	}
	var at3 *train.Snapshot
	for _, sv := range saves {
		if sv.snap.Progress.NumUpdates == 3 {
			at3 = sv.snap
		}
	}
	if len(saves) != 3 || at3 == nil || at3.Progress.LossScaler == nil {
		t.Fatalf("saves at updates 3, 6 and the end with the scaler's state, got %d (at 3: %v)", len(saves), at3)
	}
	if st := *at3.Progress.LossScaler; st.Scale != 64 || st.Iter != 4 || st.LastOverflowIter != 1 || st.LastRescaleIter != 1 {
		t.Errorf("scaler state at update 3: %+v, want scale 64, iter 4, last overflow and rescale 1", st)
	}
	resumed, _, rs := run(at3.Model, at3)
	after := logLines(resumed)
	var tail []string
	on := false
	for _, l := range lines {
		if on {
			tail = append(tail, l)
		}
		if strings.HasPrefix(l, "| saved") && strings.Contains(l, "@ 3 updates") {
			on = true
		}
	}
	if strings.Join(after, "\n") != strings.Join(tail, "\n") {
		t.Errorf("resumed log differs:\n%s\nuninterrupted, after the save at update 3:\n%s", strings.Join(after, "\n"), strings.Join(tail, "\n"))
	}
	if err := sameBits(weights(rs.Net), weights(s.Net)); err != nil {
		t.Errorf("resumed weights differ: %v", err)
	}
	if rs.Scaler.State() != s.Scaler.State() {
		t.Errorf("resumed scaler %+v, uninterrupted %+v", rs.Scaler.State(), s.Scaler.State())
	}
}

// With --log-format json fairseq's progress bar keeps the stats' meters and formats them
// when it prints, so the line of an overflowed batch shows the scale it set, with the
// previous update's count.
func TestLossScalingJSONLogAtOverflow(t *testing.T) {
	sp := fixtureSplit(t, "train")
	batches := epochBatches(t, sp)
	s := newStepper(t, tinyModel(t, sp), &infBackend{Trainer: cpu.New(2), poison: [][]int32{batches[1].Target}},
		mustScaler(t, train.LossScaleConfig{InitScale: 128, Window: 1000, MinScale: 1e-4}))
	var log bytes.Buffer
	cfg := train.RunConfig{Batch: tinyBatching(), MaxUpdate: 2, NoValidate: true, NoSave: true, LogFormat: "json", LogInterval: 1, Log: &log}
	if _, err := train.Run(context.Background(), s, &train.Data{Train: sp}, cfg, train.Progress{}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) < 4 || lines[1] != "| WARNING: overflow detected, setting loss scale to: 64.0" {
		t.Fatalf("log:\n%s", log.String())
	}
	for i, want := range map[int]string{0: `"num_updates": "1", `, 2: `"num_updates": "1", `, 3: `"num_updates": "2", `} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d lacks %s: %s", i+1, want, lines[i])
		}
	}
	for i, want := range map[int]string{0: `"oom": "0.000", "loss_scale": "128.000", "wall": `, 2: `"loss_scale": "64.000"`, 3: `"loss_scale": "64.000"`} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d lacks %s: %s", i+1, want, lines[i])
		}
	}
}
