package main

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var tinyBench = []string{"bench", "--device", "cpu", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
	"--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
	"--decoder-attention-heads", "2", "--threads", "2"}

func benchArgs(extra ...string) []string {
	return append(append([]string(nil), tinyBench...), extra...)
}

// hasKeys fails unless every dotted path exists in obj.
func hasKeys(t *testing.T, obj map[string]any, paths ...string) {
	t.Helper()
	for _, p := range paths {
		var cur any = obj
		for _, k := range strings.Split(p, ".") {
			m, ok := cur.(map[string]any)
			if !ok {
				t.Errorf("JSON has no %s", p)
				break
			}
			if cur, ok = m[k]; !ok {
				t.Errorf("JSON has no %s", p)
				break
			}
		}
	}
}

// xform bench --json (train and generate) prints one object with every documented field,
// and --cpuprofile writes a Go CPU profile (gzip-compressed protobuf) of the timed part.
func TestBenchJSON(t *testing.T) {
	prof := t.TempDir()
	cases := []struct {
		name string
		args []string
		keys []string
	}{
		{"train", benchArgs("--pairs", "300", "--max-tokens", "512", "--updates", "3", "--warmup", "1", "--json",
			"--cpuprofile", filepath.Join(prof, "train")),
			[]string{"mode", "date", "device", "data", "max_tokens", "warmup_updates", "updates", "target_tokens", "seconds",
				"target_tokens_per_s", "updates_per_s", "ms_per_update_mean", "ms_per_update_p50", "target_tokens_per_update",
				"flops_per_target_token", "six_n_per_target_token", "model_tflops_per_s", "peak_tflops", "mfu",
				"first_loss", "last_loss", "memory.peak_rss_bytes", "memory.rss_bytes",
				"model.arch", "model.init", "model.encoder_layers", "model.decoder_layers", "model.embed_dim", "model.vocab", "model.params"}},
		{"generate", benchArgs("--mode", "generate", "--sentences", "8", "--gen-warmup", "2", "--beam", "2", "--max-len-b", "2", "--max-len-a", "0", "--json",
			"--cpuprofile", filepath.Join(prof, "generate")),
			[]string{"mode", "date", "device", "data", "beam", "sentences", "tokens", "seconds", "tokens_per_s", "sentences_per_s",
				"warmup_sentences", "memory.peak_rss_bytes", "model.params"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, _, err := runCLI2(c.args...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			var obj map[string]any
			if err := json.Unmarshal([]byte(out), &obj); err != nil {
				t.Fatalf("not one JSON object: %v\n%s", err, out)
			}
			hasKeys(t, obj, c.keys...)
			if obj["mode"] != c.name || obj["device"] != "cpu" {
				t.Errorf("mode %v, device %v", obj["mode"], obj["device"])
			}
			f, err := os.Open(filepath.Join(prof, c.name))
			if err != nil {
				t.Fatalf("--cpuprofile: %v", err)
			}
			defer f.Close()
			zr, err := gzip.NewReader(f)
			if err != nil {
				t.Fatalf("--cpuprofile: not a Go profile (gzip): %v", err)
			}
			if b, err := io.ReadAll(zr); err != nil || len(b) == 0 {
				t.Errorf("--cpuprofile: %d bytes, %v", len(b), err)
			}
			if c.name == "train" {
				if obj["updates"].(float64) != 3 || obj["target_tokens_per_s"].(float64) <= 0 || obj["mfu"].(float64) <= 0 {
					t.Errorf("updates %v, tokens/s %v, mfu %v", obj["updates"], obj["target_tokens_per_s"], obj["mfu"])
				}
				if m := obj["model"].(map[string]any); m["init"] != "adaptive" || m["arch"] != "transformer_wmt_en_de" {
					t.Errorf("model %v: want the Clinic recipe's defaults", m)
				}
			}
		})
	}
}

// The synthetic text, preprocessed by xform preprocess, trains as --data; the text
// output has the rates.
func TestBenchWriteTextAndData(t *testing.T) {
	dir := t.TempDir()
	text, bin := filepath.Join(dir, "text"), filepath.Join(dir, "bin")
	if out, err := runCLI(t, "bench", "--write-text", text, "--pairs", "200", "--valid-pairs", "20"); err != nil || !strings.Contains(out, "200 + 20") {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, f := range []string{"train.src", "train.tgt", "valid.src", "valid.tgt"} {
		if _, err := os.Stat(filepath.Join(text, f)); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := runCLI(t, "preprocess", "-s", "src", "-t", "tgt", "--trainpref", filepath.Join(text, "train"), "--validpref",
		filepath.Join(text, "valid"), "--destdir", bin, "--joined-dictionary"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err := runCLI(t, benchArgs("--data", bin, "--max-tokens", "512", "--updates", "2", "--warmup", "0", "--init", "default")...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"| bench train on cpu", bin + " (train, 200 pairs)", "target tokens/s", "MFU", "peak RSS"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, err = runCLI(t, benchArgs("--mode", "generate", "--data", bin, "--gen-subset", "valid", "--sentences", "0", "--beam", "1", "--max-len-b", "1", "--max-len-a", "0")...)
	if err != nil || !strings.Contains(out, "20 sentences") {
		t.Fatalf("%v\n%s", err, out)
	}
}

func TestBenchBadInput(t *testing.T) {
	cases := []struct {
		args  []string
		usage bool
		want  string
	}{
		{benchArgs("--mode", "serve"), true, "--mode"},
		{benchArgs("--init", "magic"), true, "--init"},
		{benchArgs("--updates", "0"), true, "--updates"},
		{benchArgs("--max-tokens", "0"), true, "--max-tokens"},
		{benchArgs("extra-arg"), true, "no arguments"},
		{benchArgs("--data", "/nonexistent/data-bin"), false, "nonexistent"},
		{benchArgs("--mode", "generate", "--beam", "0"), true, "--beam"},
		{benchArgs("--pairs", "10", "--max-tokens", "20", "--updates", "1"), false, "max-tokens"},
	}
	for _, c := range cases {
		out, _, err := runCLI2(c.args...)
		if err == nil {
			t.Errorf("%v: no error\n%s", c.args, out)
			continue
		}
		var ue usageError
		if errors.As(err, &ue) != c.usage || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %q (usage %v), want one naming %q (usage %v)", c.args, err, errors.As(err, &ue), c.want, c.usage)
		}
	}
}

// TestBenchPackTokens: --pack-tokens takes auto (the default: off on the CPU, whose
// float32 steps stay padded), true (also as the bare flag) or false, and refuses
// anything else as a usage error; the JSON's packed_rows says which ran.
func TestBenchPackTokens(t *testing.T) {
	for _, c := range []struct {
		flag   []string
		packed bool
	}{{nil, false}, {[]string{"--pack-tokens"}, true}, {[]string{"--pack-tokens=true"}, true}, {[]string{"--pack-tokens=auto"}, false}, {[]string{"--pack-tokens=false"}, false}} {
		out, err := runCLI(t, benchArgs(append([]string{"--pairs", "100", "--max-tokens", "256", "--updates", "1", "--warmup", "0", "--json"}, c.flag...)...)...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", c.flag, err, out)
		}
		var res map[string]any
		if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &res); err != nil {
			t.Fatalf("%v: %v\n%s", c.flag, err, out)
		}
		if got, _ := res["packed_rows"].(bool); got != c.packed {
			t.Errorf("%v: packed_rows %v, want %v", c.flag, res["packed_rows"], c.packed)
		}
	}
	_, err := runCLI(t, benchArgs("--pairs", "100", "--updates", "1", "--warmup", "0", "--pack-tokens=maybe")...)
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), `--pack-tokens "maybe"`) {
		t.Fatalf("--pack-tokens=maybe: %v, want a usage error naming the value", err)
	}
}
