package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Bad input is refused with a clear error before any training step.
func TestTrainProfileBadInput(t *testing.T) {
	fx := filepath.Join("..", "..", "fixtures", "clinic")
	dataBin := filepath.Join(fx, "data-bin")
	ckpt := filepath.Join(fx, "runs", "a_admin", "ckpt_u1", "checkpoint_last.pt")
	tmp := t.TempDir()
	// A data-bin whose dictionary has the same size but other symbols.
	other := filepath.Join(tmp, "other")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dataBin)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dataBin, e.Name()))
		if strings.HasPrefix(e.Name(), "dict.") {
			b = bytes.Replace(b, []byte("t"), []byte("x"), 1)
		}
		os.WriteFile(filepath.Join(other, e.Name()), b, 0o644)
	}
	ckDir := filepath.Join(tmp, "ck")
	os.MkdirAll(ckDir, 0o755)
	ckb, _ := os.ReadFile(ckpt)
	os.WriteFile(filepath.Join(ckDir, "checkpoint_last.pt"), ckb, 0o644)
	for _, n := range []string{"dict.src.txt", "dict.tgt.txt"} {
		b, _ := os.ReadFile(filepath.Join(dataBin, n))
		os.WriteFile(filepath.Join(ckDir, n), b, 0o644)
	}
	// A profile for other depths.
	badProfile := filepath.Join(tmp, "profile.ratio.init")
	os.WriteFile(badProfile, []byte("1 1.0\n2 1.5\n1 1.0\n2 1.5\n3 1.7\n"), 0o644)
	// An empty train split.
	empty := filepath.Join(tmp, "empty")
	os.MkdirAll(empty, 0o755)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dataBin, e.Name()))
		if strings.HasPrefix(e.Name(), "train.") {
			if strings.HasSuffix(e.Name(), ".bin") {
				b = nil
			} else { // mmap index with N = 0
				b = append(append([]byte(nil), b[:18]...), make([]byte, 8)...)
			}
		}
		os.WriteFile(filepath.Join(empty, e.Name()), b, 0o644)
	}
	small := []string{"--arch", "transformer_iwslt_de_en", "--encoder-layers", "3", "--decoder-layers", "3", "--encoder-embed-dim", "32",
		"--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "4",
		"--decoder-attention-heads", "4", "--share-all-embeddings", "--no-save", "--max-update", "1"}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"dictionaries disagree", []string{"train", other, "--restore-file", filepath.Join(ckDir, "checkpoint_last.pt"), "--max-tokens", "2048"}, "differs from"},
		{"profile for other depths", append([]string{"train", dataBin, "--init", "adaptive", "--profile", badProfile, "--max-tokens", "2048",
			"--save-dir", filepath.Join(tmp, "s1")}, small...), "profile"},
		{"empty split", append([]string{"train", empty, "--max-tokens", "2048", "--save-dir", filepath.Join(tmp, "s2")}, small...), "empty"},
		{"max tokens below the longest sentence", append([]string{"train", dataBin, "--max-tokens", "10", "--save-dir", filepath.Join(tmp, "s3")}, small...), "more than --max-tokens"},
		{"profile: max tokens below the longest sentence", []string{"profile", dataBin, "--restore-file", ckpt, "--max-tokens", "10", "-o", filepath.Join(tmp, "p")}, "more than --max-tokens"},
		{"profile a Pre-LN model", append([]string{"profile", dataBin, "--max-tokens", "2048", "--encoder-normalize-before", "-o", filepath.Join(tmp, "p2")}, small[:len(small)-3]...), "Post-LN"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := runXform(c.args...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want an error mentioning %q, got %v\n%s", c.want, err, out)
			}
			if strings.Contains(out, "| epoch") {
				t.Fatalf("training started before the error:\n%s", out)
			}
			t.Log(err)
		})
	}
}
