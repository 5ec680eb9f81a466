package model

import "fmt"

// Canonical parameter names. One naming for every format (fairseq ≥0.10 style, separate
// q/k/v projections). Admin ω vectors get names of their own:
//
//	encoder.embed_tokens.weight                      [Vsrc, d]
//	encoder.embed_positions.weight                   [maxpos+pad+1, d]   learned positions only
//	encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}
//	encoder.layers.{i}.self_attn_layer_norm.{weight,bias}
//	encoder.layers.{i}.fc1.{weight,bias}, fc2.{weight,bias}
//	encoder.layers.{i}.final_layer_norm.{weight,bias}
//	encoder.layers.{i}.self_attn_omega, ffn_omega    [d]   Admin only
//	encoder.layer_norm.{weight,bias}                 Pre-LN only
//	decoder.embed_tokens.weight                      [Vtgt, d]  absent when share_all_embeddings (it is the encoder's)
//	decoder.embed_positions.weight                   learned positions only
//	decoder.layers.{i}.self_attn.*, encoder_attn.*   as above
//	decoder.layers.{i}.{self_attn,encoder_attn,final}_layer_norm.*, fc1.*, fc2.*
//	decoder.layers.{i}.self_attn_omega, encoder_attn_omega, ffn_omega   Admin only
//	decoder.layer_norm.{weight,bias}                 Pre-LN only
//	decoder.output_projection.weight                 [Vtgt, d]  untied output only
//
// Weights are [out, in] as in torch.nn.Linear.
const (
	EncEmbed = "encoder.embed_tokens.weight"
	EncPos   = "encoder.embed_positions.weight"
	EncLN    = "encoder.layer_norm"
	DecEmbed = "decoder.embed_tokens.weight"
	DecPos   = "decoder.embed_positions.weight"
	DecLN    = "decoder.layer_norm"
	OutProj  = "decoder.output_projection.weight"
)

// EncLayer returns the prefix of encoder layer i ("encoder.layers.3.").
func EncLayer(i int) string { return fmt.Sprintf("encoder.layers.%d.", i) }

// DecLayer returns the prefix of decoder layer i.
func DecLayer(i int) string { return fmt.Sprintf("decoder.layers.%d.", i) }

// Param is one expected parameter: its canonical name and shape.
type Param struct {
	Name  string
	Shape []int
}

// Expected lists every parameter the config implies, in a stable order (the fairseq
// state-dict order, so writers can follow it).
func (c *Config) Expected() []Param {
	d, fe, fd := c.EncoderEmbedDim, c.EncoderFFNDim, c.DecoderFFNDim
	var ps []Param
	add := func(name string, shape ...int) { ps = append(ps, Param{name, shape}) }
	attn := func(p string) {
		for _, x := range []string{"q", "k", "v", "out"} {
			add(p+x+"_proj.weight", d, d)
			add(p+x+"_proj.bias", d)
		}
	}
	ln := func(p string) { add(p+".weight", d); add(p+".bias", d) }
	posRows := func(max int) int { return max + Pad + 1 }

	add(EncEmbed, c.SrcVocab, d)
	if c.EncoderLearnedPos {
		add(EncPos, posRows(c.MaxSourcePositions), d)
	}
	for i := 0; i < c.EncoderLayers; i++ {
		p := EncLayer(i)
		if c.Init.HasOmega() {
			add(p+"self_attn_omega", d)
			add(p+"ffn_omega", d)
		}
		attn(p + "self_attn.")
		add(p+"fc1.weight", fe, d)
		add(p+"fc1.bias", fe)
		add(p+"fc2.weight", d, fe)
		add(p+"fc2.bias", d)
		ln(p + "self_attn_layer_norm")
		ln(p + "final_layer_norm")
	}
	if c.EncoderNormalizeBefore {
		ln(EncLN)
	}
	if !c.TiedOutput() {
		add(OutProj, c.TgtVocab, d)
	}
	if !c.ShareAllEmbeddings {
		add(DecEmbed, c.TgtVocab, d)
	}
	if c.DecoderLearnedPos {
		add(DecPos, posRows(c.MaxTargetPositions), d)
	}
	for i := 0; i < c.DecoderLayers; i++ {
		p := DecLayer(i)
		if c.Init.HasOmega() {
			add(p+"self_attn_omega", d)
			add(p+"encoder_attn_omega", d)
			add(p+"ffn_omega", d)
		}
		attn(p + "self_attn.")
		attn(p + "encoder_attn.")
		add(p+"fc1.weight", fd, d)
		add(p+"fc1.bias", fd)
		add(p+"fc2.weight", d, fd)
		add(p+"fc2.bias", d)
		ln(p + "self_attn_layer_norm")
		ln(p + "encoder_attn_layer_norm")
		ln(p + "final_layer_norm")
	}
	if c.DecoderNormalizeBefore {
		ln(DecLN)
	}
	return ps
}
