package fairseqpt

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"
)

func TestLastCheckpoints(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"checkpoint1.pt", "checkpoint2.pt", "checkpoint10.pt", "checkpoint_last.pt", "checkpoint_3_300.pt", "checkpoint_4_600.pt", "checkpoint9.pt.bak"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		n        int
		byUpdate bool
		upper    int
		want     []string
		err      bool
	}{
		{2, false, -1, []string{"checkpoint10.pt", "checkpoint2.pt"}, false},
		{2, false, 2, []string{"checkpoint2.pt", "checkpoint1.pt"}, false},
		{2, true, -1, []string{"checkpoint_4_600.pt", "checkpoint_3_300.pt"}, false},
		{4, false, -1, nil, true},
	}
	for _, c := range cases {
		got, err := LastCheckpoints(dir, c.n, c.byUpdate, c.upper)
		if c.err {
			if !errors.Is(err, ErrAverage) {
				t.Errorf("%+v: err = %v, want ErrAverage", c, err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if filepath.Base(got[i]) != c.want[i] {
				t.Errorf("%+v: got %v, want %v", c, got, c.want)
				break
			}
		}
	}
}

// Averaging follows fairseq: float32 mean of every model entry (fp16 widened), the rest of
// the first file kept, tied entries un-shared.
func TestAverage(t *testing.T) {
	a := "../fixtures/clinic/runs/a_admin/ckpt/checkpoint_last.pt"
	b := "../fixtures/clinic/runs/a_admin/ckpt/checkpoint_12_300.pt"
	av, err := Average([]string{a, b})
	if err != nil {
		t.Fatal(err)
	}
	defer av.Close()
	fa, _ := Open(a)
	defer fa.Close()
	fb, _ := Open(b)
	defer fb.Close()
	ea, _ := modelEntries(fa)
	eb, _ := modelEntries(fb)
	m, _ := DictGet(av.Root, "model")
	es, _ := Entries(m)
	if len(es) != len(ea) {
		t.Fatalf("%d entries, want %d", len(es), len(ea))
	}
	for i, e := range es {
		if e.Key != ea[i].Key {
			t.Fatalf("entry %d is %s, want %s", i, e.Key, ea[i].Key)
		}
		ta, _ := ea[i].Value.(*Tensor).Materialize()
		tb, _ := eb[i].Value.(*Tensor).Materialize()
		va, _ := ta.F32()
		vb, _ := tb.F32()
		got, _ := e.Value.(interface{ F32() ([]float32, error) }).F32()
		for k := range got {
			want := (va[k] + vb[k]) / 2
			if math.Float32bits(got[k]) != math.Float32bits(want) && !(math.IsNaN(float64(got[k])) && math.IsNaN(float64(want))) {
				t.Fatalf("%s[%d] = %g, want %g", e.Key, k, got[k], want)
			}
		}
	}
	out := filepath.Join(t.TempDir(), "avg.pt")
	if err := WriteFile(out, av.Root, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	back, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	if len(back.Storages) <= 110 {
		t.Errorf("%d storages: the tied embedding should be un-shared", len(back.Storages))
	}
	for _, k := range []string{"args", "optimizer_history", "extra_state", "last_optimizer_state"} {
		if _, ok := DictGet(back.Root, k); !ok {
			t.Errorf("%s not copied from the first checkpoint", k)
		}
	}
	if _, err := Average([]string{a, "../fixtures/clinic/runs/b_postln/ckpt/checkpoint_last.pt"}); !errors.Is(err, ErrAverage) {
		t.Errorf("averaging different architectures: err = %v, want ErrAverage", err)
	}
}
