package model_test

import (
	"context"
	"math"
	"slices"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
)

// plainBackend hides the CPU backend's optional methods (in-place row permutation,
// host views), so the decoder takes the path every backend has: double-buffered
// gathers and downloads.
type plainBackend struct{ kernels.Backend }

// TestBeamSearchBackendPaths checks that beam search gives the same hypotheses, to the
// bit, whether the decoder reorders its caches in place (CPU) or through the generic
// gather into spare buffers (the reference: the path any backend takes), across cache
// growth (min-len past both initial capacities) and with a vocabulary large enough for
// the candidate search to run on several goroutines.
func TestBeamSearchBackendPaths(t *testing.T) {
	c := model.Config{Arch: "transformer", Init: model.InitDefault, EncoderLayers: 2, DecoderLayers: 2,
		EncoderEmbedDim: 16, DecoderEmbedDim: 16, EncoderFFNDim: 24, DecoderFFNDim: 24, EncoderHeads: 4, DecoderHeads: 4,
		Activation: "relu", MaxSourcePositions: 64, MaxTargetPositions: 64, SrcVocab: 6000, TgtVocab: 6000, ShareAllEmbeddings: true}
	m := randomModel(t, c)
	src := []int32{1, 1, 5, 6, 2, 7, 8, 9, 10, 2, 11, 12, 13, 14, 2, 1, 15, 16, 17, 2}
	B, S := 4, 5
	opt := model.DefaultBeamOptions()
	opt.Beam, opt.NBest, opt.MinLen, opt.MaxLenB = 3, 3, 36, 40
	// The in-place path with the default candidate-search workers, with one and with
	// three, against the gather path.
	var got [4][][]model.Hypothesis
	for i, be := range []kernels.Backend{plainBackend{cpu.New(2)}, cpu.New(2), cpu.New(2), cpu.New(2)} {
		r, err := model.NewRunner(m, be)
		if err != nil {
			t.Fatal(err)
		}
		o := opt
		o.Workers = []int{0, 0, 1, 3}[i]
		if got[i], err = r.Generate(context.Background(), src, B, S, o); err != nil {
			t.Fatal(err)
		}
	}
	for k := 1; k < len(got); k++ {
		compareHyps(t, opt.MinLen, got[k], got[0])
	}
}

// compareHyps requires the same hypotheses, scores and positional scores to the bit.
func compareHyps(t *testing.T, minLen int, a0, b0 [][]model.Hypothesis) {
	t.Helper()
	for s := range b0 {
		a, b := a0[s], b0[s]
		if len(a) != len(b) {
			t.Fatalf("sentence %d: %d vs %d hypotheses", s, len(a), len(b))
		}
		for h := range a {
			if len(a[h].Tokens) < minLen {
				t.Fatalf("sentence %d hypothesis %d: %d tokens, min-len %d", s, h, len(a[h].Tokens), minLen)
			}
			same := slices.Equal(a[h].Tokens, b[h].Tokens) && math.Float32bits(a[h].Score) == math.Float32bits(b[h].Score) &&
				slices.EqualFunc(a[h].PositionalScores, b[h].PositionalScores, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
			if !same {
				t.Fatalf("sentence %d hypothesis %d differs:\n got %v %v\n gathered %v %v", s, h, a[h].Tokens, a[h].Score, b[h].Tokens, b[h].Score)
			}
		}
	}
}
