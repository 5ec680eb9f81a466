package convert

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/xform-dev/xform/internal/pytest"
)

// The real safetensors library reads what `xform import` writes, and the values agree with the
// reference dump.
func TestImportReadableBySafetensorsPython(t *testing.T) {
	py := pytest.Python(t, "safetensors", "numpy")
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
