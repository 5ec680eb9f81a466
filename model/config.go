// Package model declares the encoder-decoder Transformer once: its configuration,
// the canonical parameter names every converter maps onto, and (in the files beside
// this one) its forward pass, incremental decoding and beam search.
package model

import (
	"errors"
	"fmt"
)

// Init names how a model was (or is to be) initialised; it also decides the residual form.
type Init string

const (
	InitDefault           Init = "default"
	InitAdaptive          Init = "adaptive"           // Admin: LN(f(x) + ω⊙x), ω stored per sub-layer
	InitAdaptiveProfiling Init = "adaptive-profiling" // Admin profiling stage (ω = 1 until profiled)
	InitDeepNet           Init = "deepnet"            // LN(f(x) + α·x), α from the depths
)

// HasOmega reports whether the layers carry Admin ω vectors.
func (i Init) HasOmega() bool { return i == InitAdaptive || i == InitAdaptiveProfiling }

// Special token ids of every fairseq dictionary.
const (
	BOS = 0
	Pad = 1
	EOS = 2
	Unk = 3
)

// Config is everything needed to build and run the model. Field names follow fairseq's args.
type Config struct {
	Arch string `json:"arch"`
	Init Init   `json:"init_type"`

	EncoderLayers   int `json:"encoder_layers"`
	DecoderLayers   int `json:"decoder_layers"`
	EncoderEmbedDim int `json:"encoder_embed_dim"`
	DecoderEmbedDim int `json:"decoder_embed_dim"`
	EncoderFFNDim   int `json:"encoder_ffn_embed_dim"`
	DecoderFFNDim   int `json:"decoder_ffn_embed_dim"`
	EncoderHeads    int `json:"encoder_attention_heads"`
	DecoderHeads    int `json:"decoder_attention_heads"`

	EncoderNormalizeBefore bool `json:"encoder_normalize_before"`
	DecoderNormalizeBefore bool `json:"decoder_normalize_before"`
	EncoderLearnedPos      bool `json:"encoder_learned_pos"`
	DecoderLearnedPos      bool `json:"decoder_learned_pos"`
	NoTokenPositional      bool `json:"no_token_positional_embeddings"`

	ShareAllEmbeddings           bool `json:"share_all_embeddings"`
	ShareDecoderInputOutputEmbed bool `json:"share_decoder_input_output_embed"`

	Activation         string `json:"activation_fn"` // relu, gelu, gelu_accurate, gelu_fast, tanh, linear
	MaxSourcePositions int    `json:"max_source_positions"`
	MaxTargetPositions int    `json:"max_target_positions"`

	Dropout           float64 `json:"dropout"`
	AttentionDropout  float64 `json:"attention_dropout"`
	ActivationDropout float64 `json:"activation_dropout"`

	SrcVocab int `json:"src_vocab_size"`
	TgtVocab int `json:"tgt_vocab_size"`

	SourceLang string `json:"source_lang,omitempty"`
	TargetLang string `json:"target_lang,omitempty"`
}

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("invalid model config")

// Validate checks the config for values the engine cannot run.
func (c *Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...))
	}
	switch c.Init {
	case InitDefault, InitAdaptive, InitAdaptiveProfiling, InitDeepNet:
	default:
		return bad("unknown init type %q", c.Init)
	}
	if c.EncoderLayers < 1 || c.DecoderLayers < 1 {
		return bad("layers must be ≥1 (encoder %d, decoder %d)", c.EncoderLayers, c.DecoderLayers)
	}
	for _, d := range []struct {
		name       string
		dim, heads int
	}{{"encoder", c.EncoderEmbedDim, c.EncoderHeads}, {"decoder", c.DecoderEmbedDim, c.DecoderHeads}} {
		if d.dim < 1 || d.heads < 1 || d.dim%d.heads != 0 {
			return bad("%s embed dim %d is not a positive multiple of %d heads", d.name, d.dim, d.heads)
		}
	}
	if c.EncoderFFNDim < 1 || c.DecoderFFNDim < 1 {
		return bad("FFN dims must be ≥1")
	}
	if c.EncoderEmbedDim != c.DecoderEmbedDim {
		return bad("encoder and decoder dims differ (%d vs %d): not supported", c.EncoderEmbedDim, c.DecoderEmbedDim)
	}
	if c.SrcVocab < 4 || c.TgtVocab < 4 {
		return bad("vocabulary sizes %d/%d are smaller than the 4 specials", c.SrcVocab, c.TgtVocab)
	}
	if c.ShareAllEmbeddings && c.SrcVocab != c.TgtVocab {
		return bad("share_all_embeddings needs equal vocabularies (%d vs %d)", c.SrcVocab, c.TgtVocab)
	}
	if c.Init.HasOmega() && (c.EncoderNormalizeBefore || c.DecoderNormalizeBefore) {
		return bad("Admin (%s) is Post-LN only", c.Init)
	}
	switch c.Activation {
	case "relu", "gelu", "gelu_accurate", "gelu_fast", "tanh", "linear":
	default:
		return bad("unknown activation %q", c.Activation)
	}
	if c.NoTokenPositional {
		return bad("no_token_positional_embeddings is not supported (the reference encoder crashes with it too)")
	}
	if c.MaxSourcePositions < 1 || c.MaxTargetPositions < 1 {
		return bad("max positions must be ≥1")
	}
	return nil
}

// TiedOutput reports whether the output projection is the decoder input embedding.
func (c *Config) TiedOutput() bool { return c.ShareAllEmbeddings || c.ShareDecoderInputOutputEmbed }

// DeepNetAlpha returns DeepNet's residual scales (encoder, decoder), clinic-spec §1.6.
func (c *Config) DeepNetAlpha() (enc, dec float64) {
	n, m := float64(c.EncoderLayers), float64(c.DecoderLayers)
	return 0.81 * pow(n*n*n*n*m, 1.0/16), pow(3*m, 0.25)
}
