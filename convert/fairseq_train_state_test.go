package convert

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/nlpodyssey/gopickle/types"
	"github.com/xform-dev/xform/fairseqpt"
)

// optimizerTensors lists last_optimizer_state's per-parameter tensors in file order as
// "<index>/<field>" → (shape, float32 bytes), plus the non-tensor values as strings.
func optimizerTensors(t *testing.T, ck *fairseqpt.Checkpoint) (keys []string, data map[string][]byte, shapes map[string][]int, other map[string]string) {
	t.Helper()
	data, shapes, other = map[string][]byte{}, map[string][]int{}, map[string]string{}
	ov, ok := fairseqpt.DictGet(ck.Root, "last_optimizer_state")
	if !ok {
		t.Fatalf("%s: no last_optimizer_state", ck.Path)
	}
	sv, _ := fairseqpt.DictGet(ov, "state")
	es, _ := fairseqpt.Entries(sv)
	for _, e := range es {
		fs, _ := fairseqpt.Entries(e.Value)
		for _, f := range fs {
			k := e.Key + "/" + f.Key
			keys = append(keys, k)
			if tt, ok := f.Value.(*fairseqpt.Tensor); ok {
				mt, err := tt.Materialize()
				if err != nil {
					t.Fatal(err)
				}
				data[k], shapes[k] = mt.Data, mt.Shape
			} else {
				other[k] = fmt.Sprintf("%T %v", f.Value, f.Value)
			}
		}
	}
	gv, _ := fairseqpt.DictGet(ov, "param_groups")
	g := gv.(*types.List).Get(0)
	gs, _ := fairseqpt.Entries(g)
	for _, e := range gs {
		v := fmt.Sprintf("%T %v", e.Value, e.Value)
		if l, ok := e.Value.(*types.List); ok {
			v = fmt.Sprintf("list of %d", l.Len())
		}
		keys = append(keys, "group/"+e.Key)
		other["group/"+e.Key] = v
	}
	return keys, data, shapes, other
}

// The Clinic fork's RAdam state (fixtures/clinic/runs/a_admin/ckpt) read into canonical
// names and written back gives the file's own state: the same 106 entries in order, every
// moment tensor bit-identical, the same step and param group; and the history and
// train_iterator the fork's resume reads.
func TestTrainingStateRoundTripsClinicRAdam(t *testing.T) {
	path := filepath.Join("..", "fixtures", "clinic", "runs", "a_admin", "ckpt", "checkpoint_last.pt")
	im, err := Import(path)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	st, err := ReadTrainingState(im.Checkpoint, im.Model)
	if err != nil {
		t.Fatal(err)
	}
	if st.OptimizerName != "FairseqRAdam" || st.CriterionName != "LabelSmoothedCrossEntropyCriterion" || st.NumUpdates != 1000 ||
		st.Step != 1000 || st.Epoch != 39 || st.IterationsInEpoch != 12 || st.Betas != [2]float64{0.9, 0.98} || st.Eps != 1e-8 {
		t.Fatalf("read %+v", *st)
	}
	if st.Best == nil || *st.Best != 2.793501985574577 || st.ValLoss == nil || *st.ValLoss != 2.8760685865623126 {
		t.Fatalf("best %v val %v", st.Best, st.ValLoss)
	}
	// Spot check of the split: in_proj_weight's moments are q, k, v stacked.
	q := st.ExpAvg["encoder.layers.0.self_attn.q_proj.weight"]
	if len(q) != 32*32 {
		t.Fatalf("q moments: %d values", len(q))
	}

	out := filepath.Join(t.TempDir(), "checkpoint_last.pt")
	if _, err := ExportFairseq(out, im.Model, FairseqExportOptions{Target: TargetClinic, Training: st}, false); err != nil {
		t.Fatal(err)
	}
	back, err := fairseqpt.OpenCheckpoint(out)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	k1, d1, s1, o1 := optimizerTensors(t, im.Checkpoint)
	k2, d2, s2, o2 := optimizerTensors(t, back)
	if len(k1) != len(k2) {
		t.Fatalf("%d optimizer entries written, the file has %d", len(k2), len(k1))
	}
	nt := 0
	for i, k := range k1 {
		if k2[i] != k {
			t.Fatalf("entry %d is %s, the file's %s", i, k2[i], k)
		}
		if d1[k] != nil {
			nt++
			if !bytes.Equal(d1[k], d2[k]) || fmt.Sprint(s1[k]) != fmt.Sprint(s2[k]) {
				t.Errorf("%s differs (shape %v vs %v)", k, s2[k], s1[k])
			}
		} else if o1[k] != o2[k] {
			t.Errorf("%s: %s, the file's %s", k, o2[k], o1[k])
		}
	}
	if nt != 2*106 {
		t.Errorf("%d moment tensors, want 212", nt)
	}
	re, err := ReadTrainingState(back, im.Model)
	if err != nil {
		t.Fatal(err)
	}
	if re.OptimizerName != st.OptimizerName || re.NumUpdates != 1000 || re.Epoch != 39 || re.IterationsInEpoch != 12 || *re.Best != *st.Best {
		t.Errorf("read back %+v", *re)
	}
}
