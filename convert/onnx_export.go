package convert

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/onnxio"
)

// ONNX file names, as optimum lays out a seq2seq export.
const (
	ONNXEncoder         = "encoder_model.onnx"
	ONNXDecoder         = "decoder_model.onnx"
	ONNXDecoderWithPast = "decoder_with_past_model.onnx"
	ONNXDecoderMerged   = "decoder_model_merged.onnx"
)

// DefaultONNXOpset is the opset we target: the first with LayerNormalization.
const DefaultONNXOpset = 17

// ErrONNXUnsupported wraps every "this model or option cannot be exported" error.
var ErrONNXUnsupported = errors.New("not supported by the ONNX export")

// ONNXOptions selects what ExportONNX writes.
type ONNXOptions struct {
	Opset int  // 0 means DefaultONNXOpset
	FP16  bool // fp16 weights and activations; LayerNorm and softmax still in fp32
	// KeepOmega exports Admin ω as explicit Mul nodes. A model whose config says it
	// carries ω cannot be exported without it: fold ω first (admin.Fold) or set this.
	KeepOmega bool
	// ExternalAbove forces external data above this many tensor bytes (tests); 0 = 2 GB rule.
	ExternalAbove int64
	// Producer version string stamped into the files.
	Version string
}

func (o ONNXOptions) opset() int {
	if o.Opset == 0 {
		return DefaultONNXOpset
	}
	return o.Opset
}

// CheckONNX reports why m cannot be exported with opt, or nil.
func CheckONNX(m *model.Model, opt ONNXOptions) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if o := opt.opset(); o < 17 {
		return fmt.Errorf("%w: opset %d (LayerNormalization needs opset ≥ 17)", ErrONNXUnsupported, o)
	} else if _, err := onnxio.OpsetIR(o); err != nil || o > 21 {
		return fmt.Errorf("%w: opset %d (supported: 17-21)", ErrONNXUnsupported, o)
	}
	c := &m.Config
	if c.Init.HasOmega() && !opt.KeepOmega {
		return fmt.Errorf("%w: Admin model (init %s) with unfolded ω: fold it first or keep ω as Mul nodes", ErrONNXUnsupported, c.Init)
	}
	if c.EncoderEmbedDim%2 != 0 && !(c.EncoderLearnedPos && c.DecoderLearnedPos) {
		return fmt.Errorf("%w: sinusoidal positions with odd embed dim %d", ErrONNXUnsupported, c.EncoderEmbedDim)
	}
	if c.EncoderEmbedDim < 4 && !(c.EncoderLearnedPos && c.DecoderLearnedPos) {
		return fmt.Errorf("%w: sinusoidal positions with embed dim %d < 4", ErrONNXUnsupported, c.EncoderEmbedDim)
	}
	switch c.Activation {
	case "relu", "gelu", "gelu_accurate", "gelu_fast", "tanh", "linear":
	default:
		return fmt.Errorf("%w: activation_fn %q", ErrONNXUnsupported, c.Activation)
	}
	return nil
}

// BuildONNX builds the four graphs of an export, keyed by file name.
func BuildONNX(m *model.Model, opt ONNXOptions) (map[string]*onnxio.ModelProto, error) {
	if err := CheckONNX(m, opt); err != nil {
		return nil, err
	}
	c := &m.Config
	dt := onnxio.TensorProto_FLOAT
	if opt.FP16 {
		dt = onnxio.TensorProto_FLOAT16
	}
	d, h := int64(c.DecoderEmbedDim), int64(c.DecoderHeads)
	hd := d / h
	i64 := onnxio.TensorProto_INT64
	B, S, T := onnxio.Dyn("batch_size"), onnxio.Dyn("encoder_sequence_length"), onnxio.Dyn("decoder_sequence_length")
	kv := func(seq onnxio.Dim) []onnxio.Dim { return []onnxio.Dim{B, onnxio.Fixed(h), seq, onnxio.Fixed(hd)} }
	V := onnxio.Fixed(int64(c.TgtVocab))
	ident := func(s string) string { return s }

	newB := func(g *onnxio.Graph, out func(string) string) *onnxBuilder {
		return &onnxBuilder{m: m, opt: opt, g: g, dt: dt, out: out}
	}
	graphs := map[string]*onnxio.GraphProto{}

	// Encoder.
	{
		g := onnxio.NewGraph("xform_encoder", "")
		b := newB(g, ident)
		ids := g.Input("input_ids", i64, B, onnxio.Dyn("encoder_sequence_length"))
		mask := g.Input("attention_mask", i64, B, onnxio.Dyn("encoder_sequence_length"))
		b.encoder(ids, mask, "last_hidden_state")
		g.Output("last_hidden_state", dt, B, S, onnxio.Fixed(d))
		if b.err != nil {
			return nil, fmt.Errorf("onnx encoder: %w", b.err)
		}
		graphs[ONNXEncoder] = g.Proto
	}

	pastNames := func(prefix string) (self, cross [][2]string) {
		for i := 0; i < c.DecoderLayers; i++ {
			p := fmt.Sprintf("%s.%d.", prefix, i)
			self = append(self, [2]string{p + "decoder.key", p + "decoder.value"})
			cross = append(cross, [2]string{p + "encoder.key", p + "encoder.value"})
		}
		return
	}
	pastSelf, pastCross := pastNames("past_key_values")
	presSelf, presCross := pastNames("present")
	P := onnxio.Dyn("past_decoder_sequence_length")
	So := onnxio.Dyn("encoder_sequence_length_out")

	// Decoder, first step (no past).
	{
		g := onnxio.NewGraph("xform_decoder", "")
		b := newB(g, ident)
		io := decoderIO{
			ids:       g.Input("input_ids", i64, B, T),
			encMask:   g.Input("encoder_attention_mask", i64, B, S),
			encHidden: g.Input("encoder_hidden_states", dt, B, S, onnxio.Fixed(d)),
		}
		b.decoder(io)
		g.Output("logits", dt, B, T, V)
		for i := range presSelf {
			g.Output(presSelf[i][0], dt, kv(T)...)
			g.Output(presSelf[i][1], dt, kv(T)...)
			g.Output(presCross[i][0], dt, kv(S)...)
			g.Output(presCross[i][1], dt, kv(S)...)
		}
		if b.err != nil {
			return nil, fmt.Errorf("onnx decoder: %w", b.err)
		}
		graphs[ONNXDecoder] = g.Proto
	}

	// Decoder with past: one token, cross K/V as inputs only.
	{
		g := onnxio.NewGraph("xform_decoder_with_past", "")
		b := newB(g, ident)
		io := decoderIO{
			ids:      g.Input("input_ids", i64, B, onnxio.Fixed(1)),
			encMask:  g.Input("encoder_attention_mask", i64, B, S),
			withPast: true, pastSelf: pastSelf, pastCross: pastCross,
		}
		for i := range pastSelf {
			g.Input(pastSelf[i][0], dt, kv(P)...)
			g.Input(pastSelf[i][1], dt, kv(P)...)
			g.Input(pastCross[i][0], dt, kv(So)...)
			g.Input(pastCross[i][1], dt, kv(So)...)
		}
		b.decoder(io)
		g.Output("logits", dt, B, onnxio.Fixed(1), V)
		for i := range presSelf {
			g.Output(presSelf[i][0], dt, kv(onnxio.Dyn("past_decoder_sequence_length + 1"))...)
			g.Output(presSelf[i][1], dt, kv(onnxio.Dyn("past_decoder_sequence_length + 1"))...)
		}
		if b.err != nil {
			return nil, fmt.Errorf("onnx decoder with past: %w", b.err)
		}
		graphs[ONNXDecoderWithPast] = g.Proto
	}

	// Merged: If(use_cache_branch) over both decoders; weights in the outer graph.
	{
		g := onnxio.NewGraph("xform_decoder_merged", "")
		ids := g.Input("input_ids", i64, B, T)
		encMask := g.Input("encoder_attention_mask", i64, B, S)
		encHidden := g.Input("encoder_hidden_states", dt, B, S, onnxio.Fixed(d))
		for i := range pastSelf {
			g.Input(pastSelf[i][0], dt, kv(P)...)
			g.Input(pastSelf[i][1], dt, kv(P)...)
			g.Input(pastCross[i][0], dt, kv(So)...)
			g.Input(pastCross[i][1], dt, kv(So)...)
		}
		useCache := g.Input("use_cache_branch", onnxio.TensorProto_BOOL, onnxio.Fixed(1))

		outNames := []string{"logits"}
		for i := range presSelf {
			outNames = append(outNames, presSelf[i][0], presSelf[i][1], presCross[i][0], presCross[i][1])
		}
		branch := func(name, prefix string, withPast bool) (*onnxio.GraphProto, error) {
			sg := onnxio.NewSubgraph(name, prefix, g)
			b := newB(sg, func(s string) string { return prefix + s })
			io := decoderIO{ids: ids, encMask: encMask, encHidden: encHidden, withPast: withPast, pastSelf: pastSelf, pastCross: pastCross}
			b.decoder(io)
			if withPast {
				// Both branches must have the same outputs; cross K/V are not recomputed,
				// so the cached branch returns empty ones (batch 0), as optimum does:
				// callers keep the first step's.
				empty := onnxio.RawTensor("empty_kv", dt, []int64{0, h, 1, hd}, nil)
				for i := range presCross {
					for _, n := range presCross[i] {
						sg.NodeOut("Constant", nil, []string{prefix + n}, onnxio.AttrTensor("value", empty))
					}
				}
			}
			sg.Output(prefix+"logits", dt, B, onnxio.Dyn(prefix+"decoder_sequence_length"), V)
			for i := range presSelf {
				for _, n := range presSelf[i] {
					sg.Output(prefix+n, dt, kv(onnxio.Dyn(prefix+"present_decoder_sequence_length"))...)
				}
				for _, n := range presCross[i] {
					sg.Output(prefix+n, dt, onnxio.Dyn(prefix+"encoder_batch_size"), onnxio.Fixed(h), onnxio.Dyn(prefix+"encoder_sequence_length_out"), onnxio.Fixed(hd))
				}
			}
			// Outputs must be listed in one order in both branches.
			sg.Proto.Output = reorder(sg.Proto.Output, outNames, prefix)
			return sg.Proto, b.err
		}
		withPast, err := branch("decoder_with_past", "past/", true)
		if err != nil {
			return nil, fmt.Errorf("onnx merged decoder: %w", err)
		}
		noPast, err := branch("decoder", "nopast/", false)
		if err != nil {
			return nil, fmt.Errorf("onnx merged decoder: %w", err)
		}
		g.NodeOut("If", []string{useCache}, outNames,
			onnxio.AttrGraph("then_branch", withPast), onnxio.AttrGraph("else_branch", noPast))
		g.Output("logits", dt, B, T, V)
		for i := range presSelf {
			g.Output(presSelf[i][0], dt, kv(onnxio.Dyn("present_decoder_sequence_length"))...)
			g.Output(presSelf[i][1], dt, kv(onnxio.Dyn("present_decoder_sequence_length"))...)
			g.Output(presCross[i][0], dt, onnxio.Dyn("encoder_batch_size"), onnxio.Fixed(h), So, onnxio.Fixed(hd))
			g.Output(presCross[i][1], dt, onnxio.Dyn("encoder_batch_size"), onnxio.Fixed(h), So, onnxio.Fixed(hd))
		}
		graphs[ONNXDecoderMerged] = g.Proto
	}

	meta := onnxMetadata(m, opt)
	out := map[string]*onnxio.ModelProto{}
	for name, gp := range graphs {
		mp, err := onnxio.NewModel(gp, opt.opset(), "xform", opt.Version, meta)
		if err != nil {
			return nil, fmt.Errorf("onnx %s: %w", name, err)
		}
		out[name] = mp
	}
	return out, nil
}

// reorder returns vs sorted as names (each prefixed) are listed.
func reorder(vs []*onnxio.ValueInfoProto, names []string, prefix string) []*onnxio.ValueInfoProto {
	by := map[string]*onnxio.ValueInfoProto{}
	for _, v := range vs {
		by[v.GetName()] = v
	}
	out := make([]*onnxio.ValueInfoProto, 0, len(names))
	for _, n := range names {
		out = append(out, by[prefix+n])
	}
	return out
}

// onnxMetadata records what a caller must know but the graphs cannot say: special ids, the
// decoder start token, and that sources are left-padded with EOS appended.
func onnxMetadata(m *model.Model, opt ONNXOptions) map[string]string {
	c := &m.Config
	dtype := "float32"
	if opt.FP16 {
		dtype = "float16"
	}
	return map[string]string{
		"xform.arch":                   c.Arch,
		"xform.init_type":              string(c.Init),
		"xform.omega":                  map[bool]string{true: "explicit Mul", false: "none"}[c.Init.HasOmega()],
		"xform.dtype":                  dtype,
		"xform.normalize_before":       strconv.FormatBool(c.EncoderNormalizeBefore) + "/" + strconv.FormatBool(c.DecoderNormalizeBefore),
		"bos_token_id":                 strconv.Itoa(model.BOS),
		"pad_token_id":                 strconv.Itoa(model.Pad),
		"eos_token_id":                 strconv.Itoa(model.EOS),
		"unk_token_id":                 strconv.Itoa(model.Unk),
		"decoder_start_token_id":       strconv.Itoa(model.EOS),
		"source_padding":               "left (fairseq); input_ids end with eos; attention_mask = input_ids != pad",
		"max_source_positions":         strconv.Itoa(c.MaxSourcePositions),
		"max_target_positions":         strconv.Itoa(c.MaxTargetPositions),
		"logits":                       "raw; fairseq scores with log_softmax in fp32",
		"decoder_with_past.cross_attn": "present.*.encoder.* of the first step, passed back unchanged",
	}
}

// ExportONNX writes the four graphs plus config.json and generation_config.json into dir,
// which must exist. Atomicity (temp dir + rename) is the caller's business.
func ExportONNX(m *model.Model, dir string, opt ONNXOptions) error {
	files, err := BuildONNX(m, opt)
	if err != nil {
		return err
	}
	for _, name := range []string{ONNXEncoder, ONNXDecoder, ONNXDecoderWithPast, ONNXDecoderMerged} {
		if err := onnxio.Save(filepath.Join(dir, name), files[name], onnxio.SaveOptions{ExternalAbove: opt.ExternalAbove}); err != nil {
			return fmt.Errorf("export %s: %w", name, err)
		}
	}
	return writeONNXConfigs(m, dir, opt)
}

// ONNXDirOptions are the extras of ExportONNXDir.
type ONNXDirOptions struct {
	SrcDict, TgtDict string // dictionaries to copy in ("" = none)
	Force            bool   // replace an existing dir
}

// ExportONNXDir writes a complete export directory all or nothing: everything goes into a
// temporary directory beside dir, is fsynced, and is renamed into place at the end, so a
// failed or interrupted export never leaves a half-written dir behind.
func ExportONNXDir(dir string, m *model.Model, opt ONNXOptions, extra ONNXDirOptions) error {
	if _, err := os.Stat(dir); err == nil && !extra.Force {
		return fmt.Errorf("export: %s: %w (use --force to replace it)", dir, os.ErrExist)
	}
	if err := CheckONNX(m, opt); err != nil {
		return err
	}
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	ok := false
	// MkdirTemp creates 0700; the published export is an ordinary directory.
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("export: %w", err)
	}
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	if err := ExportONNX(m, tmp, opt); err != nil {
		return err
	}
	srcName, tgtName := "dict.src.txt", "dict.tgt.txt"
	if c := m.Config; c.SourceLang != "" && c.TargetLang != "" && c.SourceLang != c.TargetLang {
		srcName, tgtName = "dict."+c.SourceLang+".txt", "dict."+c.TargetLang+".txt"
	}
	for _, f := range []struct{ src, name string }{{extra.SrcDict, srcName}, {extra.TgtDict, tgtName}} {
		if f.src != "" {
			if err := copyFileSync(f.src, filepath.Join(tmp, f.name)); err != nil {
				return err
			}
		}
	}
	syncDir(tmp)
	// Replace: move the old dir aside first, so that a failed rename can put it back.
	var old string
	if _, err := os.Stat(dir); err == nil {
		old = tmp + ".old"
		if err := os.Rename(dir, old); err != nil {
			return fmt.Errorf("export: %w", err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		if old != "" {
			os.Rename(old, dir)
		}
		return fmt.Errorf("export: %w", err)
	}
	ok = true
	if old != "" {
		os.RemoveAll(old)
	}
	syncDir(parent)
	return nil
}
