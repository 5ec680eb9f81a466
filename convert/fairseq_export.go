package convert

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/nlpodyssey/gopickle/types"
	"github.com/xform-dev/xform/fairseqpt"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

// FairseqTarget names the fairseq generation an exported checkpoint is written for.
type FairseqTarget string

const (
	// TargetClinic is the Transformer-Clinic fork (fairseq 0.8.0): args Namespace, fused
	// in_proj, embed_out, Admin ω as *_ratio_change. Also loads in fairseq 0.9–0.12 when
	// the model has no ω (their upgrade hooks split in_proj and rename embed_out).
	TargetClinic FairseqTarget = "clinic"
	// TargetFairseq010 is fairseq ≤0.10 (and the Clinic fork's default init): args
	// Namespace, the 0.8 state-dict layout (which every release up to 0.12 upgrades on
	// load), no ω: Admin models must be folded.
	TargetFairseq010 FairseqTarget = "fairseq-0.10"
	// TargetFairseq012 is fairseq 0.12: args None, cfg as plain dicts, native names
	// (separate q/k/v, output_projection); no ω.
	TargetFairseq012 FairseqTarget = "fairseq-0.12"
)

// ParseFairseqTarget checks a --target value.
func ParseFairseqTarget(s string) (FairseqTarget, error) {
	switch t := FairseqTarget(s); t {
	case TargetClinic, TargetFairseq010, TargetFairseq012:
		return t, nil
	}
	return "", fmt.Errorf("%w: unknown fairseq target %q (clinic, fairseq-0.10, fairseq-0.12)", ErrExport, s)
}

// Sentinel errors of the fairseq export.
var (
	ErrExport   = errors.New("cannot export")
	ErrNeedFold = errors.New("Admin ω has no representation outside the Clinic fork: fold it (--fold) or use --target clinic")
)

// FairseqExportOptions control BuildFairseqCheckpoint.
type FairseqExportOptions struct {
	Target FairseqTarget
	// WeightsOnly writes {"model": state dict} only: loads under torch ≥2.6's default
	// weights_only=True, not by fairseq's checkpoint loader.
	WeightsOnly bool
	// DropOptimizer omits last_optimizer_state.
	DropOptimizer bool
	// Source is the checkpoint the model was imported from (nil for an xform directory):
	// its args/cfg, training progress and optimizer state are carried over.
	Source *fairseqpt.Checkpoint
	// Changed says the model's parameters differ from Source's (a fold): Source's state
	// dict and optimizer state no longer apply.
	Changed bool
	// Training, when set, is written as the checkpoint's optimizer_history entry,
	// extra_state and last_optimizer_state (fairseq_train_state.go), so fairseq and xform
	// resume from the file.
	Training *TrainingState
}

// FairseqExport is the object to pickle and what was done to get it.
type FairseqExport struct {
	Root  interface{}
	Notes []string
}

// BuildFairseqCheckpoint assembles the checkpoint object for m. Without Changed and with a
// Source of the target's own layout, Source's state dict is reused as it is (same tensors,
// same storage sharing, same _metadata), so the export is bit-identical in every tensor.
func BuildFairseqCheckpoint(m *model.Model, opt FairseqExportOptions) (*FairseqExport, error) {
	c := m.Config
	src := opt.Source
	out := &FairseqExport{}
	note := func(format string, a ...interface{}) { out.Notes = append(out.Notes, fmt.Sprintf(format, a...)) }
	if c.Init.HasOmega() && opt.Target != TargetClinic {
		return nil, fmt.Errorf("convert: %w (target %s)", ErrNeedFold, opt.Target)
	}
	if c.Init == model.InitDeepNet && opt.Target != TargetClinic {
		return nil, fmt.Errorf("convert: %w: DeepNet's α residual scale exists only in the Clinic fork (target %s)", ErrExport, opt.Target)
	}
	layout := layoutClinic
	if opt.Target == TargetFairseq012 {
		layout = layout012
	}
	srcLayout := layoutNone
	if src != nil {
		switch src.Generation {
		case fairseqpt.GenArgs:
			srcLayout = layoutClinic
		case fairseqpt.GenCfg, fairseqpt.GenDictConfig:
			srcLayout = layout012
		}
		if srcLayout == layoutClinic && hasSplitQKV(src) {
			srcLayout = layout010 // fairseq 0.9/0.10 names: reusing them for the fork would not load
		}
	}
	reuse := src != nil && !opt.Changed && srcLayout == layout
	var state interface{}
	if reuse {
		state, _ = fairseqpt.DictGet(src.Root, "model")
	} else {
		sd, err := fairseqStateDict(m, layout)
		if err != nil {
			return nil, err
		}
		state = sd
	}
	if opt.WeightsOnly {
		root := types.NewDict()
		root.Set("model", state)
		out.Root = root
		note("weights only: {\"model\": state dict} (torch.load(weights_only=True) loads it; fairseq's checkpoint loader does not)")
		return out, nil
	}

	root := types.NewDict()
	switch layout {
	case layoutClinic:
		args, err := exportArgs(m, src, opt.Changed || !reuse)
		if err != nil {
			return nil, err
		}
		root.Set("args", args)
	case layout012:
		root.Set("args", nil)
		if reuse {
			cfg, _ := fairseqpt.DictGet(src.Root, "cfg")
			root.Set("cfg", cfg)
		} else {
			args, err := exportArgs(m, src, true)
			if err != nil {
				return nil, err
			}
			root.Set("cfg", cfgFromArgs(args))
		}
	}
	root.Set("model", state)
	if src != nil {
		if v, ok := fairseqpt.DictGet(src.Root, "criterion"); ok {
			root.Set("criterion", v)
		}
	}
	root.Set("optimizer_history", optimizerHistory(src))
	if layout == layout012 {
		if v, ok := fairseqpt.DictGet(srcRoot(src), "task_state"); ok {
			root.Set("task_state", v)
		}
	}
	extra, dropped := extraState(src)
	if dropped {
		note("extra_state.train_meters omitted (pickled fairseq.meters objects would need fairseq installed to unpickle; the trainer treats them as optional)")
	}
	root.Set("extra_state", extra)
	if v, ok := fairseqpt.DictGet(srcRoot(src), "last_optimizer_state"); ok {
		switch {
		case opt.DropOptimizer:
			note("last_optimizer_state dropped (--drop-optimizer)")
		case opt.Changed:
			note("last_optimizer_state dropped: the fold changed the parameters it was computed for")
		case !reuse:
			note("last_optimizer_state dropped: the %s parameter layout differs from the source's, so its per-parameter state would not line up", opt.Target)
		default:
			root.Set("last_optimizer_state", v)
		}
	}
	if opt.Training != nil {
		if err := putTrainingState(root, m, layout, src, opt.Training); err != nil {
			return nil, err
		}
	}
	out.Root = root
	return out, nil
}

func srcRoot(src *fairseqpt.Checkpoint) interface{} {
	if src == nil {
		return nil
	}
	return src.Root
}

func hasSplitQKV(ck *fairseqpt.Checkpoint) bool {
	for _, nt := range ck.State {
		if strings.HasSuffix(nt.Name, ".q_proj.weight") {
			return true
		}
	}
	return false
}

type stateLayout int

const (
	layoutNone   stateLayout = iota
	layoutClinic             // fairseq 0.8 / Clinic names
	layout010                // fairseq 0.9–0.10 names (split q/k/v)
	layout012                // fairseq 0.12 names
)

// FairseqStateDict returns m's parameters under the target's fairseq names, in the order the target's
// model.state_dict() lists them (a module's own parameters, its buffers, then its
// children in registration order; clinic-spec §2.8 for the fork):
//
//	clinic: fused in_proj_{weight,bias} (q rows, k, v), decoder.embed_out when untied,
//	        ω as attention_ratio_change / fc_ratio_change (encoder) and
//	        self_ratio_change / encoder_ratio_change / fc_ratio_change (decoder) first in
//	        each layer, DeepNet's separate {k,v,q}_proj_weight with the fused bias;
//	0.12:   {k,v,q,out}_proj, layer norms interleaved with the sub-layers,
//	        decoder.output_projection.weight last (the embedding's storage when tied).
//
// Tied tensors are the same *tensor.Tensor, so they are written as one storage. version
// buffers are [3.0] and sinusoidal positions get the 1-element _float_tensor marker, both
// in the embedding's dtype.
func FairseqStateDict(m *model.Model, target FairseqTarget) (*types.OrderedDict, error) {
	if target == TargetFairseq012 {
		return fairseqStateDict(m, layout012)
	}
	return fairseqStateDict(m, layoutClinic)
}

func fairseqStateDict(m *model.Model, layout stateLayout) (*types.OrderedDict, error) {
	c := m.Config
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("convert: export: %w", err)
	}
	if layout == layout010 {
		layout = layoutClinic
	}
	sd := types.NewOrderedDict()
	dt := m.Params[model.EncEmbed].DType
	scalar := func(v float32) *tensor.Tensor { return scalarTensor(dt, v) }
	var err error
	set := func(name string, t *tensor.Tensor) {
		if t == nil && err == nil {
			err = fmt.Errorf("convert: export: no tensor for %s", name)
		}
		sd.Set(name, t)
	}
	p := func(name string) *tensor.Tensor { return m.Params[name] }
	positions := func(side, param string, learned bool) {
		if learned {
			set(side+".embed_positions.weight", p(param))
		} else {
			set(side+".embed_positions._float_tensor", scalar(0))
		}
	}
	ln := func(dst, src string) {
		set(dst+".weight", p(src+".weight"))
		set(dst+".bias", p(src+".bias"))
	}
	attnClinic := func(dst, src string) {
		if c.Init == model.InitDeepNet {
			for _, x := range []string{"k", "v", "q"} {
				set(dst+"."+x+"_proj_weight", p(src+"."+x+"_proj.weight"))
			}
		} else {
			w, e := concatRows(p(src+".q_proj.weight"), p(src+".k_proj.weight"), p(src+".v_proj.weight"))
			if e != nil && err == nil {
				err = fmt.Errorf("convert: export: %s: %w", src, e)
			}
			set(dst+".in_proj_weight", w)
		}
		b, e := concatRows(p(src+".q_proj.bias"), p(src+".k_proj.bias"), p(src+".v_proj.bias"))
		if e != nil && err == nil {
			err = fmt.Errorf("convert: export: %s: %w", src, e)
		}
		set(dst+".in_proj_bias", b)
		set(dst+".out_proj.weight", p(src+".out_proj.weight"))
		set(dst+".out_proj.bias", p(src+".out_proj.bias"))
	}
	attn012 := func(name string) {
		for _, x := range []string{"k", "v", "q", "out"} {
			set(name+"."+x+"_proj.weight", p(name+"."+x+"_proj.weight"))
			set(name+"."+x+"_proj.bias", p(name+"."+x+"_proj.bias"))
		}
	}
	ffn := func(pre string) {
		for _, n := range []string{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"} {
			set(pre+n, p(pre+n))
		}
	}

	// Encoder: version buffer, embeddings, layers, final LayerNorm.
	set("encoder.version", scalar(3))
	set("encoder.embed_tokens.weight", p(model.EncEmbed))
	positions("encoder", model.EncPos, c.EncoderLearnedPos)
	for i := 0; i < c.EncoderLayers; i++ {
		l := model.EncLayer(i)
		if layout == layoutClinic {
			if c.Init.HasOmega() {
				set(l+"attention_ratio_change", p(l+"self_attn_omega"))
				set(l+"fc_ratio_change", p(l+"ffn_omega"))
			}
			attnClinic(l+"self_attn", l+"self_attn")
			ffn(l)
			ln(l+"self_attn_layer_norm", l+"self_attn_layer_norm")
			ln(l+"final_layer_norm", l+"final_layer_norm")
		} else {
			attn012(l + "self_attn")
			ln(l+"self_attn_layer_norm", l+"self_attn_layer_norm")
			ffn(l)
			ln(l+"final_layer_norm", l+"final_layer_norm")
		}
	}
	if c.EncoderNormalizeBefore {
		ln("encoder.layer_norm", model.EncLN)
	}

	// Decoder.
	if layout == layoutClinic && !c.TiedOutput() {
		set("decoder.embed_out", m.OutputProjection()) // the decoder's own parameter: before its buffer
	}
	set("decoder.version", scalar(3))
	set("decoder.embed_tokens.weight", m.DecoderEmbedding())
	positions("decoder", model.DecPos, c.DecoderLearnedPos)
	for i := 0; i < c.DecoderLayers; i++ {
		l := model.DecLayer(i)
		if layout == layoutClinic {
			if c.Init.HasOmega() {
				set(l+"self_ratio_change", p(l+"self_attn_omega"))
				set(l+"encoder_ratio_change", p(l+"encoder_attn_omega"))
				set(l+"fc_ratio_change", p(l+"ffn_omega"))
			}
			attnClinic(l+"self_attn", l+"self_attn")
			attnClinic(l+"encoder_attn", l+"encoder_attn")
			ffn(l)
			ln(l+"self_attn_layer_norm", l+"self_attn_layer_norm")
			ln(l+"encoder_attn_layer_norm", l+"encoder_attn_layer_norm")
			ln(l+"final_layer_norm", l+"final_layer_norm")
		} else {
			attn012(l + "self_attn")
			ln(l+"self_attn_layer_norm", l+"self_attn_layer_norm")
			attn012(l + "encoder_attn")
			ln(l+"encoder_attn_layer_norm", l+"encoder_attn_layer_norm")
			ffn(l)
			ln(l+"final_layer_norm", l+"final_layer_norm")
		}
	}
	if c.DecoderNormalizeBefore {
		ln("decoder.layer_norm", model.DecLN)
	}
	if layout == layout012 {
		set("decoder.output_projection.weight", m.OutputProjection())
	}
	if err != nil {
		return nil, err
	}
	return sd, nil
}

func scalarTensor(dt tensor.DType, v float32) *tensor.Tensor {
	t := &tensor.Tensor{DType: dt, Shape: []int{1}}
	switch dt {
	case tensor.F16:
		t.Data = binary.LittleEndian.AppendUint16(nil, tensor.FloatToHalf(v))
	case tensor.BF16:
		t.Data = binary.LittleEndian.AppendUint16(nil, tensor.FloatToBF16(v))
	case tensor.F64:
		t.Data = binary.LittleEndian.AppendUint64(nil, math.Float64bits(float64(v)))
	default:
		t.DType = tensor.F32
		t.Data = binary.LittleEndian.AppendUint32(nil, math.Float32bits(v))
	}
	return t
}

// concatRows stacks tensors along the first axis (q, k, v into in_proj), bit for bit.
func concatRows(ts ...*tensor.Tensor) (*tensor.Tensor, error) {
	if len(ts) == 0 || ts[0] == nil {
		return nil, fmt.Errorf("missing projection")
	}
	out := &tensor.Tensor{DType: ts[0].DType, Shape: append([]int(nil), ts[0].Shape...)}
	out.Shape[0] = 0
	for _, t := range ts {
		if t == nil {
			return nil, fmt.Errorf("missing projection")
		}
		if t.DType != out.DType || len(t.Shape) != len(out.Shape) || !tensor.ShapeEqual(t.Shape[1:], out.Shape[1:]) {
			return nil, fmt.Errorf("q/k/v projections differ in dtype or shape (%s%v vs %s%v)", t.DType, t.Shape, out.DType, ts[0].Shape)
		}
		out.Shape[0] += t.Shape[0]
		out.Data = append(out.Data, t.Data...)
	}
	return out, nil
}

// exportArgs returns the args Namespace for m: a copy of the source's (attribute order
// kept) with the model attributes that the config changed, or a Clinic-style Namespace
// built from a template when the source has none.
func exportArgs(m *model.Model, src *fairseqpt.Checkpoint, updateModel bool) (*fairseqpt.Object, error) {
	c := m.Config
	attrs := types.NewDict()
	var srcArgs *fairseqpt.Object
	if src != nil && src.Generation == fairseqpt.GenArgs {
		v, _ := fairseqpt.DictGet(src.Root, "args")
		srcArgs, _ = v.(*fairseqpt.Object)
	}
	set := func(k string, v interface{}) { dictPut(attrs, k, v) }
	if srcArgs != nil {
		es, _ := fairseqpt.Entries(srcArgs)
		for _, e := range es {
			set(e.Key, e.Value)
		}
	} else {
		for _, e := range argsTemplate {
			set(e.Key, e.Value)
		}
		// Whatever the source's cfg said (a 0.12 checkpoint) overrides the template.
		if src != nil {
			for _, e := range src.Config {
				if e.Key != "_name" {
					set(e.Key, fairseqpt.PlainConfig(e.Value))
				}
			}
		}
		updateModel = true
	}
	if updateModel {
		init := string(c.Init)
		set("arch", c.Arch)
		set("init_type", init)
		set("encoder_layers", c.EncoderLayers)
		set("decoder_layers", c.DecoderLayers)
		set("encoder_embed_dim", c.EncoderEmbedDim)
		set("decoder_embed_dim", c.DecoderEmbedDim)
		set("encoder_ffn_embed_dim", c.EncoderFFNDim)
		set("decoder_ffn_embed_dim", c.DecoderFFNDim)
		set("encoder_attention_heads", c.EncoderHeads)
		set("decoder_attention_heads", c.DecoderHeads)
		set("encoder_normalize_before", c.EncoderNormalizeBefore)
		set("decoder_normalize_before", c.DecoderNormalizeBefore)
		set("encoder_learned_pos", c.EncoderLearnedPos)
		set("decoder_learned_pos", c.DecoderLearnedPos)
		set("share_all_embeddings", c.ShareAllEmbeddings)
		set("share_decoder_input_output_embed", c.TiedOutput())
		set("activation_fn", c.Activation)
		set("max_source_positions", c.MaxSourcePositions)
		set("max_target_positions", c.MaxTargetPositions)
		set("decoder_output_dim", c.DecoderEmbedDim)
		set("decoder_input_dim", c.DecoderEmbedDim)
		if srcArgs == nil {
			set("dropout", c.Dropout)
			set("attention_dropout", c.AttentionDropout)
			set("activation_dropout", c.ActivationDropout)
			if c.SourceLang != "" {
				set("source_lang", c.SourceLang)
				set("target_lang", c.TargetLang)
			}
		}
	}
	return &fairseqpt.Object{Class: &fairseqpt.Global{Module: "argparse", Name: "Namespace"}, Attrs: attrs}, nil
}

// dictPut sets d[k] = v, replacing an existing entry in place (types.Dict.Set appends,
// which would pickle the key twice).
func dictPut(d *types.Dict, k string, v interface{}) {
	for i := range *d {
		if key, ok := (*d)[i].Key.(string); ok && key == k {
			(*d)[i].Value = v
			return
		}
	}
	d.Set(k, v)
}

// optimizerHistory copies the source's, or makes the one entry fairseq's loader needs.
func optimizerHistory(src *fairseqpt.Checkpoint) interface{} {
	if v, ok := fairseqpt.DictGet(srcRoot(src), "optimizer_history"); ok {
		if l, ok := v.(*types.List); ok && l.Len() > 0 {
			return l
		}
	}
	h := types.NewDict()
	h.Set("criterion_name", "LabelSmoothedCrossEntropyCriterion")
	h.Set("optimizer_name", "FairseqAdam")
	lr := types.NewDict()
	lr.Set("best", nil)
	h.Set("lr_scheduler_state", lr)
	h.Set("num_updates", 0)
	return types.NewListFromSlice([]interface{}{h})
}

// extraState copies the source's extra_state without train_meters, or makes the
// train_iterator fairseq's loader needs.
func extraState(src *fairseqpt.Checkpoint) (interface{}, bool) {
	es, ok := fairseqpt.Entries(func() interface{} { v, _ := fairseqpt.DictGet(srcRoot(src), "extra_state"); return v }())
	out := types.NewDict()
	dropped := false
	if ok && len(es) > 0 {
		for _, e := range es {
			if e.Key == "train_meters" {
				dropped = true
				continue
			}
			out.Set(e.Key, e.Value)
		}
		return out, dropped
	}
	ti := types.NewDict()
	ti.Set("epoch", 1)
	ti.Set("iterations_in_epoch", 0)
	out.Set("train_iterator", ti)
	out.Set("val_loss", nil)
	return out, false
}

// cfgFromArgs builds fairseq 0.12's cfg (plain dicts) from a flat args Namespace: the
// model group holds every model attribute flat with _name = the architecture (the form
// convert_namespace_to_omegaconf gives legacy --arch models, as a dict instead of a
// Namespace so that torch's weights_only loader accepts the file), the task group the
// translation task's fields.
func cfgFromArgs(args *fairseqpt.Object) *types.Dict {
	get := func(k string) interface{} { v, _ := args.Attr(k); return v }
	es, _ := fairseqpt.Entries(args)
	group := func(keys ...string) *types.Dict {
		d := types.NewDict()
		for _, k := range keys {
			if v, ok := args.Attr(k); ok {
				d.Set(k, v)
			}
		}
		return d
	}
	cfg := types.NewDict()
	common := group("no_progress_bar", "log_interval", "log_format", "seed", "cpu", "fp16", "memory_efficient_fp16",
		"fp16_init_scale", "fp16_scale_window", "fp16_scale_tolerance", "min_loss_scale", "threshold_loss_scale", "user_dir", "empty_cache_freq")
	common.Set("_name", nil)
	cfg.Set("common", common)
	dataset := group("num_workers", "skip_invalid_size_inputs_valid_test", "max_tokens", "required_batch_size_multiple",
		"dataset_impl", "train_subset", "valid_subset", "validate_interval", "fixed_validation_seed", "disable_validation", "max_tokens_valid", "curriculum")
	dataset.Set("batch_size", get("max_sentences"))
	dataset.Set("batch_size_valid", get("max_sentences_valid"))
	dataset.Set("_name", nil)
	cfg.Set("dataset", dataset)
	opt := group("max_epoch", "max_update", "clip_norm", "sentence_avg", "update_freq", "lr", "use_bmuf")
	opt.Set("stop_min_lr", get("min_lr"))
	opt.Set("_name", nil)
	cfg.Set("optimization", opt)
	ck := group("save_dir", "restore_file", "reset_dataloader", "reset_lr_scheduler", "reset_meters", "reset_optimizer",
		"optimizer_overrides", "save_interval", "save_interval_updates", "keep_interval_updates", "keep_last_epochs", "no_save",
		"no_epoch_checkpoints", "no_last_checkpoints", "no_save_optimizer_state", "best_checkpoint_metric", "maximize_best_checkpoint_metric")
	ck.Set("_name", nil)
	cfg.Set("checkpoint", ck)

	modelKeys := map[string]bool{}
	for _, k := range modelArgNames {
		modelKeys[k] = true
	}
	mg := types.NewDict()
	arch, _ := get("arch").(string)
	if arch == "transformer" {
		// "transformer" is also the name of 0.12's dataclass model, which would merge these
		// flat legacy names into TransformerConfig and reject them; the registered alias
		// with the same (base) defaults takes the legacy path.
		arch = "transformer_wmt_en_de"
	}
	mg.Set("_name", arch)
	for _, e := range es {
		if modelKeys[e.Key] {
			v := e.Value
			if e.Key == "arch" {
				v = arch
			}
			mg.Set(e.Key, v)
		}
	}
	cfg.Set("model", mg)
	task := group("data", "source_lang", "target_lang", "load_alignments", "left_pad_source", "left_pad_target",
		"max_source_positions", "max_target_positions", "upsample_primary")
	task.Set("_name", get("task"))
	cfg.Set("task", task)
	crit := group("label_smoothing", "sentence_avg")
	crit.Set("_name", get("criterion"))
	cfg.Set("criterion", crit)
	optz := group("adam_betas", "adam_eps", "weight_decay")
	optz.Set("lr", get("lr"))
	optz.Set("_name", get("optimizer"))
	cfg.Set("optimizer", optz)
	sched := group("warmup_updates", "warmup_init_lr")
	sched.Set("lr", get("lr"))
	sched.Set("_name", get("lr_scheduler"))
	cfg.Set("lr_scheduler", sched)
	return cfg
}

// modelArgNames are the model attributes of fairseq's transformer (and the fork's init_type).
var modelArgNames = []string{
	"arch", "init_type", "dropout", "attention_dropout", "activation_dropout", "relu_dropout", "activation_fn",
	"encoder_embed_path", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads",
	"encoder_normalize_before", "encoder_learned_pos", "decoder_embed_path", "decoder_embed_dim", "decoder_ffn_embed_dim",
	"decoder_layers", "decoder_attention_heads", "decoder_normalize_before", "decoder_learned_pos",
	"share_all_embeddings", "share_decoder_input_output_embed", "no_token_positional_embeddings",
	"adaptive_softmax_cutoff", "adaptive_softmax_dropout", "adaptive_input", "no_cross_attention", "cross_self_attention",
	"layer_wise_attention", "decoder_output_dim", "decoder_input_dim", "max_source_positions", "max_target_positions",
}

// ExportFairseq builds m's checkpoint and writes it to path atomically (nothing is left
// behind on error; an existing path is an error unless force).
func ExportFairseq(path string, m *model.Model, opt FairseqExportOptions, force bool) (*FairseqExport, error) {
	ex, err := BuildFairseqCheckpoint(m, opt)
	if err != nil {
		return nil, err
	}
	if err := fairseqpt.WriteFile(path, ex.Root, fairseqpt.WriteOptions{Force: force}); err != nil {
		return nil, err
	}
	return ex, nil
}
