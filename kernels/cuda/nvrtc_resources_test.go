package cuda

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCompileCubinOut compiles one embedded source (XFORM_CUBIN_SRC, e.g.
// layernorm_fast.cu) for sm_90 as the backend does and writes the cubin to
// XFORM_CUBIN_OUT, so a kernel edit can be checked for registers and spills
// (`cuobjdump -res-usage`) or read as SASS (`nvdisasm`) without a GPU. Skips without
// the variables or without NVRTC.
func TestCompileCubinOut(t *testing.T) {
	name, out := os.Getenv("XFORM_CUBIN_SRC"), os.Getenv("XFORM_CUBIN_OUT")
	if name == "" || out == "" {
		t.Skip("set XFORM_CUBIN_SRC=<file>.cu and XFORM_CUBIN_OUT=<path> to write a source's cubin")
	}
	n, _, arch := testNVRTCArch(t)
	src, err := sources.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	header, err := sources.ReadFile(headerName)
	if err != nil {
		t.Fatal(err)
	}
	cubin, err := n.compileCUBIN(name, string(src), map[string]string{headerName: string(header)}, nvrtcOptions(arch))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Clean(out), cubin, 0o644); err != nil {
		t.Fatalf("writing the cubin: %v", err)
	}
}
