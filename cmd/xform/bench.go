package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"

	"github.com/spf13/cobra"

	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/internal/bench"
	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cuda"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train"
)

// benchFlags are xform bench's flags: the model and batching flags of xform train (same
// names) plus the measurement's own.
type benchFlags struct {
	train                       trainFlags
	mode, data, initType, path  string
	optimizer, betas, writeText string
	genSubset                   string
	pairs, validPairs           int
	synthSeed                   uint64
	updates, warmup             int
	lrWarmup, beam, maxLenB     int
	sentences, genWarmup        int
	lr, clip, ls, peak, maxLenA float64
	maxSeconds                  float64
	syncEach                    bool
	cpuProfile                  string
	jsonOut, verbose            bool
}

func newBenchCmd() *cobra.Command {
	var f benchFlags
	c := &cobra.Command{
		Use:   "bench [--mode train|generate] [--data DATA-BIN]",
		Short: "Measure training or generation throughput (tokens/s, updates/s, MFU, peak memory)",
		Long: `Measure what xform train and xform generate achieve on this machine.

--mode train runs --warmup untimed then --updates timed training updates through the
same trainer as xform train (train.Stepper: forward, backward, gradient norm, RAdam/Adam,
inverse_sqrt), one batch of --max-tokens per update, on --data DATA-BIN (its train split)
or a seeded synthetic corpus (--pairs pairs, lengths uniform 20..40 words, 32,000 Zipf(1)
word types, the Clinic throughput corpus's distribution; tools/bench/torch_competitor.py
generates the same sentences). It reports target tokens/s (fairseq's wps), updates/s,
ms/update (mean and median), model FLOP utilisation and peak memory. Defaults are the
Clinic fork's throughput recipe (fixtures/clinic/README.md): transformer_wmt_en_de with
shared embeddings, Admin (--init adaptive: ω profiled on the first batch, untimed),
RAdam (0.9, 0.98), lr 0.001 with 8000 warm-up updates, label smoothing 0.1, dropout,
attention and ReLU dropout 0.1, max tokens 8192. Batches are collated before timing.

--batching fairseq (default) steps on xform train's batches (fairseq 0.8's, also the
Clinic fork's and the competitor's eager mode's). --batching bucket --buckets N steps on
the batches of tools/bench/torch_competitor.py's compile modes (its --buckets, default
3): a few static [B_L, L] shapes, padded, which CUDA graphs need; not fairseq's batching
(xform train --help describes it). The warm-up then starts, as the competitor's compile
modes do, with the first batch of each bucket 3 times (counted in warmup_updates), so
the timed updates are the same batches as the competitor's. Padding is neither counted
as tokens nor as FLOPs, so it costs throughput honestly; the share of pad slots is
reported (padding_fraction, as the competitor's).

MFU = model FLOPs / time / --peak-tflops (790: the H200's measured bf16 GEMM rate). Model
FLOPs count the GEMMs and attention products of the non-pad tokens, 2 per multiply-add,
times 3 for forward+backward (docs/benchmarks.md has the formula; about 366 MFLOP per
target token for 6L-6L on the synthetic corpus). Without --bf16 or --fp16 the GEMMs are
fp32, so MFU against the bf16 peak is an honest ratio, not a like-for-like one. With
--fp16 an update skipped for a loss-scale overflow is timed and counted like the others
(its warning goes to stderr).

--mode generate times beam search (xform generate's code) over --sentences sentences of
the synthetic corpus or of --gen-subset of --data, with a random model of the given
shape or --path CHECKPOINT, after translating --gen-warmup sentences untimed.

--write-text DIR writes the synthetic corpus as text (DIR/train.{src,tgt} with --pairs
pairs, DIR/valid.{src,tgt} with --valid-pairs) for xform preprocess and exits.`,
		Example: `  xform bench --device cuda --encoder-layers 6 --decoder-layers 6 --updates 100 --warmup 10
  xform bench --device cuda --data data-bin --encoder-layers 18 --decoder-layers 18 --json
  xform bench --device cuda --bf16 --data data-bin --batching bucket --buckets 2 --cuda-autotune --json
  xform bench --device cuda --bf16 --batching bucket --buckets 2 --pack-tokens=false --cuda-graphs   # padded, as the competitor
  xform bench --mode generate --device cuda --path ckpt/checkpoint_best.pt --data data-bin --beam 4
  xform bench --write-text corpus --pairs 20000 && xform preprocess -s src -t tgt \
      --trainpref corpus/train --validpref corpus/valid --destdir data-bin --joined-dictionary`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 0 {
				return usageError{fmt.Errorf("xform bench takes no arguments (the data-bin is --data)")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBench(cmd.Context(), &f, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f.train.register(c, false)
	f.train.mixed.register(c)
	fl := c.Flags()
	// The Clinic throughput recipe's values where xform train's defaults differ.
	setDefault := func(name, v string, set func()) {
		set()
		fl.Lookup(name).DefValue = v
	}
	setDefault("arch", "transformer_wmt_en_de", func() { f.train.arch = "transformer_wmt_en_de" })
	setDefault("share-all-embeddings", "true", func() { f.train.shareAll = true })
	setDefault("max-tokens", "8192", func() { f.train.maxTokens = 8192 })
	setDefault("seed", "1111", func() { f.train.seed = 1111 })
	setDefault("attention-dropout", "0.1", func() { f.train.attnDropout = 0.1 })
	setDefault("activation-dropout", "0.1", func() { f.train.actDropout = 0.1 })
	fl.Lookup("relu-dropout").DefValue = "0.1"
	fl.Lookup("restore-file").Hidden = true
	fl.StringVar(&f.mode, "mode", "train", "train or generate")
	fl.StringVar(&f.data, "data", "", "data-bin to read (train: its train split; generate: --gen-subset); default: the synthetic corpus")
	fl.IntVar(&f.pairs, "pairs", 20000, "synthetic corpus: training pairs")
	fl.IntVar(&f.validPairs, "valid-pairs", 500, "synthetic corpus: validation pairs (--write-text only)")
	fl.Uint64Var(&f.synthSeed, "synthetic-seed", 1, "synthetic corpus: generator seed (torch_competitor.py --synthetic-seed)")
	fl.StringVar(&f.writeText, "write-text", "", "write the synthetic corpus as text into this directory and exit")
	fl.IntVar(&f.updates, "updates", 100, "timed training updates")
	fl.IntVar(&f.warmup, "warmup", 10, "untimed training updates first")
	fl.Float64Var(&f.maxSeconds, "time-limit", 0, "stop the timed updates once they took this many seconds (0 = run all --updates)")
	fl.StringVar(&f.cpuProfile, "cpuprofile", "", "write a Go CPU profile of the host during the timed part (training updates or generation) to this file (go tool pprof)")
	fl.BoolVar(&f.syncEach, "sync-each-update", false, "read each update's loss and gradient norm before queueing the next (no pipelining; for comparison)")
	fl.StringVar(&f.initType, "init", "adaptive", "initialisation: adaptive (Admin, profiled untimed), default or deepnet")
	fl.StringVar(&f.optimizer, "optimizer", "radam", "radam or adam")
	fl.StringVar(&f.betas, "adam-betas", "(0.9, 0.98)", "Adam betas")
	fl.Float64Var(&f.lr, "lr", 0.001, "peak learning rate (inverse_sqrt)")
	fl.IntVar(&f.lrWarmup, "warmup-updates", 8000, "learning-rate warm-up updates (inverse_sqrt, from 1e-7)")
	fl.Float64Var(&f.clip, "clip-norm", 0, "clip the gradient norm (0 = off; the norm is computed either way)")
	fl.Float64Var(&f.ls, "label-smoothing", 0.1, "label smoothing")
	fl.Float64Var(&f.peak, "peak-tflops", bench.DefaultPeakTFLOPs, "the device's peak TFLOP/s for MFU")
	fl.StringVar(&f.path, "path", "", "generate: checkpoint to translate with (default: a random model of the given shape)")
	fl.StringVar(&f.genSubset, "gen-subset", "test", "generate: split of --data to translate")
	fl.IntVar(&f.sentences, "sentences", 500, "generate: sentences to translate, the first of the split (0 = all of it)")
	fl.IntVar(&f.genWarmup, "gen-warmup", 16, "generate: sentences translated untimed first")
	fl.IntVar(&f.beam, "beam", 4, "generate: beam size")
	fl.Float64Var(&f.maxLenA, "max-len-a", 1.2, "generate: max length = a·source width + b (a random model rarely stops by itself)")
	fl.IntVar(&f.maxLenB, "max-len-b", 10, "generate: max length = a·source width + b")
	fl.BoolVar(&f.jsonOut, "json", false, "print the result as one JSON object")
	fl.BoolVar(&f.verbose, "verbose", false, "one line per training update on stderr")
	f.train.device.register(c)
	f.train.device.registerGraphs(c)
	f.train.batching.register(c)
	return c
}

func runBench(ctx context.Context, f *benchFlags, out, errw io.Writer) error {
	if f.writeText != "" {
		return writeSyntheticText(ctx, f, out)
	}
	switch f.mode {
	case "train", "generate":
	default:
		return usageError{fmt.Errorf("--mode %q: want train or generate", f.mode)}
	}
	init := model.Init(f.initType)
	switch init {
	case model.InitDefault, model.InitAdaptive, model.InitDeepNet:
	default:
		return usageError{fmt.Errorf("--init %q is not one of default, adaptive, deepnet", f.initType)}
	}
	if f.train.maxTokens <= 0 && f.train.maxSentences <= 0 {
		return usageError{fmt.Errorf("set --max-tokens or --max-sentences")}
	}
	if err := f.train.setPrecision(); err != nil {
		return err
	}
	if _, err := f.train.lossScaler([]int{1}); err != nil { // the flags' errors before any work
		return err
	}
	if _, err := f.train.batching.count(f.train.maxTokens, f.train.maxSentences); err != nil {
		return err
	}
	var res interface{ WriteText(io.Writer) error }
	var err error
	if f.mode == "train" {
		res, err = benchTrain(ctx, f, init, errw)
	} else {
		res, err = benchGenerate(ctx, f, init, errw)
	}
	if err != nil {
		return err
	}
	if f.jsonOut {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	return res.WriteText(out)
}

func writeSyntheticText(ctx context.Context, f *benchFlags, out io.Writer) error {
	if f.pairs < 1 || f.validPairs < 1 {
		return usageError{fmt.Errorf("--pairs and --valid-pairs must be positive")}
	}
	tr := bench.DefaultSynth(f.pairs, f.synthSeed)
	va := tr
	va.First, va.Pairs = tr.Pairs, f.validPairs
	for _, s := range []struct {
		name string
		cfg  bench.SynthConfig
	}{{"train", tr}, {"valid", va}} {
		if err := bench.WriteText(ctx, s.cfg, filepath.Join(f.writeText, s.name)); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "| wrote %s/{train,valid}.{src,tgt}: %d + %d synthetic pairs (seed %d)\n", f.writeText, f.pairs, f.validPairs, f.synthSeed)
	return nil
}

// benchData returns the split to measure on, its description, and the data for
// newConfig (whose dictionaries size the model).
func benchData(ctx context.Context, f *benchFlags, subset string, pairs int) (*generate.Split, string, *train.Data, error) {
	if f.data == "" {
		if pairs < 1 {
			return nil, "", nil, usageError{fmt.Errorf("the synthetic corpus needs at least one pair")}
		}
		sp, err := bench.Synthetic(ctx, bench.DefaultSynth(pairs, f.synthSeed))
		if err != nil {
			return nil, "", nil, err
		}
		return sp, fmt.Sprintf("synthetic (%d pairs, seed %d)", pairs, f.synthSeed), &train.Data{Train: sp}, nil
	}
	if subset == "train" {
		d, err := loadData(f.data, &f.train, false)
		if err != nil {
			return nil, "", nil, err
		}
		return d.Train, fmt.Sprintf("%s (train, %d pairs)", f.data, len(d.Train.Src)), d, nil
	}
	src, tgt := f.train.srcLang, f.train.tgtLang
	if src == "" || tgt == "" {
		s, t, err := generate.InferLangs(f.data, subset)
		if err != nil {
			return nil, "", nil, err
		}
		src, tgt = s, t
	}
	sp, err := generate.LoadSplit(f.data, subset, src, tgt)
	if err != nil {
		return nil, "", nil, err
	}
	return sp, fmt.Sprintf("%s (%s, %d pairs)", f.data, subset, len(sp.Src)), &train.Data{Train: sp}, nil
}

// hooks connects the measurement to a GPU backend (nothing on the CPU).
func hooks(be kernels.Backend) bench.Hooks {
	g, ok := be.(*cuda.Backend)
	if !ok {
		return bench.Hooks{}
	}
	return bench.Hooks{
		Sync: g.Synchronize,
		Memory: func() (bench.DeviceMemory, error) {
			st, err := g.MemoryStats()
			return bench.DeviceMemory{PeakAllocated: st.PeakLive, PeakHeld: st.PeakHeld, Used: st.DeviceUsed, Total: st.DeviceTotal}, err
		},
		Host: func() bench.HostUse {
			st := g.HostStats()
			return bench.HostUse{GEMMPlans: st.LtPlans, GEMMRefused: st.LtRefused, GEMMPlanMs: st.LtPlanTime.Seconds() * 1e3,
				GEMMQueries: st.LtQueries, GEMMReused: st.LtReused, GEMMSkipped: st.LtSkipped,
				GEMMTuned: st.LtTuned, GEMMTuneMs: st.LtTuneTime.Seconds() * 1e3,
				DeviceAllocs: st.Allocs, DeviceAllocGiB: float64(st.AllocBytes) / (1 << 30), DeviceWaitMs: st.DeviceWait.Seconds() * 1e3,
				LNBackward: st.LNBackward, LNBackwardStep: st.LNBackwardStep, PDLLaunches: st.PDLLaunches}
		},
	}
}

func benchTrain(ctx context.Context, f *benchFlags, init model.Init, errw io.Writer) (*bench.TrainResult, error) {
	if f.updates < 1 || f.warmup < 0 {
		return nil, usageError{fmt.Errorf("need --updates ≥ 1 and --warmup ≥ 0")}
	}
	sp, desc, d, err := benchData(ctx, f, "train", f.pairs)
	if err != nil {
		return nil, err
	}
	c, drops, err := newConfig(&f.train, d, init)
	if err != nil {
		return nil, err
	}
	m, err := train.InitModel(c, uint64(f.train.seed))
	if err != nil {
		return nil, err
	}
	be, err := f.train.device.trainer(f.train.threads)
	if err != nil {
		return nil, err
	}
	buckets, err := f.train.batching.count(f.train.maxTokens, f.train.maxSentences)
	if err != nil {
		return nil, err
	}
	bcfg := train.BatchConfig{MaxTokens: f.train.maxTokens, MaxSentences: f.train.maxSentences, Multiple: f.train.mult,
		Seed: uint32(f.train.seed), MaxSourcePos: c.MaxSourcePositions, MaxTargetPos: c.MaxTargetPositions, SkipInvalidAll: true,
		Buckets: buckets}
	if init == model.InitAdaptive {
		tf := f.train
		tf.noSave, tf.profileFile = true, ""
		if m, err = adminInit(ctx, m, d, bcfg, &tf, drops, be, io.Discard); err != nil {
			return nil, err
		}
	}
	net, err := model.NewTrainNet(m, be)
	if err != nil {
		return nil, err
	}
	packed, err := f.train.device.packRows(net, be)
	if err != nil {
		return nil, err
	}
	betas, err := parseFloats(f.betas, "adam-betas")
	if err != nil || len(betas) != 2 {
		return nil, usageError{fmt.Errorf("--adam-betas %q: want two numbers", f.betas)}
	}
	sched, err := train.NewSchedule(train.ScheduleConfig{Name: "inverse_sqrt", LR: []float64{f.lr}, WarmupUpdates: f.lrWarmup, WarmupInitLR: 1e-7})
	if err != nil {
		return nil, usageError{err}
	}
	opt, err := train.NewOptimizer(net, train.OptimConfig{Name: f.optimizer, Beta1: betas[0], Beta2: betas[1], Eps: 1e-8})
	if err != nil {
		return nil, usageError{err}
	}
	// One batch per update: fairseq's default window is then 2^14.
	scaler, err := f.train.lossScaler([]int{1})
	if err != nil {
		return nil, err
	}
	s := &train.Stepper{Net: net, Opt: opt, Sched: sched, Cfg: train.StepConfig{ClipNorm: f.clip, LabelSmoothing: f.ls,
		Dropout: drops[0], AttentionDropout: drops[1], ActivationDropout: drops[2], Seed: uint64(f.train.seed)}, Scaler: scaler, Log: errw}
	batches, _, err := bench.TrainBatches(ctx, sp, bcfg, f.warmup+f.updates)
	if err != nil {
		return nil, err
	}
	// Every static shape once (three times, as the competitor) before the --warmup
	// updates, so that the timed updates are the competitor's and meet no new shape.
	shapes, err := bench.ShapeWarmup(ctx, sp, bcfg, 3)
	if err != nil {
		return nil, err
	}
	batches = append(shapes, batches...)
	lengths := []int{}
	if buckets > 0 {
		if lengths, err = train.SplitBucketEdges(sp, bcfg); err != nil {
			return nil, err
		}
	}
	o := bench.TrainOptions{Warmup: len(shapes) + f.warmup, Updates: f.updates, MaxSeconds: f.maxSeconds, PeakTFLOPs: f.peak, Hooks: hooks(be),
		NoPipeline: f.syncEach}
	timed, done, err := cpuProfiler(f.cpuProfile, errw)
	if err != nil {
		return nil, err
	}
	defer done()
	o.Timed = withProfileReset(be, timed)
	if f.verbose {
		o.Progress = errw
	}
	res, err := bench.Train(ctx, s, batches, o)
	if err != nil {
		return nil, err
	}
	res.Data, res.MaxTokens, res.Precision = desc, f.train.maxTokens, f.train.device.precision.String()
	res.Batching, res.BucketLengths, res.PackedRows = f.train.batching.mode, lengths, packed
	if g, ok := be.(*cuda.Backend); ok && g.GraphsEnabled() {
		st := g.GraphStats()
		res.Graphs = &bench.GraphUse{Eager: st.Eager, Captures: st.Captures, Replays: st.Replays, Divergences: st.Divergences,
			NodeUpdates: st.NodeUpdates, ArenaBytes: st.ArenaBytes}
		if st.Replays > 0 {
			res.Graphs.ReplayHostMs = st.ReplayHost.Seconds() * 1e3 / float64(st.Replays)
			res.Graphs.ReplayWaitMs = st.ReplayWait.Seconds() * 1e3 / float64(st.Replays)
		}
	}
	return res, nil
}

// cpuProfiler returns the bench's Timed hook for --cpuprofile path (nil hook and a no-op
// without it): a Go CPU profile from the start of the timed work to its end, and the
// function that closes the file (after the hook's end) and reports a profile that could
// not start.
// withProfileReset is timed that, on a CUDA backend, first resets XFORM_CUDA_PROFILE's
// counts when the timed part starts, so that the profile printed at the end covers the
// same updates as the bench's numbers.
func withProfileReset(be kernels.Backend, timed func(start bool)) func(start bool) {
	g, ok := be.(*cuda.Backend)
	if !ok {
		return timed
	}
	return func(start bool) {
		if start {
			g.ResetProfile()
		}
		if timed != nil {
			timed(start)
		}
	}
}

func cpuProfiler(path string, errw io.Writer) (timed func(start bool), done func(), err error) {
	if path == "" {
		return nil, func() {}, nil
	}
	pf, err := os.Create(path)
	if err != nil {
		return nil, nil, fmt.Errorf("bench: --cpuprofile: %w", err)
	}
	var perr error
	timed = func(start bool) {
		if start {
			perr = pprof.StartCPUProfile(pf)
		} else if perr == nil {
			pprof.StopCPUProfile()
		}
	}
	done = func() {
		if perr != nil {
			fmt.Fprintf(errw, "| warning: --cpuprofile: %v\n", perr)
		}
		pf.Close()
	}
	return timed, done, nil
}

func benchGenerate(ctx context.Context, f *benchFlags, init model.Init, errw io.Writer) (*bench.GenerateResult, error) {
	if f.beam < 1 || f.sentences < 0 || f.genWarmup < 0 {
		return nil, usageError{fmt.Errorf("need --beam ≥ 1, --sentences ≥ 0 and --gen-warmup ≥ 0")}
	}
	// The synthetic corpus is the training one (--pairs), so the model has the vocabulary
	// the training benchmark has; the first --sentences pairs are translated.
	n := f.sentences
	sp, desc, d, err := benchData(ctx, f, f.genSubset, f.pairs)
	if err != nil {
		return nil, err
	}
	if n > 0 && n < len(sp.Src) {
		desc += fmt.Sprintf(", the first %d", n)
		sp.Src = sp.Src[:n]
		if sp.Tgt != nil {
			sp.Tgt = sp.Tgt[:n]
		}
	}
	sp.Tgt = nil // no BLEU: only the search is timed
	var m *model.Model
	if f.path != "" {
		if m, err = convert.LoadCheckpoint(f.path); err != nil {
			return nil, fmt.Errorf("load %s: %w", f.path, err)
		}
	} else {
		c, _, err := newConfig(&f.train, d, init)
		if err != nil {
			return nil, err
		}
		if m, err = train.InitModel(c, uint64(f.train.seed)); err != nil {
			return nil, err
		}
	}
	be, err := f.train.device.backend(f.train.threads)
	if err != nil {
		return nil, err
	}
	r, err := model.NewRunner(m, be)
	if err != nil {
		return nil, err
	}
	if err := generate.CheckVocab(r, sp); err != nil {
		return nil, err
	}
	search := model.DefaultBeamOptions()
	search.Beam, search.MaxLenA, search.MaxLenB = f.beam, f.maxLenA, f.maxLenB
	timed, done, err := cpuProfiler(f.cpuProfile, errw)
	if err != nil {
		return nil, err
	}
	defer done()
	res, err := bench.Generate(ctx, r, m, sp, bench.GenerateOptions{
		Search: generate.Options{Subset: f.genSubset, Search: search, BatchSize: f.train.maxSentences, MaxTokens: f.train.maxTokens,
			RequiredBatchSizeMultiple: f.train.mult, Seed: uint32(f.train.seed)},
		Warmup: f.genWarmup, Hooks: hooks(be), Timed: withProfileReset(be, timed)})
	if err != nil {
		return nil, err
	}
	res.Data = desc
	return res, nil
}
