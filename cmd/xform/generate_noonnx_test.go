//go:build !onnxruntime

package main

import (
	"strings"
	"testing"
)

// Without the onnxruntime tag, --onnx is a clear error with exit status 1.
func TestGenerateONNXNotBuilt(t *testing.T) {
	out, err := runXform("generate", fx+"clinic/data-bin", "--onnx", t.TempDir(), "--beam", "4")
	if err == nil || !strings.Contains(err.Error(), "rebuild with -tags onnxruntime") {
		t.Fatalf("err %v, output %q", err, out)
	}
	if c := exitCode(err); c != 1 {
		t.Fatalf("exit code %d, want 1", c)
	}
}
