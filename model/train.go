package model

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/tensor"
)

// The training forward and backward live here, apart from the inference forward in
// forward.go: inference overwrites its activations in place and keeps no state, while
// training must keep every sub-layer's inputs for the backward. The numerics are the
// same kernels, called in the same order, so a training forward with dropout 0 computes
// what the inference forward computes.

// TrainBatch is one collated batch as fairseq's LanguagePairDataset builds it: sources
// left-padded [B, S], previous output tokens (EOS first) and targets right-padded [B, T].
type TrainBatch struct {
	B, S, T int
	Src     []int32
	Prev    []int32
	Target  []int32
	// NTokens is the number of non-pad target tokens (fairseq's ntokens).
	NTokens int
}

// Validate checks the shapes and that every target row pairs with its input row.
func (b *TrainBatch) Validate() error {
	if b.B < 1 || b.S < 1 || b.T < 1 || len(b.Src) != b.B*b.S || len(b.Prev) != b.B*b.T || len(b.Target) != b.B*b.T {
		return fmt.Errorf("%w: batch shapes B=%d S=%d T=%d do not match %d/%d/%d ids", ErrInput, b.B, b.S, b.T, len(b.Src), len(b.Prev), len(b.Target))
	}
	return nil
}

// StepOptions controls one training (or validation) forward.
type StepOptions struct {
	// Dropout probabilities (fairseq's dropout, attention_dropout, activation_dropout);
	// used only when Train is set.
	Dropout, AttentionDropout, ActivationDropout float64
	// RNG draws the dropout masks; required when a probability is > 0.
	RNG *rand.Rand
	// LabelSmoothing is the criterion's epsilon.
	LabelSmoothing float64
	// Train enables dropout; Backward accumulates gradients of the summed loss.
	Train, Backward bool
	// GradScale multiplies the loss gradient before the backward (fp16 loss scaling:
	// the gradients come out scaled by it and the trainer unscales them); 0 means 1.
	GradScale float32
	// Profile runs Admin's profiling recurrence (clinic-spec §1.4) on this forward:
	// every ω is set from the running ratio before its sub-layer computes. The ratios
	// are returned in StepResult.
	Profile bool
	// DeferLoss leaves StepResult.Loss and NLL zero and sets ReadLoss instead, which
	// the caller calls later (after queueing more work, where the backend is a
	// kernels.DeferredReader). Ignored with Profile, which reads mid-step anyway.
	DeferLoss bool
}

func (o *StepOptions) gradScale() float32 {
	if o.GradScale == 0 {
		return 1
	}
	return o.GradScale
}

// StepResult holds the criterion's sums over the batch, in nats.
type StepResult struct {
	Loss, NLL  float64
	NTokens    int
	NSentences int
	// ReadLoss returns Loss and NLL where StepOptions.DeferLoss was set (nil
	// otherwise); call it once.
	ReadLoss func() (loss, nll float64)
	// ProfileEncoder and ProfileDecoder are ω per branch when StepOptions.Profile was set
	// (encoder 2 per layer, decoder 3 per layer, in forward order).
	ProfileEncoder, ProfileDecoder []float64
}

// tparam is one parameter tensor and its gradient on the backend.
type tparam struct{ w, g kernels.Buffer }

type tlin struct {
	w, b tparam
	// w16 is w rounded to 16 bits (kernels.HalfRounder; nil elsewhere), refreshed at
	// the start of every step and multiplied by the forward in w's place.
	w16 kernels.Buffer
	// b16 is b rounded to 16 bits, kept as w16 is, for a Linear whose 16-bit output's
	// epilogue adds a 16-bit bias (fc1: kernels.HalfBiases); nil elsewhere.
	b16 kernels.Buffer
}

type tnorm struct{ g, b tparam }

type tattn struct {
	qkv   tlin // [3d, d] fused: q rows, then k, then v
	o     tlin
	heads int
	// Cross-attention only (qkv is unused there): q its projection, and kv its k and v
	// rows, [2d, d] and [2d], slices of TrainNet.crossKV, where every decoder layer's
	// keys and values lie in one block so that one product can compute them all.
	q, kv tlin
	// q16 and kv16 are the cross-attention's q and k/v weights rounded to 16 bits, as
	// two buffers (a 16-bit buffer has no Slice); nil for self-attention, which uses
	// qkv.w16. kv16 is nil too where the net batches the keys and values (crossKV16).
	q16, kv16 kernels.Buffer
	// qb16 and kvb16 are the cross-attention's q and k/v biases rounded to 16 bits
	// (kernels.HalfBiases), which its projections add when they write 16-bit attention
	// inputs; nil for self-attention, whose qkv.b16 is the whole fused bias's.
	qb16, kvb16 kernels.Buffer
}

type tlayer struct {
	self, cross tattn
	ln          [3]tnorm
	omega       [3]*tparam
	fc1, fc2    tlin
	ffn         int
}

// NamedParam is one trainable parameter: canonical name, value and gradient buffers
// (slices of shared storage where the layout fuses several parameters) and its length.
type NamedParam struct {
	Name  string
	Shape []int
	P, G  kernels.Buffer
}

// TrainNet holds a model's parameters and gradients on a training backend and runs the
// training forward and backward.
type TrainNet struct {
	cfg        Config
	be         kernels.Trainer
	act        kernels.Activation
	d          int
	embedScale float32
	alphaEnc   float32
	alphaDec   float32

	encEmbed, decEmbed, outProj *tparam
	encPos, decPos              *tparam // learned: the parameter; sinusoidal: w only, g nil
	enc, dec                    []tlayer
	encLN, decLN                *tnorm
	params                      []NamedParam

	// crossKV holds every decoder layer's cross-attention k and v projections, layer l's
	// rows [2d·l, 2d·(l+1)) (k then v) of a [L·2d, d] weight and its [L·2d] bias; the
	// layers' kv are slices of it. With kvBatch (kernels.CrossKVBatcher) one product
	// computes all layers' keys and values from the encoder output, and one backward
	// product their input gradient (crossKVForward); crossKV16 is then its 16-bit copy.
	crossKV    tlin
	crossKV16  kernels.Buffer
	crossKVb16 kernels.Buffer // its bias's 16-bit copy (kernels.HalfBiases)
	kvBatch    bool
	// packer: SetPackedRows is on (pack.go); packWherePaying: SetPackedRowsWherePaying.
	packer          kernels.RowPacker
	packWherePaying bool
	// outProj16 is the output projection rounded to 16 bits (kernels.HalfRounder).
	outProj16 kernels.Buffer
	// half16Dst and half16Src are every 16-bit weight copy and its float32 weight, for
	// the one RoundAll at the start of each step.
	half16Dst, half16Src []kernels.Buffer
	// halfTargets[i] is where a kernels.RoundingOptimizer update writes params[i]'s
	// 16-bit copy (Buf nil: no copy); nil when the net keeps no copies.
	halfTargets []kernels.HalfTarget
	// halfFresh: the copies hold RN16 of the weights as they are now, so the next step
	// need not RoundAll. Only two things set it: roundWeights' RoundAll and an update
	// the net ran itself with the copies written in the same pass (AdamStepClipped,
	// AdamStepAll on a RoundingOptimizer). Everything that may write the weights clears
	// it (Params, WeightsChanged, a profiling step, the net's updates without copies), so
	// a path that forgets about the copies costs a RoundAll, never a stale copy.
	halfFresh bool

	// freshW: the layers' Linear weight gradients as the backward passes them (the
	// fused qkv, the batched cross-attention k/v), in a fixed order, on a
	// kernels.FreshWeightGrad backend; nil elsewhere. ZeroGrad then clears only
	// clearGrads (every other parameter's gradient) and marks these pendingW: the
	// first Linear backward to reach one writes it (backKept), any other writer clears
	// it first (prepW), and settleGrads clears the ones no backward reached.
	freshW     []kernels.Buffer
	pendingW   map[kernels.Buffer]bool
	clearGrads []kernels.Buffer

	// gradsZero: every gradient holds the zeros ZeroGrad wrote (no backward since).
	// biasFresh: the running step's backward is the first contribution to every
	// bias gradient, so a kernels.FreshBiasGrad backend may write them rather than
	// add (each bias serves one Linear of the step).
	gradsZero, biasFresh bool
}

// NewTrainNet validates m and places its parameters (widened to float32) and zeroed
// gradients on be.
func NewTrainNet(m *Model, be kernels.Trainer) (*TrainNet, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("train net: %w", err)
	}
	c := m.Config
	act, err := kernels.ParseActivation(c.Activation)
	if err != nil {
		return nil, fmt.Errorf("train net: %w", err)
	}
	n := &TrainNet{cfg: c, be: be, act: act, d: c.EncoderEmbedDim, alphaEnc: 1, alphaDec: 1,
		embedScale: float32(math.Sqrt(float64(c.EncoderEmbedDim)))}
	if c.Init == InitDeepNet {
		a, b := c.DeepNetAlpha()
		n.alphaEnc, n.alphaDec = float32(a), float32(b)
	}
	shapes := map[string][]int{}
	for _, p := range c.Expected() {
		shapes[p.Name] = p.Shape
	}
	values := func(name string) ([]float32, error) {
		t, ok := m.Params[name]
		if !ok {
			return nil, fmt.Errorf("train net: missing parameter %s", name)
		}
		v, err := t.F32()
		if err != nil {
			return nil, fmt.Errorf("train net: parameter %s: %w", name, err)
		}
		return v, nil
	}
	// Every parameter is registered in Expected order; fused storage is split by name.
	byName := map[string]tparam{}
	var firstErr error
	upload := func(name string) *tparam {
		v, err := values(name)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			v = make([]float32, tensor.Numel(shapes[name]))
		}
		p := &tparam{w: be.Upload(v), g: be.Alloc(len(v))}
		byName[name] = *p
		return p
	}
	lin := func(p string) tlin { return tlin{w: *upload(p + ".weight"), b: *upload(p + ".bias")} }
	norm := func(p string) tnorm { return tnorm{*upload(p + ".weight"), *upload(p + ".bias")} }
	d := n.d
	// cross is a decoder layer's cross-attention: q on its own, k and v as layer li's
	// slices of crossKV (filled from kvW, kvB before the layers are made).
	var kvW, kvB []float32
	cross := func(p string, heads, li int) tattn {
		a := tattn{q: lin(p + "q_proj"), heads: heads}
		w, g, bw, bg := n.crossKV.w.w, n.crossKV.w.g, n.crossKV.b.w, n.crossKV.b.g
		a.kv = tlin{w: tparam{be.Slice(w, 2*li*d*d, 2*d*d), be.Slice(g, 2*li*d*d, 2*d*d)},
			b: tparam{be.Slice(bw, 2*li*d, 2*d), be.Slice(bg, 2*li*d, 2*d)}}
		for i, x := range []string{"k", "v"} {
			byName[p+x+"_proj.weight"] = tparam{be.Slice(a.kv.w.w, i*d*d, d*d), be.Slice(a.kv.w.g, i*d*d, d*d)}
			byName[p+x+"_proj.bias"] = tparam{be.Slice(a.kv.b.w, i*d, d), be.Slice(a.kv.b.g, i*d, d)}
		}
		a.o = lin(p + "out_proj")
		return a
	}
	attn := func(p string, heads int) tattn {
		var w, b []float32
		for _, x := range []string{"q", "k", "v"} {
			wv, err := values(p + x + "_proj.weight")
			if err != nil && firstErr == nil {
				firstErr = err
			}
			bv, err := values(p + x + "_proj.bias")
			if err != nil && firstErr == nil {
				firstErr = err
			}
			w = append(w, wv...)
			b = append(b, bv...)
		}
		if firstErr != nil {
			w, b = make([]float32, 3*d*d), make([]float32, 3*d)
		}
		a := tattn{qkv: tlin{w: tparam{be.Upload(w), be.Alloc(3 * d * d)}, b: tparam{be.Upload(b), be.Alloc(3 * d)}}, heads: heads}
		for i, x := range []string{"q", "k", "v"} {
			byName[p+x+"_proj.weight"] = tparam{be.Slice(a.qkv.w.w, i*d*d, d*d), be.Slice(a.qkv.w.g, i*d*d, d*d)}
			byName[p+x+"_proj.bias"] = tparam{be.Slice(a.qkv.b.w, i*d, d), be.Slice(a.qkv.b.g, i*d, d)}
		}
		a.o = lin(p + "out_proj")
		return a
	}
	n.encEmbed = upload(EncEmbed)
	if c.EncoderLearnedPos {
		n.encPos = upload(EncPos)
	} else {
		n.encPos = &tparam{w: be.Upload(Sinusoids(c.MaxSourcePositions+Pad+1, d))}
	}
	for i := 0; i < c.EncoderLayers; i++ {
		p := EncLayer(i)
		var l tlayer
		if c.Init.HasOmega() {
			l.omega[0], l.omega[2] = upload(p+"self_attn_omega"), upload(p+"ffn_omega")
		}
		l.self = attn(p+"self_attn.", c.EncoderHeads)
		l.fc1, l.fc2, l.ffn = lin(p+"fc1"), lin(p+"fc2"), c.EncoderFFNDim
		l.ln[0], l.ln[2] = norm(p+"self_attn_layer_norm"), norm(p+"final_layer_norm")
		n.enc = append(n.enc, l)
	}
	if c.EncoderNormalizeBefore {
		x := norm(EncLN)
		n.encLN = &x
	}
	if !c.TiedOutput() {
		n.outProj = upload(OutProj)
	}
	if c.ShareAllEmbeddings {
		n.decEmbed = n.encEmbed
	} else {
		n.decEmbed = upload(DecEmbed)
	}
	if c.TiedOutput() {
		n.outProj = n.decEmbed
	}
	if c.DecoderLearnedPos {
		n.decPos = upload(DecPos)
	} else {
		n.decPos = &tparam{w: be.Upload(Sinusoids(c.MaxTargetPositions+Pad+1, d))}
	}
	for i := 0; i < c.DecoderLayers; i++ {
		for _, x := range []string{"k", "v"} {
			p := DecLayer(i) + "encoder_attn." + x + "_proj."
			wv, err := values(p + "weight")
			if err != nil && firstErr == nil {
				firstErr = err
			}
			bv, err := values(p + "bias")
			if err != nil && firstErr == nil {
				firstErr = err
			}
			kvW, kvB = append(kvW, wv...), append(kvB, bv...)
		}
	}
	if firstErr != nil || len(kvW) != 2*c.DecoderLayers*d*d || len(kvB) != 2*c.DecoderLayers*d {
		kvW, kvB = make([]float32, 2*c.DecoderLayers*d*d), make([]float32, 2*c.DecoderLayers*d)
	}
	if c.DecoderLayers > 0 {
		n.crossKV = tlin{w: tparam{be.Upload(kvW), be.Alloc(len(kvW))}, b: tparam{be.Upload(kvB), be.Alloc(len(kvB))}}
	}
	for i := 0; i < c.DecoderLayers; i++ {
		p := DecLayer(i)
		var l tlayer
		if c.Init.HasOmega() {
			l.omega[0], l.omega[1], l.omega[2] = upload(p+"self_attn_omega"), upload(p+"encoder_attn_omega"), upload(p+"ffn_omega")
		}
		l.self = attn(p+"self_attn.", c.DecoderHeads)
		l.cross = cross(p+"encoder_attn.", c.DecoderHeads, i)
		l.fc1, l.fc2, l.ffn = lin(p+"fc1"), lin(p+"fc2"), c.DecoderFFNDim
		l.ln[0], l.ln[1], l.ln[2] = norm(p+"self_attn_layer_norm"), norm(p+"encoder_attn_layer_norm"), norm(p+"final_layer_norm")
		n.dec = append(n.dec, l)
	}
	if c.DecoderNormalizeBefore {
		x := norm(DecLN)
		n.decLN = &x
	}
	if firstErr != nil {
		return nil, firstErr
	}
	for _, p := range c.Expected() {
		t := byName[p.Name]
		n.params = append(n.params, NamedParam{Name: p.Name, Shape: p.Shape, P: t.w, G: t.g})
	}
	if kb, ok := be.(kernels.CrossKVBatcher); ok && kb.BatchCrossKV() && c.DecoderLayers > 1 {
		n.kvBatch = true
	}
	n.halfWeights()
	n.freshWeights()
	return n, nil
}

// freshWeights sets up freshW and clearGrads where the backend writes weight
// gradients with beta 0 (kernels.FreshWeightGrad): the layers' Linear weights, which
// one product each writes in a step (the output projection, tied to the embedding that
// the embedding backward adds to, stays cleared). Without it, nothing.
func (n *TrainNet) freshWeights() {
	fw, ok := n.be.(kernels.FreshWeightGrad)
	if !ok || !fw.FreshWeightGrads() {
		return
	}
	var list []kernels.Buffer
	for i := range n.enc {
		l := &n.enc[i]
		list = append(list, l.self.qkv.w.g, l.self.o.w.g, l.fc1.w.g, l.fc2.w.g)
	}
	for i := range n.dec {
		l := &n.dec[i]
		list = append(list, l.self.qkv.w.g, l.self.o.w.g, l.cross.q.w.g, l.cross.o.w.g, l.fc1.w.g, l.fc2.w.g)
		if !n.kvBatch {
			list = append(list, l.cross.kv.w.g)
		}
	}
	if n.kvBatch {
		list = append(list, n.crossKV.w.g)
	}
	// The parameters left uncleared are found by name; their sizes must add up to the
	// buffers' the backward writes, or a gradient would be neither cleared nor written:
	// keep clearing everything then.
	var clear []kernels.Buffer
	covered, written := 0, 0
	for _, p := range n.params {
		if layerLinearWeight(p.Name) {
			covered += p.G.Len()
		} else {
			clear = append(clear, p.G)
		}
	}
	for _, g := range list {
		written += g.Len()
	}
	if covered != written {
		return
	}
	n.freshW, n.clearGrads = list, clear
}

// layerLinearWeight says whether name is the weight of an encoder or decoder layer's
// Linear (an attention projection, fc1, fc2): the gradients freshW holds.
func layerLinearWeight(name string) bool {
	if !strings.Contains(name, ".layers.") || !strings.HasSuffix(name, ".weight") {
		return false
	}
	return strings.HasSuffix(name, "_proj.weight") || strings.HasSuffix(name, ".fc1.weight") || strings.HasSuffix(name, ".fc2.weight")
}

// halfWeights gives every Linear weight, and the output projection, a 16-bit copy on a
// kernels.HalfRounder backend. The copies are made here, outside any step's scope, so
// they live as long as the net (and keep their addresses, which graphed steps record);
// roundWeights refreshes them all in one operation at the start of each step, and the
// Linears multiply them instead of rounding their weights one launch each. Same bits:
// each copy is the rounding the Linear made of the same weight. Nothing is made where
// the backend rounds nothing (AllocHalf nil).
func (n *TrainNet) halfWeights() {
	if _, ok := n.be.(kernels.HalfRounder); !ok {
		return
	}
	hb, ok := n.be.(kernels.HalfBuffers)
	if !ok {
		return
	}
	// Where each parameter's copy lies, by canonical name, for halfTargets: q, k and v
	// are thirds of their fused weight's copy (self-attention) or the q copy and halves
	// of the k/v copy (cross-attention).
	at := map[string]kernels.HalfTarget{}
	add := func(w kernels.Buffer) kernels.Buffer {
		h := hb.AllocHalf(w.Len())
		if h != nil {
			n.half16Dst, n.half16Src = append(n.half16Dst, h), append(n.half16Src, w)
		}
		return h
	}
	lin := func(l *tlin, name string) {
		l.w16 = add(l.w.w)
		at[name+".weight"] = kernels.HalfTarget{Buf: l.w16}
	}
	// fc1 writes its ReLU output in 16 bits (ffn16), where the backend adds a 16-bit
	// bias: its copy saves a rounding launch per layer and step.
	fc1 := func(l *tlin, name string) {
		lin(l, name)
		if hb, ok := n.be.(kernels.HalfBiases); ok && hb.HalfBiases() {
			l.b16 = add(l.b.w)
			at[name+".bias"] = kernels.HalfTarget{Buf: l.b16}
		}
	}
	d := n.d
	qkv := func(prefix string, q, kv kernels.Buffer, qOff, kOff, vOff int) {
		at[prefix+"q_proj.weight"] = kernels.HalfTarget{Buf: q, Off: qOff}
		at[prefix+"k_proj.weight"] = kernels.HalfTarget{Buf: kv, Off: kOff}
		at[prefix+"v_proj.weight"] = kernels.HalfTarget{Buf: kv, Off: vOff}
	}
	// The attention projections' biases: 16-bit copies where the backend adds 16-bit
	// biases to 16-bit outputs (kernels.HalfBiases), taken when a projection writes
	// 16-bit attention inputs (kernels.HalfAttentionInputs, n.attentionIn16).
	hbs, _ := n.be.(kernels.HalfBiases)
	biases := hbs != nil && hbs.HalfBiases()
	qkvBias := func(prefix string, q, kv kernels.Buffer, qOff, kOff, vOff int) {
		at[prefix+"q_proj.bias"] = kernels.HalfTarget{Buf: q, Off: qOff}
		at[prefix+"k_proj.bias"] = kernels.HalfTarget{Buf: kv, Off: kOff}
		at[prefix+"v_proj.bias"] = kernels.HalfTarget{Buf: kv, Off: vOff}
	}
	self := func(p string, a *tattn) {
		a.qkv.w16 = add(a.qkv.w.w)
		qkv(p+"self_attn.", a.qkv.w16, a.qkv.w16, 0, d*d, 2*d*d)
		if biases {
			a.qkv.b16 = add(a.qkv.b.w)
			qkvBias(p+"self_attn.", a.qkv.b16, a.qkv.b16, 0, d, 2*d)
		}
		lin(&a.o, p+"self_attn.out_proj")
	}
	for i := range n.enc {
		l, p := &n.enc[i], EncLayer(i)
		self(p, &l.self)
		fc1(&l.fc1, p+"fc1")
		lin(&l.fc2, p+"fc2")
	}
	if n.kvBatch {
		n.crossKV16 = add(n.crossKV.w.w)
		if biases {
			n.crossKVb16 = add(n.crossKV.b.w)
		}
	}
	for i := range n.dec {
		l, p := &n.dec[i], DecLayer(i)
		self(p, &l.self)
		l.cross.q16 = add(l.cross.q.w.w)
		kv, off := n.crossKV16, 2*i*d*d
		if !n.kvBatch {
			l.cross.kv16 = add(l.cross.kv.w.w)
			kv, off = l.cross.kv16, 0
		}
		qkv(p+"encoder_attn.", l.cross.q16, kv, 0, off, off+d*d)
		if biases {
			l.cross.qb16 = add(l.cross.q.b.w)
			kvb, boff := n.crossKVb16, 2*i*d
			if !n.kvBatch {
				l.cross.kvb16 = add(l.cross.kv.b.w)
				kvb, boff = l.cross.kvb16, 0
			}
			qkvBias(p+"encoder_attn.", l.cross.qb16, kvb, 0, boff, boff+d)
		}
		lin(&l.cross.o, p+"encoder_attn.out_proj")
		fc1(&l.fc1, p+"fc1")
		lin(&l.fc2, p+"fc2")
	}
	n.outProj16 = add(n.outProj.w)
	switch {
	case !n.cfg.TiedOutput():
		at[OutProj] = kernels.HalfTarget{Buf: n.outProj16}
	case n.cfg.ShareAllEmbeddings:
		at[EncEmbed] = kernels.HalfTarget{Buf: n.outProj16}
	default:
		at[DecEmbed] = kernels.HalfTarget{Buf: n.outProj16}
	}
	if len(n.half16Dst) == 0 {
		return
	}
	n.halfTargets = make([]kernels.HalfTarget, len(n.params))
	for i, p := range n.params {
		if t, ok := at[p.Name]; ok && t.Buf != nil {
			n.halfTargets[i] = t
		}
	}
}

// roundWeights refreshes the 16-bit weight copies from the weights (one RoundAll)
// before a step, unless they are known to hold the current weights (halfFresh): the
// net's last update wrote them, or nothing that may write the weights happened since
// the last RoundAll.
func (n *TrainNet) roundWeights() {
	if len(n.half16Dst) == 0 || n.halfFresh {
		return
	}
	n.be.(kernels.HalfRounder).RoundAll(n.half16Dst, n.half16Src)
	n.halfFresh = true
}

// WeightsChanged tells the net that its weights were written other than by its own
// update methods, through buffers taken from an earlier Params call: the next step
// rounds the 16-bit copies again. (Params itself already assumes its caller writes.)
func (n *TrainNet) WeightsChanged() { n.halfFresh = false }

// AdamStepClipped applies co's AdamStepClipped to every parameter, in Params order,
// with the moments m and v (Params order) and returns the norm's reader. On a
// kernels.RoundingOptimizer backend that rounds updates, the same pass writes the
// 16-bit weight copies and the next step skips its RoundAll; a skipped update (a
// non-finite norm) leaves the copies equal to the unchanged weights, so it needs no
// RoundAll either.
func (n *TrainNet) AdamStepClipped(co kernels.ClippedOptimizer, m, v []kernels.Buffer, pre float32, maxNorm float64, s kernels.OptimStep) (norm func() float64) {
	ps, gs := n.paramLists()
	if ro := n.roundingOptimizer(); ro != nil {
		norm = ro.AdamStepClippedRounded(ps, gs, m, v, n.halfTargets, pre, maxNorm, s)
		n.halfFresh = true
		return norm
	}
	n.halfFresh = false
	return co.AdamStepClipped(ps, gs, m, v, pre, maxNorm, s)
}

// AdamStepAll applies mt's AdamStepAll to every parameter with the moments m and v
// (Params order), writing the 16-bit copies in the same pass where the backend can, as
// AdamStepClipped does.
func (n *TrainNet) AdamStepAll(mt kernels.MultiTensor, m, v []kernels.Buffer, s kernels.OptimStep) {
	ps, gs := n.paramLists()
	if ro := n.roundingOptimizer(); ro != nil {
		ro.AdamStepAllRounded(ps, gs, m, v, n.halfTargets, s)
		n.halfFresh = true
		return
	}
	n.halfFresh = false
	mt.AdamStepAll(ps, gs, m, v, s)
}

// roundingOptimizer is the backend's kernels.RoundingOptimizer when the net keeps
// 16-bit copies and the backend rounds updates, else nil.
func (n *TrainNet) roundingOptimizer() kernels.RoundingOptimizer {
	if n.halfTargets == nil {
		return nil
	}
	if ro, ok := n.be.(kernels.RoundingOptimizer); ok && ro.RoundsUpdates() {
		return ro
	}
	return nil
}

// paramLists returns the parameter and gradient buffers in Params order.
func (n *TrainNet) paramLists() (ps, gs []kernels.Buffer) {
	n.settleGrads()
	ps, gs = make([]kernels.Buffer, len(n.params)), make([]kernels.Buffer, len(n.params))
	for i, p := range n.params {
		ps[i], gs[i] = p.P, p.G
	}
	return ps, gs
}

// Config returns the model configuration.
func (n *TrainNet) Config() Config { return n.cfg }

// Backend returns the training backend.
func (n *TrainNet) Backend() kernels.Trainer { return n.be }

// Params lists the trainable parameters in canonical (fairseq state-dict) order. The
// caller may write the weights through these buffers, so the net no longer trusts its
// 16-bit weight copies: the next step rounds them again (one RoundAll, ~150 µs at
// 6L-6L). Code that keeps the buffers and writes them after a later step or update
// must call WeightsChanged.
func (n *TrainNet) Params() []NamedParam {
	n.settleGrads()
	n.halfFresh = false
	return n.params
}

// ZeroGrad clears every gradient. With freshW the layers' Linear weight gradients
// are left to be written by the next backward instead (their clearing was ~0.14 ms of
// an 18L-18L update on an H200); settleGrads clears any that it does not reach.
func (n *TrainNet) ZeroGrad() {
	gs := n.clearGrads
	if n.freshW != nil {
		if n.pendingW == nil {
			n.pendingW = map[kernels.Buffer]bool{}
		}
		for _, g := range n.freshW {
			n.pendingW[g] = true
		}
	} else {
		gs = make([]kernels.Buffer, len(n.params))
		for i, p := range n.params {
			gs[i] = p.G
		}
	}
	if mt, ok := n.be.(kernels.MultiTensor); ok {
		mt.FillAll(gs, 0)
	} else {
		for _, g := range gs {
			n.be.Fill(g, 0)
		}
	}
	n.gradsZero = true
}

// Model copies the current parameters into a new float32 Model.
func (n *TrainNet) Model() *Model {
	m := &Model{Config: n.cfg, Params: map[string]*tensor.Tensor{}}
	for _, p := range n.params {
		v := make([]float32, p.P.Len())
		n.be.Download(v, p.P)
		m.Params[p.Name] = tensor.FromF32(append([]int(nil), p.Shape...), v)
	}
	return m
}

// dropout draws a keep mask with the 1/(1−p) scale folded in, or returns nil when
// dropout is off. The backend draws it from one seed taken from o.RNG, so the host
// neither generates nor uploads the elements, and a run stays a function of the RNG's
// seed whatever the backend (kernels.DropoutHash).
func (n *TrainNet) dropout(o *StepOptions, p float64, size int) kernels.Buffer {
	if !o.Train || p <= 0 {
		return nil
	}
	m := n.out(size)
	n.be.DropoutMask(m, p, o.RNG.Uint64())
	return m
}

// drop is the dropout of one forward value, applied again to its gradient in the
// backward: a stored mask, or, on a backend that applies masks without storing them
// (kernels.DropoutApplier), the seed that draws the same mask again. Either way the
// seed is the same draw from o.RNG, so both give the same bits.
type drop struct {
	mask kernels.Buffer
	ap   kernels.DropoutApplier
	p    float64
	seed uint64
}

// newDrop returns the dropout of a value of size elements, or nil when it is off.
func (n *TrainNet) newDrop(o *StepOptions, p float64, size int) *drop {
	if !o.Train || p <= 0 {
		return nil
	}
	if ap, ok := n.be.(kernels.DropoutApplier); ok {
		return &drop{ap: ap, p: p, seed: o.RNG.Uint64()}
	}
	return &drop{mask: n.dropout(o, p, size)}
}

// apply sets y = x⊙mask (y may alias x).
func (d *drop) apply(be kernels.Trainer, y, x kernels.Buffer) {
	if d.ap != nil {
		d.ap.ApplyDropout(y, x, d.p, d.seed)
		return
	}
	be.Mul(y, x, d.mask)
}

// dropRounded applies dr to x in place and returns what the next Linear should take
// as x: a 16-bit copy written in the same pass where the backend can
// (kernels.RoundedDropout with a seeded dropout and kernels.HalfBuffers), else x.
// x itself stays float32 for the elementwise backward that reads it.
func (n *TrainNet) dropRounded(dr *drop, x kernels.Buffer) kernels.Buffer {
	if rd, ok := n.be.(kernels.RoundedDropout); ok && dr.ap != nil {
		if x16 := n.half16(x.Len()); x16 != nil {
			rd.ApplyDropoutRounded(x, x16, x, dr.p, dr.seed)
			return x16
		}
	}
	dr.apply(n.be, x, x)
	return x
}

// back maps the gradient of a forward value to the gradient of its input.
type back func(dy kernels.Buffer) kernels.Buffer

// grad is the gradient flowing down a stack's backward chain (sub-layers, final
// LayerNorm, embedding): buf, or, when sum is set, the two parts the Post-LN
// sub-layer above left unadded (kernels.ResidualSum, sum.D == buf), which a
// kernels.ResidualSumNormer consumer reads as they are and any other consumer forms
// first (n.whole): ResidualBackward's pass over memory is saved wherever the next
// consumer can read the parts, and the bits are the same either way.
type grad struct {
	buf kernels.Buffer
	sum *kernels.ResidualSum
}

// chainBack is back for the stack's chain, passing grads.
type chainBack func(dy grad) grad

// whole is g as one buffer: the sum formed in place (ResidualBackward, as the
// sub-layer's backward ran it before the sum was handed on), rows of n.d.
func (n *TrainNet) whole(g grad, rows int) kernels.Buffer {
	if s := g.sum; s != nil {
		n.be.ResidualBackward(s.D, nil, s.DZ, nil, s.Omega, s.Alpha, rows, n.d)
	}
	return g.buf
}

// profiler carries Admin's running ratio of one stack (clinic-spec §1.4).
type profiler struct {
	r   float64
	out []float64
}

// varF32 is the population variance over all elements, rounded to float32 as numpy's
// float32 np.var returns it.
func varF32(v []float32) float32 {
	var s float64
	for _, x := range v {
		s += float64(x)
	}
	mean := s / float64(len(v))
	var ss float64
	for _, x := range v {
		d := float64(x) - mean
		ss += d * d
	}
	return float32(ss / float64(len(v)))
}

// out allocates a buffer that the next operation overwrites whole (a Linear output,
// an input gradient that is set rather than accumulated, ...), so a backend that can
// skip clearing it does. Buffers that are accumulated into (+=) use Alloc.
func (n *TrainNet) out(size int) kernels.Buffer {
	if u, ok := n.be.(kernels.UninitAllocator); ok {
		return u.AllocUninit(size)
	}
	return n.be.Alloc(size)
}

// out16 allocates, like out, a buffer that the next operation overwrites whole, for a
// gradient or activation that only a kept Linear reads (LinearBackwardKept's dy,
// LinearKeep's x): a backend that rounds those operands to 16 bits anyway
// (kernels.HalfBuffers) gets its 16-bit buffer, written rounded by the producer, and
// the Linear skips the cast; the same bits. Others get out's float32 buffer.
func (n *TrainNet) out16(size int) kernels.Buffer {
	if b := n.half16(size); b != nil {
		return b
	}
	return n.out(size)
}

// outHalf allocates, like out, a buffer that a GEMM overwrites whole, 16-bit where the
// backend writes 16-bit GEMM outputs (kernels.HalfOutputs) and the reader takes them.
func (n *TrainNet) outHalf(size int) kernels.Buffer {
	if ho, ok := n.be.(kernels.HalfOutputs); ok && ho.HalfOutputs() {
		if b := n.half16(size); b != nil {
			return b
		}
	}
	return n.out(size)
}

// half16 is a 16-bit buffer of size elements (kernels.HalfBuffers), or nil where the
// backend has none.
func (n *TrainNet) half16(size int) kernels.Buffer {
	if h, ok := n.be.(kernels.HalfBuffers); ok {
		return h.AllocHalf(size)
	}
	return nil
}

func (n *TrainNet) host(b kernels.Buffer) []float32 {
	v := make([]float32, b.Len())
	n.be.Download(v, b)
	return v
}

// sublayer runs one residual sub-layer (clinic-spec §1.3) on x [rows, d] and returns
// its output (a new buffer) and backward. branch computes F(input); the residual
// dropout Drop(F(input)) is applied here, its seed drawn from o.RNG right after the
// branch's own draws.
//
// x16, when not nil, is x rounded to 16 bits (kernels.HalfBuffers), for the branch's
// first Linear; the sub-layer returns its output's the same way where the backend
// writes it with the LayerNorm (kernels.RoundedResidualNormer), else nil.
func (n *TrainNet) sublayer(o *StepOptions, x, x16 kernels.Buffer, rows int, l *tlayer, i int, before bool, alpha float32, prof *profiler,
	branch func(h, h16 kernels.Buffer) (kernels.Buffer, back)) (kernels.Buffer, kernels.Buffer, chainBack) {
	be, d := n.be, n.d
	ln := l.ln[i]
	if before {
		h := n.out(rows * d)
		be.LayerNorm(h, x, ln.g.w, ln.b.w, rows, d, lnEps)
		out, bb := branch(h, nil)
		out, bb = n.withDropout(n.newDrop(o, o.Dropout, rows*d), out, bb)
		y := n.out(rows * d)
		be.Residual(y, x, out, nil, 1, rows, d)
		return y, nil, func(g grad) grad {
			dy := n.whole(g, rows)
			dh := bb(dy)
			dx := n.out(rows * d)
			be.LayerNormBackward(dx, ln.g.g, ln.b.g, dh, x, ln.g.w, rows, d, lnEps)
			be.AddTo(dx, dy)
			return grad{buf: dx}
		}
	}
	out, bb := branch(x, x16)
	dr := n.newDrop(o, o.Dropout, rows*d)
	// A backend with kernels.DropoutResidualNormer applies the dropout inside the fused
	// residual+LayerNorm from the seed, same bits, two passes over memory fewer. A
	// stored mask has no seed, and profiling reads the dropped branch output on the
	// host, so both keep the separate pass.
	rd, fuseDrop := be.(kernels.DropoutResidualNormer)
	fuseDrop = fuseDrop && dr != nil && dr.ap != nil && prof == nil
	if !fuseDrop {
		out, bb = n.withDropout(dr, out, bb)
	}
	var omega, domega kernels.Buffer
	if om := l.omega[i]; om != nil {
		omega, domega = om.w, om.g
	}
	if prof != nil && omega != nil {
		// Write the running ratio, fill ω with it, then advance the ratio from the
		// variances of the scaled residual and of the branch output.
		r := float32(prof.r)
		prof.out = append(prof.out, float64(r))
		be.Fill(omega, r)
		xs := n.host(x)
		for j := range xs {
			xs[j] *= r
		}
		prof.r = float64(float32(math.Sqrt(float64(varF32(xs) + varF32(n.host(out))))))
	}
	// A kernels.ResidualRecomputer backward forms z again from x and the branch
	// output (the same bits), so the dropout forward need not write it.
	rc, recompute := be.(kernels.ResidualRecomputer)
	recompute = recompute && fuseDrop && rc.RecomputesResidual(d)
	var z kernels.Buffer
	if !recompute {
		z = n.out(rows * d)
	}
	y := n.out(rows * d)
	// A backend with the fused residual+LayerNorm gets the same bits in fewer
	// launches; its backward adds dω before the branch's backward instead of after,
	// which nothing else reads in between.
	rn, fused := be.(kernels.ResidualNormer)
	var y16 kernels.Buffer
	rr, rounds := be.(kernels.RoundedResidualNormer)
	if fuseDrop && rounds {
		y16 = n.half16(rows * d)
	}
	// rs reads its dy as a kernels.ResidualSum, and this backward hands its input
	// gradient on as one, unformed, where dω is already done (the fused paths).
	rs, sums := be.(kernels.ResidualSumNormer)
	// A kernels.KeptMaskNormer forward may store the dropout mask's keep bits, for the
	// Sum backward to read instead of drawing the mask again (the same bits).
	km, keeps := be.(kernels.KeptMaskNormer)
	var kept kernels.Buffer
	keepWords := 0
	if keeps && fuseDrop && y16 != nil && sums && dr.p > 0 {
		keepWords = km.KeptMaskWords(rows, d)
	}
	switch {
	case keepWords > 0:
		kb := n.out(keepWords)
		if km.ResidualLayerNormDropoutRoundedKept(z, y, y16, kb, x, out, omega, alpha, ln.g.w, ln.b.w, rows, d, lnEps, dr.p, dr.seed) {
			kept = kb
		}
	case fuseDrop && y16 != nil:
		rr.ResidualLayerNormDropoutRounded(z, y, y16, x, out, omega, alpha, ln.g.w, ln.b.w, rows, d, lnEps, dr.p, dr.seed)
	case fuseDrop:
		rd.ResidualLayerNormDropout(z, y, x, out, omega, alpha, ln.g.w, ln.b.w, rows, d, lnEps, dr.p, dr.seed)
	case fused:
		rn.ResidualLayerNorm(z, y, x, out, omega, alpha, ln.g.w, ln.b.w, rows, d, lnEps)
	default:
		be.Residual(z, x, out, omega, alpha, rows, d)
		be.LayerNorm(y, z, ln.g.w, ln.b.w, rows, d, lnEps)
	}
	return y, y16, func(g grad) grad {
		dz, dom := n.out(rows*d), domega
		dbranch := dz
		sum := kernels.ResidualSum{D: g.buf}
		if g.sum != nil {
			sum = *g.sum
		}
		switch {
		case fuseDrop:
			// Only the branch's last Linear reads it (its dy): 16-bit where the
			// backend multiplies 16-bit operands.
			dbranch = n.out16(rows * d)
			switch {
			case recompute && kept != nil:
				km.ResidualLayerNormBackwardRecomputeKept(dz, dbranch, ln.g.g, ln.b.g, domega, sum, x, out, omega, alpha, ln.g.w, kept, rows, d, lnEps, dr.p, dr.seed)
			case recompute:
				rc.ResidualLayerNormBackwardRecompute(dz, dbranch, ln.g.g, ln.b.g, domega, sum, x, out, omega, alpha, ln.g.w, rows, d, lnEps, dr.p, dr.seed)
			case kept != nil:
				km.ResidualLayerNormBackwardSumKept(dz, dbranch, ln.g.g, ln.b.g, domega, sum, z, x, ln.g.w, kept, alpha, rows, d, lnEps, dr.p, dr.seed)
			case sums:
				rs.ResidualLayerNormBackwardSum(dz, dbranch, ln.g.g, ln.b.g, domega, sum, z, x, ln.g.w, alpha, rows, d, lnEps, dr.p, dr.seed)
			default:
				rd.ResidualLayerNormBackwardDropout(dz, dbranch, ln.g.g, ln.b.g, domega, n.whole(g, rows), z, x, ln.g.w, alpha, rows, d, lnEps, dr.p, dr.seed)
			}
			dom = nil // done above
		case fused && sums:
			// dbranch nil: ResidualLayerNormBackward of the sum.
			rs.ResidualLayerNormBackwardSum(dz, nil, ln.g.g, ln.b.g, domega, sum, z, x, ln.g.w, alpha, rows, d, lnEps, 0, 0)
			dom = nil
		case fused:
			rn.ResidualLayerNormBackward(dz, ln.g.g, ln.b.g, domega, n.whole(g, rows), z, x, ln.g.w, alpha, rows, d, lnEps)
			dom = nil
		default:
			be.LayerNormBackward(dz, ln.g.g, ln.b.g, n.whole(g, rows), z, ln.g.w, rows, d, lnEps)
		}
		dx := bb(dbranch)
		if sums && dom == nil {
			// The next consumer forms dx + (dz·ω)·α, or reads it as two parts.
			return grad{buf: dx, sum: &kernels.ResidualSum{D: dx, DZ: dz, Omega: omega, Alpha: alpha}}
		}
		be.ResidualBackward(dx, dom, dz, x, omega, alpha, rows, d)
		return grad{buf: dx}
	}
}

// layerNorm is a stack's final LayerNorm (Pre-LN) of x [rows, d] and its backward.
func (n *TrainNet) layerNorm(ln *tnorm, x kernels.Buffer, rows int) (kernels.Buffer, chainBack) {
	be, d := n.be, n.d
	y := n.out(rows * d)
	be.LayerNorm(y, x, ln.g.w, ln.b.w, rows, d, lnEps)
	return y, func(g grad) grad {
		dx := n.out(rows * d)
		be.LayerNormBackward(dx, ln.g.g, ln.b.g, n.whole(g, rows), x, ln.g.w, rows, d, lnEps)
		return grad{buf: dx}
	}
}

// withDropout applies the residual dropout dr (nil: off) to a branch output.
func (n *TrainNet) withDropout(dr *drop, out kernels.Buffer, bb back) (kernels.Buffer, back) {
	if dr == nil {
		return out, bb
	}
	be := n.be
	dr.apply(be, out, out)
	return out, func(dy kernels.Buffer) kernels.Buffer {
		g := n.out(dy.Len())
		dr.apply(be, g, dy)
		return bb(g)
	}
}

func (n *TrainNet) headScale(heads int) float32 {
	return float32(math.Pow(float64(n.d/heads), -0.5))
}

// attention runs training attention into out and returns its backward, which
// accumulates into dq, dk, dv from dout. A backend with kernels.FlashAttention that
// takes the call keeps one float per query row (lse) instead of the [B, H, TQ, TK]
// probabilities and draws the dropout mask again from its seed in the backward; other
// backends, and calls it declines, store the probabilities and the mask. The seed is
// the one o.RNG draw n.dropout makes, at the same point of the step, so both paths
// drop the same elements and a run's later draws do not move.
//
// half16 is n.attention16(args): the stored path then, whose output and gradients may
// be 16-bit.
func (n *TrainNet) attention(args kernels.AttentionArgs, out, q, k, v kernels.View, half16 bool, p float64, seed uint64) func(dq, dk, dv, dout kernels.View) {
	be := n.be
	if fa, ok := be.(kernels.FlashAttention); ok && !half16 {
		lse := n.out(args.Batch * args.Heads * args.TQ)
		if fa.AttentionForwardLSE(out, q, k, v, args, lse, p, seed) {
			return func(dq, dk, dv, dout kernels.View) {
				if !fa.AttentionBackwardLSE(dq, dk, dv, dout, q, k, v, out, args, lse, p, seed) {
					panic("model: flash attention backward declined a call its forward took")
				}
			}
		}
	}
	// Every forward kernel writes all of probs (masked entries as 0): no clearing.
	probs := n.out(args.Batch * args.Heads * args.TQ * args.TK)
	// A backend that draws the mask inside the attention kernels (same bits as the
	// stored mask below) saves the mask's launch, its write and both directions' reads.
	if sa, ok := be.(kernels.SeededAttention); ok && sa.AttentionForwardSeeded(out, q, k, v, args, probs, p, seed) {
		return func(dq, dk, dv, dout kernels.View) {
			if !sa.AttentionBackwardSeeded(dq, dk, dv, dout, q, k, v, args, probs, p, seed) {
				panic("model: seeded attention backward declined a call its forward took")
			}
		}
	}
	var mask kernels.Buffer
	if p > 0 {
		mask = n.out(probs.Len())
		be.DropoutMask(mask, p, seed)
	}
	be.AttentionForward(out, q, k, v, args, probs, mask)
	return func(dq, dk, dv, dout kernels.View) {
		be.AttentionBackward(dq, dk, dv, dout, q, k, v, args, probs, mask)
	}
}

// attnDropout is a training attention's dropout: its probability and the seed of its
// mask, the one o.RNG draw each attention call makes (none without dropout), drawn
// before the call whichever path then runs it.
func (n *TrainNet) attnDropout(o *StepOptions) (float64, uint64) {
	if o.Train && o.AttentionDropout > 0 {
		return o.AttentionDropout, o.RNG.Uint64()
	}
	return 0, 0
}

// attentionPacked runs training attention of args on packed rows (kernels.PackedAttention)
// where the step is packed, its sides have spans and the backend takes the call: q, k, v
// are views of packed 16-bit tensors (queries on side qs, keys on ks). It returns the
// packed 16-bit context and the backward, which writes dq, dk, dv (packed 16-bit views)
// from the context gradient dctx (16-bit where dctx16, else float32, rounded to 16 bits
// first: the out projection's backward writes it 16-bit only where it kept its
// operands); nil, nothing done, where the caller must expand (PackRows) instead.
func (n *TrainNet) attentionPacked(args kernels.AttentionArgs, q, k, v kernels.View, pk *stepPack, qs, ks *packSide, p float64, seed uint64) (kernels.Buffer, func(dq, dk, dv kernels.View, dctx kernels.Buffer, dctx16 bool)) {
	if _, ok := n.be.(kernels.HalfRounder); !ok || pk == nil || pk.pa == nil || qs.spans == nil || ks.spans == nil {
		return nil, nil
	}
	d := args.Heads * args.HeadDim
	ctx := n.half16(qs.rows * d)
	if ctx == nil {
		return nil, nil
	}
	probs := n.out(args.Batch * args.Heads * args.TQ * args.TK)
	ctxv := kernels.View{Buf: ctx, RowStride: d}
	if !pk.pa.AttentionForwardPacked(ctxv, q, k, v, args, qs.spans, ks.spans, probs, p, seed) {
		return nil, nil
	}
	return ctx, func(dq, dk, dv kernels.View, dctx kernels.Buffer, dctx16 bool) {
		if !dctx16 {
			d16 := n.half16(dctx.Len())
			n.be.(kernels.HalfRounder).RoundAll([]kernels.Buffer{d16}, []kernels.Buffer{dctx})
			dctx = d16
		}
		if !pk.pa.AttentionBackwardPacked(dq, dk, dv, kernels.View{Buf: dctx, RowStride: d}, q, k, v, args, qs.spans, ks.spans, probs, p, seed) {
			panic("model: packed attention backward declined a call its forward took")
		}
	}
}

// attention16 says whether training attention of args writes its output and its
// gradients 16-bit (kernels.HalfAttention): they are then allocated with out16 and
// the gradients need no clearing (they are written, not accumulated).
func (n *TrainNet) attention16(args kernels.AttentionArgs) bool {
	h, ok := n.be.(kernels.HalfAttention)
	return ok && h.Attention16(args)
}

// attentionIn16 says whether training attention of args reads 16-bit q, k, v and dout
// (kernels.HalfAttentionInputs) that the backend's GEMMs write (kernels.HalfOutputs):
// the projections then write them rounded, as torch.autocast's Linears do. Only asked
// where attention16(args) holds (the attention writes 16-bit outputs too).
func (n *TrainNet) attentionIn16(args kernels.AttentionArgs) bool {
	if ho, ok := n.be.(kernels.HalfOutputs); !ok || !ho.HalfOutputs() {
		return false
	}
	hi, ok := n.be.(kernels.HalfAttentionInputs)
	return ok && hi.AttentionInputs16(args)
}

// attnBias is an attention projection's bias: its 16-bit copy b16 where the projection
// writes 16-bit attention inputs (in16: attnIn's buffer is then 16-bit) and the net keeps
// one (kernels.HalfBiases), else the float32 b.
func (n *TrainNet) attnBias(in16 bool, b16, b kernels.Buffer) kernels.Buffer {
	if in16 && b16 != nil {
		return b16
	}
	return b
}

// attnIn allocates a GEMM output that only the attention reads (q, k, v, or the context
// gradient as its dout): 16-bit when in16 (outHalf), else out's float32 buffer.
func (n *TrainNet) attnIn(size int, in16 bool) kernels.Buffer {
	if in16 {
		return n.outHalf(size)
	}
	return n.out(size)
}

// attnOutAlloc allocates attention outputs and gradients that are written whole:
// 16-bit where half16 (out16), else float32 (out).
func (n *TrainNet) attnOutAlloc(half16 bool) func(int) kernels.Buffer {
	if half16 {
		return n.out16
	}
	return n.out
}

// attnGrad allocates an attention gradient buffer: 16-bit and written whole when
// half16, else float32 zeros that the backward accumulates into.
func (n *TrainNet) attnGrad(size int, half16 bool) kernels.Buffer {
	if half16 {
		return n.out16(size)
	}
	return n.be.Alloc(size)
}

// linear is Linear(y, x, w, bias, m, nOut, k) for the training step; it returns the
// backward, (dx, dw, db, dy) ↦ LinearBackward(dx, dw, db, dy, x, w, m, nOut, k). A
// backend that rounds GEMM operands (kernels.LinearKeeper) keeps the rounded x and w
// for it, so the backward rounds only dy; same bits either way. w16, when not nil, is
// w's 16-bit copy (halfWeights), which LinearKeep then takes instead of rounding w.
func (n *TrainNet) linear(y, x, w, w16, bias kernels.Buffer, m, nOut, k int) func(dx, dw, db, dy kernels.Buffer) {
	back, _ := n.linearKept(y, x, w, w16, bias, m, nOut, k)
	return back
}

// linearKept is linear that also says whether the backend kept the rounded operands,
// that is whether the backward may take a 16-bit dy from out16.
func (n *TrainNet) linearKept(y, x, w, w16, bias kernels.Buffer, m, nOut, k int) (func(dx, dw, db, dy kernels.Buffer), bool) {
	back, kept := n.linearKeptBuf(y, x, w, w16, bias, m, nOut, k)
	return back, kept != nil
}

// linearKeptBuf is linearKept that returns what the backend kept (nil: nothing), for
// a backward other than the returned one (kernels.InputGradAccumulator).
func (n *TrainNet) linearKeptBuf(y, x, w, w16, bias kernels.Buffer, m, nOut, k int) (func(dx, dw, db, dy kernels.Buffer), kernels.Buffer) {
	be := n.be
	if lk, ok := be.(kernels.LinearKeeper); ok {
		if kept := lk.LinearKeep(y, x, either(w16, w), bias, m, nOut, k); kept != nil {
			return func(dx, dw, db, dy kernels.Buffer) { n.backKept(lk, dx, dw, db, dy, kept, m, nOut, k) }, kept
		}
	} else {
		be.Linear(y, x, w, bias, m, nOut, k)
	}
	return func(dx, dw, db, dy kernels.Buffer) {
		n.prepW(dw)
		be.LinearBackward(dx, dw, db, dy, x, w, m, nOut, k)
	}, nil
}

// either is a when it is not nil, else b.
func either(a, b kernels.Buffer) kernels.Buffer {
	if a != nil {
		return a
	}
	return b
}

// backKept is lk.LinearBackwardKept, or LinearBackwardKeptFresh when the step's bias
// gradients are still the zeros ZeroGrad wrote (n.biasFresh), or
// LinearBackwardKeptFreshW when dw is one ZeroGrad left to be written (n.pendingW).
func (n *TrainNet) backKept(lk kernels.LinearKeeper, dx, dw, db, dy, kept kernels.Buffer, m, nOut, k int) {
	fb, fresh := n.be.(kernels.FreshBiasGrad)
	fresh = fresh && db != nil && n.biasFresh
	if n.pendingW[dw] {
		delete(n.pendingW, dw)
		n.be.(kernels.FreshWeightGrad).LinearBackwardKeptFreshW(dx, dw, db, dy, kept, m, nOut, k, fresh)
		return
	}
	if fresh {
		fb.LinearBackwardKeptFresh(dx, dw, db, dy, kept, m, nOut, k)
		return
	}
	lk.LinearBackwardKept(dx, dw, db, dy, kept, m, nOut, k)
}

// prepW clears dw first where ZeroGrad left it to be written (n.pendingW), for the
// backward calls that add to a weight gradient rather than going through backKept.
func (n *TrainNet) prepW(dw kernels.Buffer) {
	if n.pendingW[dw] {
		delete(n.pendingW, dw)
		n.be.Fill(dw, 0)
	}
}

// settleGrads clears the weight gradients ZeroGrad left to be written that no backward
// wrote (none in a full step), so that every gradient reads as ZeroGrad's contract
// says: at the end of a backward, and before the gradients are handed out.
func (n *TrainNet) settleGrads() {
	if len(n.pendingW) == 0 {
		return
	}
	for _, g := range n.freshW {
		if n.pendingW[g] {
			n.be.Fill(g, 0)
		}
	}
	clear(n.pendingW)
}

// selfAttn is the self-attention branch over B sequences of T rows.
// h16 (may be nil) is h rounded to 16 bits, which the first Linear then takes.
//
// With 16-bit attention inputs (n.attentionIn16) the qkv projection writes qkv 16-bit and
// the out projection's backward writes the context gradient 16-bit, as torch.autocast's
// Linears return them; the attention reads them as they are.
func (n *TrainNet) selfAttn(o *StepOptions, a *tattn, h, h16 kernels.Buffer, B, T int, pad []bool, causal bool, pk *stepPack, side *packSide) (kernels.Buffer, back) {
	d, slots := n.d, B*T
	rows := pk.rowsOf(side, slots)
	args := kernels.AttentionArgs{Batch: B, Heads: a.heads, HeadDim: d / a.heads, TQ: T, TK: T, Scale: n.headScale(a.heads),
		KeyPadding: pad, KeyPadStride: T, Causal: causal}
	half16 := n.attention16(args)
	in16 := half16 && n.attentionIn16(args)
	qkv := n.attnIn(rows*3*d, in16)
	qkvBack := n.linear(qkv, either(h16, h), a.qkv.w.w, a.qkv.w16, n.attnBias(in16, a.qkv.b16, a.qkv.b.w), rows, 3*d, d)
	view := func(b kernels.Buffer, off int) kernels.View {
		return kernels.View{Buf: b, Off: off, BatchStride: T * 3 * d, RowStride: 3 * d}
	}
	p, seed := n.attnDropout(o)
	// Packed rows: the attention reads and writes them itself where it can (pv: a view
	// of the packed qkv or its gradient), else they are expanded around it.
	pv := func(b kernels.Buffer, off int) kernels.View { return kernels.View{Buf: b, Off: off, RowStride: 3 * d} }
	var ctx kernels.Buffer
	var packedBack func(dq, dk, dv kernels.View, dctx kernels.Buffer, dctx16 bool)
	if in16 && half16 {
		ctx, packedBack = n.attentionPacked(args, pv(qkv, 0), pv(qkv, d), pv(qkv, 2*d), pk, side, side, p, seed)
	}
	var attnBack func(dq, dk, dv, dout kernels.View)
	if packedBack == nil {
		inAlloc := func(size int) kernels.Buffer { return n.attnIn(size, in16) }
		qkvA := pk.expand(side, qkv, 3*d, inAlloc)
		ctxAlloc := n.attnOutAlloc(half16)
		ctxv := ctxAlloc(slots * d)
		cv := kernels.View{Buf: ctxv, BatchStride: T * d, RowStride: d}
		attnBack = n.attention(args, cv, view(qkvA, 0), view(qkvA, d), view(qkvA, 2*d), half16, p, seed)
		ctx = pk.pack(side, ctxv, d, ctxAlloc)
	}
	out := n.out(rows * d)
	oBack, oKept := n.linearKept(out, ctx, a.o.w.w, a.o.w16, a.o.b.w, rows, d, d)
	return out, func(dout kernels.Buffer) kernels.Buffer {
		dctxAlloc := func(size int) kernels.Buffer { return n.attnIn(size, in16 && oKept) }
		dctx := dctxAlloc(rows * d)
		oBack(dctx, a.o.w.g, a.o.b.g, dout)
		if packedBack != nil {
			dqkv := n.out16(rows * 3 * d)
			packedBack(pv(dqkv, 0), pv(dqkv, d), pv(dqkv, 2*d), dctx, oKept)
			dh := n.out(rows * d)
			qkvBack(dh, a.qkv.w.g, a.qkv.b.g, dqkv)
			return dh
		}
		dctxA := pk.expand(side, dctx, d, dctxAlloc)
		dqkvA := n.attnGrad(slots*3*d, half16)
		attnBack(view(dqkvA, 0), view(dqkvA, d), view(dqkvA, 2*d), kernels.View{Buf: dctxA, BatchStride: T * d, RowStride: d})
		dqkv := pk.pack(side, dqkvA, 3*d, n.attnOutAlloc(half16))
		dh := n.out(rows * d)
		qkvBack(dh, a.qkv.w.g, a.qkv.b.g, dqkv)
		return dh
	}
}

// crossArgs is the attention of a decoder layer's cross-attention over B·T queries and
// B·S encoder rows.
func (n *TrainNet) crossArgs(heads, B, T, S int, encPad []bool) kernels.AttentionArgs {
	d := n.d
	return kernels.AttentionArgs{Batch: B, Heads: heads, HeadDim: d / heads, TQ: T, TK: S, Scale: n.headScale(heads),
		KeyPadding: encPad, KeyPadStride: S}
}

// crossKV is every decoder layer's cross-attention keys and values from one product
// (TrainNet.kvBatch): kv [rows, width] with layer l's k at column 2d·l and its v at 2d·l +
// d, one row per encoder row the step computes (B·S, or the packed ones); back is the
// product's backward, dEnc = dkv·crossKV.w, one product over width = L·2d. The layers'
// attention reads kv itself where it runs on packed rows (kernels.PackedAttention) or
// the step is not packed, else kv expanded into the padded layout (padded); their
// gradients go to the same layouts (packedGrad, paddedGrad), and grad gives back its
// rows. Every decoder layer has the same shapes, so all take the same path.
type crossKV struct {
	kv, kvA, dkvA, dkvP kernels.Buffer
	width, rows, slots  int
	half16, in16        bool
	back                func(dx, dw, db, dy kernels.Buffer)
}

// padded is kv in the padded [B·S, width] layout attention reads (expanded once).
func (c *crossKV) padded(n *TrainNet, pk *stepPack) kernels.Buffer {
	if c.kvA == nil {
		c.kvA = pk.expand(pk.srcSide(), c.kv, c.width, func(size int) kernels.Buffer { return n.attnIn(size, c.in16) })
	}
	return c.kvA
}

// paddedGrad is the gradient in the padded layout, which the layers' attention
// backwards write (16-bit) or accumulate into (float32 zeros).
func (c *crossKV) paddedGrad(n *TrainNet) kernels.Buffer {
	if c.dkvA == nil {
		c.dkvA = n.attnGrad(c.slots*c.width, c.half16)
	}
	return c.dkvA
}

// packedGrad is the gradient on kv's rows (16-bit), which packed attention backwards
// write.
func (c *crossKV) packedGrad(n *TrainNet) kernels.Buffer {
	if c.dkvP == nil {
		c.dkvP = n.out16(c.rows * c.width)
	}
	return c.dkvP
}

// grad is the keys' and values' gradient on kv's rows, for back.
func (c *crossKV) grad(n *TrainNet, pk *stepPack) kernels.Buffer {
	switch {
	case c.dkvP != nil && c.dkvA != nil:
		panic("model: cross-attention layers took both the packed and the expanded attention")
	case c.dkvP != nil:
		return c.dkvP
	}
	return pk.pack(pk.srcSide(), c.paddedGrad(n), c.width, n.attnOutAlloc(c.half16))
}

// crossKVForward computes crossKV's kv from the encoder output enc (enc16 its 16-bit copy
// or nil) for B sentences of S rows, whose decoder has T. The buffers take the formats a
// layer's own would (16-bit inputs and gradients where the attention of those shapes
// takes them): every decoder layer has the same heads and shapes, so crossAttn decides
// the same.
func (n *TrainNet) crossKVForward(enc, enc16 kernels.Buffer, B, T, S int, encPad []bool, pk *stepPack) *crossKV {
	d, L := n.d, len(n.dec)
	args := n.crossArgs(n.dec[0].cross.heads, B, T, S, encPad)
	half16 := n.attention16(args)
	in16 := half16 && n.attentionIn16(args)
	c := &crossKV{width: 2 * d * L, rows: pk.rowsOf(pk.srcSide(), B*S), slots: B * S, half16: half16, in16: in16}
	c.kv = n.attnIn(c.rows*c.width, in16)
	c.back = n.linear(c.kv, either(enc16, enc), n.crossKV.w.w, n.crossKV16, n.attnBias(in16, n.crossKVb16, n.crossKV.b.w), c.rows, c.width, d)
	return c
}

// crossAttn is the encoder-attention branch; its backward also accumulates the
// gradient of the encoder output into dEnc.
//
// dEnc is written by the first cross-attention backward to run (*dEncSet false; it
// sets it) and accumulated into by the others, so it needs no clearing.
//
// h16 and enc16 (may be nil) are h and enc rounded to 16 bits, for the Linears.
//
// With 16-bit attention inputs (n.attentionIn16) q, the fused k/v and the context
// gradient are written 16-bit, as in selfAttn; the encoder output's gradient (kv's
// backward into dEnc) stays float32. On packed rows (pk) the attention reads q and kv
// as they are where the backend runs it on packed rows, else they are expanded.
func (n *TrainNet) crossAttn(o *StepOptions, a *tattn, h, h16 kernels.Buffer, B, T int, enc, enc16 kernels.Buffer, S int, encPad []bool, dEnc kernels.Buffer, dEncSet *bool, kvs *crossKV, li int, pk *stepPack) (kernels.Buffer, back) {
	be, d := n.be, n.d
	tgt, src := pk.tgtSide(), pk.srcSide()
	rows, encRows := pk.rowsOf(tgt, B*T), pk.rowsOf(src, B*S)
	args := n.crossArgs(a.heads, B, T, S, encPad)
	half16 := n.attention16(args)
	in16 := half16 && n.attentionIn16(args)
	inAlloc := func(size int) kernels.Buffer { return n.attnIn(size, in16) }
	q := n.attnIn(rows*d, in16)
	qBack := n.linear(q, either(h16, h), a.q.w.w, a.q16, n.attnBias(in16, a.qb16, a.q.b.w), rows, d, d)
	// This layer's keys and values: its own product, or its columns of the product of
	// every layer's (kvs): rows of width w, this layer's 2d at column c0.
	var kv kernels.Buffer
	var kvBack func(dx, dw, db, dy kernels.Buffer)
	var kvKept kernels.Buffer
	w, c0 := 2*d, 0
	if kvs != nil {
		kv, w, c0 = kvs.kv, kvs.width, 2*d*li
	} else {
		kv = n.attnIn(encRows*2*d, in16)
		kvBack, kvKept = n.linearKeptBuf(kv, either(enc16, enc), a.kv.w.w, a.kv16, n.attnBias(in16, a.kvb16, a.kv.b.w), encRows, 2*d, d)
	}
	p, seed := n.attnDropout(o)
	pq := func(b kernels.Buffer) kernels.View { return kernels.View{Buf: b, RowStride: d} }
	pkv := func(b kernels.Buffer, off int) kernels.View { return kernels.View{Buf: b, Off: c0 + off, RowStride: w} }
	var ctx kernels.Buffer
	var packedBack func(dq, dk, dv kernels.View, dctx kernels.Buffer, dctx16 bool)
	if in16 && half16 {
		ctx, packedBack = n.attentionPacked(args, pq(q), pkv(kv, 0), pkv(kv, d), pk, tgt, src, p, seed)
	}
	qv := func(b kernels.Buffer) kernels.View { return kernels.View{Buf: b, BatchStride: T * d, RowStride: d} }
	kvv := func(b kernels.Buffer, off int) kernels.View {
		return kernels.View{Buf: b, Off: c0 + off, BatchStride: S * w, RowStride: w}
	}
	ctxAlloc := n.attnOutAlloc(half16)
	var attnBack func(dq, dk, dv, dout kernels.View)
	if packedBack == nil {
		qA := pk.expand(tgt, q, d, inAlloc)
		var kvA kernels.Buffer
		if kvs != nil {
			kvA = kvs.padded(n, pk)
		} else {
			kvA = pk.expand(src, kv, 2*d, inAlloc)
		}
		ctxv := ctxAlloc(B * T * d)
		attnBack = n.attention(args, qv(ctxv), qv(qA), kvv(kvA, 0), kvv(kvA, d), half16, p, seed)
		ctx = pk.pack(tgt, ctxv, d, ctxAlloc)
	}
	out := n.out(rows * d)
	oBack, oKept := n.linearKept(out, ctx, a.o.w.w, a.o.w16, a.o.b.w, rows, d, d)
	return out, func(dout kernels.Buffer) kernels.Buffer {
		dctxAlloc := func(size int) kernels.Buffer { return n.attnIn(size, in16 && oKept) }
		dctx := dctxAlloc(rows * d)
		oBack(dctx, a.o.w.g, a.o.b.g, dout)
		var dq, dkv kernels.Buffer
		if packedBack != nil {
			dq = n.out16(rows * d)
			if kvs != nil {
				dkv = kvs.packedGrad(n) // crossKVForward's backward takes it after the last layer's
			} else {
				dkv = n.out16(encRows * 2 * d)
			}
			packedBack(pq(dq), pkv(dkv, 0), pkv(dkv, d), dctx, oKept)
		} else {
			dctxA := pk.expand(tgt, dctx, d, dctxAlloc)
			dqA := n.attnGrad(B*T*d, half16)
			var dkvA kernels.Buffer
			if kvs != nil {
				dkvA = kvs.paddedGrad(n) // crossKVForward's backward takes it after the last layer's
			} else {
				dkvA = n.attnGrad(B*S*2*d, half16)
			}
			attnBack(qv(dqA), kvv(dkvA, 0), kvv(dkvA, d), qv(dctxA))
			dq = pk.pack(tgt, dqA, d, ctxAlloc)
			if kvs == nil {
				dkv = pk.pack(src, dkvA, 2*d, ctxAlloc)
			}
		}
		dh := n.out(rows * d)
		qBack(dh, a.q.w.g, a.q.b.g, dq)
		switch acc, ok := be.(kernels.InputGradAccumulator); {
		case kvs != nil:
		case !*dEncSet:
			kvBack(dEnc, a.kv.w.g, a.kv.b.g, dkv)
			*dEncSet = true
		case ok && kvKept != nil:
			// The product adds onto dEnc: no buffer and AddTo per decoder layer.
			n.prepW(a.kv.w.g)
			acc.LinearBackwardKeptAccum(dEnc, a.kv.w.g, a.kv.b.g, dkv, kvKept, encRows, 2*d, d)
		default:
			de := n.out(encRows * d)
			kvBack(de, a.kv.w.g, a.kv.b.g, dkv)
			be.AddTo(dEnc, de)
		}
		return dh
	}
}

// ffn is the feed-forward branch fc2(Drop_act(act(fc1 h))).
//
// h16 (may be nil) is h rounded to 16 bits: the first Linear takes it where it keeps
// its operands (LinearActKeep, LinearKeep).
func (n *TrainNet) ffn(o *StepOptions, l *tlayer, h, h16 kernels.Buffer, rows int) (kernels.Buffer, back) {
	be, d, F := n.be, n.d, l.ffn
	a := n.out(rows * F)
	// Drawn first: nothing else in this branch draws from o.RNG, so the seeds keep
	// their order.
	dr := n.newDrop(o, o.ActivationDropout, rows*F)
	if out, bk, ok := n.ffn16(l, h, h16, rows, dr); ok {
		return out, bk
	}
	// After ReLU the dropped activation a is positive exactly where the gradient passes
	// (pre > 0 and the element kept), so with kernels.ReLUDropoutBackwarder the backward
	// needs neither pre nor the mask, and the activation dropout no longer keeps the
	// forward from the fused ReLU epilogue.
	var rd kernels.ReLUDropoutBackwarder
	if dr != nil && n.act == kernels.ReLU {
		rd, _ = be.(kernels.ReLUDropoutBackwarder)
	}
	// LinearActBackward has no place for the activation dropout (it sits between act
	// and fc2), so with that dropout on the fused path needs rd for its backward.
	if la, ok := be.(kernels.LinearActivator); ok && (dr == nil || rd != nil) {
		var aux, kept kernels.Buffer
		lak, keeps := be.(kernels.LinearActKeeper)
		lk, _ := be.(kernels.LinearKeeper)
		// With rd the first Linear's backward is LinearBackward (LinearActBackward has
		// no place for the dropout): a backend that keeps the 16-bit operands of the
		// forward lets it round only dpre, or nothing when dpre comes 16-bit.
		if keeps && lk != nil && rd != nil {
			aux, kept, ok = lak.LinearActKeep(a, either(h16, h), either(l.fc1.w16, l.fc1.w.w), l.fc1.b.w, rows, F, d, n.act)
		} else {
			aux, ok = la.LinearAct(a, h, l.fc1.w.w, l.fc1.b.w, rows, F, d, n.act)
		}
		if ok {
			fc2x := a
			if dr != nil {
				fc2x = n.dropRounded(dr, a)
			}
			out := n.out(rows * d)
			fc2Back := func(dx, dw, db, dy kernels.Buffer) {
				n.prepW(dw)
				be.LinearBackward(dx, dw, db, dy, a, l.fc2.w.w, rows, d, F)
			}
			if rd != nil {
				// LinearActBackward (the other path) does fc2's backward itself.
				fc2Back = n.linear(out, fc2x, l.fc2.w.w, l.fc2.w16, l.fc2.b.w, rows, d, F)
			} else {
				be.Linear(out, a, l.fc2.w.w, l.fc2.b.w, rows, d, F)
			}
			return out, func(dout kernels.Buffer) kernels.Buffer {
				dpre := n.out(rows * F)
				if rd != nil {
					fc2Back(dpre, l.fc2.w.g, l.fc2.b.g, dout)
					dh := n.out(rows * d)
					if kept != nil {
						g := n.out16(rows * F)
						rd.ReLUDropoutBackward(g, dpre, a, o.ActivationDropout)
						n.backKept(lk, dh, l.fc1.w.g, l.fc1.b.g, g, kept, rows, F, d)
						return dh
					}
					rd.ReLUDropoutBackward(dpre, dpre, a, o.ActivationDropout)
					n.prepW(l.fc1.w.g)
					be.LinearBackward(dh, l.fc1.w.g, l.fc1.b.g, dpre, h, l.fc1.w.w, rows, F, d)
					return dh
				}
				n.prepW(l.fc2.w.g)
				la.LinearActBackward(dpre, l.fc2.w.g, l.fc2.b.g, l.fc1.b.g, dout, a, l.fc2.w.w, aux, rows, d, F, n.act)
				dh := n.out(rows * d)
				n.prepW(l.fc1.w.g)
				be.LinearBackward(dh, l.fc1.w.g, nil, dpre, h, l.fc1.w.w, rows, F, d)
				return dh
			}
		}
	}
	// With rd the pre-activation is not kept: ReLU runs in place on fc1's output.
	pre := a
	if rd == nil {
		pre = n.out(rows * F)
	}
	fc1Back, fc1Kept := n.linearKept(pre, either(h16, h), l.fc1.w.w, l.fc1.w16, l.fc1.b.w, rows, F, d)
	be.Activate(a, pre, n.act)
	fc2x := a
	if dr != nil {
		fc2x = n.dropRounded(dr, a)
	}
	out := n.out(rows * d)
	fc2Back := n.linear(out, fc2x, l.fc2.w.w, l.fc2.w16, l.fc2.b.w, rows, d, F)
	return out, func(dout kernels.Buffer) kernels.Buffer {
		da := n.out(rows * F)
		fc2Back(da, l.fc2.w.g, l.fc2.b.g, dout)
		if rd != nil {
			g := da
			if fc1Kept {
				g = n.out16(rows * F)
			}
			rd.ReLUDropoutBackward(g, da, a, o.ActivationDropout)
			da = g
		} else {
			if dr != nil {
				dr.apply(be, da, da)
			}
			be.ActivateBackward(da, da, pre, n.act)
		}
		dh := n.out(rows * d)
		fc1Back(dh, l.fc1.w.g, l.fc1.b.g, da)
		return dh
	}
}

// ffn16 is the ReLU feed-forward branch with its activation and gradients in 16 bits,
// as torch.autocast runs it (kernels.HalfOutputs): fc1 writes a = RN16(ReLU(h·w1ᵀ + b1))
// from its GEMM epilogue, the activation dropout dr (nil: none) rounds in place, fc2
// multiplies a as it is; in the backward fc2's dx writes RN16(dy·w2) and one pass
// applies the dropout and ReLU backward to it in place (a > 0 is the mask), which fc1's
// backward takes uncast; on a kernels.ReLUDropoutFolder backend that records a mask of
// a > 0 with the dropout (opt-in on CUDA) fc2's dx product applies them itself (one
// rounding instead of two). Against the float32 path, a and fc2's input gradient are
// rounded where they were exact (a then rounded twice with dropout, as PyTorch's bf16
// dropout does): the results change, within the GEMMs' own 16-bit rounding. ok is false,
// nothing done, where the backend lacks a piece (or dr is a stored mask): the caller
// takes the float32 path.
func (n *TrainNet) ffn16(l *tlayer, h, h16 kernels.Buffer, rows int, dr *drop) (kernels.Buffer, back, bool) {
	be, d, F := n.be, n.d, l.ffn
	ho, ok := be.(kernels.HalfOutputs)
	if !ok || !ho.HalfOutputs() || n.act != kernels.ReLU || (dr != nil && dr.ap == nil) {
		return nil, nil, false
	}
	rd, ok1 := be.(kernels.ReLUDropoutBackwarder)
	lak, ok2 := be.(kernels.LinearActKeeper)
	lk, ok3 := be.(kernels.LinearKeeper)
	a := n.half16(rows * F)
	if !ok1 || !ok2 || !ok3 || a == nil {
		return nil, nil, false
	}
	_, kept, ok := lak.LinearActKeep(a, either(h16, h), either(l.fc1.w16, l.fc1.w.w), either(l.fc1.b16, l.fc1.b.w), rows, F, d, kernels.ReLU)
	if !ok || kept == nil {
		return nil, nil, false
	}
	p := 0.0
	// With a kernels.ReLUDropoutFolder the dropout also records where a > 0, and fc2's
	// input-gradient product applies the ReLU and dropout backward itself.
	rf, _ := be.(kernels.ReLUDropoutFolder)
	var mask kernels.Buffer
	if dr != nil {
		p = dr.p
		if rf != nil {
			mask = rf.ApplyDropoutMask(a, a, rows, F, dr.p, dr.seed)
		}
		if mask == nil {
			dr.ap.ApplyDropout(a, a, dr.p, dr.seed)
		}
	}
	out := n.out(rows * d)
	fc2Back, fc2Kept := n.linearKeptBuf(out, a, l.fc2.w.w, l.fc2.w16, l.fc2.b.w, rows, d, F)
	return out, func(dout kernels.Buffer) kernels.Buffer {
		g := n.half16(rows * F)
		db1 := l.fc1.b.g
		switch rb, ok := be.(kernels.ReLUDropoutBiasBackwarder); {
		case mask != nil && fc2Kept != nil:
			n.prepW(l.fc2.w.g)
			rf.LinearBackwardKeptReLU(g, l.fc2.w.g, l.fc2.b.g, dout, fc2Kept, rows, d, F, a, mask, p)
		case ok:
			fc2Back(g, l.fc2.w.g, l.fc2.b.g, dout)
			if rb.ReLUDropoutBackwardBias(g, g, a, db1, rows, F, p) {
				db1 = nil // summed as g was written
			} else {
				rd.ReLUDropoutBackward(g, g, a, p)
			}
		default:
			fc2Back(g, l.fc2.w.g, l.fc2.b.g, dout)
			rd.ReLUDropoutBackward(g, g, a, p)
		}
		dh := n.out(rows * d)
		n.backKept(lk, dh, l.fc1.w.g, db1, g, kept, rows, F, d)
		return dh
	}, true
}

// embed computes Drop(scale·E[ids] + P[pos]) and its backward into E (and learned P).
func (n *TrainNet) embed(o *StepOptions, table, pos *tparam, ids, p []int32) (kernels.Buffer, chainBack) {
	be, d, rows := n.be, n.d, len(ids)
	x := n.out(rows * d)
	be.Embed(x, table.w, ids, d, n.embedScale)
	be.AddRows(x, pos.w, p, d)
	dr := n.newDrop(o, o.Dropout, rows*d)
	if dr != nil {
		dr.apply(be, x, x)
	}
	return x, func(dy grad) grad {
		var g kernels.Buffer
		switch rs, ok := be.(kernels.ResidualSumNormer); {
		case dr != nil && dr.ap != nil && ok && dy.sum != nil:
			// The sum formed and dropped in one pass.
			g = n.out(rows * d)
			rs.ApplyDropoutSum(g, *dy.sum, rows, d, dr.p, dr.seed)
		case dr != nil:
			g = n.out(rows * d)
			dr.apply(be, g, n.whole(dy, rows))
		default:
			g = n.whole(dy, rows)
		}
		be.EmbedBackward(table.g, g, ids, d, n.embedScale, Pad)
		if pos.g != nil {
			be.EmbedBackward(pos.g, g, p, d, 1, Pad)
		}
		return grad{}
	}
}

func padMask(ids []int32) []bool {
	var pad []bool
	for i, t := range ids {
		if t == Pad {
			if pad == nil {
				pad = make([]bool, len(ids))
			}
			pad[i] = true
		}
	}
	return pad
}

// Step runs the training forward on b, and the backward when o.Backward is set,
// accumulating the gradients of the summed label-smoothed loss into the parameters'
// gradients (the caller zeroes and normalises them).
func (n *TrainNet) Step(ctx context.Context, b *TrainBatch, o StepOptions) (StepResult, error) {
	if err := b.Validate(); err != nil {
		return StepResult{}, err
	}
	if (o.Train && (o.Dropout > 0 || o.AttentionDropout > 0 || o.ActivationDropout > 0)) && o.RNG == nil {
		return StepResult{}, fmt.Errorf("train step: dropout needs an RNG")
	}
	if o.Profile && !n.cfg.Init.HasOmega() {
		return StepResult{}, fmt.Errorf("train step: profiling needs an Admin model (init %s has no ω)", n.cfg.Init)
	}
	for _, c := range []struct {
		ids   []int32
		vocab int
		what  string
	}{{b.Src, n.cfg.SrcVocab, "source"}, {b.Prev, n.cfg.TgtVocab, "previous output"}, {b.Target, n.cfg.TgtVocab, "target"}} {
		for i, id := range c.ids {
			if id < 0 || int(id) >= c.vocab {
				return StepResult{}, fmt.Errorf("%w: %s token %d at %d is outside the vocabulary of %d", ErrInput, c.what, id, i, c.vocab)
			}
		}
	}
	if mr := maxRank(positionIDs(b.Src, b.B, b.S)); mr > n.cfg.MaxSourcePositions {
		return StepResult{}, fmt.Errorf("%w: source of %d tokens exceeds max_source_positions %d", ErrInput, mr, n.cfg.MaxSourcePositions)
	}
	if mr := maxRank(positionIDs(b.Prev, b.B, b.T)); mr > n.cfg.MaxTargetPositions {
		return StepResult{}, fmt.Errorf("%w: target of %d tokens exceeds max_target_positions %d", ErrInput, mr, n.cfg.MaxTargetPositions)
	}
	be := n.be
	if sc, ok := be.(kernels.Scoper); ok {
		// Every buffer of the step is dead when it returns (results are host values,
		// gradients accumulate into buffers made before it).
		sc.BeginScope()
		defer sc.EndScope()
	}
	B, S, T := b.B, b.S, b.T
	var profEnc, profDec *profiler
	if o.Profile {
		profEnc, profDec = &profiler{r: 1}, &profiler{r: 1}
	}
	res := StepResult{NSentences: B}
	for _, t := range b.Target {
		if t != Pad {
			res.NTokens++
		}
	}
	// Outside the graphed work: whether the copies need rounding depends on what ran
	// before the step, not on its shapes, so a RoundAll inside would make a replay
	// diverge from its capture.
	n.roundWeights()
	if o.Profile {
		// Profiling writes every ω; none has a copy, but the rule stays simple: a step
		// that writes weights leaves the copies untrusted.
		defer n.WeightsChanged()
	}
	var pk *stepPack
	if n.packer != nil && !o.Profile {
		pk = n.newStepPack(b)
	}
	var readLoss func() (float64, float64)
	run := func() error {
		var err error
		readLoss, err = n.stepWork(ctx, b, &o, profEnc, profDec, pk)
		return err
	}
	var err error
	if g, ok := be.(kernels.StepGrapher); ok && !o.Profile && pk == nil {
		// The profiling stage reads activations back mid-step; everything else the
		// step queues depends on the shapes and flags in the key alone. first: the
		// backward writes the gradients ZeroGrad left (biasFresh, pendingW) instead of
		// adding to them, so an update's later sub-batches have a graph of their own.
		key := fmt.Sprintf("train B%d S%d T%d train=%v backward=%v dropout=%v/%v/%v first=%v", B, S, T, o.Train, o.Backward,
			o.Dropout > 0, o.AttentionDropout > 0, o.ActivationDropout > 0, o.Backward && n.gradsZero)
		err = g.Graphed(key, run)
	} else {
		err = run()
	}
	if err != nil {
		return StepResult{}, err
	}
	if o.DeferLoss && !o.Profile {
		res.ReadLoss = readLoss
	} else {
		res.Loss, res.NLL = readLoss()
	}
	if o.Profile {
		res.ProfileEncoder, res.ProfileDecoder = profEnc.out, profDec.out
	}
	return res, nil
}

// stepWork queues the forward (and backward) of Step and returns the reader of the
// loss sums.
func (n *TrainNet) stepWork(ctx context.Context, b *TrainBatch, op *StepOptions, profEnc, profDec *profiler, pk *stepPack) (func() (float64, float64), error) {
	o := *op
	be, d := n.be, n.d
	B, S, T := b.B, b.S, b.T
	n.biasFresh = o.Backward && n.gradsZero
	if o.Backward {
		n.gradsZero = false
	}
	var backs []chainBack

	// Encoder.
	src, tgt := pk.srcSide(), pk.tgtSide()
	encRows := pk.rowsOf(src, B*S)
	srcIDs, srcPos := b.Src, positionIDs(b.Src, B, S)
	if pk != nil {
		srcIDs, srcPos = src.take(srcIDs), src.take(srcPos)
	}
	x, eb := n.embed(&o, n.encEmbed, n.encPos, srcIDs, srcPos)
	var x16 kernels.Buffer
	encBacks := []chainBack{eb}
	encPad := padMask(b.Src)
	for li := range n.enc {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		l := &n.enc[li]
		var bk chainBack
		x, x16, bk = n.sublayer(&o, x, x16, encRows, l, 0, n.cfg.EncoderNormalizeBefore, n.alphaEnc, profEnc, func(h, h16 kernels.Buffer) (kernels.Buffer, back) {
			return n.selfAttn(&o, &l.self, h, h16, B, S, encPad, false, pk, src)
		})
		encBacks = append(encBacks, bk)
		x, x16, bk = n.sublayer(&o, x, x16, encRows, l, 2, n.cfg.EncoderNormalizeBefore, n.alphaEnc, profEnc, func(h, h16 kernels.Buffer) (kernels.Buffer, back) {
			return n.ffn(&o, l, h, h16, encRows)
		})
		encBacks = append(encBacks, bk)
	}
	if n.encLN != nil {
		var bk chainBack
		x, bk = n.layerNorm(n.encLN, x, encRows)
		x16 = nil
		encBacks = append(encBacks, bk)
	}
	enc, enc16 := x, x16
	// Written by the first cross-attention backward, accumulated by the others; or, with
	// the keys and values batched (kvs), by their one backward product.
	dEnc, dEncSet := n.out(encRows*d), false
	var kvs *crossKV
	if n.kvBatch && len(n.dec) > 0 {
		kvs = n.crossKVForward(enc, enc16, B, T, S, encPad, pk)
	}

	// Decoder.
	rows := pk.rowsOf(tgt, B*T)
	prevIDs, prevPos, targets := b.Prev, positionIDs(b.Prev, B, T), b.Target
	if pk != nil {
		prevIDs, prevPos, targets = tgt.take(prevIDs), tgt.take(prevPos), tgt.take(targets)
	}
	y, db := n.embed(&o, n.decEmbed, n.decPos, prevIDs, prevPos)
	var y16 kernels.Buffer
	backs = append(backs, db)
	decPad := padMask(b.Prev)
	for li := range n.dec {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		l := &n.dec[li]
		before := n.cfg.DecoderNormalizeBefore
		var bk chainBack
		y, y16, bk = n.sublayer(&o, y, y16, rows, l, 0, before, n.alphaDec, profDec, func(h, h16 kernels.Buffer) (kernels.Buffer, back) {
			return n.selfAttn(&o, &l.self, h, h16, B, T, decPad, true, pk, tgt)
		})
		backs = append(backs, bk)
		y, y16, bk = n.sublayer(&o, y, y16, rows, l, 1, before, n.alphaDec, profDec, func(h, h16 kernels.Buffer) (kernels.Buffer, back) {
			return n.crossAttn(&o, &l.cross, h, h16, B, T, enc, enc16, S, encPad, dEnc, &dEncSet, kvs, li, pk)
		})
		backs = append(backs, bk)
		y, y16, bk = n.sublayer(&o, y, y16, rows, l, 2, before, n.alphaDec, profDec, func(h, h16 kernels.Buffer) (kernels.Buffer, back) {
			return n.ffn(&o, l, h, h16, rows)
		})
		backs = append(backs, bk)
	}
	if n.decLN != nil {
		var bk chainBack
		y, bk = n.layerNorm(n.decLN, y, rows)
		y16 = nil
		backs = append(backs, bk)
	}
	V := n.cfg.TgtVocab
	// 16-bit logits where the backend writes 16-bit GEMM outputs (kernels.HalfOutputs),
	// as torch.autocast's output projection does (and the Clinic fork in fp16): the loss
	// widens each to float and computes in float, and the step moves half the bytes
	// (7,900 × 27,472 logits: 435 MB instead of 870 MB). A numerics change: the loss
	// sees RN16 of the float logits.
	logits := n.outHalf(rows * V)
	logitsBack := n.linear(logits, either(y16, y), n.outProj.w, n.outProj16, nil, rows, V, d)
	var dlogits kernels.Buffer
	if o.Backward {
		dlogits = n.out16(rows * V)
	}
	var readLoss func() (float64, float64)
	if dl, ok := be.(kernels.DeferredLosser); ok {
		readLoss = dl.LabelSmoothedLossDeferred(dlogits, logits, targets, rows, V, float32(o.LabelSmoothing), Pad, o.gradScale())
	} else {
		loss, nll := be.LabelSmoothedLoss(dlogits, logits, targets, rows, V, float32(o.LabelSmoothing), Pad, o.gradScale())
		readLoss = func() (float64, float64) { return loss, nll }
	}
	if !o.Backward {
		return readLoss, nil
	}
	g := grad{buf: n.out(rows * d)}
	logitsBack(g.buf, n.outProj.g, nil, dlogits)
	// The output projection's weight may be the embedding's, whose backward adds to
	// the same gradient: it ran first, as before; the layers' weight gradients may wait
	// for the end of the backward and run batched (kernels.WeightGradDeferrer).
	if wd, ok := be.(kernels.WeightGradDeferrer); ok && wd.DeferWeightGrads() {
		defer wd.FlushWeightGrads()
	}
	for i := len(backs) - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		g = backs[i](g)
	}
	if kvs != nil {
		kvs.back(dEnc, n.crossKV.w.g, n.crossKV.b.g, kvs.grad(n, pk))
		dEncSet = true
	}
	if !dEncSet { // no decoder layer: the encoder output gets no gradient
		be.Fill(dEnc, 0)
	}
	g = grad{buf: dEnc}
	for i := len(encBacks) - 1; i >= 0; i-- {
		g = encBacks[i](g)
	}
	n.settleGrads()
	return readLoss, nil
}
