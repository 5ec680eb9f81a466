package model

import (
	"context"
	"fmt"
	"math"

	"github.com/xform-dev/xform/kernels"
)

// EncoderOut is the encoder's result for a padded batch of B sources of width S.
type EncoderOut struct {
	B, S int
	// Out is the last encoder state (after the final LayerNorm with normalize-before),
	// [B, S, d] batch-major.
	Out kernels.Buffer
	// Pad marks pad positions, [B, S]; nil when the batch has no padding (fairseq
	// passes no mask then).
	Pad []bool
}

// Trace receives intermediate tensors of a forward pass on the host, batch-major
// ([B, T, ·]) whatever layout the reference dumps use. Nil fields are not collected.
type Trace struct {
	EncoderEmbedding []float32   // [B, S, d] scale·E[src], no positions
	EncoderStates    [][]float32 // per layer [B, S, d]
	DecoderInner     [][]float32 // [L+1] of [B, T, d]: embedding+positions, then each layer
	DecoderFeatures  []float32   // [B, T, d] before the output projection
	DecoderAttn      []float32   // [B, T, S] last layer's encoder attention, mean over heads
	Logits           []float32   // [B, T, V]
	LogProbs         []float32   // [B, T, V]
	Enabled          bool        // collect everything above
}

func (r *Runner) download(b kernels.Buffer) []float32 {
	v := make([]float32, b.Len())
	r.be.Download(v, b)
	return v
}

func (r *Runner) checkIDs(ids []int32, vocab int, what string) error {
	for i, id := range ids {
		if id < 0 || int(id) >= vocab {
			return fmt.Errorf("%w: %s token %d at %d is outside the vocabulary of %d", ErrInput, what, id, i, vocab)
		}
	}
	return nil
}

// Encode runs the encoder on src, a [B, S] row-major batch of token ids padded with
// Pad (fairseq pads sources on the left). Positions count non-pad tokens only, so the
// padding side does not change the result of the real tokens.
func (r *Runner) Encode(ctx context.Context, src []int32, B, S int, tr *Trace) (*EncoderOut, error) {
	if len(src) != B*S || B < 1 || S < 1 {
		return nil, fmt.Errorf("%w: source batch of %d ids is not %d×%d", ErrInput, len(src), B, S)
	}
	if err := r.checkIDs(src, r.cfg.SrcVocab, "source"); err != nil {
		return nil, err
	}
	pos := positionIDs(src, B, S)
	for b := 0; b < B; b++ {
		if maxRank(pos[b*S:(b+1)*S]) > r.cfg.MaxSourcePositions {
			return nil, fmt.Errorf("%w: source %d has more than %d tokens", ErrInput, b, r.cfg.MaxSourcePositions)
		}
	}
	be, d, rows := r.be, r.d, B*S
	x := be.Alloc(rows * d)
	be.Embed(x, r.encEmbed, src, d, r.embedScale)
	if tr != nil && tr.Enabled {
		tr.EncoderEmbedding = r.download(x)
	}
	be.AddRows(x, r.encPos.table, pos, d)
	var pad []bool
	for i, t := range src {
		if t == Pad {
			if pad == nil {
				pad = make([]bool, rows)
			}
			pad[i] = true
		}
	}
	ws := newWorkspace(be, rows, d, maxFFN(r.enc))
	for li := range r.enc {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		l := &r.enc[li]
		r.sublayer(ws, x, rows, l, 0, r.cfg.EncoderNormalizeBefore, r.alphaEnc, func(h, out kernels.Buffer) {
			r.selfAttention(ws, out, h, &l.self, B, S, pad, false, nil)
		})
		r.sublayer(ws, x, rows, l, 2, r.cfg.EncoderNormalizeBefore, r.alphaEnc, func(h, out kernels.Buffer) {
			r.ffn(ws, out, h, l, rows)
		})
		if tr != nil && tr.Enabled {
			tr.EncoderStates = append(tr.EncoderStates, r.download(x))
		}
	}
	if r.encLN != nil {
		be.LayerNorm(x, x, r.encLN.g, r.encLN.b, rows, d, lnEps)
		// fairseq replaces the last recorded state by the normalised one.
		if tr != nil && tr.Enabled {
			tr.EncoderStates[len(tr.EncoderStates)-1] = r.download(x)
		}
	}
	return &EncoderOut{B: B, S: S, Out: x, Pad: pad}, nil
}

func maxRank(pos []int32) int {
	m := int32(Pad)
	for _, p := range pos {
		m = max(m, p)
	}
	return int(m) - Pad
}

func maxFFN(ls []layer) int {
	m := 0
	for _, l := range ls {
		m = max(m, l.ffn)
	}
	return m
}

// workspace holds the scratch buffers of one forward pass over up to rows rows.
type workspace struct {
	h, branch, attn kernels.Buffer // [rows, d]
	qkv             kernels.Buffer // [rows, 3d]
	ffn             kernels.Buffer // [rows, F]
}

func newWorkspace(be kernels.Backend, rows, d, ffn int) *workspace {
	return &workspace{
		h: be.Alloc(rows * d), branch: be.Alloc(rows * d), attn: be.Alloc(rows * d),
		qkv: be.Alloc(rows * 3 * d), ffn: be.Alloc(rows * ffn),
	}
}

// sublayer applies sub-layer i of l to x in place (clinic-spec §1.3):
//
//	normalize-before: x = x + F(LN(x))
//	otherwise:        x = LN(α·(x⊙ω) + F(x))   (ω = 1 unless Admin, α = 1 unless DeepNet)
//
// Dropout is identity at inference.
func (r *Runner) sublayer(ws *workspace, x kernels.Buffer, rows int, l *layer, i int, before bool, alpha float32, f func(h, out kernels.Buffer)) {
	be, d := r.be, r.d
	h := be.Slice(ws.h, 0, rows*d)
	out := be.Slice(ws.branch, 0, rows*d)
	if before {
		be.LayerNorm(h, x, l.ln[i].g, l.ln[i].b, rows, d, lnEps)
		f(h, out)
		be.Residual(x, x, out, nil, 1, rows, d)
		return
	}
	f(x, out)
	if rn, ok := be.(kernels.ResidualNormer); ok {
		rn.ResidualLayerNorm(nil, x, x, out, l.omega[i], alpha, l.ln[i].g, l.ln[i].b, rows, d, lnEps)
		return
	}
	be.Residual(x, x, out, l.omega[i], alpha, rows, d)
	be.LayerNorm(x, x, l.ln[i].g, l.ln[i].b, rows, d, lnEps)
}

func (r *Runner) headScale(a *attention) float32 {
	return float32(math.Pow(float64(r.d/a.heads), -0.5))
}

// selfAttention computes out = Attn(h) over B sequences of T rows with one fused q|k|v
// projection.
func (r *Runner) selfAttention(ws *workspace, out, h kernels.Buffer, a *attention, B, T int, pad []bool, causal bool, probs kernels.Buffer) {
	be, d, rows := r.be, r.d, B*T
	qkv := be.Slice(ws.qkv, 0, rows*3*d)
	be.Linear(qkv, h, a.wqkv, a.bqkv, rows, 3*d, d)
	ctxv := be.Slice(ws.attn, 0, rows*d)
	view := func(off int) kernels.View {
		return kernels.View{Buf: qkv, Off: off, BatchStride: T * 3 * d, RowStride: 3 * d}
	}
	be.Attention(kernels.View{Buf: ctxv, BatchStride: T * d, RowStride: d}, view(0), view(d), view(2*d), kernels.AttentionArgs{
		Batch: B, Heads: a.heads, HeadDim: d / a.heads, TQ: T, TK: T, Scale: r.headScale(a),
		KeyPadding: pad, KeyPadStride: T, Causal: causal, Probs: probs,
	})
	be.Linear(out, ctxv, a.wo, a.bo, rows, d, d)
}

// crossKV projects the encoder output to keys and values, [B, S, 2d] (k | v per row).
func (r *Runner) crossKV(a *attention, enc *EncoderOut) kernels.Buffer {
	be, d := r.be, r.d
	rows := enc.B * enc.S
	kv := be.Alloc(rows * 2 * d)
	be.Linear(kv, enc.Out, be.Slice(a.wqkv, d*d, 2*d*d), be.Slice(a.bqkv, d, 2*d), rows, 2*d, d)
	return kv
}

// crossAttention computes out = Attn(q = h, k = v = encoder) for B·T query rows, rows of
// query batch b reading key batch kvIndex[b].
func (r *Runner) crossAttention(ws *workspace, out, h kernels.Buffer, a *attention, kv kernels.Buffer, enc *EncoderOut, B, T int, kvIndex []int32, probs kernels.Buffer) {
	be, d, rows := r.be, r.d, B*T
	q := be.Slice(ws.qkv, 0, rows*d)
	be.Linear(q, h, be.Slice(a.wqkv, 0, d*d), be.Slice(a.bqkv, 0, d), rows, d, d)
	ctxv := be.Slice(ws.attn, 0, rows*d)
	S := enc.S
	be.Attention(kernels.View{Buf: ctxv, BatchStride: T * d, RowStride: d},
		kernels.View{Buf: q, BatchStride: T * d, RowStride: d},
		kernels.View{Buf: kv, Off: 0, BatchStride: S * 2 * d, RowStride: 2 * d},
		kernels.View{Buf: kv, Off: d, BatchStride: S * 2 * d, RowStride: 2 * d},
		kernels.AttentionArgs{
			Batch: B, Heads: a.heads, HeadDim: d / a.heads, TQ: T, TK: S, Scale: r.headScale(a),
			KVIndex: kvIndex, KeyPadding: enc.Pad, KeyPadStride: S, Probs: probs,
		})
	be.Linear(out, ctxv, a.wo, a.bo, rows, d, d)
}

// ffn computes out = fc2(act(fc1(h))).
func (r *Runner) ffn(ws *workspace, out, h kernels.Buffer, l *layer, rows int) {
	be, d := r.be, r.d
	mid := be.Slice(ws.ffn, 0, rows*l.ffn)
	be.Linear(mid, h, l.fc1w, l.fc1b, rows, l.ffn, d)
	be.Activate(mid, mid, r.act)
	be.Linear(out, mid, l.fc2w, l.fc2b, rows, d, l.ffn)
}

// embedTarget writes scale·E[tokens] + P[positions] into x.
func (r *Runner) embedTarget(x kernels.Buffer, tokens, pos []int32) {
	r.be.Embed(x, r.decEmbed, tokens, r.d, r.embedScale)
	r.be.AddRows(x, r.decPos.table, pos, r.d)
}

// Decode runs the decoder with teacher forcing on prev, a [B, T] batch of previous
// output tokens (EOS first, right-padded), and returns the log-probabilities
// [B, T, V] in float32.
func (r *Runner) Decode(ctx context.Context, enc *EncoderOut, prev []int32, T int, tr *Trace) ([]float32, error) {
	B := enc.B
	if len(prev) != B*T || T < 1 {
		return nil, fmt.Errorf("%w: target batch of %d ids is not %d×%d", ErrInput, len(prev), B, T)
	}
	if err := r.checkIDs(prev, r.cfg.TgtVocab, "target"); err != nil {
		return nil, err
	}
	pos := positionIDs(prev, B, T)
	if maxRank(pos) > r.cfg.MaxTargetPositions {
		return nil, fmt.Errorf("%w: target longer than %d tokens", ErrInput, r.cfg.MaxTargetPositions)
	}
	be, d, rows := r.be, r.d, B*T
	collect := tr != nil && tr.Enabled
	x := be.Alloc(rows * d)
	r.embedTarget(x, prev, pos)
	if collect {
		tr.DecoderInner = append(tr.DecoderInner, r.download(x))
	}
	var pad []bool
	for i, t := range prev {
		if t == Pad {
			if pad == nil {
				pad = make([]bool, rows)
			}
			pad[i] = true
		}
	}
	ws := newWorkspace(be, rows, d, maxFFN(r.dec))
	var probs kernels.Buffer
	for li := range r.dec {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		l := &r.dec[li]
		kv := r.crossKV(&l.cross, enc)
		if collect && li == len(r.dec)-1 {
			probs = be.Alloc(B * T * enc.S)
		}
		before, alpha := r.cfg.DecoderNormalizeBefore, r.alphaDec
		r.sublayer(ws, x, rows, l, 0, before, alpha, func(h, out kernels.Buffer) {
			r.selfAttention(ws, out, h, &l.self, B, T, pad, true, nil)
		})
		r.sublayer(ws, x, rows, l, 1, before, alpha, func(h, out kernels.Buffer) {
			r.crossAttention(ws, out, h, &l.cross, kv, enc, B, T, nil, probs)
		})
		r.sublayer(ws, x, rows, l, 2, before, alpha, func(h, out kernels.Buffer) {
			r.ffn(ws, out, h, l, rows)
		})
		if collect {
			tr.DecoderInner = append(tr.DecoderInner, r.download(x))
		}
	}
	lp, logits := r.project(x, rows)
	if collect {
		tr.DecoderFeatures = r.download(x)
		tr.DecoderAttn = r.download(probs)
		tr.Logits = r.download(logits)
		tr.LogProbs = append([]float32(nil), lp...)
	}
	return lp, nil
}

// project applies the final decoder LayerNorm (normalize-before only) to x in place,
// the output projection and a float32 log_softmax; it returns the log-probabilities on
// the host and the logits buffer.
func (r *Runner) project(x kernels.Buffer, rows int) ([]float32, kernels.Buffer) {
	be, d, V := r.be, r.d, r.cfg.TgtVocab
	if r.decLN != nil {
		be.LayerNorm(x, x, r.decLN.g, r.decLN.b, rows, d, lnEps)
	}
	logits := be.Alloc(rows * V)
	be.Linear(logits, x, r.outProj, nil, rows, V, d)
	lp := be.Alloc(rows * V)
	be.LogSoftmax(lp, logits, rows, V)
	return r.download(lp), logits
}
