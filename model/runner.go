package model

import (
	"errors"
	"fmt"
	"math"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/tensor"
)

// ErrInput reports token ids or lengths a model cannot run on.
var ErrInput = errors.New("invalid model input")

// lnEps is the LayerNorm epsilon of every fairseq Transformer LayerNorm.
const lnEps = 1e-5

// Runner holds a model's weights on a backend, widened to float32, in the layouts the
// forward pass wants: q|k|v fused into one [3d, d] matrix per attention (one GEMM for
// self-attention; cross-attention uses the q rows alone for the decoder states and the
// k|v rows alone, once per sentence, for the encoder output).
//
// A Runner is read-only after NewRunner; several goroutines may run it at once.
type Runner struct {
	cfg Config
	be  kernels.Backend
	act kernels.Activation

	d          int
	embedScale float32
	encEmbed   kernels.Buffer
	decEmbed   kernels.Buffer
	outProj    kernels.Buffer
	encPos     *positions
	decPos     *positions
	enc        []layer
	dec        []layer
	encLN      *norm // final LayerNorm (normalize-before only)
	decLN      *norm
	alphaEnc   float32
	alphaDec   float32
}

type norm struct{ g, b kernels.Buffer }

type attention struct {
	wqkv, bqkv kernels.Buffer // [3d, d], [3d]: q rows, then k, then v
	wo, bo     kernels.Buffer
	heads      int
}

// layer is one encoder or decoder layer. Sub-layer index 0 is self-attention, 1 the
// encoder attention (decoder only) and 2 the FFN; ln and omega follow that index.
type layer struct {
	self, cross attention
	ln          [3]norm
	omega       [3]kernels.Buffer // Admin ω per sub-layer, nil otherwise
	fc1w, fc1b  kernels.Buffer
	fc2w, fc2b  kernels.Buffer
	ffn         int
}

// NewRunner checks the model and places its weights on be. fp16/bf16 parameters are
// widened to float32 here, once.
func NewRunner(m *Model, be kernels.Backend) (*Runner, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("runner: %w", err)
	}
	c := m.Config
	act, err := kernels.ParseActivation(c.Activation)
	if err != nil {
		return nil, fmt.Errorf("runner: %w", err)
	}
	r := &Runner{cfg: c, be: be, act: act, d: c.EncoderEmbedDim, alphaEnc: 1, alphaDec: 1}
	// fairseq multiplies by math.sqrt(d), a double that torch rounds to float32.
	r.embedScale = float32(math.Sqrt(float64(c.EncoderEmbedDim)))
	if c.Init == InitDeepNet {
		a, b := c.DeepNetAlpha()
		r.alphaEnc, r.alphaDec = float32(a), float32(b)
	}
	get := func(name string) ([]float32, error) {
		t, ok := m.Params[name]
		if !ok {
			return nil, fmt.Errorf("runner: missing parameter %s", name)
		}
		v, err := t.F32()
		if err != nil {
			return nil, fmt.Errorf("runner: parameter %s: %w", name, err)
		}
		return v, nil
	}
	var firstErr error
	up := func(name string) kernels.Buffer {
		v, err := get(name)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			return nil
		}
		return be.Upload(v)
	}
	upT := func(t *tensor.Tensor, name string) kernels.Buffer {
		v, err := t.F32()
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("runner: parameter %s: %w", name, err)
		}
		return be.Upload(v)
	}
	r.encEmbed = up(EncEmbed)
	if c.ShareAllEmbeddings {
		r.decEmbed = r.encEmbed
	} else {
		r.decEmbed = up(DecEmbed)
	}
	if c.TiedOutput() {
		r.outProj = r.decEmbed
	} else {
		r.outProj = upT(m.OutputProjection(), OutProj)
	}
	r.encPos, err = newPositions(be, c.EncoderLearnedPos, m.Params[EncPos], r.d, c.MaxSourcePositions)
	if err != nil {
		return nil, fmt.Errorf("runner: encoder positions: %w", err)
	}
	r.decPos, err = newPositions(be, c.DecoderLearnedPos, m.Params[DecPos], r.d, c.MaxTargetPositions)
	if err != nil {
		return nil, fmt.Errorf("runner: decoder positions: %w", err)
	}
	fused := func(p string, heads int) attention {
		var qkv, b []float32
		for _, x := range []string{"q", "k", "v"} {
			w, err := get(p + x + "_proj.weight")
			if err != nil && firstErr == nil {
				firstErr = err
			}
			bb, err := get(p + x + "_proj.bias")
			if err != nil && firstErr == nil {
				firstErr = err
			}
			qkv = append(qkv, w...)
			b = append(b, bb...)
		}
		return attention{wqkv: be.Upload(qkv), bqkv: be.Upload(b), wo: up(p + "out_proj.weight"), bo: up(p + "out_proj.bias"), heads: heads}
	}
	ln := func(p string) norm { return norm{up(p + ".weight"), up(p + ".bias")} }
	for i := 0; i < c.EncoderLayers; i++ {
		p := EncLayer(i)
		l := layer{self: fused(p+"self_attn.", c.EncoderHeads), ffn: c.EncoderFFNDim}
		l.ln[0], l.ln[2] = ln(p+"self_attn_layer_norm"), ln(p+"final_layer_norm")
		l.fc1w, l.fc1b, l.fc2w, l.fc2b = up(p+"fc1.weight"), up(p+"fc1.bias"), up(p+"fc2.weight"), up(p+"fc2.bias")
		if c.Init.HasOmega() {
			l.omega[0], l.omega[2] = up(p+"self_attn_omega"), up(p+"ffn_omega")
		}
		r.enc = append(r.enc, l)
	}
	for i := 0; i < c.DecoderLayers; i++ {
		p := DecLayer(i)
		l := layer{self: fused(p+"self_attn.", c.DecoderHeads), cross: fused(p+"encoder_attn.", c.DecoderHeads), ffn: c.DecoderFFNDim}
		l.ln[0], l.ln[1], l.ln[2] = ln(p+"self_attn_layer_norm"), ln(p+"encoder_attn_layer_norm"), ln(p+"final_layer_norm")
		l.fc1w, l.fc1b, l.fc2w, l.fc2b = up(p+"fc1.weight"), up(p+"fc1.bias"), up(p+"fc2.weight"), up(p+"fc2.bias")
		if c.Init.HasOmega() {
			l.omega[0], l.omega[1], l.omega[2] = up(p+"self_attn_omega"), up(p+"encoder_attn_omega"), up(p+"ffn_omega")
		}
		r.dec = append(r.dec, l)
	}
	if c.EncoderNormalizeBefore {
		n := ln(EncLN)
		r.encLN = &n
	}
	if c.DecoderNormalizeBefore {
		n := ln(DecLN)
		r.decLN = &n
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return r, nil
}

// Config returns the model configuration.
func (r *Runner) Config() Config { return r.cfg }

// Backend returns the backend the runner computes on.
func (r *Runner) Backend() kernels.Backend { return r.be }

// MaxDecoderPositions is the longest target (EOS included) the decoder can position.
func (r *Runner) MaxDecoderPositions() int { return r.cfg.MaxTargetPositions }

// MaxSourcePositions is the longest source (EOS included) the encoder accepts.
func (r *Runner) MaxSourcePositions() int { return r.cfg.MaxSourcePositions }
