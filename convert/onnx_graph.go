package convert

import (
	"fmt"
	"math"
	"strconv"

	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/onnxio"
	"github.com/xform-dev/xform/tensor"
)

// onnxBuilder emits the ops of one graph (or one If branch) of the exported model.
// Activations have dtype dt; LayerNorm and softmax always run in fp32 (Cast around them in
// fp16 exports) because fairseq computes softmax in fp32 and fp16 LN statistics overflow.
type onnxBuilder struct {
	m   *model.Model
	opt ONNXOptions
	g   *onnxio.Graph
	dt  onnxio.TensorProto_DataType
	// out maps a graph-level output name to the name the producing node must use: the
	// name itself in a standalone graph, a prefixed name inside an If branch.
	out func(string) string
	err error
}

func (b *onnxBuilder) fp16() bool { return b.dt == onnxio.TensorProto_FLOAT16 }

func (b *onnxBuilder) setErr(err error) {
	if b.err == nil {
		b.err = err
	}
}

func (b *onnxBuilder) op(op string, attrs []*onnxio.AttributeProto, in ...string) string {
	return b.g.Op(op, in, attrs...)
}

func (b *onnxBuilder) named(op, out string, attrs []*onnxio.AttributeProto, in ...string) string {
	return b.g.NodeOut(op, in, []string{out}, attrs...)[0]
}

// ---- initializers ----

func onnxType(d tensor.DType) onnxio.TensorProto_DataType {
	if d == tensor.F16 {
		return onnxio.TensorProto_FLOAT16
	}
	return onnxio.TensorProto_FLOAT
}

func dims64(shape []int) []int64 {
	out := make([]int64, len(shape))
	for i, s := range shape {
		out[i] = int64(s)
	}
	return out
}

// floatInit adds t as an initializer in dtype d (F32 or F16).
func (b *onnxBuilder) floatInit(name string, t *tensor.Tensor, d tensor.DType) string {
	if b.g.HasInitializer(name) {
		return name
	}
	c := t
	if t.DType != d {
		var err error
		if c, err = t.Convert(d); err != nil {
			b.setErr(fmt.Errorf("convert %s to %s: %w", name, d, err))
			return name
		}
	}
	return b.g.Initializer(onnxio.RawTensor(name, onnxType(d), dims64(c.Shape), c.Data))
}

func (b *onnxBuilder) actDType() tensor.DType {
	if b.fp16() {
		return tensor.F16
	}
	return tensor.F32
}

func (b *onnxBuilder) tensorOf(name string) *tensor.Tensor {
	t, ok := b.m.Params[name]
	if !ok {
		b.setErr(fmt.Errorf("parameter %s missing", name))
		return tensor.FromF32([]int{0}, nil)
	}
	return t
}

// param is a parameter in the activation dtype, under its canonical name.
func (b *onnxBuilder) param(name string) string {
	return b.floatInit(name, b.tensorOf(name), b.actDType())
}

// paramF32 is a parameter kept in fp32 (LayerNorm affine terms).
func (b *onnxBuilder) paramF32(name string) string {
	return b.floatInit(name, b.tensorOf(name), tensor.F32)
}

// weightT is a Linear weight [out,in] stored transposed ([in,out], name+".T") so that
// y = MatMul(x, W.T) + b, the MatMul+Add pattern ONNX Runtime's fusions look for.
func (b *onnxBuilder) weightT(name string) string {
	tn := name + ".T"
	if b.g.HasInitializer(tn) {
		return tn
	}
	w := b.tensorOf(name)
	v, err := w.F32()
	if err != nil {
		b.setErr(fmt.Errorf("%s: %w", name, err))
		return tn
	}
	if len(w.Shape) != 2 {
		b.setErr(fmt.Errorf("%s: want a 2-D weight, have %v", name, w.Shape))
		return tn
	}
	r, c := w.Shape[0], w.Shape[1]
	tv := make([]float32, len(v))
	for i := 0; i < r; i++ {
		for j := 0; j < c; j++ {
			tv[j*r+i] = v[i*c+j]
		}
	}
	return b.floatInit(tn, tensor.FromF32([]int{c, r}, tv), b.actDType())
}

// constI64 is an int64 constant, named by its value so identical constants are shared.
func (b *onnxBuilder) constI64(scalar bool, v ...int64) string {
	name := "const_i64"
	for _, x := range v {
		name += "_" + strconv.FormatInt(x, 10)
	}
	dims := []int64{int64(len(v))}
	if scalar {
		name += "_s"
		dims = nil
	}
	if b.g.HasInitializer(name) {
		return name
	}
	return b.g.Initializer(onnxio.Int64Tensor(name, dims, v))
}

// constF is a float scalar constant in dtype d (F32 or F16).
func (b *onnxBuilder) constF(v float32, d tensor.DType) string {
	name := fmt.Sprintf("const_%s_%08x", d, math.Float32bits(v))
	if b.g.HasInitializer(name) {
		return name
	}
	return b.floatInit(name, tensor.FromF32(nil, []float32{v}), d)
}

// ---- attribute shorthands ----

func aInt(n string, v int64) []*onnxio.AttributeProto {
	return []*onnxio.AttributeProto{onnxio.AttrInt(n, v)}
}
func aPerm(p ...int64) []*onnxio.AttributeProto {
	return []*onnxio.AttributeProto{onnxio.AttrInts("perm", p...)}
}

// ---- layers ----

func (b *onnxBuilder) linear(x, prefix string) string {
	y := b.op("MatMul", nil, x, b.weightT(prefix+".weight"))
	return b.op("Add", nil, y, b.param(prefix+".bias"))
}

// layerNorm is LayerNormalization over the last axis with eps 1e-5 (fairseq's default).
func (b *onnxBuilder) layerNorm(x, prefix string) string {
	attrs := []*onnxio.AttributeProto{onnxio.AttrInt("axis", -1), onnxio.AttrFloat("epsilon", 1e-5)}
	g, beta := b.paramF32(prefix+".weight"), b.paramF32(prefix+".bias")
	if !b.fp16() {
		return b.op("LayerNormalization", attrs, x, g, beta)
	}
	x32 := b.op("Cast", aInt("to", int64(onnxio.TensorProto_FLOAT)), x)
	y := b.op("LayerNormalization", attrs, x32, g, beta)
	return b.op("Cast", aInt("to", int64(onnxio.TensorProto_FLOAT16)), y)
}

func (b *onnxBuilder) activation(x, name string) string {
	switch name {
	case "relu":
		return b.op("Relu", nil, x)
	case "tanh":
		return b.op("Tanh", nil, x)
	case "linear":
		return x
	case "gelu": // x·½·(1+erf(x/√2)), fairseq's exact form
		d := b.actDType()
		e := b.op("Erf", nil, b.op("Div", nil, x, b.constF(float32(math.Sqrt2), d)))
		return b.op("Mul", nil, b.op("Mul", nil, x, b.constF(0.5, d)), b.op("Add", nil, e, b.constF(1, d)))
	case "gelu_accurate", "gelu_fast": // ½x(1+tanh(√(2/π)(x+0.044715x³)))
		d := b.actDType()
		x3 := b.op("Mul", nil, b.op("Mul", nil, x, x), x)
		in := b.op("Add", nil, x, b.op("Mul", nil, x3, b.constF(0.044715, d)))
		t := b.op("Tanh", nil, b.op("Mul", nil, in, b.constF(float32(math.Sqrt(2/math.Pi)), d)))
		return b.op("Mul", nil, b.op("Mul", nil, x, b.constF(0.5, d)), b.op("Add", nil, t, b.constF(1, d)))
	}
	b.setErr(fmt.Errorf("activation %q is not supported by the ONNX export", name))
	return x
}

func (b *onnxBuilder) ffn(x, prefix, act string) string {
	return b.linear(b.activation(b.linear(x, prefix+"fc1"), act), prefix+"fc2")
}

// heads reshapes [B,L,d] to [B,H,L,d/H]; heads split d contiguously as in fairseq.
// out names the result ("" for a generated name).
func (b *onnxBuilder) heads(x string, h, hd int, out string) string {
	r := b.op("Reshape", nil, x, b.constI64(false, 0, 0, int64(h), int64(hd)))
	if out == "" {
		return b.op("Transpose", aPerm(0, 2, 1, 3), r)
	}
	return b.named("Transpose", out, aPerm(0, 2, 1, 3), r)
}

// query is the scaled query projection: (x·Wq + bq)·head_dim^-0.5, scaled after the bias.
func (b *onnxBuilder) query(x, prefix string, h, hd int) string {
	q := b.linear(x, prefix+"q_proj")
	q = b.op("Mul", nil, q, b.constF(float32(math.Pow(float64(hd), -0.5)), b.actDType()))
	return b.heads(q, h, hd, "")
}

// attend computes softmax(q·kᵀ + mask)·v and the output projection. q, k, v are
// [B,H,·,hd]; mask is an fp32 additive 0/-inf tensor broadcastable to the scores, or "".
func (b *onnxBuilder) attend(q, k, v, mask, prefix string, d int) string {
	s := b.op("MatMul", nil, q, b.op("Transpose", aPerm(0, 1, 3, 2), k))
	if b.fp16() {
		s = b.op("Cast", aInt("to", int64(onnxio.TensorProto_FLOAT)), s)
	}
	if mask != "" {
		s = b.op("Add", nil, s, mask)
	}
	p := b.op("Softmax", aInt("axis", -1), s)
	if b.fp16() {
		p = b.op("Cast", aInt("to", int64(onnxio.TensorProto_FLOAT16)), p)
	}
	o := b.op("Transpose", aPerm(0, 2, 1, 3), b.op("MatMul", nil, p, v))
	o = b.op("Reshape", nil, o, b.constI64(false, 0, 0, int64(d)))
	return b.linear(o, prefix+"out_proj")
}

// residual wraps a sub-layer f the way the model's norm placement and init say:
// Pre-LN x+f(LN x); Post-LN LN(x+f(x)); Admin LN(ω⊙x+f(x)); DeepNet LN(α·x+f(x)).
func (b *onnxBuilder) residual(x, lnPrefix, omega string, alpha float64, preLN bool, f func(string) string) string {
	if preLN {
		return b.op("Add", nil, x, f(b.layerNorm(x, lnPrefix)))
	}
	y := f(x)
	r := x
	switch {
	case omega != "":
		r = b.op("Mul", nil, x, b.param(omega))
	case alpha != 0:
		r = b.op("Mul", nil, x, b.constF(float32(alpha), b.actDType()))
	}
	return b.layerNorm(b.op("Add", nil, r, y), lnPrefix)
}

// omegaName returns the ω parameter of a sub-layer when the export keeps ω, else "".
func (b *onnxBuilder) omegaName(prefix, which string) string {
	if !b.m.Config.Init.HasOmega() {
		return ""
	}
	return prefix + which
}

// sinusoidTable is fairseq's sinusoidal table for positions 0..rows-1: [sin | cos] halves,
// frequency exp(-j·ln(10000)/(half-1)), pad row zero. The arithmetic follows the reference's
// fp32 steps (fp32 frequency, fp32 product) so the table matches it to an ulp.
func sinusoidTable(rows, d, pad int) *tensor.Tensor {
	half := d / 2
	v := make([]float32, rows*d)
	c := float32(math.Log(10000) / float64(half-1))
	freq := make([]float32, half)
	for j := range freq {
		freq[j] = float32(math.Exp(float64(float32(j) * -c)))
	}
	for p := 0; p < rows; p++ {
		if p == pad {
			continue
		}
		row := v[p*d:]
		for j, f := range freq {
			a := float64(float32(p) * f)
			row[j] = float32(math.Sin(a))
			row[half+j] = float32(math.Cos(a))
		}
	}
	return tensor.FromF32([]int{rows, d}, v)
}

// positionTable returns the initializer holding the positional embedding of one side.
func (b *onnxBuilder) positionTable(decoder bool) string {
	c := &b.m.Config
	learned, maxPos, name := c.EncoderLearnedPos, c.MaxSourcePositions, model.EncPos
	if decoder {
		learned, maxPos, name = c.DecoderLearnedPos, c.MaxTargetPositions, model.DecPos
	}
	if learned {
		return b.param(name)
	}
	tn := "sinusoid_positions"
	if decoder {
		tn = "decoder." + tn
	} else {
		tn = "encoder." + tn
	}
	if b.g.HasInitializer(tn) {
		return tn
	}
	return b.floatInit(tn, sinusoidTable(maxPos+model.Pad+1, c.EncoderEmbedDim, model.Pad), b.actDType())
}

// positionsFromMask numbers the non-pad tokens from pad+1; pads get pad (make_positions).
// nonpad is int64 1/0 [B,L], so left padding does not shift positions.
func (b *onnxBuilder) positionsFromMask(nonpad string) string {
	cs := b.op("CumSum", nil, nonpad, b.constI64(true, 1))
	return b.op("Add", nil, b.op("Mul", nil, cs, nonpad), b.constI64(true, model.Pad))
}

// embed is sqrt(d)·E[ids] + P[pos].
func (b *onnxBuilder) embed(ids, pos, table, posTable string) string {
	d := b.m.Config.EncoderEmbedDim
	e := b.op("Gather", nil, table, ids)
	e = b.op("Mul", nil, e, b.constF(float32(math.Sqrt(float64(d))), b.actDType()))
	return b.op("Add", nil, e, b.op("Gather", nil, posTable, pos))
}

// keyPadBias turns an int64 1/0 mask [B,L] into an fp32 additive 0/-inf bias [B,1,1,L].
func (b *onnxBuilder) keyPadBias(mask string) string {
	isPad := b.op("Equal", nil, mask, b.constI64(true, 0))
	bias := b.op("Where", nil, isPad, b.constF(float32(math.Inf(-1)), tensor.F32), b.constF(0, tensor.F32))
	return b.op("Unsqueeze", nil, bias, b.constI64(false, 1, 2))
}

// embedTable returns the encoder or decoder token embedding initializer.
func (b *onnxBuilder) embedTable(decoder bool) string {
	if decoder && !b.m.Config.ShareAllEmbeddings {
		return b.param(model.DecEmbed)
	}
	return b.param(model.EncEmbed)
}

// ---- encoder ----

func (b *onnxBuilder) encoder(ids, mask, out string) {
	c := &b.m.Config
	d, h := c.EncoderEmbedDim, c.EncoderHeads
	hd := d / h
	x := b.embed(ids, b.positionsFromMask(mask), b.embedTable(false), b.positionTable(false))
	bias := b.keyPadBias(mask)
	var alpha float64
	if c.Init == model.InitDeepNet {
		alpha, _ = c.DeepNetAlpha()
	}
	for i := 0; i < c.EncoderLayers; i++ {
		p := model.EncLayer(i)
		x = b.residual(x, p+"self_attn_layer_norm", b.omegaName(p, "self_attn_omega"), alpha, c.EncoderNormalizeBefore, func(y string) string {
			a := p + "self_attn."
			k := b.heads(b.linear(y, a+"k_proj"), h, hd, "")
			v := b.heads(b.linear(y, a+"v_proj"), h, hd, "")
			return b.attend(b.query(y, a, h, hd), k, v, bias, a, d)
		})
		x = b.residual(x, p+"final_layer_norm", b.omegaName(p, "ffn_omega"), alpha, c.EncoderNormalizeBefore, func(y string) string {
			return b.ffn(y, p, c.Activation)
		})
	}
	if c.EncoderNormalizeBefore {
		x = b.layerNorm(x, model.EncLN)
	}
	b.rename(x, out)
}

// rename gives the value x, produced by the last node added, the name out, so graph
// outputs need no Identity copies.
func (b *onnxBuilder) rename(x, out string) {
	nodes := b.g.Proto.Node
	last := nodes[len(nodes)-1]
	if len(last.Output) != 1 || last.Output[0] != x {
		b.setErr(fmt.Errorf("internal: %s is not the last node's output", x))
		return
	}
	last.Output[0] = out
}

// ---- decoder ----

// decoderIO names the tensors one decoder graph reads and writes.
type decoderIO struct {
	ids, encMask, encHidden string
	withPast                bool
	pastSelf, pastCross     [][2]string // per layer: key, value (with past only)
}

// decoder builds the decoder. Without past it runs the full prefix with the causal mask and
// emits present self and cross K/V; with past it runs one token, appends to the self K/V and
// reads cross K/V from the inputs (computed once by the first step, never recomputed).
func (b *onnxBuilder) decoder(io decoderIO) {
	c := &b.m.Config
	d, h := c.DecoderEmbedDim, c.DecoderHeads
	hd := d / h
	crossBias := b.keyPadBias(io.encMask)

	var pos, selfBias string
	if io.withPast {
		// One new token per row at position pad + past_len + 1: fairseq never pads decoder
		// prefixes during generation, so every row has the same position.
		plen := b.op("Gather", aInt("axis", 0), b.op("Shape", nil, io.pastSelf[0][0]), b.constI64(true, 2))
		pos = b.op("Add", nil, plen, b.constI64(true, model.Pad+1))
	} else {
		// Positions and key padding from the tokens, as fairseq does for prev_output_tokens
		// (right padding in teacher forcing); plus the causal mask.
		nonpad := b.op("Cast", aInt("to", int64(onnxio.TensorProto_INT64)),
			b.op("Not", nil, b.op("Equal", nil, io.ids, b.constI64(true, model.Pad))))
		pos = b.positionsFromMask(nonpad)
		t := b.op("Gather", aInt("axis", 0), b.op("Shape", nil, io.ids), b.constI64(true, 1))
		r := b.op("Range", nil, b.constI64(true, 0), t, b.constI64(true, 1))
		future := b.op("Less", nil, b.op("Unsqueeze", nil, r, b.constI64(false, 1)), b.op("Unsqueeze", nil, r, b.constI64(false, 0)))
		causal := b.op("Where", nil, future, b.constF(float32(math.Inf(-1)), tensor.F32), b.constF(0, tensor.F32))
		selfBias = b.op("Add", nil, causal, b.keyPadBias(nonpad))
	}
	x := b.embed(io.ids, pos, b.embedTable(true), b.positionTable(true))

	var alpha float64
	if c.Init == model.InitDeepNet {
		_, alpha = c.DeepNetAlpha()
	}
	for i := 0; i < c.DecoderLayers; i++ {
		p := model.DecLayer(i)
		pres := fmt.Sprintf("present.%d.", i)
		x = b.residual(x, p+"self_attn_layer_norm", b.omegaName(p, "self_attn_omega"), alpha, c.DecoderNormalizeBefore, func(y string) string {
			a := p + "self_attn."
			if !io.withPast {
				k := b.heads(b.linear(y, a+"k_proj"), h, hd, b.out(pres+"decoder.key"))
				v := b.heads(b.linear(y, a+"v_proj"), h, hd, b.out(pres+"decoder.value"))
				return b.attend(b.query(y, a, h, hd), k, v, selfBias, a, d)
			}
			k := b.heads(b.linear(y, a+"k_proj"), h, hd, "")
			v := b.heads(b.linear(y, a+"v_proj"), h, hd, "")
			k = b.named("Concat", b.out(pres+"decoder.key"), aInt("axis", 2), io.pastSelf[i][0], k)
			v = b.named("Concat", b.out(pres+"decoder.value"), aInt("axis", 2), io.pastSelf[i][1], v)
			return b.attend(b.query(y, a, h, hd), k, v, "", a, d)
		})
		x = b.residual(x, p+"encoder_attn_layer_norm", b.omegaName(p, "encoder_attn_omega"), alpha, c.DecoderNormalizeBefore, func(y string) string {
			a := p + "encoder_attn."
			var k, v string
			if io.withPast {
				k, v = io.pastCross[i][0], io.pastCross[i][1]
			} else {
				k = b.heads(b.linear(io.encHidden, a+"k_proj"), h, hd, b.out(pres+"encoder.key"))
				v = b.heads(b.linear(io.encHidden, a+"v_proj"), h, hd, b.out(pres+"encoder.value"))
			}
			return b.attend(b.query(y, a, h, hd), k, v, crossBias, a, d)
		})
		x = b.residual(x, p+"final_layer_norm", b.omegaName(p, "ffn_omega"), alpha, c.DecoderNormalizeBefore, func(y string) string {
			return b.ffn(y, p, c.Activation)
		})
	}
	if c.DecoderNormalizeBefore {
		x = b.layerNorm(x, model.DecLN)
	}
	// logits = x·Eᵀ through Gemm(transB) on a 2-D view, so a tied embedding is stored once
	// and serves both the Gather and the projection.
	var proj string
	if c.TiedOutput() {
		proj = b.embedTable(true)
	} else {
		proj = b.param(model.OutProj)
	}
	x2 := b.op("Reshape", nil, x, b.constI64(false, -1, int64(d)))
	y := b.op("Gemm", aInt("transB", 1), x2, proj)
	shape := b.op("Concat", aInt("axis", 0), b.op("Shape", nil, io.ids), b.constI64(false, int64(c.TgtVocab)))
	b.named("Reshape", b.out("logits"), nil, y, shape)
}
