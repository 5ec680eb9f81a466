package convert

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/xform-dev/xform/admin"
	"github.com/xform-dev/xform/fairseqpt"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

const exportRuns = "../fixtures/clinic/runs/"

var exportFixtures = []string{
	exportRuns + "a_admin/ckpt/checkpoint_last.pt",
	exportRuns + "a_admin/ckpt_u1/checkpoint_last.pt",
	exportRuns + "b_postln/ckpt/checkpoint_last.pt",
	exportRuns + "c_preln/ckpt/checkpoint_last.pt",
	"../fixtures/torch/a_admin_fp16.pt",
	"../fixtures/torch/a_admin_legacy.pt",
	"../fixtures/torch/b_postln_cfg.pt",
}

func sameModel(t *testing.T, want, got *model.Model) {
	t.Helper()
	if want.Config != got.Config {
		t.Errorf("config changed:\n want %+v\n  got %+v", want.Config, got.Config)
	}
	var names []string
	for n := range want.Params {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		a, b := want.Params[n], got.Params[n]
		if b == nil {
			t.Errorf("%s missing after the round trip", n)
			continue
		}
		if a.DType != b.DType || !bytes.Equal(a.Data, b.Data) || len(a.Shape) != len(b.Shape) {
			t.Errorf("%s: %s%v became %s%v (or its bytes changed)", n, a.DType, a.Shape, b.DType, b.Shape)
		}
	}
	if len(got.Params) != len(want.Params) {
		t.Errorf("%d parameters after the round trip, want %d", len(got.Params), len(want.Params))
	}
}

// The Clinic state dict built from the canonical model lists exactly the fixture's keys in
// the fixture's order, and every tensor (fused in_proj included) is bit-identical.
func TestFairseqStateDictMatchesClinic(t *testing.T) {
	for _, path := range exportFixtures[:4] {
		t.Run(path[len(exportRuns):], func(t *testing.T) {
			im, err := Import(path)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			sd, err := FairseqStateDict(im.Model, TargetClinic)
			if err != nil {
				t.Fatal(err)
			}
			es, _ := fairseqpt.Entries(sd)
			if len(es) != len(im.Checkpoint.State) {
				t.Fatalf("%d keys, fixture has %d", len(es), len(im.Checkpoint.State))
			}
			for i, e := range es {
				src := im.Checkpoint.State[i]
				if e.Key != src.Name {
					t.Fatalf("key %d is %s, fixture has %s", i, e.Key, src.Name)
				}
				if strings.HasSuffix(e.Key, "_float_tensor") {
					continue // garbage in the reference, by design
				}
				want, err := src.Tensor.Materialize()
				if err != nil {
					t.Fatal(err)
				}
				got, err := materialize(e.Value)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(want.Data, got.Data) || want.DType != got.DType {
					t.Errorf("%s differs from the fixture", e.Key)
				}
			}
		})
	}
}

func materialize(v interface{}) (*tensor.Tensor, error) {
	switch x := v.(type) {
	case *fairseqpt.Tensor:
		return x.Materialize()
	case *tensor.Tensor:
		return x, nil
	}
	return nil, errors.New("not a tensor")
}

// Import → export (no fold) → import gives the same model bit for bit, for every target
// that can hold it, and the file passes the strict standard-library reader.
func TestExportRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for _, path := range exportFixtures {
		for _, target := range []FairseqTarget{TargetClinic, TargetFairseq010, TargetFairseq012} {
			name := strings.ReplaceAll(strings.TrimPrefix(path, "../fixtures/"), "/", "_") + "." + string(target)
			t.Run(name, func(t *testing.T) {
				im, err := Import(path)
				if err != nil {
					t.Fatal(err)
				}
				defer im.Close()
				out := filepath.Join(dir, name+".pt")
				ex, err := ExportFairseq(out, im.Model, FairseqExportOptions{Target: target, Source: im.Checkpoint}, false)
				if im.Model.Config.Init.HasOmega() && target != TargetClinic {
					if !errors.Is(err, ErrNeedFold) {
						t.Fatalf("unfolded Admin to %s: err = %v, want ErrNeedFold", target, err)
					}
					if _, serr := os.Stat(out); serr == nil {
						t.Fatal("a file was written for a refused export")
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				back, err := Import(out)
				if err != nil {
					t.Fatalf("re-import: %v (notes %v)", err, ex.Notes)
				}
				defer back.Close()
				sameModel(t, im.Model, back.Model)
				wantGen := fairseqpt.GenArgs
				if target == TargetFairseq012 {
					wantGen = fairseqpt.GenCfg
				}
				if back.Checkpoint.Generation != wantGen {
					t.Errorf("written as %s, want %s", back.Checkpoint.Generation, wantGen)
				}
				// A 0.12 source keeps its own cfg, which may hold a Namespace (legacy --arch runs).
				strictCheck(t, out, target == TargetFairseq012 && im.Checkpoint.Generation != fairseqpt.GenCfg)
			})
		}
	}
}

// A folded model exported to every target reads back as the folded model.
func TestExportFolded(t *testing.T) {
	dir := t.TempDir()
	im, err := Import(exportRuns + "a_admin/ckpt/checkpoint_last.pt")
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	res, err := admin.Fold(im.Model, admin.FoldOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []FairseqTarget{TargetClinic, TargetFairseq010, TargetFairseq012} {
		out := filepath.Join(dir, string(target)+".pt")
		ex, err := ExportFairseq(out, res.Model, FairseqExportOptions{Target: target, Source: im.Checkpoint, Changed: true}, false)
		if err != nil {
			t.Fatal(err)
		}
		if len(ex.Notes) == 0 {
			t.Error("no notes: the optimizer state was dropped silently")
		}
		back, err := Import(out)
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		sameModel(t, res.Model, back.Model)
		if _, ok := fairseqpt.DictGet(back.Checkpoint.Root, "last_optimizer_state"); ok {
			t.Errorf("%s: optimizer state kept after a fold", target)
		}
		if v, _ := back.Checkpoint.Get("init_type"); target != TargetFairseq012 && v != "default" {
			t.Errorf("%s: init_type %v, want default", target, v)
		}
		back.Close()
		strictCheck(t, out, target == TargetFairseq012)
	}
}

func TestExportWeightsOnlyAndDropOptimizer(t *testing.T) {
	dir := t.TempDir()
	im, err := Import(exportRuns + "b_postln/ckpt/checkpoint_last.pt")
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	wo := filepath.Join(dir, "wo.pt")
	if _, err := ExportFairseq(wo, im.Model, FairseqExportOptions{Target: TargetClinic, Source: im.Checkpoint, WeightsOnly: true}, false); err != nil {
		t.Fatal(err)
	}
	strictCheck(t, wo, true)
	f, err := fairseqpt.Open(wo)
	if err != nil {
		t.Fatal(err)
	}
	es, _ := fairseqpt.Entries(f.Root)
	f.Close()
	if len(es) != 1 || es[0].Key != "model" {
		t.Errorf("weights-only file has keys %v", es)
	}
	nd := filepath.Join(dir, "noopt.pt")
	if _, err := ExportFairseq(nd, im.Model, FairseqExportOptions{Target: TargetClinic, Source: im.Checkpoint, DropOptimizer: true}, false); err != nil {
		t.Fatal(err)
	}
	ck, err := fairseqpt.OpenCheckpoint(nd)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if ck.OptimizerState {
		t.Error("--drop-optimizer kept last_optimizer_state")
	}
	if ck.Progress.Updates != 1000 || ck.Progress.Epoch != 39 {
		t.Errorf("progress %+v, want 1000 updates at epoch 39", ck.Progress)
	}
	// Exporting over an existing file without force fails and leaves it alone.
	if _, err := ExportFairseq(nd, im.Model, FairseqExportOptions{Target: TargetClinic, Source: im.Checkpoint}, false); !errors.Is(err, fairseqpt.ErrExists) {
		t.Errorf("export over an existing file: err = %v, want ErrExists", err)
	}
}

// strictCheck runs tools/reference/strict_pt_reader.py (skipped without python3 unless CI).
func strictCheck(t *testing.T, path string, weightsOnly bool) {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("python3 is required under CI=true")
		}
		return
	}
	args := []string{"../tools/reference/strict_pt_reader.py", path}
	if weightsOnly {
		args = append(args, "--weights-only")
	}
	if out, err := exec.Command(py, args...).CombinedOutput(); err != nil {
		t.Errorf("strict reader (weights-only %v): %v\n%s", weightsOnly, err, out)
	}
}
