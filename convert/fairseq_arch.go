package convert

// archDefaults are fairseq's registered transformer architectures (base_architecture and its
// variants, clinic-spec §2.1). They fill only attributes a checkpoint's config lacks, as
// fairseq's getattr(args, name, default) does.
var archDefaults = map[string]func(get func(string) (interface{}, bool), set func(string, interface{})){
	"transformer":                       baseArch,
	"transformer_wmt_en_de":             baseArch,
	"transformer_iwslt_de_en":           iwsltArch,
	"transformer_vaswani_wmt_en_de_big": bigArch(0.3, 0, 0, false),
	"transformer_vaswani_wmt_en_fr_big": bigArch(0.1, 0, 0, false),
	"transformer_wmt_en_de_big":         bigArch(0.3, 0.1, 0, false),
	"transformer_wmt_en_de_big_t2t":     bigArch(0.3, 0.1, 0.1, true),
}

func setDefault(get func(string) (interface{}, bool), set func(string, interface{}), name string, v interface{}) {
	if x, ok := get(name); !ok || x == nil {
		set(name, v)
	}
}

// refDefault copies another attribute's (already defaulted) value, as fairseq's
// `decoder_embed_dim = getattr(args, "decoder_embed_dim", args.encoder_embed_dim)` does.
func refDefault(get func(string) (interface{}, bool), set func(string, interface{}), name, from string) {
	if x, ok := get(name); !ok || x == nil {
		v, _ := get(from)
		set(name, v)
	}
}

func baseArch(get func(string) (interface{}, bool), set func(string, interface{})) {
	d := func(n string, v interface{}) { setDefault(get, set, n, v) }
	d("encoder_embed_dim", 512)
	d("encoder_ffn_embed_dim", 2048)
	d("encoder_layers", 6)
	d("encoder_attention_heads", 8)
	d("encoder_normalize_before", false)
	d("encoder_learned_pos", false)
	refDefault(get, set, "decoder_embed_dim", "encoder_embed_dim")
	refDefault(get, set, "decoder_ffn_embed_dim", "encoder_ffn_embed_dim")
	d("decoder_layers", 6)
	d("decoder_attention_heads", 8)
	d("decoder_normalize_before", false)
	d("decoder_learned_pos", false)
	d("attention_dropout", 0.0)
	d("activation_dropout", 0.0)
	d("activation_fn", "relu")
	d("dropout", 0.1)
	d("share_decoder_input_output_embed", false)
	d("share_all_embeddings", false)
	d("no_token_positional_embeddings", false)
	d("max_source_positions", 1024)
	d("max_target_positions", 1024)
}

func iwsltArch(get func(string) (interface{}, bool), set func(string, interface{})) {
	d := func(n string, v interface{}) { setDefault(get, set, n, v) }
	d("encoder_embed_dim", 512)
	d("encoder_ffn_embed_dim", 1024)
	d("encoder_attention_heads", 4)
	d("encoder_layers", 6)
	d("decoder_embed_dim", 512)
	d("decoder_ffn_embed_dim", 1024)
	d("decoder_attention_heads", 4)
	d("decoder_layers", 6)
	baseArch(get, set)
}

func bigArch(dropout, attn, act float64, preLN bool) func(get func(string) (interface{}, bool), set func(string, interface{})) {
	return func(get func(string) (interface{}, bool), set func(string, interface{})) {
		d := func(n string, v interface{}) { setDefault(get, set, n, v) }
		if preLN {
			d("encoder_normalize_before", true)
			d("decoder_normalize_before", true)
		}
		if attn > 0 {
			d("attention_dropout", attn)
		}
		if act > 0 {
			d("activation_dropout", act)
		}
		d("encoder_embed_dim", 1024)
		d("encoder_ffn_embed_dim", 4096)
		d("encoder_attention_heads", 16)
		d("encoder_normalize_before", false)
		d("decoder_embed_dim", 1024)
		d("decoder_ffn_embed_dim", 4096)
		d("decoder_attention_heads", 16)
		d("dropout", dropout)
		baseArch(get, set)
	}
}
