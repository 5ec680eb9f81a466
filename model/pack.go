package model

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

// Packed rows (TrainNet.SetPackedRows): the training step computes every position-wise
// layer — the projections, the feed-forward blocks, LayerNorm, residuals, dropout, the
// embeddings and the loss — on the batch's non-pad tokens only. Attention needs each
// sentence's rows together: a backend with kernels.PackedAttention reads them where
// the sentence's span says; elsewhere the rows are expanded into the padded [B, T]
// layout around the call and packed back after it. Pad slots cost nothing: in a padded
// step their rows are computed and then contribute exactly zero to every gradient (the
// loss ignores their targets, attention masks them as keys, and a pad query's output
// feeds no real row), so the packed step computes the same sums over the same real
// rows. What differs: the GEMMs
// see fewer rows (float32 sums may group differently), and the position-wise dropout
// masks are drawn over the packed tensors' elements, so with dropout the two draw
// different (equally distributed) masks. Attention's own dropout keeps the padded
// coordinates.

// packSide maps one side of a batch between its padded slots and its packed rows.
type packSide struct {
	rows int
	// toPad has one entry per padded slot: its packed row, or -1 for a pad
	// (kernels.RowPacker expanding packed rows into the padded layout).
	toPad []int32
	// fromPad has one entry per packed row: its padded slot (packing padded rows).
	fromPad []int32
	// toPadIx and fromPadIx are the two placed on the backend (newStepPack).
	toPadIx, fromPadIx kernels.RowIndex
	// spans place the side's sentences for kernels.PackedAttention (nil: the backend has
	// none, or a sentence's tokens are not one run).
	spans kernels.RowSpans
}

// spanArrays returns sentence b's span (kernels.PackedAttention.RowSpans) for each of
// the B sentences of T slots: its real slots [lo, hi) at packed rows base + lo …; ok
// false where a sentence's real slots are not one run of consecutive packed rows (a
// fairseq batch pads one end of each sentence, so they are).
func (s *packSide) spanArrays(B, T int) (base, lo, hi []int32, ok bool) {
	base, lo, hi = make([]int32, B), make([]int32, B), make([]int32, B)
	for b := 0; b < B; b++ {
		row := s.toPad[b*T : (b+1)*T]
		first, last := -1, -1
		for i, r := range row {
			if r >= 0 {
				if first < 0 {
					first = i
				}
				last = i
			}
		}
		if first < 0 {
			continue // no token: an empty span
		}
		for i := first; i <= last; i++ {
			if row[i] != row[first]+int32(i-first) {
				return nil, nil, nil, false
			}
		}
		base[b], lo[b], hi[b] = row[first]-int32(first), int32(first), int32(last+1)
	}
	return base, lo, hi, true
}

// newPackSide builds the maps of tokens (B·T ids, Pad for pads).
func newPackSide(tokens []int32) packSide {
	s := packSide{toPad: make([]int32, len(tokens))}
	for i, t := range tokens {
		if t == Pad {
			s.toPad[i] = -1
			continue
		}
		s.toPad[i] = int32(len(s.fromPad))
		s.fromPad = append(s.fromPad, int32(i))
	}
	s.rows = len(s.fromPad)
	return s
}

// take returns v's elements at the packed rows' slots (ids, positions, targets).
func (s *packSide) take(v []int32) []int32 {
	out := make([]int32, s.rows)
	for i, j := range s.fromPad {
		out[i] = v[j]
	}
	return out
}

// stepPack is a step's packing: nil where the step runs padded.
type stepPack struct {
	src, tgt packSide
	rp       kernels.RowPacker
	pa       kernels.PackedAttention // nil: the backend has none
}

// newStepPack packs b's source and decoder sides, or returns nil where packing would
// not pay or does not apply: no pad slot, targets whose pads are not the previous
// output tokens' (a batch fairseq's collater would not build), or, with
// SetPackedRowsWherePaying, an attention call of the step that would not run on packed
// rows. Its indices and spans are placed on the backend, once each for the step (call
// it inside the step's scope).
func (n *TrainNet) newStepPack(b *TrainBatch) *stepPack {
	rp := n.packer
	p := &stepPack{src: newPackSide(b.Src), tgt: newPackSide(b.Prev), rp: rp}
	if p.src.rows == len(b.Src) && p.tgt.rows == len(b.Prev) {
		return nil
	}
	for i, t := range b.Target {
		if (t == Pad) != (b.Prev[i] == Pad) {
			return nil
		}
	}
	p.pa, _ = rp.(kernels.PackedAttention)
	if n.packWherePaying && p.pa != nil && !n.packedAttentionTakes(p.pa, b) {
		return nil
	}
	for _, side := range []struct {
		s *packSide
		T int
	}{{&p.src, b.S}, {&p.tgt, b.T}} {
		s := side.s
		s.toPadIx = rp.RowIndex(s.toPad, s.rows)
		s.fromPadIx = rp.RowIndex(s.fromPad, len(s.toPad))
		if p.pa != nil {
			if base, lo, hi, ok := s.spanArrays(b.B, side.T); ok {
				s.spans = p.pa.RowSpans(base, lo, hi, s.rows)
			}
		}
	}
	return p
}

// srcSide and tgtSide are p's sides, nil for a padded step (p nil).
func (p *stepPack) srcSide() *packSide {
	if p == nil {
		return nil
	}
	return &p.src
}

func (p *stepPack) tgtSide() *packSide {
	if p == nil {
		return nil
	}
	return &p.tgt
}

// rowsOf is the rows the step computes on side s: its packed rows, or slots (B·T) in a
// padded step.
func (p *stepPack) rowsOf(s *packSide, slots int) int {
	if p == nil {
		return slots
	}
	return s.rows
}

// expand returns x's packed rows of side s (width elements each) in the padded layout
// (pad rows zero), in a buffer like alloc's; in a padded step (p nil), x itself.
func (p *stepPack) expand(s *packSide, x kernels.Buffer, width int, alloc func(int) kernels.Buffer) kernels.Buffer {
	if p == nil {
		return x
	}
	y := alloc(len(s.toPad) * width)
	p.rp.PackRows(y, x, s.toPadIx, width)
	return y
}

// pack returns the packed rows of x, padded rows of side s, in a buffer like alloc's;
// in a padded step (p nil), x itself.
func (p *stepPack) pack(s *packSide, x kernels.Buffer, width int, alloc func(int) kernels.Buffer) kernels.Buffer {
	if p == nil {
		return x
	}
	y := alloc(s.rows * width)
	p.rp.PackRows(y, x, s.fromPadIx, width)
	return y
}

// packedAttentionTakes says whether every attention call of a step on b runs on packed
// rows (the encoder's and the decoder's self-attention, the cross-attention). The
// answer is the calls' shapes', so the args carry no padding masks (the step builds
// those itself).
func (n *TrainNet) packedAttentionTakes(pa kernels.PackedAttention, b *TrainBatch) bool {
	var calls []kernels.AttentionArgs
	if len(n.enc) > 0 {
		h := n.enc[0].self.heads
		calls = append(calls, kernels.AttentionArgs{Batch: b.B, Heads: h, HeadDim: n.d / h, TQ: b.S, TK: b.S, Scale: n.headScale(h),
			KeyPadStride: b.S})
	}
	if len(n.dec) > 0 {
		h := n.dec[0].self.heads
		calls = append(calls, kernels.AttentionArgs{Batch: b.B, Heads: h, HeadDim: n.d / h, TQ: b.T, TK: b.T, Scale: n.headScale(h),
			KeyPadStride: b.T, Causal: true},
			n.crossArgs(n.dec[0].cross.heads, b.B, b.T, b.S, nil))
	}
	for _, a := range calls {
		if !pa.PackedAttentionTakes(a) {
			return false
		}
	}
	return true
}

// SetPackedRowsWherePaying is SetPackedRows(true) for the steps where packing pays on a
// backend with kernels.PackedAttention: those whose attention calls all run on packed
// rows. Elsewhere (keys longer than its packed kernels take, float32 attention) each
// call would expand its rows around the padded call, which costs about what ~20 % pad
// slots save (the 6L-6L bench on the H200, eleventh session), so those steps run
// padded. On a backend without PackedAttention it packs every step with pads, as
// SetPackedRows(true).
func (n *TrainNet) SetPackedRowsWherePaying() error {
	if err := n.SetPackedRows(true); err != nil {
		return err
	}
	n.packWherePaying = true
	return nil
}

// SetPackedRows makes training steps compute position-wise layers on packed rows (see
// above) when on; the backend must implement kernels.RowPacker. Steps that profile
// Admin's ω stay padded (the profile's statistics are fairseq's, over padded
// tensors), and so do batches without pads. A packed step is not captured as a CUDA
// graph: its row counts change from batch to batch.
func (n *TrainNet) SetPackedRows(on bool) error {
	n.packWherePaying = false
	if !on {
		n.packer = nil
		return nil
	}
	rp, ok := n.be.(kernels.RowPacker)
	if !ok {
		return fmt.Errorf("model: packed rows need a backend with kernels.RowPacker (%T has none)", n.be)
	}
	n.packer = rp
	return nil
}
