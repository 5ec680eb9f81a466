package pytest

import (
	"os/exec"
	"testing"
)

// Python finds an interpreter that imports the modules asked for, and skips (outside CI)
// when a module cannot be imported.
func TestPython(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	py := Python(t, "json", "math")
	if out, err := exec.Command(py, "-c", "import json, math; print(json.dumps(math.floor(2.5)))").Output(); err != nil || string(out) != "2\n" {
		t.Fatalf("%s: %q, %v", py, out, err)
	}
	t.Setenv("CI", "")
	skipped := t.Run("missing module", func(t *testing.T) {
		Python(t, "no_such_module_xform")
		t.Error("Python returned for a module that does not exist")
	})
	if !skipped {
		t.Error("a missing module failed the test outside CI instead of skipping it")
	}
}
