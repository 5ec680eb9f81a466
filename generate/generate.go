package generate

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/xform-dev/xform/bleu"
	"github.com/xform-dev/xform/internal/pyfmt"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train/data"
)

// Options are fairseq-generate's flags that matter here.
type Options struct {
	Subset    string // --gen-subset
	Search    model.BeamOptions
	BatchSize int // --batch-size (max sentences), 0 = unlimited
	MaxTokens int // --max-tokens, 0 = unlimited; fairseq uses 12000 when neither is set
	// RequiredBatchSizeMultiple is fairseq's --required-batch-size-multiple (8).
	RequiredBatchSizeMultiple int
	Seed                      uint32 // --seed (1): orders sentences of equal length
	RemoveBPE                 string // "" = off, "@@ " for the bare flag
	Quiet                     bool
}

// Result summarises a run.
type Result struct {
	Sentences, Tokens int
	Elapsed           time.Duration
	Skipped           []int
	BLEU              *bleu.Scorer // nil without targets
}

// Translator is what Run needs of a model: *model.Runner, or another engine running
// the same beam search (model.Search), such as the ONNX Runtime one.
type Translator interface {
	Generate(ctx context.Context, src []int32, B, S int, opt model.BeamOptions) ([][]model.Hypothesis, error)
	Config() model.Config
	MaxSourcePositions() int
	MaxDecoderPositions() int
}

// CheckVocab verifies that the dictionaries fit the model's embeddings.
func CheckVocab(r Translator, sp *Split) error {
	c := r.Config()
	if sp.SrcDict.Len() != c.SrcVocab {
		return fmt.Errorf("%w: dict.%s.txt has %d symbols but the model's source embedding has %d rows", ErrData, sp.SrcLang, sp.SrcDict.Len(), c.SrcVocab)
	}
	if sp.TgtDict.Len() != c.TgtVocab {
		return fmt.Errorf("%w: dict.%s.txt has %d symbols but the model's target embedding has %d rows", ErrData, sp.TgtLang, sp.TgtDict.Len(), c.TgtVocab)
	}
	check := func(side string, sents [][]int32, v int) error {
		for i, s := range sents {
			for _, t := range s {
				if t < 0 || int(t) >= v {
					return fmt.Errorf("%w: %s sentence %d holds token id %d outside the vocabulary of %d", ErrData, side, i, t, v)
				}
			}
		}
		return nil
	}
	if err := check("source", sp.Src, c.SrcVocab); err != nil {
		return err
	}
	return check("target", sp.Tgt, c.TgtVocab)
}

// Batches orders, filters and batches a split as fairseq-generate does. It returns
// the batches (sentence indices, before collation) and the indices skipped for length.
func Batches(r Translator, sp *Split, opt Options) ([][]int, []int, error) {
	srcLens := make([]int, len(sp.Src))
	for i, s := range sp.Src {
		srcLens[i] = len(s)
	}
	var tgtLens []int
	if sp.Tgt != nil {
		tgtLens = make([]int, len(sp.Tgt))
		for i, s := range sp.Tgt {
			tgtLens[i] = len(s)
		}
	}
	idx := OrderedIndices(srcLens, tgtLens, opt.Seed)
	kept, dropped := FilterBySize(idx, srcLens, tgtLens, r.MaxSourcePositions(), r.MaxDecoderPositions())
	maxTokens := opt.MaxTokens
	if maxTokens == 0 && opt.BatchSize == 0 {
		maxTokens = 12000
	}
	mult := opt.RequiredBatchSizeMultiple
	if mult < 1 {
		mult = 1
	}
	numTokens := func(i int) int {
		n := srcLens[i]
		if tgtLens != nil {
			n = max(n, tgtLens[i])
		}
		return n
	}
	batches, err := BatchBySize(kept, numTokens, maxTokens, opt.BatchSize, mult)
	return batches, dropped, err
}

// Run translates a split and writes fairseq-generate's output to out; warnings go to
// warn. The runner's vocabulary must match the split (see CheckVocab).
func Run(ctx context.Context, r Translator, sp *Split, opt Options, out, warn io.Writer) (*Result, error) {
	if err := CheckVocab(r, sp); err != nil {
		return nil, err
	}
	batches, dropped, err := Batches(r, sp, opt)
	if err != nil {
		return nil, err
	}
	res := &Result{Skipped: dropped}
	if len(dropped) > 0 {
		first := dropped[:min(10, len(dropped))]
		fmt.Fprintf(warn, "| WARNING: %d samples have invalid sizes and will be skipped, max_positions=(%d, %d), first few sample ids=%v\n",
			len(dropped), r.MaxSourcePositions(), r.MaxDecoderPositions(), pyList(first))
	}
	var sc *bleu.Scorer
	if sp.Tgt != nil {
		sc = bleu.New(data.Pad, data.EOS, data.Unk)
		res.BLEU = sc
	}
	var words *wordIDs
	if opt.RemoveBPE != "" {
		words = newWordIDs(sp.TgtDict)
	}
	start := time.Now()
	for _, batch := range batches {
		order, src, S := Collate(batch, sp.Src)
		hyps, err := r.Generate(ctx, src, len(order), S, opt.Search)
		if err != nil {
			return nil, err
		}
		for k, id := range order {
			srcStr := sp.SrcDict.String(sp.Src[id], opt.RemoveBPE, false)
			var tgtStr string
			if sp.Tgt != nil {
				tgtStr = sp.TgtDict.String(sp.Tgt[id], opt.RemoveBPE, true)
			}
			if !opt.Quiet {
				fmt.Fprintf(out, "S-%d\t%s\n", id, srcStr)
				if sp.Tgt != nil {
					fmt.Fprintf(out, "T-%d\t%s\n", id, tgtStr)
				}
			}
			for j, h := range hyps[k] {
				hypStr := sp.TgtDict.String(h.Tokens, opt.RemoveBPE, false)
				if !opt.Quiet {
					fmt.Fprintf(out, "H-%d\t%s\t%s\n", id, pyfmt.Float(float64(h.Score)), hypStr)
					fmt.Fprintf(out, "P-%d\t%s\n", id, positional(h.PositionalScores))
				}
				if sc != nil && j == 0 {
					ref, hyp := sp.Tgt[id], h.Tokens
					if words != nil {
						// fairseq re-encodes both strings after BPE removal, adding new
						// words to the dictionary.
						ref, hyp = words.encode(tgtStr), words.encode(hypStr)
					}
					sc.Add(ref, hyp)
				}
			}
			if len(hyps[k]) > 0 {
				res.Tokens += len(hyps[k][0].Tokens)
			}
			res.Sentences++
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// Summary prints the "| Translated" and BLEU lines.
func Summary(w io.Writer, res *Result, subset string, beam int) {
	sec := res.Elapsed.Seconds()
	if sec <= 0 {
		sec = 1e-9
	}
	fmt.Fprintf(w, "| Translated %d sentences (%d tokens) in %.1fs (%.2f sentences/s, %.2f tokens/s)\n",
		res.Sentences, res.Tokens, sec, float64(res.Sentences)/sec, float64(res.Tokens)/sec)
	if res.BLEU != nil {
		fmt.Fprintf(w, "| Generate %s with beam=%d: %s\n", subset, beam, res.BLEU.String())
	}
}

func pyList(v []int) string {
	s := "["
	for i, x := range v {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprint(x)
	}
	return s + "]"
}

// wordIDs is Dictionary.encode_line(add_if_not_exist=True) for scoring: known words
// keep their ids, new words get fresh ones, EOS is appended.
type wordIDs struct {
	ids  map[string]int32
	next int32
}

func newWordIDs(d *data.Dictionary) *wordIDs {
	w := &wordIDs{ids: make(map[string]int32, d.Len()), next: int32(d.Len())}
	for i := 0; i < d.Len(); i++ {
		if _, ok := w.ids[d.Symbol(int32(i))]; !ok {
			w.ids[d.Symbol(int32(i))] = int32(i)
		}
	}
	return w
}

func (w *wordIDs) encode(line string) []int32 {
	toks := data.Tokenize(line)
	out := make([]int32, 0, len(toks)+1)
	for _, t := range toks {
		id, ok := w.ids[t]
		if !ok {
			id = w.next
			w.ids[t] = id
			w.next++
		}
		out = append(out, id)
	}
	return append(out, data.EOS)
}
