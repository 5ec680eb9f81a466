package generate

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xform-dev/xform/kernels/cpu"

	"github.com/xform-dev/xform/model"
)

func TestBatchBySize(t *testing.T) {
	lens := []int{5, 5, 6, 7, 7, 8, 9, 9, 9, 10}
	idx := make([]int, len(lens))
	for i := range idx {
		idx[i] = i
	}
	nt := func(i int) int { return lens[i] }
	for _, tc := range []struct {
		name            string
		maxTok, maxSent int
		mult            int
		want            [][]int
	}{
		{"sentences", 0, 4, 1, [][]int{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9}}},
		// (n+1)·maxlen > 20 closes: {0,1,2} (3·6=18, 4·7=28), then {3,4} (3·8), ...
		{"tokens", 20, 0, 1, [][]int{{0, 1, 2}, {3, 4}, {5, 6}, {7, 8}, {9}}},
		// A multiple of 2 keeps 2 of {0,1,2} and carries 2 over.
		{"multiple", 20, 0, 2, [][]int{{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := BatchBySize(idx, nt, tc.maxTok, tc.maxSent, tc.mult)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v want %v", got, tc.want)
			}
			for i := range got {
				if len(got[i]) != len(tc.want[i]) {
					t.Fatalf("got %v want %v", got, tc.want)
				}
				for j := range got[i] {
					if got[i][j] != tc.want[i][j] {
						t.Fatalf("got %v want %v", got, tc.want)
					}
				}
			}
		})
	}
}

// TestCollateMatchesDump checks the collated order of test sentences 0..3 against the
// reference dump's batch (id.npy = [1, 0, 3, 2]).
func TestCollateMatchesDump(t *testing.T) {
	sp, err := LoadSplit(filepath.Join(fixtures, "data-bin"), "test", "src", "tgt")
	if err != nil {
		t.Fatal(err)
	}
	order, _, S := Collate([]int{0, 1, 2, 3}, sp.Src)
	want := []int{1, 0, 3, 2}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("order %v, want %v", order, want)
		}
	}
	if S != 21 {
		t.Fatalf("S = %d", S)
	}
}

func TestVocabMismatch(t *testing.T) {
	sp, err := LoadSplit(filepath.Join(fixtures, "data-bin"), "test", "src", "tgt")
	if err != nil {
		t.Fatal(err)
	}
	r := loadRunner(t, "c_preln")
	bad := *sp
	bad.Src = append([][]int32{{200, 2}}, sp.Src[1:]...)
	if _, err := Run(context.Background(), r, &bad, Options{BatchSize: 8, Search: model.DefaultBeamOptions(), Seed: 1}, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Fatal("token id 200 accepted")
	}
	long := *sp
	long.Src = append([][]int32{make([]int32, 1100)}, sp.Src[1:]...)
	for i := range long.Src[0] {
		long.Src[0][i] = 5
	}
	var warn bytes.Buffer
	res, err := Run(context.Background(), r, &long, Options{BatchSize: 128, Search: model.BeamOptions{Beam: 1, MaxLenB: 5, MinLen: 1, LenPenalty: 1, NBest: 1}, Seed: 1}, &bytes.Buffer{}, &warn)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Skipped) != 1 || res.Sentences != 99 || !bytes.Contains(warn.Bytes(), []byte("WARNING: 1 samples have invalid sizes")) {
		t.Fatalf("skipped %v, %d sentences, warning %q", res.Skipped, res.Sentences, warn.String())
	}
}

// BenchmarkGenerateBeam4 translates the fixture test set (100 sentences) with beam 4,
// batch size 128, as the reference run did.
func BenchmarkGenerateBeam4(b *testing.B) {
	sp, err := LoadSplit(filepath.Join(fixtures, "data-bin"), "test", "src", "tgt")
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts []cpu.Option
	}{{"a_admin", nil}, {"c_preln", nil}, {"a_admin/f32linear", []cpu.Option{cpu.WithFloat32Linear()}}} {
		run := strings.SplitN(tc.name, "/", 2)[0]
		b.Run(tc.name, func(b *testing.B) {
			r := loadRunner(b, run, tc.opts...)
			opt := Options{Search: model.DefaultBeamOptions(), BatchSize: 128, RequiredBatchSizeMultiple: 8, Seed: 1, Quiet: true}
			opt.Search.Beam = 4
			var sents, toks int
			for b.Loop() {
				res, err := Run(context.Background(), r, sp, opt, &bytes.Buffer{}, &bytes.Buffer{})
				if err != nil {
					b.Fatal(err)
				}
				sents += res.Sentences
				toks += res.Tokens
			}
			sec := b.Elapsed().Seconds()
			b.ReportMetric(float64(sents)/sec, "sentences/s")
			b.ReportMetric(float64(toks)/sec, "tokens/s")
		})
	}
}
