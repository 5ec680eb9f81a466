package generate

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/xform-dev/xform/internal/npy"
	"github.com/xform-dev/xform/internal/pyfmt"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train/data"
)

// LoadDicts reads only the two dictionaries of a data-bin (what translate needs).
func LoadDicts(dir, src, tgt string) (*Split, error) {
	sd, err := data.LoadDictionary(filepath.Join(dir, "dict."+src+".txt"))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrData, err)
	}
	td, err := data.LoadDictionary(filepath.Join(dir, "dict."+tgt+".txt"))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrData, err)
	}
	return &Split{SrcLang: src, TgtLang: tgt, SrcDict: sd, TgtDict: td}, nil
}

// Interactive translates sp.Src (already encoded input lines) as fairseq-interactive
// does and prints S-/H-/P- lines in input order. When progress is not nil, a running
// count of translated lines is written to it.
func Interactive(ctx context.Context, r *model.Runner, sp *Split, opt Options, out, progress io.Writer) (int, error) {
	return InteractiveFrom(ctx, r, sp, 0, opt, out, progress)
}

// InteractiveFrom is Interactive for a chunk of a longer input whose first line is number
// first: the printed ids continue across chunks, as fairseq-interactive's do across buffers.
func InteractiveFrom(ctx context.Context, r *model.Runner, sp *Split, first int, opt Options, out, progress io.Writer) (int, error) {
	if err := CheckVocab(r, sp); err != nil {
		return 0, err
	}
	batches, dropped, err := Batches(r, sp, opt)
	if err != nil {
		return 0, err
	}
	if len(dropped) > 0 {
		return 0, fmt.Errorf("%w: input lines %v are longer than %d tokens", model.ErrInput, dropped, r.MaxSourcePositions())
	}
	results := make([][]model.Hypothesis, len(sp.Src))
	done := 0
	for _, batch := range batches {
		order, src, S := Collate(batch, sp.Src)
		hyps, err := r.Generate(ctx, src, len(order), S, opt.Search)
		if err != nil {
			return done, err
		}
		for k, id := range order {
			results[id] = hyps[k]
		}
		done += len(order)
		if progress != nil {
			fmt.Fprintf(progress, "\rtranslated %d lines", first+done)
		}
	}
	for i, hs := range results {
		id := first + i
		fmt.Fprintf(out, "S-%d\t%s\n", id, sp.SrcDict.String(sp.Src[i], opt.RemoveBPE, false))
		for _, h := range hs {
			fmt.Fprintf(out, "H-%d\t%s\t%s\n", id, pyfmt.Float(float64(h.Score)), sp.TgtDict.String(h.Tokens, opt.RemoveBPE, false))
			fmt.Fprintf(out, "P-%d\t%s\n", id, positional(h.PositionalScores))
		}
	}
	return done, nil
}

// Dump runs the sentences ids of sp as one teacher-forced batch and writes the
// tensors in the reference dumps' layouts to dir (see the score command).
func Dump(ctx context.Context, r *model.Runner, sp *Split, ids []int, dir string) error {
	if err := CheckVocab(r, sp); err != nil {
		return err
	}
	// fairseq's collater: sources sorted by length, targets permuted the same way.
	order, src, S := Collate(ids, sp.Src)
	B := len(order)
	T := 0
	for _, i := range order {
		T = max(T, len(sp.Tgt[i]))
	}
	prev := make([]int32, B*T)
	for b, i := range order {
		row := prev[b*T : (b+1)*T]
		for j := range row {
			row[j] = data.Pad
		}
		t := sp.Tgt[i]
		row[0] = data.EOS
		copy(row[1:], t[:len(t)-1])
	}
	tr := &model.Trace{Enabled: true}
	enc, err := r.Encode(ctx, src, B, S, tr)
	if err != nil {
		return err
	}
	if _, err := r.Decode(ctx, enc, prev, T, tr); err != nil {
		return err
	}
	C := r.Config().EncoderEmbedDim
	V := r.Config().TgtVocab
	encOut := make([]float32, B*S*C)
	r.Backend().Download(encOut, enc.Out)
	if err := os.MkdirAll(filepath.Join(dir, "batch"), 0o755); err != nil {
		return err
	}
	i64 := func(v []int32) []int64 {
		o := make([]int64, len(v))
		for i, x := range v {
			o[i] = int64(x)
		}
		return o
	}
	idv := make([]int64, B)
	for b, i := range order {
		idv[b] = int64(i)
	}
	stack := func(xs [][]float32, T int) []float32 {
		var o []float32
		for _, x := range xs {
			o = append(o, timeMajor(x, B, T, C)...)
		}
		return o
	}
	L, Ld := len(tr.EncoderStates), len(tr.DecoderInner)
	writes := []func() error{
		func() error { return npy.WriteI64(filepath.Join(dir, "batch/src_tokens.npy"), []int{B, S}, i64(src)) },
		func() error {
			return npy.WriteI64(filepath.Join(dir, "batch/prev_output_tokens.npy"), []int{B, T}, i64(prev))
		},
		func() error { return npy.WriteI64(filepath.Join(dir, "batch/id.npy"), []int{B}, idv) },
		func() error {
			return npy.WriteF32(filepath.Join(dir, "encoder_out.npy"), []int{S, B, C}, timeMajor(encOut, B, S, C))
		},
		func() error {
			return npy.WriteF32(filepath.Join(dir, "encoder_states.npy"), []int{L, S, B, C}, stack(tr.EncoderStates, S))
		},
		func() error {
			return npy.WriteF32(filepath.Join(dir, "decoder_inner_states.npy"), []int{Ld, T, B, C}, stack(tr.DecoderInner, T))
		},
		func() error {
			return npy.WriteF32(filepath.Join(dir, "decoder_features.npy"), []int{B, T, C}, tr.DecoderFeatures)
		},
		func() error {
			return npy.WriteF32(filepath.Join(dir, "decoder_attn.npy"), []int{B, T, S}, tr.DecoderAttn)
		},
		func() error { return npy.WriteF32(filepath.Join(dir, "logits.npy"), []int{B, T, V}, tr.Logits) },
		func() error { return npy.WriteF32(filepath.Join(dir, "lprobs.npy"), []int{B, T, V}, tr.LogProbs) },
	}
	for _, w := range writes {
		if err := w(); err != nil {
			return fmt.Errorf("dump: %w", err)
		}
	}
	return nil
}

// timeMajor converts batch-major [B, T, C] to fairseq's [T, B, C].
func timeMajor(x []float32, B, T, C int) []float32 {
	out := make([]float32, len(x))
	for b := 0; b < B; b++ {
		for t := 0; t < T; t++ {
			copy(out[(t*B+b)*C:(t*B+b+1)*C], x[(b*T+t)*C:(b*T+t+1)*C])
		}
	}
	return out
}
