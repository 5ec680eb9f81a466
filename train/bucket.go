package train

import (
	"fmt"
	"math"
	"slices"

	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/internal/nprand"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train/data"
)

// Bucket batching is not fairseq's: it exists so that a CUDA graph can be recorded once
// per shape and replayed. tools/bench/torch_competitor.py batches its torch.compile modes
// this way (bucket_edges, bucket_batches, collate with L), and `xform bench --batching
// bucket` must step on the very same batches for the two to be compared, so the
// functions below follow that script line for line, including its float arithmetic for
// the edges and its numpy permutation.

// BucketEdges returns the bucket edges of pairs with the given source and target lengths
// (tokens, </s> included): k lengths spread evenly over [shortest, longest] of
// max(source, target), rounded up, repeats merged, ascending. The last edge is the longest
// pair, so every pair falls in a bucket.
func BucketEdges(srcLens, tgtLens []int, k int) ([]int, error) {
	m, err := pairLens(srcLens, tgtLens)
	if err != nil {
		return nil, err
	}
	return bucketEdges(m, k)
}

// BucketBatches returns the batches of bucket batching and, per batch, its bucket edge L:
// the pairs are taken in the order of numpy's RandomState(seed).permutation; bucket j
// holds the pairs with edges[j-1] < max(source, target) ≤ edges[j] (edges[-1] = 0) in that
// order and is cut into batches of B_L = max(mult, ⌊⌊maxTokens/L⌋/mult⌋·mult) pairs, the
// last incomplete batch of each bucket dropped; buckets follow each other in edge order.
// Every batch of a bucket is collated to [B_L, L] (CollateStatic). B_L·L can exceed
// maxTokens when L > maxTokens/mult: a batch has at least mult pairs.
func BucketBatches(srcLens, tgtLens []int, maxTokens int, seed uint32, edges []int, mult int) (batches [][]int, lengths []int, err error) {
	m, err := pairLens(srcLens, tgtLens)
	if err != nil {
		return nil, nil, err
	}
	if maxTokens <= 0 || mult <= 0 {
		return nil, nil, fmt.Errorf("%w: bucket batching needs a positive max tokens and batch size multiple (got %d, %d)", ErrData, maxTokens, mult)
	}
	batches, lengths = bucketBatches(m, maxTokens, seed, edges, mult)
	return batches, lengths, nil
}

func pairLens(srcLens, tgtLens []int) ([]int, error) {
	if len(srcLens) != len(tgtLens) {
		return nil, fmt.Errorf("%w: %d source and %d target lengths", ErrData, len(srcLens), len(tgtLens))
	}
	m := make([]int, len(srcLens))
	for i := range m {
		m[i] = max(srcLens[i], tgtLens[i])
	}
	return m, nil
}

// bucketEdges is BucketEdges over max(source, target) lengths m; negative entries are
// pairs left out (too long for the model) and count for nothing.
func bucketEdges(m []int, k int) ([]int, error) {
	if k < 1 {
		return nil, fmt.Errorf("%w: bucket batching needs at least one bucket (got %d)", ErrData, k)
	}
	lo, hi := math.MaxInt, -1
	for _, n := range m {
		if n >= 0 {
			lo, hi = min(lo, n), max(hi, n)
		}
	}
	if hi < 0 {
		return nil, fmt.Errorf("%w: no sentence pairs to bucket", ErrData)
	}
	var edges []int
	for j := 0; j < k; j++ {
		// Python's lo + (hi - lo) * (j + 1) / k: an exact integer product, one correctly
		// rounded division, one addition in float64, then ceil.
		e := int(math.Ceil(float64(lo) + float64((hi-lo)*(j+1))/float64(k)))
		if !slices.Contains(edges, e) {
			edges = append(edges, e)
		}
	}
	slices.Sort(edges)
	return edges, nil
}

// bucketBatches is BucketBatches over max(source, target) lengths m (negative entries
// are left out).
func bucketBatches(m []int, maxTokens int, seed uint32, edges []int, mult int) (batches [][]int, lengths []int) {
	perm := nprand.New(seed).Permutation(len(m))
	for j, L := range edges {
		lo := 0
		if j > 0 {
			lo = edges[j-1]
		}
		var members []int
		for _, i := range perm {
			if lo < m[i] && m[i] <= L {
				members = append(members, i)
			}
		}
		B := max(mult, maxTokens/L/mult*mult)
		for o := 0; o+B <= len(members); o += B {
			batches = append(batches, members[o:o+B:o+B])
			lengths = append(lengths, L)
		}
	}
	return batches, lengths
}

// bucketSplit is Batches with cfg.Buckets set.
func bucketSplit(srcLens, tgtLens []int, cfg BatchConfig) (batches [][]int, dropped []int, err error) {
	if cfg.MaxTokens <= 0 {
		return nil, nil, fmt.Errorf("%w: bucket batching sizes batches by --max-tokens; set it", ErrData)
	}
	if cfg.MaxSentences > 0 {
		return nil, nil, fmt.Errorf("%w: bucket batching sizes batches by --max-tokens alone; --max-sentences is not supported with it", ErrData)
	}
	m, dropped, err := bucketLens(srcLens, tgtLens, cfg)
	if err != nil {
		return nil, nil, err
	}
	edges, err := bucketEdges(m, cfg.Buckets)
	if err != nil {
		return nil, dropped, err
	}
	batches, _ = bucketBatches(m, cfg.MaxTokens, cfg.Seed, edges, max(cfg.Multiple, 1))
	if len(batches) == 0 {
		return nil, dropped, fmt.Errorf("%w: no bucket of the lengths %v has enough pairs for one batch of --max-tokens %d (each bucket's incomplete batch is dropped)",
			ErrData, edges, cfg.MaxTokens)
	}
	return batches, dropped, nil
}

// bucketLens returns max(source, target) per pair with -1 for the pairs longer than the
// model's max positions (an error unless cfg.SkipInvalidAll). The competitor has no such
// limit; on data that has no over-long pairs the two agree.
func bucketLens(srcLens, tgtLens []int, cfg BatchConfig) (m, dropped []int, err error) {
	all := make([]int, len(srcLens))
	for i := range all {
		all[i] = i
	}
	_, dropped = generate.FilterBySize(all, srcLens, tgtLens, cfg.MaxSourcePos, cfg.MaxTargetPos)
	if len(dropped) > 0 && !cfg.SkipInvalidAll {
		i := dropped[0]
		return nil, nil, fmt.Errorf("%w: sentence pair %d (%d, %d tokens) is longer than the model's max positions (%d, %d)",
			ErrData, i, srcLens[i], tgtLens[i], cfg.MaxSourcePos, cfg.MaxTargetPos)
	}
	if m, err = pairLens(srcLens, tgtLens); err != nil {
		return nil, nil, err
	}
	for _, i := range dropped {
		m[i] = -1
	}
	return m, dropped, nil
}

// SplitBucketEdges returns the bucket edges that Batches(sp, cfg) uses with cfg.Buckets:
// BucketEdges over the pairs of sp that the model's max positions admit.
func SplitBucketEdges(sp *generate.Split, cfg BatchConfig) ([]int, error) {
	_, _, edges, err := splitBuckets(sp, cfg)
	return edges, err
}

func splitBuckets(sp *generate.Split, cfg BatchConfig) (srcLens, tgtLens, edges []int, err error) {
	if sp.Tgt == nil || len(sp.Tgt) != len(sp.Src) {
		return nil, nil, nil, fmt.Errorf("%w: bucket batching needs a target side", ErrData)
	}
	srcLens, tgtLens = make([]int, len(sp.Src)), make([]int, len(sp.Tgt))
	for i := range sp.Src {
		srcLens[i], tgtLens[i] = len(sp.Src[i]), len(sp.Tgt[i])
	}
	m, _, err := bucketLens(srcLens, tgtLens, cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	if edges, err = bucketEdges(m, cfg.Buckets); err != nil {
		return nil, nil, nil, err
	}
	return srcLens, tgtLens, edges, nil
}

// Collator returns the collation of the batches that Batches(sp, cfg) returns: Collate
// for fairseq's batching; with cfg.Buckets, CollateStatic to the batch's bucket shape
// [B_L, L] (the smallest edge at or above the batch's longest pair, which is the edge of
// the bucket it was cut from).
func (cfg BatchConfig) Collator(sp *generate.Split) (func(batch []int) (*model.TrainBatch, error), error) {
	if cfg.Buckets <= 0 {
		return func(batch []int) (*model.TrainBatch, error) {
			b, _ := Collate(batch, sp)
			return b, nil
		}, nil
	}
	srcLens, tgtLens, edges, err := splitBuckets(sp, cfg)
	if err != nil {
		return nil, err
	}
	return func(batch []int) (*model.TrainBatch, error) {
		longest := 0
		for _, i := range batch {
			longest = max(longest, srcLens[i], tgtLens[i])
		}
		k, _ := slices.BinarySearch(edges, longest)
		if k == len(edges) {
			return nil, fmt.Errorf("%w: a batch's pair of %d tokens is longer than the longest bucket (%d)", ErrData, longest, edges[len(edges)-1])
		}
		b, _, err := CollateStatic(batch, sp, edges[k], edges[k])
		return b, err
	}, nil
}

// CollateStatic is Collate with the shape fixed: sources left-padded to S tokens,
// targets and previous output tokens right-padded to T, as the competitor's collate(ids,
// src, tgt, L) does with S = T = L. The extra positions are pad tokens, which the loss
// ignores and attention masks, so the loss equals Collate's; only the shape differs.
// Rows keep Collate's order (fairseq's: descending source length, torch's ties), which
// may differ from the competitor's stable order among equal source lengths; that
// changes no sentence's tokens, only the order of the loss sum.
func CollateStatic(batch []int, sp *generate.Split, S, T int) (*model.TrainBatch, []int, error) {
	b, order := Collate(batch, sp)
	if b.S > S || b.T > T {
		return nil, nil, fmt.Errorf("%w: a batch with %d source and %d target tokens does not fit the static shape [%d, %d]", ErrData, b.S, b.T, S, T)
	}
	out := &model.TrainBatch{B: b.B, S: S, T: T, NTokens: b.NTokens,
		Src: make([]int32, b.B*S), Prev: make([]int32, b.B*T), Target: make([]int32, b.B*T)}
	for i := range out.Src {
		out.Src[i] = data.Pad
	}
	for i := range out.Prev {
		out.Prev[i], out.Target[i] = data.Pad, data.Pad
	}
	for r := 0; r < b.B; r++ {
		copy(out.Src[r*S+S-b.S:(r+1)*S], b.Src[r*b.S:(r+1)*b.S])
		copy(out.Prev[r*T:], b.Prev[r*b.T:(r+1)*b.T])
		copy(out.Target[r*T:], b.Target[r*b.T:(r+1)*b.T])
	}
	return out, order, nil
}
