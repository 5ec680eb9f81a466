package cuda

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestCompileEmbeddedSources compiles every embedded kernel with NVRTC for sm_90 without
// needing a GPU or a driver, so a kernel that does not compile fails here rather than on
// the GPU machine. NVRTC comes from XFORM_NVRTC (a libnvrtc.so path; CI installs the
// nvidia-cuda-nvrtc wheel and sets it) or the usual library search; without one the test
// skips.
func TestCompileEmbeddedSources(t *testing.T) {
	path := os.Getenv("XFORM_NVRTC")
	if path == "" {
		f := Find(libNVRTC, DefaultSearch().Dirs(), 0)
		path = f.Path
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
	archs, err := n.supportedArchs()
	if err != nil {
		t.Fatal(err)
	}
	arch, err := pickArch(9, 0, archs)
	if err != nil {
		t.Fatal(err)
	}
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
