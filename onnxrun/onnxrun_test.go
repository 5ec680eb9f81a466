//go:build onnxruntime

package onnxrun

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/xform-dev/xform/model"
)

// The search over ONNX Runtime decodes a fixture sentence; the full comparison with
// fairseq-generate is cmd/xform's TestGenerateONNXMatchesFairseq.
func TestGenerateOneSentence(t *testing.T) {
	if _, err := LibPath(""); err != nil {
		t.Skip(err)
	}
	dir := filepath.Join(t.TempDir(), "onnx")
	cmd := exec.Command("go", "run", "../cmd/xform", "export", "--onnx", "../fixtures/clinic/runs/c_preln/ckpt/checkpoint_last.pt", "-o", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	m, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Config().TgtVocab < 4 || m.MaxDecoderPositions() < 2 {
		t.Fatalf("config %+v", m.Config())
	}
	// Two left-padded sentences of ordinary tokens, EOS-terminated.
	src := []int32{model.Pad, 10, 11, 12, model.EOS, 13, 14, 15, 16, model.EOS}
	hyps, err := m.Generate(context.Background(), src, 2, 5, model.BeamOptions{Beam: 4, MaxLenB: 20, MinLen: 1, LenPenalty: 1, NBest: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range hyps {
		if len(h) != 2 || len(h[0].Tokens) == 0 || h[0].Tokens[len(h[0].Tokens)-1] != model.EOS || h[0].Score < h[1].Score {
			t.Fatalf("sentence %d: %+v", i, h)
		}
	}
	if _, err := Open(t.TempDir(), Options{}); err == nil {
		t.Fatal("Open of an empty directory succeeded")
	}
}
