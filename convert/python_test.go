package convert

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// pythonWith returns python3 if it can import mods; without them the test skips, except in
// CI (CI=true) where a missing dependency is a failure.
func pythonWith(t *testing.T, mods ...string) string {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err == nil {
		args := []string{"-c", "import " + joinComma(mods)}
		if err = exec.Command(py, args...).Run(); err == nil {
			return py
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("python3 with %v is required in CI: %v", mods, err)
	}
	t.Skipf("python3 with %v not available: %v", mods, err)
	return ""
}

func joinComma(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ", "
		}
		out += x
	}
	return out
}

// The real safetensors library reads what `xform import` writes, and the values agree with the
// reference dump.
func TestImportReadableBySafetensorsPython(t *testing.T) {
	py := pythonWith(t, "safetensors", "numpy")
	for _, run := range []string{"a_admin", "b_postln", "c_preln"} {
		im, err := Import(clinic + run + "/ckpt/checkpoint_last.pt")
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), run)
		if err := SaveDir(out, im.Model, SaveDirOptions{}); err != nil {
			t.Fatal(err)
		}
		im.Close()
		cmd := exec.Command(py, "../tools/reference/check_safetensors.py", out, clinic+run+"/dump_last")
		b, err := cmd.CombinedOutput()
		t.Logf("%s: %s", run, b)
		if err != nil {
			t.Fatalf("%s: %v", run, err)
		}
	}
}
