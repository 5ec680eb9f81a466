package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runXform(args ...string) (string, error) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestExportONNXCommand(t *testing.T) {
	ckpt := filepath.Join("..", "..", "fixtures", "clinic", "runs", "a_admin", "ckpt", "checkpoint_last.pt")
	dir := filepath.Join(t.TempDir(), "sub", "onnx")
	cases := []struct {
		name    string
		args    []string
		usage   bool   // want a usage error (exit 2)
		errHas  string // want an error containing this
		outHas  string
		wantDir bool
	}{
		{"no format", []string{"export", ckpt, "-o", dir}, true, "--onnx", "", false},
		{"no output", []string{"export", "--onnx", ckpt}, true, "-o DIR", "", false},
		{"old opset", []string{"export", "--onnx", "--opset", "13", ckpt, "-o", dir}, true, "opset", "", false},
		{"ok folded", []string{"export", "--onnx", ckpt, "-o", dir}, false, "", "fold: ω folded", true},
		{"exists", []string{"export", "--onnx", ckpt, "-o", dir}, false, "--force", "", true},
		{"force fp16 keep ω", []string{"export", "--onnx", "--force", "--fp16", "--keep-omega", ckpt, "-o", dir}, false, "", "decoder_model_merged.onnx", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := runXform(c.args...)
			var ue usageError
			if c.errHas == "" && err != nil {
				t.Fatalf("unexpected error %v\n%s", err, out)
			}
			if c.errHas != "" && (err == nil || !strings.Contains(err.Error(), c.errHas)) {
				t.Fatalf("err = %v, want one containing %q", err, c.errHas)
			}
			if got := errors.As(err, &ue); got != c.usage {
				t.Fatalf("usage error = %v, want %v (%v)", got, c.usage, err)
			}
			if !strings.Contains(out, c.outHas) {
				t.Fatalf("output lacks %q:\n%s", c.outHas, out)
			}
			_, serr := os.Stat(filepath.Join(dir, "decoder_model_merged.onnx"))
			if (serr == nil) != c.wantDir {
				t.Fatalf("export dir present = %v, want %v", serr == nil, c.wantDir)
			}
		})
	}
	// Nothing but the export dir is left beside it (no temp dirs).
	ents, _ := os.ReadDir(filepath.Dir(dir))
	if len(ents) != 1 {
		t.Fatalf("parent holds %d entries, want only the export dir", len(ents))
	}
}
