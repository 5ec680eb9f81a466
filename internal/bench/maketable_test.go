package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xform-dev/xform/internal/pytest"
)

// TestMakeTableRatios runs tools/bench/make_table.py on a committed run_all.sh result
// file and checks its ratio columns against the tokens/s in that file, computed here:
// "÷ Clinic", "xform ÷ this" (fairseq batching) and "xform (bucket) ÷ this".
func TestMakeTableRatios(t *testing.T) {
	py := pytest.Python(t)
	root := filepath.Join("..", "..")
	results := filepath.Join(root, "fixtures", "bench", "train_2026-11-29b", "bench_results.jsonl")
	f, err := os.Open(results)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tps := map[string]float64{}
	framework := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r struct {
			Tag       string  `json:"tag"`
			Framework string  `json:"framework"`
			TPS       float64 `json:"target_tokens_per_s"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		tps[r.Tag], framework[r.Tag] = r.TPS, r.Framework
	}
	for _, tag := range []string{"xform_6l", "xform_6l_bucket", "clinic_6l", "torch_compile-cudagraphs_6l"} {
		if tps[tag] == 0 {
			t.Fatalf("%s has no %s row", results, tag)
		}
	}
	out, err := exec.Command(py, filepath.Join(root, "tools", "bench", "make_table.py"), results).CombinedOutput()
	if err != nil {
		t.Fatalf("make_table.py: %v\n%s", err, out)
	}
	cells := map[string][]string{}
	for _, line := range strings.Split(string(out), "\n") {
		c := strings.Split(line, "|")
		if len(c) > 3 {
			cells[strings.TrimSpace(c[2])] = c
		}
	}
	// Columns: 1 depth, 2 framework, …, 8 ÷ Clinic, 9 xform ÷ this, 10 xform (bucket) ÷ this.
	for tag, want := range map[string][3]float64{
		"torch_compile-cudagraphs_6l": {tps["torch_compile-cudagraphs_6l"] / tps["clinic_6l"], tps["xform_6l"] / tps["torch_compile-cudagraphs_6l"], tps["xform_6l_bucket"] / tps["torch_compile-cudagraphs_6l"]},
		"clinic_6l":                   {1, tps["xform_6l"] / tps["clinic_6l"], tps["xform_6l_bucket"] / tps["clinic_6l"]},
	} {
		c, ok := cells[framework[tag]]
		if !ok || len(c) < 11 {
			t.Fatalf("no row for %q in\n%s", framework[tag], out)
		}
		for i, col := range []int{8, 9, 10} {
			if got, w := strings.TrimSpace(c[col]), fmt.Sprintf("%.2f", want[i]); got != w {
				t.Errorf("%s column %d: %s, want %s", tag, col, got, w)
			}
		}
	}
}
