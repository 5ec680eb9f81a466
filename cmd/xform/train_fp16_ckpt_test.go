package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/fairseqpt"
	"github.com/xform-dev/xform/train"
)

// An --fp16 run's checkpoint carries the fork's FP16Optimizer state (class name, loss
// scale, one flat parameter), and xform resumes from it exactly: the moments, and the
// scaler's whole state from xform_progress. Without xform_progress (a file as the fork
// writes it) the loss scale alone is taken, with fresh counters, as fairseq does.
//
// The moments are the weights (exp_avg) and their squares (exp_avg_sq), so the fork can
// check the flat layout against its own flattening of the weights:
// XFORM_FP16_STATE_OUT=PATH keeps the file for tools/reference/fp16_state_check.py.
func TestFP16CheckpointHasFP16OptimizerState(t *testing.T) {
	m, err := convert.LoadCheckpoint(fx + "clinic/runs/a_admin/ckpt/checkpoint_last.pt")
	if err != nil {
		t.Fatal(err)
	}
	net, opt := cpuRAdam(t, m)
	moments := train.OptimState{Name: "radam", Beta1: 0.9, Beta2: 0.98, Eps: 1e-8, Steps: 1000}
	for _, p := range net.Params() {
		w, err := m.Params[p.Name].F32()
		if err != nil {
			t.Fatal(err)
		}
		sq := make([]float32, len(w))
		for i, x := range w {
			sq[i] = x * x
		}
		moments.Params = append(moments.Params, train.ParamMoments{Name: p.Name, Shape: p.Shape, ExpAvg: w, ExpAvgSq: sq})
	}
	if err := opt.Restore(net, moments); err != nil {
		t.Fatal(err)
	}
	want := train.ScalerState{Scale: 0.25, Iter: 1009, LastOverflowIter: 1001, LastRescaleIter: 1001, OverflowsSinceRescale: 0}
	s := scaledStepper(t, net, opt, want)
	path := filepath.Join(t.TempDir(), "checkpoint_last.pt")
	if out := os.Getenv("XFORM_FP16_STATE_OUT"); out != "" {
		path = out
	}
	cs := &checkpointSaver{log: io.Discard}
	if err := cs.save([]string{path}, s.Snapshot(train.Progress{Epoch: 39, IterationsInEpoch: 12, BatchesInEpoch: 12}, math.NaN())); err != nil {
		t.Fatal(err)
	}

	im, err := convert.Import(path)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if p := im.Checkpoint.Progress; p.OptimizerName != convert.FP16OptimizerName || p.LossScale == nil || *p.LossScale != 0.25 {
		t.Fatalf("optimizer_name %q, loss_scale %v; want FP16Optimizer, 0.25", p.OptimizerName, p.LossScale)
	}
	// The fork loaded this very file into its FP16Optimizer and found the flat moments
	// equal to its own flattening of the weights (and their squares):
	// fixtures/fp16_state/fp16_state_check.json records what it loaded.
	raw, err := os.ReadFile(fx + "fp16_state/fp16_state_check.json")
	if err != nil {
		t.Fatal(err)
	}
	var ref struct {
		FlatLen   int     `json:"flat_len"`
		LossScale float64 `json:"loss_scale"`
		Sha1      string  `json:"exp_avg_sha256"`
		Sha2      string  `json:"exp_avg_sq_sha256"`
	}
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	ov, _ := fairseqpt.DictGet(im.Checkpoint.Root, "last_optimizer_state")
	sv, _ := fairseqpt.DictGet(ov, "state")
	es, _ := fairseqpt.Entries(sv)
	if len(es) != 1 {
		t.Fatalf("%d optimizer state entries, want FP16Optimizer's one", len(es))
	}
	for field, want := range map[string]string{"exp_avg": ref.Sha1, "exp_avg_sq": ref.Sha2} {
		tv, _ := fairseqpt.DictGet(es[0].Value, field)
		ft, ok := tv.(*fairseqpt.Tensor)
		if !ok {
			t.Fatalf("%s is %T", field, tv)
		}
		mt, err := ft.Materialize()
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(mt.Data); ft.Numel() != ref.FlatLen || hex.EncodeToString(sum[:]) != want {
			t.Errorf("flat %s: %d elements, sha256 %x; the fork loaded %d, %s", field, ft.Numel(), sum, ref.FlatLen, want)
		}
	}
	if ref.LossScale != want.Scale {
		t.Errorf("the fork loaded loss scale %g, the test saves %g", ref.LossScale, want.Scale)
	}
	prog, ost, ok, err := restoreTraining(im.Checkpoint, im.Model, "radam", io.Discard)
	if err != nil || !ok {
		t.Fatalf("restore: %v (ok %v)", err, ok)
	}
	if prog.LossScaler == nil || *prog.LossScaler != want {
		t.Errorf("restored scaler %+v, want %+v (xform_progress is authoritative)", prog.LossScaler, want)
	}
	if ost.Steps != 1000 || len(ost.Params) != len(moments.Params) {
		t.Fatalf("restored %d steps, %d parameters", ost.Steps, len(ost.Params))
	}
	byName := map[string]train.ParamMoments{}
	for _, p := range ost.Params {
		byName[p.Name] = p
	}
	for _, p := range moments.Params {
		q := byName[p.Name]
		if !sameFloat32Bits(p.ExpAvg, q.ExpAvg) || !sameFloat32Bits(p.ExpAvgSq, q.ExpAvgSq) {
			t.Errorf("%s: moments differ after the FP16Optimizer round trip", p.Name)
		}
	}

	// The same file as the fork would write it: no xform_progress.
	st, err := convert.ReadTrainingState(im.Checkpoint, im.Model)
	if err != nil {
		t.Fatal(err)
	}
	st.XformProgress = ""
	bare := filepath.Join(t.TempDir(), "fairseq.pt")
	if _, err := convert.ExportFairseq(bare, im.Model, convert.FairseqExportOptions{Target: convert.TargetClinic, Training: st}, false); err != nil {
		t.Fatal(err)
	}
	ck, err := fairseqpt.OpenCheckpoint(bare)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	prog, ost, ok, err = restoreTraining(ck, im.Model, "radam", io.Discard)
	if err != nil || !ok {
		t.Fatalf("restore without xform_progress: %v (ok %v)", err, ok)
	}
	if fresh := train.FreshScalerState(0.25); prog.LossScaler == nil || *prog.LossScaler != fresh {
		t.Errorf("scaler from fairseq's loss_scale %+v, want %+v", prog.LossScaler, fresh)
	}
	if prog.NumUpdates != 1000 || prog.Epoch != 39 || prog.BatchesInEpoch != 12 || ost.Steps != 1000 {
		t.Errorf("progress %+v, steps %d", prog, ost.Steps)
	}
}

func sameFloat32Bits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}
