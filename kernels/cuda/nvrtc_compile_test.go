package cuda

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCompileEmbeddedSources compiles every embedded kernel with NVRTC for sm_90 without
// needing a GPU or a driver, so a kernel that does not compile fails here rather than on
// the GPU machine. NVRTC comes from XFORM_NVRTC (a libnvrtc.so path; CI installs the
// nvidia-cuda-nvrtc wheel and sets it) or the usual library search; without one the test
// skips.
func TestCompileEmbeddedSources(t *testing.T) {
	n, path, arch := testNVRTCArch(t)
	progs, err := compileAll(context.Background(), n, arch, "") // no cache: always compile
	if err != nil {
		if ce, ok := err.(*CompileError); ok {
			t.Fatalf("%s: %v\n%s", ce.Name, ce.Err, ce.Log)
		}
		t.Fatal(err)
	}
	names, _ := sourceNames()
	if len(progs) != len(names) {
		t.Fatalf("%d programs for %d sources", len(progs), len(names))
	}
	for _, p := range progs {
		if len(p.cubin) == 0 {
			t.Errorf("%s: empty cubin", p.name)
		}
	}
	t.Logf("NVRTC %s (%s): %d programs compiled for %s", n.versionString(), filepath.Dir(path), len(progs), arch)
}

// testNVRTC loads NVRTC from XFORM_NVRTC or the library search, or skips the test.
func testNVRTC(t *testing.T) (*nvrtc, string) {
	t.Helper()
	path := os.Getenv("XFORM_NVRTC")
	if path == "" {
		path = Find(libNVRTC, DefaultSearch().Dirs(), 0).Path
	}
	if path == "" {
		t.Skip("no NVRTC (set XFORM_NVRTC=/path/to/libnvrtc.so.13 to run this test)")
	}
	for _, p := range siblings(path, "libnvrtc-builtins.so") {
		if _, err := dlopen(p); err == nil {
			break
		}
	}
	n, err := loadNVRTC(path)
	if err != nil {
		t.Fatal(err)
	}
	return n, path
}

// A kernel that does not compile gives a *CompileError carrying NVRTC's log, which names
// the program, the line and the problem (what `xform env` and every command print).
func TestCompileErrorCarriesLog(t *testing.T) {
	n, _ := testNVRTC(t)
	src := "extern \"C\" __global__ void broken(float* x) {\n    x[0] = undefined_name;\n}\n"
	_, err := n.compileCUBIN("broken.cu", src, nil, nvrtcOptions("sm_90"))
	var ce *CompileError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v (%T), want a *CompileError", err, err)
	}
	for _, want := range []string{"broken.cu", "undefined_name"} {
		if !strings.Contains(ce.Log, want) {
			t.Errorf("log does not mention %q:\n%s", want, ce.Log)
		}
	}
	if !strings.Contains(err.Error(), "broken.cu") {
		t.Errorf("error %q does not name the program", err)
	}
	t.Logf("error: %v\nlog:\n%s", err, ce.Log)
}

// TestCompileTestSources compiles the CUDA sources the GPU timing tests build at run
// time (the kernels the loss and list kernels replaced, v0Source; the LayerNorm
// backward's ablation stages, lnAblationSource) with today's header, so that a name
// added to xform.cuh that clashes with them, or an error in them, fails here, without
// a GPU.
func TestCompileTestSources(t *testing.T) {
	n, _, arch := testNVRTCArch(t)
	headers, err := testHeaders()
	if err != nil {
		t.Fatal(err)
	}
	for _, set := range []*testKernelSet{v0Kernels, lnAblationKernels, lnVariantKernels} {
		if _, err := n.compileCUBIN(set.file, set.src, headers, nvrtcOptions(arch)); err != nil {
			t.Errorf("%s: %v", set.file, err)
		}
	}
}

// testNVRTCArch is testNVRTC and the architecture the tests compile for (sm_90, the
// GPU machine's, or the newest same-major one this NVRTC knows).
func testNVRTCArch(t *testing.T) (*nvrtc, string, string) {
	t.Helper()
	n, path := testNVRTC(t)
	archs, err := n.supportedArchs()
	if err != nil {
		t.Fatal(err)
	}
	arch, err := pickArch(9, 0, archs)
	if err != nil {
		t.Fatal(err)
	}
	return n, path, arch
}
