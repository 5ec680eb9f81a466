package model

import (
	"context"
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

// DecodeState is incremental decoding for a set of rows (hypotheses): each Step feeds
// one token per row and returns the next-token log-probabilities. Self-attention keys
// and values grow in a per-layer cache; encoder-attention keys and values are computed
// once per sentence and every row points at its sentence through kvIndex, so beams of
// one sentence share them and reordering never copies them.
type DecodeState struct {
	r       *Runner
	enc     *EncoderOut
	n       int     // rows now
	step    int     // tokens fed so far
	maxLen  int     // most steps allowed
	cap     int     // cache capacity in tokens (grows by doubling up to maxLen)
	kvIndex []int32 // row -> encoder batch
	spareKV []int32 // reordering target for kvIndex
	selfK   []kernels.Buffer
	selfV   []kernels.Buffer
	spareK  []kernels.Buffer // double buffers for reordering (nil with a rowPermuter)
	spareV  []kernels.Buffer
	cross   []kernels.Buffer // per layer [B, S, 2d]
	ws      *workspace
	x       kernels.Buffer
	logits  kernels.Buffer
	lprobs  kernels.Buffer
	host    []float32
	pos     []int32
}

// NewDecodeState prepares incremental decoding of rowsPerSentence rows for every
// sentence of enc (row i reads sentence i/rowsPerSentence), for at most maxLen steps.
func (r *Runner) NewDecodeState(enc *EncoderOut, rowsPerSentence, maxLen int) (*DecodeState, error) {
	if maxLen > r.cfg.MaxTargetPositions {
		return nil, fmt.Errorf("%w: %d decoding steps exceed the %d target positions", ErrInput, maxLen, r.cfg.MaxTargetPositions)
	}
	be, d := r.be, r.d
	n := enc.B * rowsPerSentence
	// Most hypotheses end long before maxLen, so the self-attention cache starts small
	// and doubles when full. With in-place reordering (no double buffers) 32 positions
	// take the memory that 16 take otherwise and cover most sentences without a grow
	// (a copy of every cache).
	first := 16
	if _, ok := be.(rowPermuter); ok {
		first = 32
	}
	s := &DecodeState{r: r, enc: enc, n: n, maxLen: maxLen, cap: min(maxLen, first), kvIndex: make([]int32, n)}
	for i := range s.kvIndex {
		s.kvIndex[i] = int32(i / rowsPerSentence)
	}
	for li := range r.dec {
		s.selfK = append(s.selfK, be.Alloc(n*s.cap*d))
		s.selfV = append(s.selfV, be.Alloc(n*s.cap*d))
		if _, ok := be.(rowPermuter); !ok {
			s.spareK = append(s.spareK, be.Alloc(n*s.cap*d))
			s.spareV = append(s.spareV, be.Alloc(n*s.cap*d))
		}
		s.cross = append(s.cross, r.crossKV(&r.dec[li].cross, enc))
	}
	s.ws = newWorkspace(be, n, d, maxFFN(r.dec))
	s.x = be.Alloc(n * d)
	s.logits = be.Alloc(n * r.cfg.TgtVocab)
	s.lprobs = be.Alloc(n * r.cfg.TgtVocab)
	if _, ok := be.(hostViewer); !ok {
		s.host = make([]float32, n*r.cfg.TgtVocab)
	}
	s.pos = make([]int32, n)
	return s, nil
}

// rowPermuter is implemented by a backend that reorders rows in place (the CPU one):
// the caches then need no second copy, and rows that stay put are not copied.
type rowPermuter interface {
	// PermuteRows makes row i of every buffer hold the first n elements of old row
	// idx[i] (rows have stride elements); rows from len(idx) on become unspecified.
	PermuteRows(bufs []kernels.Buffer, stride int, idx []int32, n int)
}

// hostViewer is implemented by a backend whose buffers are host memory (the CPU one):
// Step then hands out the log-probabilities buffer itself, which the next Step
// overwrites anyway, instead of a copy.
type hostViewer interface {
	HostView(b kernels.Buffer) []float32
}

// Rows returns the number of rows now decoded.
func (s *DecodeState) Rows() int { return s.n }

// Reorder makes row i continue old row idx[i] (beam selection; dropping finished
// sentences shrinks the set). It copies the used part of the self-attention caches.
func (s *DecodeState) Reorder(idx []int32) error {
	for _, j := range idx {
		if j < 0 || int(j) >= s.n {
			return fmt.Errorf("%w: reorder index %d outside %d rows", ErrInput, j, s.n)
		}
	}
	stride := s.cap * s.r.d
	used := s.step * s.r.d
	if p, ok := s.r.be.(rowPermuter); ok {
		p.PermuteRows(append(append([]kernels.Buffer(nil), s.selfK...), s.selfV...), stride, idx, used)
	} else {
		s.gatherCaches(idx, stride, used)
	}
	kv := s.spareKV[:0]
	for _, j := range idx {
		kv = append(kv, s.kvIndex[j])
	}
	s.kvIndex, s.spareKV = kv, s.kvIndex
	s.n = len(idx)
	return nil
}

// gatherCaches reorders the caches through the spare buffers (backends without
// PermuteRows).
func (s *DecodeState) gatherCaches(idx []int32, stride, used int) {
	be := s.r.be
	for li := range s.selfK {
		be.GatherRows(s.spareK[li], stride, s.selfK[li], stride, idx, used)
		be.GatherRows(s.spareV[li], stride, s.selfV[li], stride, idx, used)
		s.selfK[li], s.spareK[li] = s.spareK[li], s.selfK[li]
		s.selfV[li], s.spareV[li] = s.spareV[li], s.selfV[li]
	}
}

// Step feeds tokens (one per row, the newest token of each hypothesis; the first step
// feeds EOS, which fairseq uses as BOS) and returns the log-probabilities of the next
// token, [rows, V] float32. The slice is reused by the next Step.
func (s *DecodeState) Step(ctx context.Context, tokens []int32) ([]float32, error) {
	r, be, d, n := s.r, s.r.be, s.r.d, s.n
	if len(tokens) != n {
		return nil, fmt.Errorf("%w: %d tokens for %d rows", ErrInput, len(tokens), n)
	}
	if s.step >= s.maxLen {
		return nil, fmt.Errorf("%w: decoding past %d steps", ErrInput, s.maxLen)
	}
	if err := r.checkIDs(tokens, r.cfg.TgtVocab, "target"); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t := s.step
	if t == s.cap {
		s.grow()
	}
	// The prefix holds no pad, so the newest token's position is Pad + prefix length.
	pos := s.pos[:n]
	for i := range pos {
		pos[i] = int32(Pad + t + 1)
	}
	x := be.Slice(s.x, 0, n*d)
	r.embedTarget(x, tokens, pos)
	stride := s.cap * d
	before, alpha := r.cfg.DecoderNormalizeBefore, r.alphaDec
	for li := range r.dec {
		l := &r.dec[li]
		r.sublayer(s.ws, x, n, l, 0, before, alpha, func(h, out kernels.Buffer) {
			a := &l.self
			qkv := be.Slice(s.ws.qkv, 0, n*3*d)
			be.Linear(qkv, h, a.wqkv, a.bqkv, n, 3*d, d)
			be.Copy2D(s.selfK[li], t*d, stride, qkv, d, 3*d, n, d)
			be.Copy2D(s.selfV[li], t*d, stride, qkv, 2*d, 3*d, n, d)
			ctxv := be.Slice(s.ws.attn, 0, n*d)
			be.Attention(kernels.View{Buf: ctxv, BatchStride: d, RowStride: d},
				kernels.View{Buf: qkv, BatchStride: 3 * d, RowStride: 3 * d},
				kernels.View{Buf: s.selfK[li], BatchStride: stride, RowStride: d},
				kernels.View{Buf: s.selfV[li], BatchStride: stride, RowStride: d},
				kernels.AttentionArgs{Batch: n, Heads: a.heads, HeadDim: d / a.heads, TQ: 1, TK: t + 1, Scale: r.headScale(a)})
			be.Linear(out, ctxv, a.wo, a.bo, n, d, d)
		})
		r.sublayer(s.ws, x, n, l, 1, before, alpha, func(h, out kernels.Buffer) {
			r.crossAttention(s.ws, out, h, &l.cross, s.cross[li], s.enc, n, 1, s.kvIndex, nil)
		})
		r.sublayer(s.ws, x, n, l, 2, before, alpha, func(h, out kernels.Buffer) {
			r.ffn(s.ws, out, h, l, n)
		})
	}
	V := r.cfg.TgtVocab
	if r.decLN != nil {
		be.LayerNorm(x, x, r.decLN.g, r.decLN.b, n, d, lnEps)
	}
	logits := be.Slice(s.logits, 0, n*V)
	be.Linear(logits, x, r.outProj, nil, n, V, d)
	lp := be.Slice(s.lprobs, 0, n*V)
	be.LogSoftmax(lp, logits, n, V)
	var host []float32
	if hv, ok := be.(hostViewer); ok {
		host = hv.HostView(lp)
	} else {
		host = s.host[:n*V]
		be.Download(host, lp)
	}
	s.step++
	return host, nil
}

// grow doubles the self-attention cache capacity (capped at maxLen), keeping the rows.
func (s *DecodeState) grow() {
	be, d := s.r.be, s.r.d
	nc := min(2*s.cap, s.maxLen)
	rows := s.n // rows only shrink, so the live ones are enough
	for li := range s.selfK {
		for _, p := range []*kernels.Buffer{&s.selfK[li], &s.selfV[li]} {
			nb := be.Alloc(rows * nc * d)
			be.Copy2D(nb, 0, nc*d, *p, 0, s.cap*d, rows, s.step*d)
			*p = nb
		}
		if s.spareK != nil {
			s.spareK[li] = be.Alloc(rows * nc * d)
			s.spareV[li] = be.Alloc(rows * nc * d)
		}
	}
	s.cap = nc
}
