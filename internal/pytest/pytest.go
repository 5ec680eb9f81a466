// Package pytest finds the Python interpreter for tests that check xform against Python
// tools (the reference's readers, onnxruntime, the benchmark scripts).
package pytest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Python returns python3 when it can import every module of mods. Otherwise the test
// is skipped, except under CI=true: CI installs them (tools/requirements-ci.txt), so
// there a missing one fails the test instead of letting a skip hide a broken check.
func Python(t testing.TB, mods ...string) string {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err == nil && len(mods) > 0 {
		err = exec.Command(py, "-c", "import "+strings.Join(mods, ", ")).Run()
	}
	if err == nil {
		return py
	}
	what := "python3"
	if len(mods) > 0 {
		what += " with " + strings.Join(mods, ", ")
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required under CI=true (pip install -r tools/requirements-ci.txt): %v", what, err)
	}
	t.Skipf("%s not available: %v", what, err)
	return ""
}
