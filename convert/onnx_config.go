package convert

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"

	"github.com/xform-dev/xform/model"
)

// hfConfig is the config.json next to an export: the Hugging Face field names a seq2seq
// runtime looks for, plus the full fairseq-style config under "xform". model_type is ours:
// no optimum model type describes a fairseq Transformer (fsmt is not in optimum's ONNX
// registry), so ORTModelForSeq2SeqLM will not load it; raw ORT users need only the names.
type hfConfig struct {
	ModelType             string        `json:"model_type"`
	Architectures         []string      `json:"architectures"`
	IsEncoderDecoder      bool          `json:"is_encoder_decoder"`
	VocabSize             int           `json:"vocab_size"`
	SrcVocabSize          int           `json:"src_vocab_size"`
	TgtVocabSize          int           `json:"tgt_vocab_size"`
	DModel                int           `json:"d_model"`
	EncoderLayers         int           `json:"encoder_layers"`
	DecoderLayers         int           `json:"decoder_layers"`
	EncoderAttentionHeads int           `json:"encoder_attention_heads"`
	DecoderAttentionHeads int           `json:"decoder_attention_heads"`
	EncoderFFNDim         int           `json:"encoder_ffn_dim"`
	DecoderFFNDim         int           `json:"decoder_ffn_dim"`
	ActivationFunction    string        `json:"activation_function"`
	MaxPositionEmbeddings int           `json:"max_position_embeddings"`
	ScaleEmbedding        bool          `json:"scale_embedding"`
	TieWordEmbeddings     bool          `json:"tie_word_embeddings"`
	BOS                   int           `json:"bos_token_id"`
	Pad                   int           `json:"pad_token_id"`
	EOS                   int           `json:"eos_token_id"`
	Unk                   int           `json:"unk_token_id"`
	DecoderStart          int           `json:"decoder_start_token_id"`
	TorchDType            string        `json:"torch_dtype"`
	UseCache              bool          `json:"use_cache"`
	Xform                 xformONNXInfo `json:"xform"`
}

type xformONNXInfo struct {
	Config       model.Config `json:"config"`
	Opset        int          `json:"opset"`
	OmegaAsMul   bool         `json:"omega_as_mul"`
	LeftPadding  bool         `json:"left_pad_source"`
	AppendEOS    bool         `json:"source_ends_with_eos"`
	ProducerVers string       `json:"producer_version,omitempty"`
}

// genConfig carries fairseq-generate's defaults (beam 5, lenpen 1, max_len_a 0, max_len_b 200).
type genConfig struct {
	BOS           int     `json:"bos_token_id"`
	Pad           int     `json:"pad_token_id"`
	EOS           int     `json:"eos_token_id"`
	DecoderStart  int     `json:"decoder_start_token_id"`
	NumBeams      int     `json:"num_beams"`
	LengthPenalty float64 `json:"length_penalty"`
	MaxLength     int     `json:"max_length"`
	MinLength     int     `json:"min_length"`
	EarlyStopping bool    `json:"early_stopping"`
	MaxLenA       float64 `json:"max_len_a"`
	MaxLenB       int     `json:"max_len_b"`
	UnkPenalty    float64 `json:"unkpen"`
}

func writeONNXConfigs(m *model.Model, dir string, opt ONNXOptions) error {
	c := m.Config
	dtype := "float32"
	if opt.FP16 {
		dtype = "float16"
	}
	hc := hfConfig{
		ModelType:             "fairseq_transformer",
		Architectures:         []string{"FairseqTransformerForSeq2Seq"},
		IsEncoderDecoder:      true,
		VocabSize:             c.TgtVocab,
		SrcVocabSize:          c.SrcVocab,
		TgtVocabSize:          c.TgtVocab,
		DModel:                c.EncoderEmbedDim,
		EncoderLayers:         c.EncoderLayers,
		DecoderLayers:         c.DecoderLayers,
		EncoderAttentionHeads: c.EncoderHeads,
		DecoderAttentionHeads: c.DecoderHeads,
		EncoderFFNDim:         c.EncoderFFNDim,
		DecoderFFNDim:         c.DecoderFFNDim,
		ActivationFunction:    c.Activation,
		MaxPositionEmbeddings: c.MaxTargetPositions,
		ScaleEmbedding:        true,
		TieWordEmbeddings:     c.TiedOutput(),
		BOS:                   model.BOS,
		Pad:                   model.Pad,
		EOS:                   model.EOS,
		Unk:                   model.Unk,
		DecoderStart:          model.EOS,
		TorchDType:            dtype,
		UseCache:              true,
		Xform: xformONNXInfo{
			Config: c, Opset: opt.opset(), OmegaAsMul: c.Init.HasOmega(),
			LeftPadding: true, AppendEOS: true, ProducerVers: opt.Version,
		},
	}
	gc := genConfig{
		BOS: model.BOS, Pad: model.Pad, EOS: model.EOS, DecoderStart: model.EOS,
		NumBeams: 5, LengthPenalty: 1, MaxLength: 200, MinLength: 1, EarlyStopping: true,
		MaxLenA: 0, MaxLenB: 200,
	}
	for name, v := range map[string]any{"config.json": hc, "generation_config.json": gc} {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return fmt.Errorf("export %s: %w", name, err)
		}
		if err := writeFileSync(filepath.Join(dir, name), func(w io.Writer) error {
			_, err := w.Write(append(b, '\n'))
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}
