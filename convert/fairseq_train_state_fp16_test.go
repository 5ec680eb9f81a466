package convert

import (
	"bytes"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nlpodyssey/gopickle/types"
	"github.com/xform-dev/xform/fairseqpt"
	"github.com/xform-dev/xform/tensor"
)

// fp16Source is the Clinic fork's own RAdam checkpoint: its per-parameter state is in
// parameters() order, so concatenating it is what the fork's FP16Optimizer would hold
// for the same moments (build_fp32_params flattens parameters() in order).
func fp16Source(t *testing.T) (*Imported, *TrainingState) {
	t.Helper()
	im, err := Import(filepath.Join("..", "fixtures", "clinic", "runs", "a_admin", "ckpt", "checkpoint_last.pt"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	st, err := ReadTrainingState(im.Checkpoint, im.Model)
	if err != nil {
		t.Fatal(err)
	}
	return im, st
}

// flatOptimizerState returns the one entry of an FP16Optimizer state: its key, the
// param group's params and the raw float32 bytes of exp_avg and exp_avg_sq.
func flatOptimizerState(t *testing.T, ck *fairseqpt.Checkpoint) (key string, ids string, m1, m2 []byte, step interface{}) {
	t.Helper()
	ov, _ := fairseqpt.DictGet(ck.Root, "last_optimizer_state")
	sv, _ := fairseqpt.DictGet(ov, "state")
	es, _ := fairseqpt.Entries(sv)
	if len(es) != 1 {
		t.Fatalf("%d state entries, want FP16Optimizer's one", len(es))
	}
	get := func(f string) []byte {
		tv, _ := fairseqpt.DictGet(es[0].Value, f)
		ft, ok := tv.(*fairseqpt.Tensor)
		if !ok || len(ft.Shape) != 1 {
			t.Fatalf("%s is %T, want a 1-D tensor", f, tv)
		}
		mt, err := ft.Materialize()
		if err != nil || mt.DType != tensor.F32 {
			t.Fatalf("%s: %v (dtype %v, want float32: FP16Optimizer's copy is fp32)", f, err, mt.DType)
		}
		return mt.Data
	}
	gv, _ := fairseqpt.DictGet(ov, "param_groups")
	pv, _ := fairseqpt.DictGet(gv.(*types.List).Get(0), "params")
	l := pv.(*types.List)
	var p []string
	for i := 0; i < l.Len(); i++ {
		p = append(p, fmt.Sprintf("%T %v", l.Get(i), l.Get(i)))
	}
	step, _ = fairseqpt.DictGet(es[0].Value, "step")
	return es[0].Key, strings.Join(p, ","), get("exp_avg"), get("exp_avg_sq"), step
}

// An FP16Optimizer-layout state written from the fork's RAdam moments: one state entry 0
// whose flat exp_avg/exp_avg_sq are, byte for byte, the fork's per-parameter tensors
// concatenated in its parameters() order; param group params [0]; loss_scale and the
// class name in optimizer_history. Read back, every moment, the step and the loss scale
// are exactly what was written.
func TestFP16OptimizerStateRoundTrip(t *testing.T) {
	im, st := fp16Source(t)
	keys, data, _, _ := optimizerTensors(t, im.Checkpoint)
	var want1, want2 []byte
	for _, k := range keys {
		switch {
		case strings.HasSuffix(k, "/exp_avg"):
			want1 = append(want1, data[k]...)
		case strings.HasSuffix(k, "/exp_avg_sq"):
			want2 = append(want2, data[k]...)
		}
	}

	for _, c := range []struct {
		scale float64
		isInt bool
		want  string
	}{{0.03125, false, "float64 0.03125"}, {128, true, "int 128"}} {
		w := *st
		scale := c.scale
		w.OptimizerName, w.LossScale, w.LossScaleInt = FP16OptimizerName, &scale, c.isInt
		out := filepath.Join(t.TempDir(), "checkpoint_last.pt")
		if _, err := ExportFairseq(out, im.Model, FairseqExportOptions{Target: TargetClinic, Training: &w}, false); err != nil {
			t.Fatal(err)
		}
		back, err := fairseqpt.OpenCheckpoint(out)
		if err != nil {
			t.Fatal(err)
		}
		defer back.Close()
		key, ids, m1, m2, step := flatOptimizerState(t, back)
		if key != "0" || ids != "int 0" || toFloat(step) != 1000 {
			t.Errorf("state key %s, params [%s], step %v; want 0, [int 0], 1000", key, ids, step)
		}
		if !bytes.Equal(m1, want1) || !bytes.Equal(m2, want2) {
			t.Errorf("flat moments (%d, %d bytes) differ from the fork's per-parameter state concatenated (%d bytes)", len(m1), len(m2), len(want1))
		}
		ov, _ := fairseqpt.DictGet(back.Root, "last_optimizer_state")
		ls, _ := fairseqpt.DictGet(ov, "loss_scale")
		if got := fmt.Sprintf("%T %v", ls, ls); got != c.want {
			t.Errorf("loss_scale %s, want %s", got, c.want)
		}
		if back.Progress.OptimizerName != FP16OptimizerName {
			t.Errorf("optimizer_history's optimizer_name %q", back.Progress.OptimizerName)
		}

		re, err := ReadTrainingState(back, im.Model)
		if err != nil {
			t.Fatal(err)
		}
		if re.OptimizerName != FP16OptimizerName || re.Step != st.Step || re.LossScale == nil || *re.LossScale != c.scale ||
			re.LossScaleInt != c.isInt || re.NumUpdates != st.NumUpdates || re.Betas != st.Betas || re.Eps != st.Eps {
			t.Errorf("read back %+v (loss scale %v)", *re, re.LossScale)
		}
		for name, v := range st.ExpAvg {
			if !sameBits(v, re.ExpAvg[name]) || !sameBits(st.ExpAvgSq[name], re.ExpAvgSq[name]) {
				t.Errorf("%s: moments differ after the round trip", name)
			}
		}
	}
}

func sameBits(a, b []float32) bool {
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

// A flat state one element short of the model's parameters is refused with the file's
// name and both sizes, never split onto the wrong parameters.
func TestFP16OptimizerStateWrongLength(t *testing.T) {
	im, st := fp16Source(t)
	w := *st
	scale := 8.0
	w.OptimizerName, w.LossScale = FP16OptimizerName, &scale
	ex, err := BuildFairseqCheckpoint(im.Model, FairseqExportOptions{Target: TargetClinic, Training: &w})
	if err != nil {
		t.Fatal(err)
	}
	ov, _ := fairseqpt.DictGet(ex.Root, "last_optimizer_state")
	sv, _ := fairseqpt.DictGet(ov, "state")
	ps, _ := sv.(*types.OrderedDict).Get(0)
	full := ps.(*types.OrderedDict)
	fv, _ := full.Get("exp_avg")
	ft := fv.(*tensor.Tensor)
	n := ft.Numel()
	short := &tensor.Tensor{DType: tensor.F32, Shape: []int{n - 1}, Data: ft.Data[:4*(n-1)]}
	full.Set("exp_avg", short)
	path := filepath.Join(t.TempDir(), "short.pt")
	if err := fairseqpt.WriteFile(path, ex.Root, fairseqpt.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	ck, err := fairseqpt.OpenCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	_, err = ReadTrainingState(ck, im.Model)
	if err == nil {
		t.Fatal("a flat state of the wrong length was accepted")
	}
	for _, s := range []string{path, "FP16Optimizer", fmt.Sprint(n - 1), fmt.Sprint(n)} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %s", err, s)
		}
	}
}
