// Package convert maps every external format onto model.Model and back: fairseq state dicts
// (fused in_proj ⇄ q/k/v, embed_out, tied embeddings, version buffers, Clinic vs upstream
// names), xform's own model directories, and ONNX graphs.
package convert

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/xform-dev/xform/fairseqpt"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

// ErrUnknownArch is returned for an architecture xform does not know.
var ErrUnknownArch = errors.New("unknown architecture")

// ErrStateDict wraps a state dict that does not fit its config.
var ErrStateDict = errors.New("state dict does not match the model config")

// Imported is a model with what it came from.
type Imported struct {
	Model *model.Model
	// Checkpoint is the source fairseq checkpoint (nil for an xform directory). Its file stays
	// open until Close.
	Checkpoint *fairseqpt.Checkpoint
	Source     string // the file the weights came from
	Kind       string // "fairseq" or "xform"
	SrcDict    string // dict.<src>.txt found beside the checkpoint, if any
	TgtDict    string
	Profile    string   // profile.ratio.init (or profile_ratio.init) found beside it, if any
	Dropped    []string // fairseq entries that carry no parameters (version, _float_tensor)
}

// Close releases the source file.
func (im *Imported) Close() error {
	if im.Checkpoint != nil {
		return im.Checkpoint.Close()
	}
	return nil
}

// LoadCheckpoint loads a model from a fairseq checkpoint (.pt), a directory holding one
// (with dict.*.txt beside it, as fairseq model archives ship), or an xform model directory.
func LoadCheckpoint(path string) (*model.Model, error) {
	im, err := Import(path)
	if err != nil {
		return nil, err
	}
	im.Close()
	return im.Model, nil
}

// Import is LoadCheckpoint keeping the source checkpoint and the files found beside it.
func Import(path string) (*Imported, error) { return importWith(path, nil) }

func importWith(path string, read func(name string) bool) (*Imported, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	dir := filepath.Dir(path)
	if st.IsDir() {
		dir = path
		if _, err := os.Stat(filepath.Join(path, xformConfigName)); err == nil {
			return loadXformDir(path)
		}
		path, err = findCheckpointInDir(path)
		if err != nil {
			return nil, err
		}
	}
	ck, err := fairseqpt.OpenCheckpoint(path)
	if err != nil {
		return nil, err
	}
	m, dropped, err := fromFairseq(ck, read)
	if err != nil {
		ck.Close()
		return nil, err
	}
	im := &Imported{Model: m, Checkpoint: ck, Source: path, Kind: "fairseq", Dropped: dropped}
	im.SrcDict, im.TgtDict = findDicts(dir, m.Config.SourceLang, m.Config.TargetLang)
	im.Profile = FindProfile(dir)
	return im, nil
}

func findCheckpointInDir(dir string) (string, error) {
	for _, n := range []string{"model.pt", "checkpoint_best.pt", "checkpoint_last.pt"} {
		p := filepath.Join(dir, n)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	pts, _ := filepath.Glob(filepath.Join(dir, "*.pt"))
	if len(pts) == 1 {
		return pts[0], nil
	}
	if len(pts) == 0 {
		return "", fmt.Errorf("convert: %s: no checkpoint (.pt) and no xform %s in the directory", dir, xformConfigName)
	}
	return "", fmt.Errorf("convert: %s: %d checkpoints and none named model.pt/checkpoint_best.pt/checkpoint_last.pt; name one", dir, len(pts))
}

func findDicts(dir, src, tgt string) (string, string) {
	look := func(lang string) string {
		if lang == "" {
			return ""
		}
		p := filepath.Join(dir, "dict."+lang+".txt")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		return ""
	}
	return look(src), look(tgt)
}

// FindProfile returns Admin's profile file in dir under either of the names Clinic used.
func FindProfile(dir string) string {
	for _, n := range []string{"profile.ratio.init", "profile_ratio.init"} {
		p := filepath.Join(dir, n)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// ConfigFromFairseq builds the model config from a checkpoint's args/cfg, filling the
// architecture's defaults as fairseq does. Vocabulary sizes come from the embeddings.
func ConfigFromFairseq(ck *fairseqpt.Checkpoint) (model.Config, error) {
	vals := map[string]interface{}{}
	for _, e := range ck.Config {
		vals[e.Key] = e.Value
	}
	get := func(n string) (interface{}, bool) { v, ok := vals[n]; return v, ok }
	set := func(n string, v interface{}) { vals[n] = v }
	var c model.Config
	if ck.Generation == fairseqpt.GenWeights {
		return c, fmt.Errorf("convert: %s: %w: the checkpoint has only a state dict, no args/cfg to say its architecture", ck.Path, fairseqpt.ErrNotFairseq)
	}
	arch, _ := vals["arch"].(string)
	if arch == "" {
		if m, ok := vals["_name"].(string); ok {
			arch = m
		}
	}
	defaults, ok := archDefaults[arch]
	if !ok {
		known := make([]string, 0, len(archDefaults))
		for k := range archDefaults {
			known = append(known, k)
		}
		sort.Strings(known)
		return c, fmt.Errorf("convert: %s: %w %q (xform knows %s)", ck.Path, ErrUnknownArch, arch, strings.Join(known, ", "))
	}
	defaults(get, set)
	var errs []string
	num := func(n string) int {
		switch x := vals[n].(type) {
		case int:
			return x
		case *big.Int:
			return int(x.Int64())
		case float64:
			if x == math.Trunc(x) {
				return int(x)
			}
		}
		errs = append(errs, fmt.Sprintf("%s = %v is not an integer", n, vals[n]))
		return 0
	}
	flt := func(n string) float64 {
		switch x := vals[n].(type) {
		case float64:
			return x
		case int:
			return float64(x)
		case nil:
			return 0
		}
		errs = append(errs, fmt.Sprintf("%s = %v is not a number", n, vals[n]))
		return 0
	}
	flag := func(n string) bool {
		b, _ := vals[n].(bool)
		return b
	}
	str := func(n string) string { s, _ := vals[n].(string); return s }
	c.Arch = arch
	c.Init = model.Init(str("init_type"))
	if c.Init == "" {
		c.Init = model.InitDefault
	}
	c.EncoderLayers, c.DecoderLayers = num("encoder_layers"), num("decoder_layers")
	c.EncoderEmbedDim, c.DecoderEmbedDim = num("encoder_embed_dim"), num("decoder_embed_dim")
	c.EncoderFFNDim, c.DecoderFFNDim = num("encoder_ffn_embed_dim"), num("decoder_ffn_embed_dim")
	c.EncoderHeads, c.DecoderHeads = num("encoder_attention_heads"), num("decoder_attention_heads")
	c.EncoderNormalizeBefore, c.DecoderNormalizeBefore = flag("encoder_normalize_before"), flag("decoder_normalize_before")
	c.EncoderLearnedPos, c.DecoderLearnedPos = flag("encoder_learned_pos"), flag("decoder_learned_pos")
	c.NoTokenPositional = flag("no_token_positional_embeddings")
	c.ShareAllEmbeddings = flag("share_all_embeddings")
	c.ShareDecoderInputOutputEmbed = flag("share_decoder_input_output_embed") || c.ShareAllEmbeddings
	c.Activation = str("activation_fn")
	c.MaxSourcePositions, c.MaxTargetPositions = num("max_source_positions"), num("max_target_positions")
	c.Dropout = flt("dropout")
	c.AttentionDropout = flt("attention_dropout")
	c.ActivationDropout = flt("activation_dropout")
	if c.ActivationDropout == 0 {
		if _, ok := vals["relu_dropout"]; ok {
			c.ActivationDropout = flt("relu_dropout") // Clinic falls back to --relu-dropout
		}
	}
	c.SourceLang, c.TargetLang = str("source_lang"), str("target_lang")
	if v, ok := vals["adaptive_softmax_cutoff"]; ok && v != nil {
		errs = append(errs, fmt.Sprintf("adaptive_softmax_cutoff = %v (adaptive softmax is not supported)", v))
	}
	if v, ok := vals["decoder_output_dim"]; ok && v != nil && num("decoder_output_dim") != c.DecoderEmbedDim {
		errs = append(errs, "decoder_output_dim differs from decoder_embed_dim (project_out_dim is not supported)")
	}
	if v, ok := vals["decoder_input_dim"]; ok && v != nil && num("decoder_input_dim") != c.DecoderEmbedDim {
		errs = append(errs, "decoder_input_dim differs from decoder_embed_dim (project_in_dim is not supported)")
	}
	if flag("layernorm_embedding") {
		errs = append(errs, "layernorm_embedding = True is not supported")
	}
	if flag("no_scale_embedding") {
		errs = append(errs, "no_scale_embedding = True is not supported")
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("convert: %s: %w: %s", ck.Path, model.ErrConfig, strings.Join(errs, "; "))
	}
	return c, nil
}

var layerKey = regexp.MustCompile(`^(encoder|decoder)\.layers\.(\d+)\.(.+)$`)

// FromFairseq maps a fairseq/Clinic state dict onto canonical names and validates it against
// the config. It returns the names of entries that hold no parameters and were dropped.
func FromFairseq(ck *fairseqpt.Checkpoint) (*model.Model, []string, error) {
	return fromFairseq(ck, nil)
}

// fromFairseq maps the state dict; when read is non-nil, only the entries it accepts are read
// from the file and the others become placeholders (dtype and shape, no data).
func fromFairseq(ck *fairseqpt.Checkpoint, read func(name string) bool) (*model.Model, []string, error) {
	cfg, err := ConfigFromFairseq(ck)
	if err != nil {
		return nil, nil, err
	}
	fail := func(format string, a ...interface{}) error {
		return fmt.Errorf("convert: %s: %w: %s", ck.Path, ErrStateDict, fmt.Sprintf(format, a...))
	}
	state := map[string]*fairseqpt.Tensor{}
	for _, nt := range ck.State {
		state[nt.Name] = nt.Tensor
	}
	if t, ok := state[model.EncEmbed]; ok && len(t.Shape) == 2 {
		cfg.SrcVocab = t.Shape[0]
	} else {
		return nil, nil, fail("no %s [V, d] tensor", model.EncEmbed)
	}
	cfg.TgtVocab = cfg.SrcVocab
	if t, ok := state[model.DecEmbed]; ok && len(t.Shape) == 2 {
		cfg.TgtVocab = t.Shape[0]
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, fmt.Errorf("convert: %s: %w", ck.Path, err)
	}
	m := &model.Model{Config: cfg, Params: map[string]*tensor.Tensor{}}
	var dropped []string
	loaded := map[string]*tensor.Tensor{}
	if read == nil {
		if loaded, err = materializeAll(ck, cfg); err != nil {
			return nil, nil, err
		}
	}
	get := func(name string, t *fairseqpt.Tensor) (*tensor.Tensor, error) {
		if read != nil && !read(name) {
			return &tensor.Tensor{DType: t.DType(), Shape: append([]int(nil), t.Shape...)}, nil
		}
		if mt, ok := loaded[name]; ok {
			return mt, nil
		}
		mt, err := t.Materialize()
		if err != nil {
			return nil, fmt.Errorf("convert: %s: %s: %w", ck.Path, name, err)
		}
		return mt, nil
	}
	put := func(name string, t *tensor.Tensor) error {
		if _, dup := m.Params[name]; dup {
			return fail("two entries map to %s", name)
		}
		m.Params[name] = t
		return nil
	}
	omegaNames := map[string]string{
		"encoder.attention_ratio_change": "self_attn_omega",
		"encoder.fc_ratio_change":        "ffn_omega",
		"decoder.self_ratio_change":      "self_attn_omega",
		"decoder.encoder_ratio_change":   "encoder_attn_omega",
		"decoder.fc_ratio_change":        "ffn_omega",
	}
	encLN := []string{"self_attn_layer_norm", "final_layer_norm"}
	decLN := []string{"self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"}
	for _, nt := range ck.State {
		name, t := nt.Name, nt.Tensor
		switch {
		case name == "encoder.version" || name == "decoder.version":
			if err := checkVersion(name, t, cfg); err != nil {
				return nil, nil, fail("%v", err)
			}
			dropped = append(dropped, name)
			continue
		case strings.HasSuffix(name, "embed_positions._float_tensor") || strings.HasSuffix(name, "embed_positions.weights"):
			dropped = append(dropped, name) // sinusoidal: no parameters, rebuilt on the fly
			continue
		case name == model.DecEmbed && cfg.ShareAllEmbeddings:
			if enc := state[model.EncEmbed]; enc.Storage != t.Storage || enc.Offset != t.Offset {
				a, err1 := get(name, t)
				b, err2 := get(model.EncEmbed, enc)
				if err1 != nil || err2 != nil || string(a.Data) != string(b.Data) {
					return nil, nil, fail("share_all_embeddings is set but %s differs from %s", model.DecEmbed, model.EncEmbed)
				}
			}
			dropped = append(dropped, name+" (shared with "+model.EncEmbed+")")
			continue
		case name == "decoder.embed_out" || name == "decoder.output_projection.weight":
			if cfg.TiedOutput() {
				dropped = append(dropped, name+" (tied to the decoder embedding)")
				continue
			}
			mt, err := get(name, t)
			if err != nil {
				return nil, nil, err
			}
			if err := put(model.OutProj, mt); err != nil {
				return nil, nil, err
			}
			continue
		}
		mm := layerKey.FindStringSubmatch(name)
		if mm == nil {
			mt, err := get(name, t)
			if err != nil {
				return nil, nil, err
			}
			if err := put(name, mt); err != nil {
				return nil, nil, err
			}
			continue
		}
		side, idx, rest := mm[1], mm[2], mm[3]
		prefix := side + ".layers." + idx + "."
		if o, ok := omegaNames[side+"."+rest]; ok {
			mt, err := get(name, t)
			if err != nil {
				return nil, nil, err
			}
			if err := put(prefix+o, mt); err != nil {
				return nil, nil, err
			}
			continue
		}
		if strings.HasPrefix(rest, "layer_norms.") { // fairseq ≤0.6 names
			lns := encLN
			if side == "decoder" {
				lns = decLN
			}
			parts := strings.SplitN(strings.TrimPrefix(rest, "layer_norms."), ".", 2)
			var k int
			if _, err := fmt.Sscanf(parts[0], "%d", &k); err != nil || k < 0 || k >= len(lns) || len(parts) != 2 {
				return nil, nil, fail("unexpected entry %s", name)
			}
			rest = lns[k] + "." + parts[1]
		}
		if attn, kind, ok := cutAttn(rest); ok {
			mt, err := get(name, t)
			if err != nil {
				return nil, nil, err
			}
			switch kind {
			case "in_proj_weight", "in_proj_bias":
				d := cfg.EncoderEmbedDim
				parts, err := splitRows(mt, 3, d)
				if err != nil {
					return nil, nil, fail("%s: %v", name, err)
				}
				suffix := ".weight"
				if kind == "in_proj_bias" {
					suffix = ".bias"
				}
				for i, q := range []string{"q_proj", "k_proj", "v_proj"} {
					if err := put(prefix+attn+"."+q+suffix, parts[i]); err != nil {
						return nil, nil, err
					}
				}
			case "q_proj_weight", "k_proj_weight", "v_proj_weight": // Clinic deepnet
				if err := put(prefix+attn+"."+kind[:6]+".weight", mt); err != nil {
					return nil, nil, err
				}
			default:
				if err := put(prefix+rest, mt); err != nil {
					return nil, nil, err
				}
			}
			continue
		}
		mt, err := get(name, t)
		if err != nil {
			return nil, nil, err
		}
		if err := put(prefix+rest, mt); err != nil {
			return nil, nil, err
		}
	}
	validate := m.Validate
	if read != nil {
		validate = m.ValidateLayout
	}
	if err := validate(); err != nil {
		return nil, nil, fmt.Errorf("convert: %s: %w: %v", ck.Path, ErrStateDict, err)
	}
	return m, dropped, nil
}

// cutAttn splits "self_attn.in_proj_weight" into ("self_attn", "in_proj_weight").
func cutAttn(rest string) (attn, kind string, ok bool) {
	for _, a := range []string{"self_attn.", "encoder_attn."} {
		if strings.HasPrefix(rest, a) {
			return strings.TrimSuffix(a, "."), strings.TrimPrefix(rest, a), true
		}
	}
	return "", "", false
}

// splitRows splits a [n·d, ...] tensor into n [d, ...] tensors along the first axis.
func splitRows(t *tensor.Tensor, n, d int) ([]*tensor.Tensor, error) {
	if len(t.Shape) == 0 || t.Shape[0] != n*d {
		return nil, fmt.Errorf("fused projection has shape %v, want first dimension %d", t.Shape, n*d)
	}
	rowBytes := t.Numel() * t.DType.Size() / t.Shape[0]
	out := make([]*tensor.Tensor, n)
	for i := range out {
		shape := append([]int{d}, t.Shape[1:]...)
		out[i] = &tensor.Tensor{DType: t.DType, Shape: shape}
		if t.Data != nil { // nil: a placeholder
			// Views share the fused buffer (full slice expression: appending can never spill into a neighbour).
			lo, hi := i*d*rowBytes, (i+1)*d*rowBytes
			out[i].Data = t.Data[lo:hi:hi]
		}
	}
	return out, nil
}

// checkVersion applies fairseq's rule: an old version means the final layer_norm must be dropped,
// which only matters (and is only supported) for Post-LN models that have none.
func checkVersion(name string, t *fairseqpt.Tensor, cfg model.Config) error {
	v, err := t.Float64s()
	if err != nil || len(v) != 1 {
		return fmt.Errorf("%s is not a one-element tensor", name)
	}
	old := (name == "encoder.version" && v[0] < 2) || (name == "decoder.version" && v[0] <= 2)
	nb := cfg.EncoderNormalizeBefore
	if name == "decoder.version" {
		nb = cfg.DecoderNormalizeBefore
	}
	if old && nb {
		return fmt.Errorf("%s = %g: a pre-0.7 normalize-before checkpoint whose final layer norm fairseq drops; not supported", name, v[0])
	}
	return nil
}

// materializeAll reads every parameter-bearing tensor of the state dict from the file in
// parallel: on a large checkpoint the reads (page cache copies and CRC checks) dominate.
func materializeAll(ck *fairseqpt.Checkpoint, cfg model.Config) (map[string]*tensor.Tensor, error) {
	var jobs []fairseqpt.NamedTensor
	for _, nt := range ck.State {
		n := nt.Name
		if strings.HasSuffix(n, ".version") || strings.HasSuffix(n, "_float_tensor") || strings.HasSuffix(n, "embed_positions.weights") ||
			(n == model.DecEmbed && cfg.ShareAllEmbeddings) ||
			((n == "decoder.embed_out" || n == "decoder.output_projection.weight") && cfg.TiedOutput()) {
			continue
		}
		jobs = append(jobs, nt)
	}
	out := make([]*tensor.Tensor, len(jobs))
	errs := make([]error, len(jobs))
	workers := runtime.GOMAXPROCS(0)
	if workers > 8 {
		workers = 8
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				out[i], errs[i] = jobs[i].Tensor.Materialize()
			}
		}()
	}
	for i := range jobs {
		next <- i
	}
	close(next)
	wg.Wait()
	m := make(map[string]*tensor.Tensor, len(jobs))
	for i, nt := range jobs {
		if errs[i] != nil {
			return nil, fmt.Errorf("convert: %s: %s: %w", ck.Path, nt.Name, errs[i])
		}
		m[nt.Name] = out[i]
	}
	return m, nil
}
