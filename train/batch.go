package train

import (
	"errors"
	"fmt"

	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/internal/nprand"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train/data"
)

// ErrData reports training data that cannot be used.
var ErrData = errors.New("unusable training data")

// BatchConfig holds the batching flags (fairseq names).
type BatchConfig struct {
	MaxTokens      int    // --max-tokens
	MaxSentences   int    // --max-sentences (0 = unlimited)
	Multiple       int    // --required-batch-size-multiple (fairseq default 8)
	Seed           uint32 // --seed
	MaxSourcePos   int    // model max_source_positions
	MaxTargetPos   int    // model max_target_positions
	SkipInvalidAll bool   // drop too-long pairs with a warning (fairseq does so for train)
	// Buckets > 0 selects bucket batching (--batching bucket --buckets N) instead of
	// fairseq's: static [B_L, L] shapes for CUDA graphs, the batches of
	// tools/bench/torch_competitor.py's compile modes (BucketBatches; collate them with
	// Collator). Not fairseq's batching: pairs are grouped by length bucket, not sorted.
	Buckets int
}

// Batches orders a split as fairseq 0.8 does (clinic-spec §4.9: numpy-seeded
// permutation, stable sorts by target then source length), drops pairs longer than the
// model accepts when cfg.SkipInvalidAll is set (and fails otherwise) and groups the rest
// greedily by max tokens. The result is fairseq's frozen batch list. With cfg.Buckets it
// is bucket batching's list instead (BucketBatches, pairs over the max positions left out).
func Batches(sp *generate.Split, cfg BatchConfig) (batches [][]int, dropped []int, err error) {
	if len(sp.Src) == 0 {
		return nil, nil, fmt.Errorf("%w: the split is empty", ErrData)
	}
	if sp.Tgt == nil {
		return nil, nil, fmt.Errorf("%w: the split has no target side", ErrData)
	}
	if cfg.MaxTokens <= 0 && cfg.MaxSentences <= 0 {
		return nil, nil, fmt.Errorf("%w: set --max-tokens or --max-sentences", ErrData)
	}
	srcLens, tgtLens := make([]int, len(sp.Src)), make([]int, len(sp.Tgt))
	for i := range sp.Src {
		srcLens[i], tgtLens[i] = len(sp.Src[i]), len(sp.Tgt[i])
		if tgtLens[i] == 0 || sp.Tgt[i][tgtLens[i]-1] != data.EOS {
			return nil, nil, fmt.Errorf("%w: target sentence %d does not end in </s>", ErrData, i)
		}
	}
	if cfg.Buckets > 0 {
		return bucketSplit(srcLens, tgtLens, cfg)
	}
	idx := generate.OrderedIndices(srcLens, tgtLens, cfg.Seed)
	idx, dropped = generate.FilterBySize(idx, srcLens, tgtLens, cfg.MaxSourcePos, cfg.MaxTargetPos)
	if len(dropped) > 0 && !cfg.SkipInvalidAll {
		i := dropped[0]
		return nil, nil, fmt.Errorf("%w: sentence pair %d (%d, %d tokens) is longer than the model's max positions (%d, %d)",
			ErrData, i, srcLens[i], tgtLens[i], cfg.MaxSourcePos, cfg.MaxTargetPos)
	}
	if len(idx) == 0 {
		return nil, dropped, fmt.Errorf("%w: every sentence pair is longer than the model's max positions", ErrData)
	}
	mult := cfg.Multiple
	if mult <= 0 {
		mult = 1
	}
	batches, err = generate.BatchBySize(idx, func(i int) int { return max(srcLens[i], tgtLens[i]) }, cfg.MaxTokens, cfg.MaxSentences, mult)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrData, err)
	}
	return batches, dropped, nil
}

// EpochOrder returns the frozen batches in the order of epoch (1-based): shuffled with
// numpy_seed(seed+epoch) as fairseq's EpochBatchIterator does.
func EpochOrder(batches [][]int, seed uint32, epoch int) [][]int {
	perm := nprand.New(seed + uint32(epoch)).Permutation(len(batches))
	out := make([][]int, len(batches))
	for i, p := range perm {
		out[i] = batches[p]
	}
	return out
}

// Collate builds the training batch of the sentence ids in batch as fairseq's
// LanguagePairDataset collater does: rows sorted by descending source length (torch's
// sort tie order), sources left-padded, targets right-padded, prev_output_tokens = the
// target with EOS moved to the front. It returns the batch and the ids in row order.
func Collate(batch []int, sp *generate.Split) (*model.TrainBatch, []int) {
	order, src, S := generate.Collate(batch, sp.Src)
	T := 0
	for _, i := range order {
		T = max(T, len(sp.Tgt[i]))
	}
	b := &model.TrainBatch{B: len(order), S: S, T: T, Src: src, Prev: make([]int32, len(order)*T), Target: make([]int32, len(order)*T)}
	for r, i := range order {
		t := sp.Tgt[i]
		prev, tgt := b.Prev[r*T:(r+1)*T], b.Target[r*T:(r+1)*T]
		for j := range tgt {
			prev[j], tgt[j] = data.Pad, data.Pad
		}
		copy(tgt, t)
		prev[0] = data.EOS
		copy(prev[1:], t[:len(t)-1])
		b.NTokens += len(t)
	}
	return b, order
}
