// Package generate is fairseq-generate and fairseq-interactive on top of model.Runner:
// it reads a data-bin split, orders and batches it as fairseq 0.8 does, runs beam
// search and prints S-/T-/H-/P- lines, the "| Translated" line and the BLEU line in
// fairseq's formats.
package generate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/xform-dev/xform/internal/nprand"
	"github.com/xform-dev/xform/train/data"
)

// ErrData reports a data-bin that cannot be used with the model.
var ErrData = errors.New("unusable data-bin")

// Split is one subset of a data-bin: source and (optional) target sentences as ids.
type Split struct {
	SrcLang, TgtLang string
	SrcDict, TgtDict *data.Dictionary
	Src, Tgt         [][]int32 // Tgt is nil when the split has no target side
}

// InferLangs finds the language pair from the subset's file names
// ("{subset}.{src}-{tgt}.{lang}.idx"), as fairseq's infer_language_pair does.
func InferLangs(dir, subset string) (src, tgt string, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrData, err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		parts := strings.Split(n, ".")
		if len(parts) < 3 || parts[0] != subset {
			continue
		}
		if lp := strings.Split(parts[1], "-"); len(lp) == 2 && lp[0] != "" && lp[1] != "" {
			return lp[0], lp[1], nil
		}
	}
	return "", "", fmt.Errorf("%w: cannot infer the language pair of %q in %s; pass --source-lang and --target-lang", ErrData, subset, dir)
}

// LoadSplit reads dictionaries and both sides of a split. The prefix may be named
// src-tgt or tgt-src, as fairseq accepts.
func LoadSplit(dir, subset, src, tgt string) (*Split, error) {
	sd, err := data.LoadDictionary(filepath.Join(dir, "dict."+src+".txt"))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrData, err)
	}
	td, err := data.LoadDictionary(filepath.Join(dir, "dict."+tgt+".txt"))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrData, err)
	}
	sp := &Split{SrcLang: src, TgtLang: tgt, SrcDict: sd, TgtDict: td}
	var pair string
	for _, p := range []string{src + "-" + tgt, tgt + "-" + src} {
		if _, err := data.InferImpl(filepath.Join(dir, subset+"."+p+"."+src)); err == nil {
			pair = p
			break
		}
	}
	if pair == "" {
		return nil, fmt.Errorf("%w: no %s split for %s-%s in %s", ErrData, subset, src, tgt, dir)
	}
	sp.Src, err = readAll(filepath.Join(dir, subset+"."+pair+"."+src), sd)
	if err != nil {
		return nil, err
	}
	tp := filepath.Join(dir, subset+"."+pair+"."+tgt)
	if _, err := data.InferImpl(tp); err == nil {
		sp.Tgt, err = readAll(tp, td)
		if err != nil {
			return nil, err
		}
		if len(sp.Tgt) != len(sp.Src) {
			return nil, fmt.Errorf("%w: %s has %d source and %d target sentences", ErrData, subset, len(sp.Src), len(sp.Tgt))
		}
	}
	return sp, nil
}

func readAll(prefix string, dict *data.Dictionary) ([][]int32, error) {
	ds, err := data.OpenIndexedDataset(prefix, dict)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrData, err)
	}
	defer ds.Close()
	out := make([][]int32, ds.Len())
	for i := range out {
		s, err := ds.Get(i)
		if err != nil {
			return nil, fmt.Errorf("%w: %s sentence %d: %v", ErrData, prefix, i, err)
		}
		out[i] = append([]int32(nil), s...)
	}
	return out, nil
}

// OrderedIndices is LanguagePairDataset.ordered_indices under numpy_seed(seed): a
// random permutation, then a stable sort by target length, then a stable sort by
// source length.
func OrderedIndices(srcLens, tgtLens []int, seed uint32) []int {
	idx := nprand.New(seed).Permutation(len(srcLens))
	if tgtLens != nil {
		sort.SliceStable(idx, func(a, b int) bool { return tgtLens[idx[a]] < tgtLens[idx[b]] })
	}
	sort.SliceStable(idx, func(a, b int) bool { return srcLens[idx[a]] < srcLens[idx[b]] })
	return idx
}

// FilterBySize drops indices whose source or target (EOS included) is longer than
// the limits and returns the kept indices and the dropped ones.
func FilterBySize(idx, srcLens, tgtLens []int, maxSrc, maxTgt int) (kept, dropped []int) {
	for _, i := range idx {
		if srcLens[i] > maxSrc || (tgtLens != nil && tgtLens[i] > maxTgt) {
			dropped = append(dropped, i)
			continue
		}
		kept = append(kept, i)
	}
	return kept, dropped
}

// BatchBySize is fairseq's batch_by_size: walk the ordered indices, close a batch when
// it holds maxSentences items or adding the next one would make (n+1)·maxlen exceed
// maxTokens, keeping a multiple of mult sentences and carrying the rest over
// (≤0 limits mean unlimited).
func BatchBySize(idx []int, numTokens func(int) int, maxTokens, maxSentences, mult int) ([][]int, error) {
	var batches [][]int
	var batch, lens []int
	sampleLen := 0
	for _, i := range idx {
		n := numTokens(i)
		lens = append(lens, n)
		sampleLen = max(sampleLen, n)
		if maxTokens > 0 && sampleLen > maxTokens {
			return nil, fmt.Errorf("%w: sentence %d has %d tokens, more than --max-tokens %d", ErrData, i, sampleLen, maxTokens)
		}
		total := (len(batch) + 1) * sampleLen
		full := len(batch) > 0 && ((maxSentences > 0 && len(batch) == maxSentences) || (maxTokens > 0 && total > maxTokens))
		if full {
			modLen := max(mult*(len(batch)/mult), len(batch)%mult)
			batches = append(batches, append([]int(nil), batch[:modLen]...))
			batch = append([]int(nil), batch[modLen:]...)
			lens = append([]int(nil), lens[modLen:]...)
			sampleLen = 0
			for _, l := range lens {
				sampleLen = max(sampleLen, l)
			}
		}
		batch = append(batch, i)
	}
	if len(batch) > 0 {
		batches = append(batches, batch)
	}
	return batches, nil
}

// Collate orders a batch as fairseq's collater does and left-pads the sources into a
// [B, S] matrix. The collater sorts by descending source length with torch.sort, whose
// CPU kernel is not stable; torchSortDesc reproduces its tie order.
func Collate(batch []int, src [][]int32) (order []int, tokens []int32, S int) {
	lens := make([]int, len(batch))
	for i, b := range batch {
		lens[i] = len(src[b])
	}
	perm := torchSortDesc(lens)
	order = make([]int, len(batch))
	for i, p := range perm {
		order[i] = batch[p]
	}
	for _, i := range order {
		S = max(S, len(src[i]))
	}
	tokens = make([]int32, len(order)*S)
	for r, i := range order {
		row := tokens[r*S : (r+1)*S]
		pad := S - len(src[i])
		for j := 0; j < pad; j++ {
			row[j] = data.Pad
		}
		copy(row[pad:], src[i])
	}
	return order, tokens, S
}
