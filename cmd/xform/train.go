package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/xform-dev/xform/admin"
	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/fairseqpt"
	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/kernels/cuda"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
	"github.com/xform-dev/xform/train"
	"github.com/xform-dev/xform/train/data"
)

// trainFlags are fairseq-train's flags (names and defaults as fairseq 0.8 / the Clinic
// fork; where xform differs the help says so).
type trainFlags struct {
	arch, initType, saveDir, restoreFile, optimizer, betas, scheduler, logFormat, validSubset string
	srcLang, tgtLang, profileFile, updateFreq, lr                                             string
	maxTokens, maxSentences, warmup, maxUpdate, maxEpoch, seed, saveIntervalUpdates           int
	keepLastEpochs, logInterval, threads, mult                                                int
	encLayers, decLayers, encDim, decDim, encFFN, decFFN, encHeads, decHeads                  int
	warmupInit, minLR, eps, clip, ls, wd, dropout, attnDropout, actDropout                    float64
	resetOptimizer, noSave, noEpochCkpt, disableValid, shareAll, shareDecIO, encPre, decPre   bool
	syncEach                                                                                  bool
	fastLinear                                                                                bool
	pauseBeforeRename                                                                         int
	device                                                                                    deviceFlag // --device (train only)
	mixed                                                                                     mixedFlags
	batching                                                                                  batchingFlags
}

// batchingFlags choose between fairseq's batching and bucket batching (xform train and
// xform bench; the names and defaults of tools/bench/torch_competitor.py's flags).
type batchingFlags struct {
	mode    string
	buckets int
}

func (b *batchingFlags) register(c *cobra.Command) {
	fl := c.Flags()
	fl.StringVar(&b.mode, "batching", "fairseq", "fairseq (fairseq 0.8's batches) or bucket (static [B, L] shapes for CUDA graphs: not fairseq's batching, see --help)")
	fl.IntVar(&b.buckets, "buckets", 3, "--batching bucket: number of length buckets (static shapes)")
}

// count returns train.BatchConfig.Buckets for the flags: 0 for fairseq's batching.
func (b *batchingFlags) count(maxTokens, maxSentences int) (int, error) {
	switch b.mode {
	case "fairseq":
		return 0, nil
	case "bucket":
	default:
		return 0, usageError{fmt.Errorf("--batching %q: want fairseq or bucket", b.mode)}
	}
	switch {
	case b.buckets < 1:
		return 0, usageError{fmt.Errorf("--buckets %d: want at least 1", b.buckets)}
	case maxTokens <= 0:
		return 0, usageError{fmt.Errorf("--batching bucket sizes batches by --max-tokens; set it")}
	case maxSentences > 0:
		return 0, usageError{fmt.Errorf("--batching bucket sizes batches by --max-tokens alone; --max-sentences is not supported with it")}
	}
	return b.buckets, nil
}

// mixedFlags are fairseq's mixed-precision flags (options.py of fairseq 0.8 / the Clinic
// fork) plus --bf16, which later fairseq releases have.
type mixedFlags struct {
	fp16, memEfficientFP16, bf16 bool
	initScale                    int
	window                       optInt
	tolerance, minScale          float64
	threshold                    optFloat
}

func (m *mixedFlags) register(c *cobra.Command) {
	fl := c.Flags()
	fl.BoolVar(&m.fp16, "fp16", false, "fp16 GEMM operands with fp32 accumulation and master weights, dynamic loss scaling as fairseq's (GPU only)")
	fl.BoolVar(&m.memEfficientFP16, "memory-efficient-fp16", false, "accepted for fairseq command lines: same as --fp16 (xform keeps fp32 master weights either way)")
	fl.BoolVar(&m.bf16, "bf16", false, "bf16 GEMM operands with fp32 accumulation and master weights, no loss scaling (GPU only)")
	fl.IntVar(&m.initScale, "fp16-init-scale", 128, "--fp16: initial loss scale")
	fl.Var(&m.window, "fp16-scale-window", "--fp16: overflow-free updates before the loss scale doubles (default: 2^14 / update-freq, fairseq's)")
	fl.Float64Var(&m.tolerance, "fp16-scale-tolerance", 0, "--fp16: fraction of updates since the last rescale that may overflow before the scale halves")
	fl.Var(&m.threshold, "threshold-loss-scale", "--fp16: the loss scale never falls below this (default: none)")
	fl.Float64Var(&m.minScale, "min-loss-scale", 1e-4, "--fp16: stop training when an overflow leaves the loss scale at or below this")
}

// precision returns the GEMM precision the flags ask for.
func (m *mixedFlags) precision() (cuda.Precision, error) {
	fp16 := m.fp16 || m.memEfficientFP16
	switch {
	case fp16 && m.bf16:
		return cuda.FP32, usageError{fmt.Errorf("--fp16 and --bf16 exclude each other")}
	case fp16:
		return cuda.FP16, nil
	case m.bf16:
		return cuda.BF16, nil
	}
	return cuda.FP32, nil
}

// setPrecision checks the mixed-precision flags against --device and passes the
// precision to the backend; a CPU run cannot take them (it has no fp16/bf16 GEMMs, and
// loss scaling without them would only slow it down).
func (f *trainFlags) setPrecision() error {
	p, err := f.mixed.precision()
	if err != nil {
		return err
	}
	if p != cuda.FP32 && strings.TrimSpace(f.device.name) == "cpu" {
		return usageError{fmt.Errorf("--%s needs a GPU (--device cuda)", p)}
	}
	f.device.precision = p
	return nil
}

// lossScaler returns the --fp16 loss scaler (nil otherwise). updateFreq is the per-epoch
// --update-freq list, which sets fairseq's default window.
func (f *trainFlags) lossScaler(updateFreq []int) (*train.LossScaler, error) {
	if f.device.precision != cuda.FP16 {
		return nil, nil
	}
	m := &f.mixed
	window := float64(m.window.v)
	if !m.window.set {
		if len(updateFreq) > 1 {
			return nil, usageError{fmt.Errorf("--fp16-scale-window must be given with a per-epoch --update-freq list (fairseq's rule: the default depends on update-freq)")}
		}
		uf := 1
		if len(updateFreq) == 1 {
			uf = updateFreq[0]
		}
		window = train.DefaultScaleWindow(uf)
	}
	sc, err := train.NewLossScaler(train.LossScaleConfig{InitScale: float64(m.initScale), Window: window, Tolerance: m.tolerance,
		Threshold: m.threshold.v, MinScale: m.minScale})
	if err != nil {
		return nil, usageError{err}
	}
	return sc, nil
}

// optInt is an int flag that knows whether it was given (fairseq's default None).
type optInt struct {
	v   int
	set bool
}

func (o *optInt) String() string {
	if !o.set {
		return ""
	}
	return strconv.Itoa(o.v)
}

func (o *optInt) Set(s string) error {
	v, err := strconv.Atoi(s)
	if err != nil {
		return err
	}
	o.v, o.set = v, true
	return nil
}

func (o *optInt) Type() string { return "int" }

// optFloat is a float flag that knows whether it was given.
type optFloat struct {
	v   float64
	set bool
}

func (o *optFloat) String() string {
	if !o.set {
		return ""
	}
	return strconv.FormatFloat(o.v, 'g', -1, 64)
}

func (o *optFloat) Set(s string) error {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return err
	}
	o.v, o.set = v, true
	return nil
}

func (o *optFloat) Type() string { return "float" }

func (f *trainFlags) register(c *cobra.Command, training bool) {
	fl := c.Flags()
	fl.StringVar(&f.arch, "arch", "transformer", "model architecture (transformer, transformer_iwslt_de_en, transformer_wmt_en_de, transformer_vaswani_wmt_en_de_big, transformer_wmt_en_de_big, transformer_wmt_en_de_big_t2t)")
	fl.StringVarP(&f.srcLang, "source-lang", "s", "", "source language (inferred from the data-bin)")
	fl.StringVarP(&f.tgtLang, "target-lang", "t", "", "target language (inferred from the data-bin)")
	fl.IntVar(&f.maxTokens, "max-tokens", 0, "max tokens per batch")
	fl.IntVar(&f.maxSentences, "max-sentences", 0, "max sentences per batch")
	fl.IntVar(&f.mult, "required-batch-size-multiple", 8, "batch sizes are a multiple of this")
	fl.IntVar(&f.seed, "seed", 1, "random seed (batch order; initialisation and dropout use Go's generators, not torch's)")
	fl.StringVar(&f.restoreFile, "restore-file", "checkpoint_last.pt", "checkpoint to start from (checkpoint_last.pt means the one in --save-dir)")
	fl.Float64Var(&f.dropout, "dropout", -1, "dropout (default: the architecture's)")
	fl.Float64Var(&f.attnDropout, "attention-dropout", -1, "attention dropout (default: the architecture's)")
	fl.Float64Var(&f.actDropout, "activation-dropout", -1, "activation dropout (default: the architecture's)")
	fl.Float64Var(&f.actDropout, "relu-dropout", -1, "alias of --activation-dropout")
	fl.IntVar(&f.encLayers, "encoder-layers", 0, "encoder layers (default: the architecture's)")
	fl.IntVar(&f.decLayers, "decoder-layers", 0, "decoder layers")
	fl.IntVar(&f.encDim, "encoder-embed-dim", 0, "encoder embedding dim")
	fl.IntVar(&f.decDim, "decoder-embed-dim", 0, "decoder embedding dim")
	fl.IntVar(&f.encFFN, "encoder-ffn-embed-dim", 0, "encoder FFN dim")
	fl.IntVar(&f.decFFN, "decoder-ffn-embed-dim", 0, "decoder FFN dim")
	fl.IntVar(&f.encHeads, "encoder-attention-heads", 0, "encoder attention heads")
	fl.IntVar(&f.decHeads, "decoder-attention-heads", 0, "decoder attention heads")
	fl.BoolVar(&f.shareAll, "share-all-embeddings", false, "share encoder, decoder and output embeddings")
	fl.BoolVar(&f.shareDecIO, "share-decoder-input-output-embed", false, "share decoder input and output embeddings")
	fl.BoolVar(&f.encPre, "encoder-normalize-before", false, "Pre-LN encoder")
	fl.BoolVar(&f.decPre, "decoder-normalize-before", false, "Pre-LN decoder")
	fl.IntVar(&f.threads, "threads", 0, "CPU goroutines per operation (0 = GOMAXPROCS)")
	fl.BoolVar(&f.fastLinear, "fast-linear", false, "no-op, kept for old command lines: Linear always uses the float32 GEMM with float64 chunk sums now (parity-tested)")
	if !training {
		return
	}
	fl.StringVar(&f.initType, "init", "default", "initialisation: default, adaptive (Admin: profiles ω on the first batch, or reads --profile), deepnet")
	fl.StringVar(&f.initType, "init-type", "default", "alias of --init (the Clinic fork's name)")
	fl.StringVar(&f.profileFile, "profile", "", "Admin profile to use with --init adaptive instead of profiling (profile.ratio.init)")
	fl.StringVar(&f.saveDir, "save-dir", "checkpoints", "where checkpoints go")
	fl.StringVar(&f.lr, "lr", "0.25", "learning rate (fixed accepts a comma list, one per epoch)")
	fl.StringVar(&f.scheduler, "lr-scheduler", "fixed", "inverse_sqrt, fixed or linear")
	fl.IntVar(&f.warmup, "warmup-updates", -1, "warmup updates (default: 4000 for inverse_sqrt/linear, 0 for fixed)")
	fl.Float64Var(&f.warmupInit, "warmup-init-lr", -1, "initial warmup learning rate")
	fl.Float64Var(&f.minLR, "min-lr", -1, "stop when the learning rate falls to this; linear decays toward it")
	fl.StringVar(&f.optimizer, "optimizer", "radam", "radam (the Clinic fork's) or adam (fairseq's); fairseq has no default")
	fl.StringVar(&f.betas, "adam-betas", "(0.9, 0.999)", "Adam betas")
	fl.Float64Var(&f.eps, "adam-eps", 1e-8, "Adam epsilon")
	fl.Float64Var(&f.clip, "clip-norm", 25, "clip the gradient norm (0 = off; the norm is still computed)")
	fl.Float64Var(&f.ls, "label-smoothing", 0, "label smoothing (the criterion is always label_smoothed_cross_entropy)")
	fl.Float64Var(&f.wd, "weight-decay", 0, "decoupled weight decay, every parameter including ω")
	fl.IntVar(&f.maxUpdate, "max-update", 0, "stop after this many updates (0 = no limit)")
	fl.IntVar(&f.maxEpoch, "max-epoch", 0, "stop after this many epochs (0 = no limit)")
	fl.StringVar(&f.updateFreq, "update-freq", "1", "batches per update (comma list per epoch)")
	fl.BoolVar(&f.resetOptimizer, "reset-optimizer", false, "restore weights only: fresh optimizer, schedule and counters")
	fl.IntVar(&f.saveIntervalUpdates, "save-interval-updates", 0, "also validate and save every N updates")
	fl.IntVar(&f.keepLastEpochs, "keep-last-epochs", -1, "keep only the last N epoch checkpoints")
	fl.BoolVar(&f.noSave, "no-save", false, "save no checkpoints")
	fl.BoolVar(&f.syncEach, "sync-each-update", false, "GPU: read each update's loss and gradient norm before queueing the next (by default the next update is queued first; same results)")
	fl.BoolVar(&f.noEpochCkpt, "no-epoch-checkpoints", false, "only checkpoint_last.pt and checkpoint_best.pt")
	fl.BoolVar(&f.disableValid, "disable-validation", false, "no validation")
	fl.StringVar(&f.validSubset, "valid-subset", "valid", "validation split")
	fl.StringVar(&f.logFormat, "log-format", "simple", "simple or json")
	fl.IntVar(&f.logInterval, "log-interval", 1000, "log every N updates")
	// For the kill-during-save test: stop before the N-th rename onto checkpoint_last.pt.
	fl.IntVar(&f.pauseBeforeRename, "debug-pause-before-rename", 0, "")
	_ = fl.MarkHidden("debug-pause-before-rename")
}

func newTrainCmd() *cobra.Command {
	var f trainFlags
	c := &cobra.Command{
		Use:   "train DATA-BIN",
		Short: "Train a Transformer on a fairseq data-bin as the Clinic fork's fairseq-train does (CPU or GPU)",
		Long: `Train with fairseq 0.8 semantics (batching, label-smoothed cross entropy, RAdam/Adam,
inverse_sqrt/fixed/linear schedules, update-freq, clipping, validation each epoch) and write
fairseq/Clinic checkpoints (checkpoint_last.pt, checkpoint_best.pt, checkpointN.pt) with
fairseq's optimizer state (last_optimizer_state, optimizer_history, train_iterator), so
both xform and the Clinic fork resume from them; xform's resume is exact (same losses and
weights as an uninterrupted run). --restore-file also resumes from a fairseq/Clinic
checkpoint's RAdam/Adam state. Initialisation and dropout use Go's random generators, so
runs are reproducible but not torch's bit for bit.

On the GPU, --bf16 or --fp16 round the GEMM operands to 16 bits (fp32 accumulation, fp32
master weights, LayerNorm, softmax, loss and optimizer); --fp16 adds the fork's dynamic
loss scaling: an update whose gradients overflow is skipped with fairseq's warning and
the scale halves, the log lines carry loss_scale, and checkpoints keep the scaler.

--batching bucket --buckets N is not fairseq's batching: it gives a few static batch
shapes, which CUDA graphs need. The pairs are split into N buckets by max(source,
target) length (edges spread evenly between the shortest and the longest pair); each
bucket's pairs, in seeded random order, are cut into batches of B_L pairs, B_L =
⌊max-tokens/L⌋ rounded down to a multiple of --required-batch-size-multiple (at least
one multiple), every batch padded to [B_L, L] (pad tokens: the loss is the same as
unpadded), and each bucket's last incomplete batch is dropped from every epoch. These
are the batches of tools/bench/torch_competitor.py's compile modes. Validation keeps
fairseq's batching; resume with the batching the run started with.

--pack-tokens (auto by default) computes every layer on the batch's real tokens only,
the attention reading packed rows: the pad slots cost nothing, the sums are the padded
step's (with dropout the position-wise masks fall on other elements). auto packs with
--bf16/--fp16 on the GPU, for steps whose attention runs on packed rows (sentences up to
48 tokens); true packs every step with pads (also on the CPU, ~15% faster there); false
keeps the padded step. Packed steps run eagerly, so --cuda-graphs applies to the others.`,
		Example: `  xform train data-bin --arch transformer_iwslt_de_en --share-all-embeddings --init adaptive \
    --optimizer radam --adam-betas '(0.9,0.98)' --clip-norm 0 --lr 3e-3 --lr-scheduler inverse_sqrt \
    --warmup-init-lr 1e-7 --warmup-updates 100 --label-smoothing 0.1 --max-tokens 2048 --seed 1111 \
    --max-update 1000 --save-dir ckpt
  xform train data-bin --device cuda --bf16 --arch transformer_wmt_en_de --share-all-embeddings \
    --max-tokens 8192 --batching bucket --buckets 3 --cuda-autotune --max-update 1000 --save-dir ckpt`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTrain(cmd.Context(), args[0], &f, cmd.OutOrStdout())
		},
	}
	f.register(c, true)
	f.mixed.register(c)
	f.device.register(c)
	f.device.registerGraphs(c)
	f.batching.register(c)
	return c
}

func parseFloats(s, flag string) ([]float64, error) {
	var out []float64
	for _, p := range strings.Split(strings.Trim(s, "()[] "), ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return nil, usageError{fmt.Errorf("--%s %q: %v", flag, s, err)}
		}
		out = append(out, v)
	}
	return out, nil
}

// loadData reads the train and valid splits and the dictionaries.
func loadData(dir string, f *trainFlags, withValid bool) (*train.Data, error) {
	src, tgt := f.srcLang, f.tgtLang
	if src == "" || tgt == "" {
		s, t, err := generate.InferLangs(dir, "train")
		if err != nil {
			return nil, err
		}
		src, tgt = s, t
	}
	d := &train.Data{}
	var err error
	if d.Train, err = generate.LoadSplit(dir, "train", src, tgt); err != nil {
		return nil, err
	}
	if withValid {
		if d.Valid, err = generate.LoadSplit(dir, f.validSubset, src, tgt); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// newConfig builds a fresh model's config from the arch and flags.
func newConfig(f *trainFlags, d *train.Data, init model.Init) (model.Config, [3]float64, error) {
	c := model.Config{Init: init, EncoderLayers: f.encLayers, DecoderLayers: f.decLayers, EncoderEmbedDim: f.encDim,
		DecoderEmbedDim: f.decDim, EncoderFFNDim: f.encFFN, DecoderFFNDim: f.decFFN, EncoderHeads: f.encHeads, DecoderHeads: f.decHeads,
		EncoderNormalizeBefore: f.encPre, DecoderNormalizeBefore: f.decPre, ShareAllEmbeddings: f.shareAll,
		ShareDecoderInputOutputEmbed: f.shareDecIO, SrcVocab: d.Train.SrcDict.Len(), TgtVocab: d.Train.TgtDict.Len(),
		SourceLang: d.Train.SrcLang, TargetLang: d.Train.TgtLang}
	dr, at, ac, err := train.ArchDefaults(f.arch, &c)
	if err != nil {
		return c, [3]float64{}, usageError{err}
	}
	if f.shareAll && !d.Train.SrcDict.Equal(d.Train.TgtDict) {
		return c, [3]float64{}, fmt.Errorf("--share-all-embeddings needs a joined dictionary (dict.%s.txt and dict.%s.txt differ)", c.SourceLang, c.TargetLang)
	}
	drops := [3]float64{dr, at, ac}
	for i, v := range []float64{f.dropout, f.attnDropout, f.actDropout} {
		if v >= 0 {
			drops[i] = v
		}
	}
	c.Dropout, c.AttentionDropout, c.ActivationDropout = drops[0], drops[1], drops[2]
	return c, drops, c.Validate()
}

// checkDicts compares the data-bin's dictionaries with the model (and with the
// dictionaries beside its checkpoint, when there are any).
func checkDicts(d *train.Data, m *model.Model, im *convert.Imported) error {
	if m.Config.SrcVocab != d.Train.SrcDict.Len() || m.Config.TgtVocab != d.Train.TgtDict.Len() {
		return fmt.Errorf("the data-bin's dictionaries (%d, %d symbols) do not match the checkpoint's vocabularies (%d, %d)",
			d.Train.SrcDict.Len(), d.Train.TgtDict.Len(), m.Config.SrcVocab, m.Config.TgtVocab)
	}
	for _, p := range []struct {
		path string
		dict *data.Dictionary
	}{{im.SrcDict, d.Train.SrcDict}, {im.TgtDict, d.Train.TgtDict}} {
		if p.path == "" {
			continue
		}
		cd, err := data.LoadDictionary(p.path)
		if err != nil {
			return err
		}
		if !cd.Equal(p.dict) {
			return fmt.Errorf("the data-bin's dictionary differs from %s beside the checkpoint (same size, different symbols)", p.path)
		}
	}
	return nil
}

func runTrain(ctx context.Context, dir string, f *trainFlags, out io.Writer) error {
	if f.maxTokens <= 0 && f.maxSentences <= 0 {
		return usageError{fmt.Errorf("set --max-tokens or --max-sentences")}
	}
	if err := f.setPrecision(); err != nil {
		return err
	}
	buckets, err := f.batching.count(f.maxTokens, f.maxSentences)
	if err != nil {
		return err
	}
	ufs, err := parseFloats(f.updateFreq, "update-freq")
	if err != nil {
		return err
	}
	var uf []int
	for _, v := range ufs {
		if v < 1 || v != math.Trunc(v) {
			return usageError{fmt.Errorf("--update-freq %q: want positive integers", f.updateFreq)}
		}
		uf = append(uf, int(v))
	}
	scaler, err := f.lossScaler(uf)
	if err != nil {
		return err
	}
	init := model.Init(f.initType)
	switch init {
	case model.InitDefault, model.InitAdaptive, model.InitDeepNet:
	default:
		return usageError{fmt.Errorf("--init %q is not one of default, adaptive, deepnet", f.initType)}
	}
	d, err := loadData(dir, f, !f.disableValid)
	if err != nil {
		return err
	}
	restore := f.restoreFile
	if restore == "checkpoint_last.pt" {
		restore = filepath.Join(f.saveDir, "checkpoint_last.pt")
	}
	var m *model.Model
	var drops [3]float64
	resumed := false
	var ck *fairseqpt.Checkpoint
	var im *convert.Imported
	if _, err := os.Stat(restore); err == nil {
		if im, err = convert.Import(restore); err != nil {
			return err
		}
		defer im.Close()
		m, ck = im.Model, im.Checkpoint
		if err := checkDicts(d, m, im); err != nil {
			return err
		}
		drops = [3]float64{m.Config.Dropout, m.Config.AttentionDropout, m.Config.ActivationDropout}
		for i, v := range []float64{f.dropout, f.attnDropout, f.actDropout} {
			if v >= 0 {
				drops[i] = v
			}
		}
		resumed = true
		fmt.Fprintf(out, "| loaded checkpoint %s\n", restore)
	} else {
		var c model.Config
		if c, drops, err = newConfig(f, d, init); err != nil {
			return err
		}
		if m, err = train.InitModel(c, uint64(f.seed)); err != nil {
			return err
		}
	}
	var cpuOpts []cpu.Option
	if f.fastLinear {
		cpuOpts = append(cpuOpts, cpu.WithFloat32Linear())
	}
	be, err := f.device.trainer(f.threads, cpuOpts...)
	if err != nil {
		return err
	}
	bcfg := train.BatchConfig{MaxTokens: f.maxTokens, MaxSentences: f.maxSentences, Multiple: f.mult, Seed: uint32(f.seed),
		MaxSourcePos: m.Config.MaxSourcePositions, MaxTargetPos: m.Config.MaxTargetPositions, SkipInvalidAll: true, Buckets: buckets}
	if !resumed && init == model.InitAdaptive {
		if m, err = adminInit(ctx, m, d, bcfg, f, drops, be, out); err != nil {
			return err
		}
	}
	net, err := model.NewTrainNet(m, be)
	if err != nil {
		return err
	}
	if _, err := f.device.packRows(net, be); err != nil {
		return err
	}
	betas, err := parseFloats(f.betas, "adam-betas")
	if err != nil || len(betas) != 2 {
		return usageError{fmt.Errorf("--adam-betas %q: want two numbers", f.betas)}
	}
	lrs, err := parseFloats(f.lr, "lr")
	if err != nil {
		return err
	}
	warm := f.warmup
	if warm < 0 {
		warm = 4000
		if f.scheduler == "fixed" {
			warm = 0
		}
	}
	sched, err := train.NewSchedule(train.ScheduleConfig{Name: f.scheduler, LR: lrs, WarmupUpdates: warm, WarmupInitLR: f.warmupInit,
		MinLR: f.minLR, MaxUpdate: f.maxUpdate, LRShrink: 0.1})
	if err != nil {
		return usageError{err}
	}
	opt, err := train.NewOptimizer(net, train.OptimConfig{Name: f.optimizer, Beta1: betas[0], Beta2: betas[1], Eps: f.eps, WeightDecay: f.wd})
	if err != nil {
		return usageError{err}
	}
	s := &train.Stepper{Net: net, Opt: opt, Sched: sched, Cfg: train.StepConfig{ClipNorm: f.clip, LabelSmoothing: f.ls,
		Dropout: drops[0], AttentionDropout: drops[1], ActivationDropout: drops[2], Seed: uint64(f.seed)}, Scaler: scaler,
		NoPipeline: f.syncEach}
	var prog train.Progress
	if resumed && !f.resetOptimizer {
		p, st, ok, err := restoreTraining(ck, m, f.optimizer, out)
		if err != nil {
			return err
		}
		if ok {
			if err := s.Resume(p, st); err != nil {
				return fmt.Errorf("resume from %s: %w", restore, err)
			}
			prog = p
			fmt.Fprintf(out, "| resuming at epoch %d (%d batches in), %d updates\n", p.Epoch, p.BatchesInEpoch, p.NumUpdates)
		} else {
			fmt.Fprintf(out, "| %s has no optimizer state: weights restored, optimizer and counters start fresh\n", restore)
		}
	}
	c := m.Config
	if !f.noSave {
		removeStaleTemporaries(f.saveDir, out)
	}
	fmt.Fprintf(out, "| model %s (%s, %d+%d layers, d %d), criterion LabelSmoothedCrossEntropyCriterion\n", c.Arch, c.Init, c.EncoderLayers, c.DecoderLayers, c.EncoderEmbedDim)
	fmt.Fprintf(out, "| num. model params: %d (num. trained: %d)\n", m.NumParams(), m.NumParams())
	fmt.Fprintf(out, "| training on %s, max tokens %d, max sentences %d\n", be.Name(), f.maxTokens, f.maxSentences)
	if buckets > 0 {
		edges, err := train.SplitBucketEdges(d.Train, bcfg)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "| bucket batching (not fairseq's): static shapes, lengths %v\n", edges)
	}
	keep := f.keepLastEpochs
	if keep < 0 {
		keep = 0
	}
	_, err = train.Run(ctx, s, d, train.RunConfig{Batch: bcfg, UpdateFreq: uf, MaxUpdate: f.maxUpdate, MaxEpoch: f.maxEpoch, MinLR: f.minLR,
		ValidSubset: f.validSubset, NoValidate: f.disableValid, SaveDir: f.saveDir, NoSave: f.noSave, NoEpochCheckpoints: f.noEpochCkpt,
		SaveIntervalUpdates: f.saveIntervalUpdates, KeepLastEpochs: keep, LogFormat: f.logFormat, LogInterval: f.logInterval, Log: out,
		Save: (&checkpointSaver{ctx: ctx, log: out, pauseAt: f.pauseBeforeRename}).save}, prog)
	return err
}

// adminInit sets ω from a profile: the one given with --profile, or one profiled now on
// the first batch of epoch 1 (the Clinic's adaptive-profiling stage), written to
// SAVE-DIR/profile.ratio.init either way so Clinic tools can load the checkpoints.
func adminInit(ctx context.Context, m *model.Model, d *train.Data, bcfg train.BatchConfig, f *trainFlags, drops [3]float64,
	be kernels.Trainer, out io.Writer) (*model.Model, error) {
	c := m.Config
	var prof *admin.Profile
	var err error
	if f.profileFile != "" {
		if prof, err = admin.ReadProfileFile(f.profileFile, c.EncoderLayers, c.DecoderLayers); err != nil {
			return nil, err
		}
	} else {
		batches, _, err := train.Batches(d.Train, bcfg)
		if err != nil {
			return nil, err
		}
		first, _ := train.Collate(train.EpochOrder(batches, bcfg.Seed, 1)[0], d.Train)
		if prof, err = train.Profile(ctx, m, be, first, train.ProfileConfig{Dropout: drops[0], AttentionDropout: drops[1],
			ActivationDropout: drops[2], Seed: uint64(f.seed)}); err != nil {
			return nil, err
		}
		fmt.Fprintf(out, "| profiled ω on the first batch (%d sentences)\n", first.B)
	}
	for i := 0; i < c.EncoderLayers; i++ {
		setOmega(m, model.EncLayer(i)+"self_attn_omega", prof.Encoder[2*i])
		setOmega(m, model.EncLayer(i)+"ffn_omega", prof.Encoder[2*i+1])
	}
	for i := 0; i < c.DecoderLayers; i++ {
		setOmega(m, model.DecLayer(i)+"self_attn_omega", prof.Decoder[3*i])
		setOmega(m, model.DecLayer(i)+"encoder_attn_omega", prof.Decoder[3*i+1])
		setOmega(m, model.DecLayer(i)+"ffn_omega", prof.Decoder[3*i+2])
	}
	if !f.noSave {
		if err := os.MkdirAll(f.saveDir, 0o755); err != nil {
			return nil, err
		}
		pf, err := os.Create(filepath.Join(f.saveDir, "profile.ratio.init"))
		if err != nil {
			return nil, err
		}
		if err := prof.Write(pf); err != nil {
			pf.Close()
			return nil, err
		}
		if err := pf.Close(); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func setOmega(m *model.Model, name string, v float64) {
	d := m.Config.EncoderEmbedDim
	x := make([]float32, d)
	for i := range x {
		x[i] = float32(v)
	}
	m.Params[name] = tensor.FromF32([]int{d}, x)
}
