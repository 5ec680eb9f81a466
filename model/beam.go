package model

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/xform-dev/xform/kernels"
)

// BeamOptions are fairseq-generate's search flags (clinic-spec §6.1).
type BeamOptions struct {
	Beam       int     // --beam (5)
	MaxLenA    float64 // --max-len-a (0)
	MaxLenB    int     // --max-len-b (200)
	MinLen     int     // --min-len (1)
	LenPenalty float64 // --lenpen (1)
	UnkPenalty float64 // --unkpen (0)
	NBest      int     // --nbest (1)
	// Workers bounds the goroutines that search the candidates of a batch's sentences
	// in parallel (0 = GOMAXPROCS); the CLI passes --threads. Results do not depend on it.
	Workers int
}

// DefaultBeamOptions returns fairseq's defaults.
func DefaultBeamOptions() BeamOptions {
	return BeamOptions{Beam: 5, MaxLenA: 0, MaxLenB: 200, MinLen: 1, LenPenalty: 1, UnkPenalty: 0, NBest: 1}
}

// Hypothesis is one finished translation.
type Hypothesis struct {
	Tokens []int32 // ends with EOS
	// Score is the sum of the positional scores divided by len(Tokens)^lenpen
	// (natural log), as fairseq reports it.
	Score float32
	// PositionalScores are the per-token log-probabilities (EOS included), formed as
	// fairseq does: differences of the running float32 sums.
	PositionalScores []float32
}

// SearchState is a decode state the beam search drives: one row per live hypothesis,
// Step returns the next-token log-probabilities [Rows(), V] and Reorder makes row i
// continue old row idx[i] (see DecodeState).
type SearchState interface {
	Step(ctx context.Context, tokens []int32) ([]float32, error)
	Reorder(idx []int32) error
	Rows() int
}

// Generate runs beam search exactly as fairseq 0.8's SequenceGenerator (clinic-spec
// §6.2) on a [B, S] left-padded source batch and returns, per sentence, up to NBest
// hypotheses sorted by score (best first).
func (r *Runner) Generate(ctx context.Context, src []int32, B, S int, opt BeamOptions) ([][]Hypothesis, error) {
	if sc, ok := r.be.(kernels.Scoper); ok {
		// The batch's encoder output, caches and step buffers are dead once the
		// hypotheses (host values) are returned: free them now, not when the collector
		// runs (see kernels.Scoper).
		sc.BeginScope()
		defer sc.EndScope()
	}
	return Search(ctx, func(beam, maxLen int) (SearchState, error) {
		enc, err := r.Encode(ctx, src, B, S, nil)
		if err != nil {
			return nil, err
		}
		return r.NewDecodeState(enc, beam, maxLen)
	}, B, S, r.cfg.TgtVocab, r.MaxDecoderPositions(), opt)
}

// Search is Generate's beam search over any decode state: newState encodes the batch
// and returns a state of B·beam rows able to decode maxLen steps. V is the target
// vocabulary size and maxDecoderPositions the model's target position limit.
func Search(ctx context.Context, newState func(beam, maxLen int) (SearchState, error), B, S, V, maxDecoderPositions int, opt BeamOptions) ([][]Hypothesis, error) {
	if opt.Beam < 1 || opt.NBest < 1 || opt.NBest > opt.Beam {
		return nil, fmt.Errorf("%w: beam %d, nbest %d", ErrInput, opt.Beam, opt.NBest)
	}
	beam := min(opt.Beam, V-1)
	maxLen := min(int(opt.MaxLenA*float64(S)+float64(opt.MaxLenB)), maxDecoderPositions-1)
	if maxLen < 0 {
		maxLen = 0
	}
	st, err := newState(beam, maxLen+1)
	if err != nil {
		return nil, err
	}
	bs := newBeamState(B, beam, maxLen, V)
	bs.workers = opt.Workers
	negInf := float32(math.Inf(-1))
	unkpen := float32(opt.UnkPenalty)
	var reorder []int32
	for step := 0; step <= maxLen; step++ {
		if reorder != nil {
			if err := st.Reorder(reorder); err != nil {
				return nil, err
			}
		}
		lp, err := st.Step(ctx, bs.lastTokens(step))
		if err != nil {
			return nil, err
		}
		rows := st.Rows()
		for i := 0; i < rows; i++ {
			row := lp[i*V : (i+1)*V]
			row[Pad] = negInf
			row[Unk] -= unkpen
			switch {
			case step >= maxLen:
				for v := range row {
					if v != EOS {
						row[v] = negInf
					}
				}
			case step < opt.MinLen:
				row[EOS] = negInf
			}
		}
		var done bool
		reorder, done = bs.advance(step, lp, opt.LenPenalty)
		if done {
			break
		}
	}
	out := make([][]Hypothesis, B)
	for i, f := range bs.finalized {
		// Python's sorted is stable: equal scores keep their finalisation order.
		sort.SliceStable(f, func(a, b int) bool { return f[a].Score > f[b].Score })
		out[i] = f[:min(opt.NBest, len(f))]
	}
	return out, nil
}

// beamState is the search bookkeeping of SequenceGenerator for the sentences still
// being decoded; rows are sentence-major, beam rows per sentence.
type beamState struct {
	beam, maxLen, V int
	workers         int         // BeamOptions.Workers
	tokens          [][]int32   // per row: EOS then the generated tokens
	scores          [][]float32 // per row: running sums after each step
	active          []int       // batch position -> original sentence
	finalized       [][]Hypothesis
	// Buffers reused across steps: per worker the summed scores of one sentence and
	// its top-k, the candidates of every sentence, the decoder input, and row slices
	// freed by the last step.
	work      []*selectBuf
	cands     [][]candidate
	last      []int32
	freeTok   [][]int32
	freeScore [][]float32
}

// selectBuf is one worker's scratch for the candidate search of a sentence.
type selectBuf struct {
	sum  []float32
	cand []candidate
}

type candidate struct {
	score float32
	index int // beam·V + token within the sentence
}

func newBeamState(B, beam, maxLen, V int) *beamState {
	n := B * beam
	bs := &beamState{beam: beam, maxLen: maxLen, V: V, finalized: make([][]Hypothesis, B), cands: make([][]candidate, B)}
	for i := 0; i < n; i++ {
		t := make([]int32, 1, maxLen+2)
		t[0] = EOS
		bs.tokens = append(bs.tokens, t)
		bs.scores = append(bs.scores, make([]float32, 0, maxLen+1))
	}
	for b := 0; b < B; b++ {
		bs.active = append(bs.active, b)
	}
	return bs
}

func (bs *beamState) lastTokens(step int) []int32 {
	out := bs.last[:0]
	for range bs.tokens {
		out = append(out, 0)
	}
	bs.last = out
	for i, t := range bs.tokens {
		out[i] = t[step]
	}
	return out
}

// topK returns the k best (score, index) pairs of vals, best first; equal scores keep
// the lower index first.
func topK(dst []candidate, vals []float32, k int) []candidate {
	dst = dst[:0]
	for i, v := range vals {
		if v != v { // NaN never wins
			continue
		}
		if len(dst) == k && v <= dst[k-1].score {
			continue
		}
		if len(dst) < k {
			dst = append(dst, candidate{})
		}
		j := len(dst) - 1
		for j > 0 && dst[j-1].score < v {
			dst[j] = dst[j-1]
			j--
		}
		dst[j] = candidate{v, i}
	}
	return dst
}

// advance performs one BeamSearch.step plus the finalisation and selection of
// SequenceGenerator for every active sentence. lp holds the masked log-probabilities
// of every row. It returns the decoder reorder indices (rows of the current decoder
// state) and whether all sentences are finished.
func (bs *beamState) advance(step int, lp []float32, lenpen float64) ([]int32, bool) {
	beam, V := bs.beam, bs.V
	k := 2 * beam
	if step == 0 {
		k = min(k, V-1)
	} else {
		k = min(k, beam*V-1)
	}
	nb := len(bs.active)
	cands := bs.cands[:nb]
	// Sentences are independent: their scores are summed and searched on up to
	// opt.Workers (GOMAXPROCS) goroutines (a 32k vocabulary makes this a pass over beam·V floats per
	// sentence), each with its own buffers; cands[b] is written by one goroutine only.
	workers := runtime.GOMAXPROCS(0)
	if bs.workers > 0 {
		workers = bs.workers
	}
	workers = min(workers, nb)
	if nb*beam*V < 1<<16 {
		workers = 1
	}
	for len(bs.work) < workers {
		bs.work = append(bs.work, &selectBuf{})
	}
	one := func(b int, w *selectBuf) {
		var vals []float32
		if step == 0 {
			// All beams are identical at the first step: only beam 0 is searched.
			vals = lp[b*beam*V : b*beam*V+V]
		} else {
			if w.sum == nil {
				w.sum = make([]float32, beam*V)
			}
			sum := w.sum
			for j := 0; j < beam; j++ {
				prev := bs.scores[b*beam+j][step-1]
				row := lp[(b*beam+j)*V : (b*beam+j+1)*V]
				for v, x := range row {
					sum[j*V+v] = x + prev
				}
			}
			vals = sum
		}
		w.cand = topK(w.cand, vals, k)
		cands[b] = append(cands[b][:0], w.cand...)
	}
	if workers == 1 {
		for b := 0; b < nb; b++ {
			one(b, bs.work[0])
		}
	} else {
		var next atomic.Int64
		var wg sync.WaitGroup
		for _, w := range bs.work[:workers] {
			wg.Go(func() {
				for b := int(next.Add(1)) - 1; b < nb; b = int(next.Add(1)) - 1 {
					one(b, w)
				}
			})
		}
		wg.Wait()
	}
	// Finalise EOS candidates among the first beam of each sentence.
	var finished []bool
	for b := 0; b < nb; b++ {
		sent := bs.active[b]
		for c := 0; c < min(beam, len(cands[b])); c++ {
			cd := cands[b][c]
			if cd.index%V != EOS {
				continue
			}
			row := b*beam + cd.index/V
			if len(bs.finalized[sent]) < beam {
				bs.finalized[sent] = append(bs.finalized[sent], bs.hypothesis(row, step, cd.score, lenpen))
			}
		}
		if finished == nil {
			finished = make([]bool, nb)
		}
		if len(bs.finalized[sent]) == beam {
			finished[b] = true
		}
	}
	keep := make([]int, 0, nb)
	for b := 0; b < nb; b++ {
		if !finished[b] {
			keep = append(keep, b)
		}
	}
	if len(keep) == 0 {
		return nil, true
	}
	// Continue with the first beam candidates that are not EOS.
	newTokens := make([][]int32, 0, len(keep)*beam)
	newScores := make([][]float32, 0, len(keep)*beam)
	reorder := make([]int32, 0, len(keep)*beam)
	active := make([]int, 0, len(keep))
	for _, b := range keep {
		active = append(active, bs.active[b])
		n := 0
		for _, cd := range cands[b] {
			if n == beam {
				break
			}
			tok := int32(cd.index % V)
			if tok == EOS {
				continue
			}
			old := b*beam + cd.index/V
			t := bs.newTokens(step + 2)
			copy(t, bs.tokens[old][:step+1])
			t[step+1] = tok
			s := bs.newScores(step + 1)
			copy(s, bs.scores[old][:step])
			s[step] = cd.score
			newTokens = append(newTokens, t)
			newScores = append(newScores, s)
			reorder = append(reorder, int32(old))
			n++
		}
		if n < beam {
			// Cannot happen with k = 2·beam (each beam contributes at most one EOS);
			// fairseq would then continue a blacklisted EOS hypothesis. Pad by
			// repeating the last kept hypothesis so the row count stays fixed.
			for ; n < beam; n++ {
				t := append(bs.newTokens(0), newTokens[len(newTokens)-1]...)
				s := append(bs.newScores(0), newScores[len(newScores)-1]...)
				newTokens = append(newTokens, t)
				newScores = append(newScores, s)
				reorder = append(reorder, reorder[len(reorder)-1])
			}
		}
	}
	// The old rows were copied, never shared, so they are free for the next step.
	bs.freeTok = append(bs.freeTok, bs.tokens...)
	bs.freeScore = append(bs.freeScore, bs.scores...)
	bs.tokens, bs.scores, bs.active = newTokens, newScores, active
	return reorder, false
}

// newTokens returns a row token slice of length n (capacity maxLen+2), reusing a freed one.
func (bs *beamState) newTokens(n int) []int32 { return reuse(&bs.freeTok, n, bs.maxLen+2) }

// newScores returns a row score slice of length n (capacity maxLen+1), reusing a freed one.
func (bs *beamState) newScores(n int) []float32 { return reuse(&bs.freeScore, n, bs.maxLen+1) }

// reuse pops a slice from free resliced to n, or makes one of capacity c.
func reuse[T any](free *[][]T, n, c int) []T {
	if k := len(*free); k > 0 {
		v := (*free)[k-1][:n]
		*free = (*free)[:k-1]
		return v
	}
	return make([]T, n, c)
}

// hypothesis builds the finished hypothesis of row ending in EOS at step with running
// score eos (SequenceGenerator.finalize_hypos).
func (bs *beamState) hypothesis(row, step int, eos float32, lenpen float64) Hypothesis {
	toks := make([]int32, step+1)
	copy(toks, bs.tokens[row][1:step+1])
	toks[step] = EOS
	cum := make([]float32, step+1)
	copy(cum, bs.scores[row][:step])
	cum[step] = eos
	pos := make([]float32, step+1)
	pos[0] = cum[0]
	for i := 1; i <= step; i++ {
		pos[i] = cum[i] - cum[i-1]
	}
	return Hypothesis{Tokens: toks, Score: eos / float32(math.Pow(float64(step+1), lenpen)), PositionalScores: pos}
}
