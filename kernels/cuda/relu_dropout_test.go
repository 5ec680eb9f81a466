package cuda

import (
	"regexp"
	"testing"
)

// ReLUDropoutBackward looks its kernel up by name at each call (relu_dropout.go): the
// kernel must be defined in activation.cu, and activation.cu must be the first program
// loaded, or each call would pay failed lookups in the modules before it.
func TestReLUDropoutKernelFirstModule(t *testing.T) {
	names, err := sourceNames()
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 || names[0] != "activation.cu" {
		t.Fatalf("first program %v, want activation.cu", names)
	}
	src, err := sources.ReadFile("activation.cu")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`extern "C" __global__ void ` + reluDropoutKernel + `\(`).Match(src) {
		t.Errorf("kernel %s is not defined in activation.cu", reluDropoutKernel)
	}
}
