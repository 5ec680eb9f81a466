package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xform-dev/xform/admin"
	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/fairseqpt"
)

func TestFoldCommand(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "folded.pt")
	got, err := runCLI(t, "fold", fx+"clinic/runs/a_admin/ckpt/checkpoint_last.pt", "-o", out, "--data", fx+"clinic/data-bin", "--max-sentences", "32")
	if err != nil {
		t.Fatalf("%v\n%s", err, got)
	}
	for _, want := range []string{"share_all_embeddings off", "encoder_learned_pos on", "log-probs", "decoder layer 2"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	m, err := convert.LoadCheckpoint(out)
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.Init.HasOmega() || m.Config.ShareAllEmbeddings || !m.Config.EncoderLearnedPos {
		t.Errorf("folded config %+v", m.Config)
	}
}

// Bad input: a non-Admin model, an existing output, an unfolded Admin model for stock
// fairseq. Each fails with a clear error and writes nothing.
func TestFoldExportBadInput(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing.pt")
	os.WriteFile(existing, []byte("keep"), 0o644)
	cases := []struct {
		name string
		args []string
		want error
	}{
		{"fold non-Admin", []string{"fold", fx + "clinic/runs/b_postln/ckpt/checkpoint_last.pt", "-o", filepath.Join(dir, "a.pt")}, admin.ErrNotAdmin},
		{"export --fold non-Admin", []string{"export", "--fairseq", "--fold", fx + "clinic/runs/c_preln/ckpt/checkpoint_last.pt", "-o", filepath.Join(dir, "b.pt")}, admin.ErrNotAdmin},
		{"existing output", []string{"export", "--fairseq", fx + "clinic/runs/b_postln/ckpt/checkpoint_last.pt", "-o", existing}, fairseqpt.ErrExists},
		{"fold over existing output", []string{"fold", fx + "clinic/runs/a_admin/ckpt/checkpoint_last.pt", "-o", existing}, fairseqpt.ErrExists},
		{"Admin to stock fairseq", []string{"export", "--fairseq", "--target", "fairseq-0.10", fx + "clinic/runs/a_admin/ckpt/checkpoint_last.pt", "-o", filepath.Join(dir, "c.pt")}, convert.ErrNeedFold},
	}
	for _, c := range cases {
		out, err := runCLI(t, c.args...)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v\n%s", c.name, err, c.want, out)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("files left: %v", ents)
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep" {
		t.Error("existing output was changed")
	}
}

// export --fairseq without --fold keeps every tensor; an Admin model for the fork gets its
// profile.ratio.init beside the output.
func TestExportFairseqCommand(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "admin.pt")
	src := fx + "clinic/runs/a_admin/ckpt/checkpoint_last.pt"
	if got, err := runCLI(t, "export", "--fairseq", src, "-o", out); err != nil {
		t.Fatalf("%v\n%s", err, got)
	}
	if _, err := admin.ReadProfileFile(filepath.Join(dir, "profile.ratio.init"), 3, 3); err != nil {
		t.Errorf("profile beside the export: %v", err)
	}
	a, err := convert.LoadCheckpoint(src)
	if err != nil {
		t.Fatal(err)
	}
	b, err := convert.LoadCheckpoint(out)
	if err != nil {
		t.Fatal(err)
	}
	for n, ta := range a.Params {
		if tb := b.Params[n]; tb == nil || string(ta.Data) != string(tb.Data) {
			t.Errorf("%s changed", n)
		}
	}
}

func TestAverageCommand(t *testing.T) {
	dir := t.TempDir()
	for i, src := range []string{"checkpoint_12_300.pt", "checkpoint_last.pt"} {
		b, err := os.ReadFile(fx + "clinic/runs/a_admin/ckpt/" + src)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, []string{"checkpoint_12_300.pt", "checkpoint_39_1000.pt"}[i]), b, 0o644)
	}
	out := filepath.Join(dir, "avg.pt")
	got, err := runCLI(t, "average", dir, "--num-update-checkpoints", "2", "-o", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, got)
	}
	if !strings.Contains(got, "checkpoint_39_1000.pt (") && !strings.Contains(got, "from "+filepath.Join(dir, "checkpoint_39_1000.pt")) {
		t.Errorf("newest checkpoint not first:\n%s", got)
	}
	if _, err := convert.LoadCheckpoint(out); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "average", dir, "--num-update-checkpoints", "2", "-o", out); !errors.Is(err, fairseqpt.ErrExists) {
		t.Errorf("average over an existing file: err = %v", err)
	}
}
