package admin

import (
	"context"
	"fmt"
	"math"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/model"
)

// Batch is one padded batch to compare a fold on: sources [B, S] (left-padded, as
// fairseq collates them) and previous output tokens [B, T] (EOS first, right-padded).
type Batch struct {
	B, S, T int
	Src     []int32
	Prev    []int32
}

// Delta is how far one folded tensor is from the original.
type Delta struct {
	Name   string  `json:"name"`
	MaxAbs float64 `json:"max_abs"` // max |folded − original|
	MaxRel float64 `json:"max_rel"` // max |folded − original| / max(1, |original|)
	MaxRef float64 `json:"max_ref"` // max |original|
}

// FoldReport is the per-layer comparison of a folded model with the original: each
// hidden state (the folded one divided by the ω it carries) and the final log-probs.
type FoldReport struct {
	Layers    []Delta `json:"layers"`
	LogProbs  Delta   `json:"log_probs"`
	Sentences int     `json:"sentences"`
	Tokens    int     `json:"target_tokens"`
}

// CompareFold runs the original and the folded model on the batches (teacher forcing)
// and reports the largest differences. be is the backend both models run on.
func CompareFold(ctx context.Context, orig *model.Model, res *FoldResult, batches []Batch, be kernels.Backend) (*FoldReport, error) {
	ro, err := model.NewRunner(orig, be)
	if err != nil {
		return nil, fmt.Errorf("admin: compare fold: original: %w", err)
	}
	rf, err := model.NewRunner(res.Model, be)
	if err != nil {
		return nil, fmt.Errorf("admin: compare fold: folded: %w", err)
	}
	c := orig.Config
	d := c.EncoderEmbedDim
	rep := &FoldReport{}
	names := []string{"encoder embedding"}
	for l := 0; l < c.EncoderLayers; l++ {
		names = append(names, fmt.Sprintf("encoder layer %d", l))
	}
	names = append(names, "decoder embedding+positions")
	for l := 0; l < c.DecoderLayers; l++ {
		names = append(names, fmt.Sprintf("decoder layer %d", l))
	}
	rep.Layers = make([]Delta, len(names))
	for i, n := range names {
		rep.Layers[i].Name = n
	}
	rep.LogProbs.Name = "log-probs"
	for _, b := range batches {
		run := func(r *model.Runner) (*model.Trace, error) {
			tr := &model.Trace{Enabled: true}
			enc, err := r.Encode(ctx, b.Src, b.B, b.S, tr)
			if err != nil {
				return nil, err
			}
			if _, err := r.Decode(ctx, enc, b.Prev, b.T, tr); err != nil {
				return nil, err
			}
			return tr, nil
		}
		to, err := run(ro)
		if err != nil {
			return nil, fmt.Errorf("admin: compare fold: original model: %w", err)
		}
		tf, err := run(rf)
		if err != nil {
			return nil, fmt.Errorf("admin: compare fold: folded model: %w", err)
		}
		k := 0
		rep.Layers[k].add(to.EncoderEmbedding, tf.EncoderEmbedding, res.EncoderEmbedScale, d)
		k++
		for l := range to.EncoderStates {
			rep.Layers[k].add(to.EncoderStates[l], tf.EncoderStates[l], res.EncoderStateScale[l], d)
			k++
		}
		for l := range to.DecoderInner {
			rep.Layers[k].add(to.DecoderInner[l], tf.DecoderInner[l], res.DecoderInnerScale[l], d)
			k++
		}
		rep.LogProbs.add(to.LogProbs, tf.LogProbs, nil, c.TgtVocab)
		rep.Sentences += b.B
		for _, t := range b.Prev {
			if t != model.Pad {
				rep.Tokens++
			}
		}
	}
	return rep, nil
}

// add folds one pair of tensors into the running maxima; scale (per channel, may be nil)
// is divided out of the folded values first.
func (dl *Delta) add(orig, folded []float32, scale []float64, d int) {
	if len(orig) != len(folded) {
		dl.MaxAbs, dl.MaxRel = math.Inf(1), math.Inf(1)
		return
	}
	for i, o := range orig {
		f := float64(folded[i])
		if scale != nil {
			f /= scale[i%d]
		}
		diff := math.Abs(f - float64(o))
		if math.IsNaN(diff) {
			diff = math.Inf(1)
		}
		dl.MaxAbs = math.Max(dl.MaxAbs, diff)
		dl.MaxRel = math.Max(dl.MaxRel, diff/math.Max(1, math.Abs(float64(o))))
		dl.MaxRef = math.Max(dl.MaxRef, math.Abs(float64(o)))
	}
}
