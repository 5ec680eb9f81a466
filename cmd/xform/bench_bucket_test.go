package main

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// xform bench --batching bucket reports the batching, the bucket edges, the shape
// warm-up (3 per bucket, as the competitor) and the padding; fairseq's batching stays
// the default.
func TestBenchBucketBatching(t *testing.T) {
	run := func(extra ...string) map[string]any {
		t.Helper()
		out, _, err := runCLI2(benchArgs(append([]string{"--pairs", "600", "--max-tokens", "512", "--updates", "2", "--warmup", "1",
			"--init", "default", "--json"}, extra...)...)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		var obj map[string]any
		if err := json.Unmarshal([]byte(out), &obj); err != nil {
			t.Fatalf("not one JSON object: %v\n%s", err, out)
		}
		return obj
	}
	obj := run("--batching", "bucket", "--buckets", "2")
	lengths, _ := obj["bucket_lengths"].([]any)
	pad, _ := obj["padding_fraction"].(float64)
	if obj["batching"] != "bucket" || len(lengths) != 2 || obj["warmup_updates"] != float64(1+3*2) || pad <= 0 || pad >= 1 {
		t.Errorf("batching %v, lengths %v, warm-up %v, padding %v; want bucket, 2 lengths, 7, a fraction",
			obj["batching"], obj["bucket_lengths"], obj["warmup_updates"], obj["padding_fraction"])
	}
	obj = run()
	lengths, ok := obj["bucket_lengths"].([]any)
	if obj["batching"] != "fairseq" || !ok || len(lengths) != 0 || obj["warmup_updates"] != float64(1) {
		t.Errorf("default: batching %v, lengths %v, warm-up %v; want fairseq, [], 1", obj["batching"], obj["bucket_lengths"], obj["warmup_updates"])
	}
	out, err := runCLI(t, benchArgs("--pairs", "600", "--max-tokens", "512", "--updates", "1", "--warmup", "0", "--init", "default",
		"--batching", "bucket", "--buckets", "2")...)
	if err != nil || !strings.Contains(out, "bucket (lengths [") || !strings.Contains(out, "| padding ") {
		t.Errorf("text output lacks the batching or the padding: %v\n%s", err, out)
	}
}

// xform train --batching bucket trains on the static shapes and says so; validation
// (fairseq's batching) runs as before.
func TestTrainBucketBatching(t *testing.T) {
	dataBin := filepath.Join("..", "..", "fixtures", "clinic", "data-bin")
	out, err := runXform("train", dataBin, "--arch", "transformer_iwslt_de_en", "--encoder-layers", "1", "--decoder-layers", "1",
		"--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
		"--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--share-all-embeddings", "--no-save", "--max-update", "3",
		"--max-tokens", "512", "--log-interval", "1", "--device", "cpu", "--batching", "bucket", "--buckets", "2")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"| bucket batching (not fairseq's): static shapes, lengths [", "num_updates=3", "valid on 'valid' subset"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestBucketBatchingBadFlags(t *testing.T) {
	dataBin := filepath.Join("..", "..", "fixtures", "clinic", "data-bin")
	for _, c := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--batching", "sorted"}, "--batching"},
		{[]string{"--batching", "bucket", "--buckets", "0"}, "--buckets"},
		{[]string{"--batching", "bucket", "--max-sentences", "16"}, "--max-sentences"},
	} {
		for _, cmd := range [][]string{benchArgs("--max-tokens", "512"), {"train", dataBin, "--no-save", "--max-tokens", "512", "--device", "cpu"}} {
			args := append(append([]string(nil), cmd...), c.flags...)
			out, err := runXform(args...)
			var ue usageError
			if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%v: want a usage error naming %s, got %v\n%s", args, c.want, err, out)
			}
			if strings.Contains(out, "| epoch") || strings.Contains(out, "target tokens/s") {
				t.Errorf("%v: work started before the error:\n%s", args, out)
			}
		}
	}
	// Without --max-tokens bucket batching has nothing to size its batches by.
	if _, err := runXform("train", dataBin, "--no-save", "--max-sentences", "16", "--device", "cpu", "--batching", "bucket"); err == nil ||
		!strings.Contains(err.Error(), "--max-tokens") {
		t.Errorf("--batching bucket without --max-tokens: %v", err)
	}
}
