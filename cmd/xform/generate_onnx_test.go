//go:build onnxruntime

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xform-dev/xform/onnxrun"
)

// hypLines returns the H- lines' id and tokens (fields 1 and 3) and the BLEU line.
func hypLines(s string) (map[string]string, string) {
	h := map[string]string{}
	var bleu string
	for _, l := range strings.Split(s, "\n") {
		f := strings.Split(l, "\t")
		switch {
		case strings.HasPrefix(l, "H-") && len(f) == 3:
			h[f[0]] = f[2]
		case strings.Contains(l, "BLEU4 ="):
			bleu = l
		}
	}
	return h, bleu
}

// generate --onnx on the exported fixture models gives fairseq-generate's hypotheses
// and BLEU line.
func TestGenerateONNXMatchesFairseq(t *testing.T) {
	if _, err := onnxrun.LibPath(""); err != nil {
		t.Skip(err)
	}
	for _, run := range []string{"a_admin", "b_postln", "c_preln"} {
		t.Run(run, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "onnx")
			if out, err := runXform("export", "--onnx", fx+"clinic/runs/"+run+"/ckpt/checkpoint_last.pt", "-o", dir); err != nil {
				t.Fatalf("export: %v\n%s", err, out)
			}
			out, err := runXform("generate", fx+"clinic/data-bin", "--onnx", dir, "--beam", "4", "--batch-size", "128")
			if err != nil {
				t.Fatalf("generate --onnx: %v\n%s", err, out)
			}
			ref, err := os.ReadFile(fx + "clinic/runs/" + run + "/gen_beam4_cpu.txt")
			if err != nil {
				t.Fatal(err)
			}
			got, gotBLEU := hypLines(out)
			want, wantBLEU := hypLines(string(ref))
			if len(want) == 0 || len(got) != len(want) {
				t.Fatalf("%d hypotheses, want %d", len(got), len(want))
			}
			bad := 0
			for id, w := range want {
				if got[id] != w {
					if bad < 3 {
						t.Errorf("%s: %q, want %q", id, got[id], w)
					}
					bad++
				}
			}
			if bad > 0 {
				t.Errorf("%d of %d hypotheses differ", bad, len(want))
			}
			if gotBLEU != wantBLEU || wantBLEU == "" {
				t.Errorf("BLEU line %q, want %q", gotBLEU, wantBLEU)
			}
		})
	}
}
