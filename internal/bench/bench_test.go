package bench

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/preprocess"
	"github.com/xform-dev/xform/train"
)

// The generator must give exactly what tools/bench/torch_competitor.py gives (numpy); the
// expected values were printed by that script's synth_ranks / synth_corpus.
func TestSyntheticMatchesPython(t *testing.T) {
	ctx := context.Background()
	type pairs struct {
		cfg              SynthConfig
		srcLens, tgtLens []int
		firstSrc         []int // the first source's first ranks
	}
	for _, c := range []pairs{
		{DefaultSynth(3, 1), []int{22, 35, 32}, []int{27, 34, 22}, []int{1, 1914, 426, 2487, 2167, 1308, 237, 30}},
		{SynthConfig{Pairs: 2, First: 1, Seed: 1, Vocab: 32000, MinLen: 20, MaxLen: 40}, []int{35, 32}, []int{34, 22}, []int{2, 208, 807, 3, 5, 3878, 35, 14}},
		{SynthConfig{Pairs: 5, First: 100, Seed: 7, Vocab: 32000, MinLen: 20, MaxLen: 40}, []int{22, 37, 24, 39, 31}, []int{38, 39, 31, 36, 26}, []int{7829, 2, 1, 0, 1}},
	} {
		var sl, tl []int
		var first []int
		if err := c.cfg.ranks(ctx, func(s, tg []int) {
			if first == nil {
				first = append([]int(nil), s[:len(c.firstSrc)]...)
			}
			sl, tl = append(sl, len(s)), append(tl, len(tg))
		}); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(sl, c.srcLens) || !slices.Equal(tl, c.tgtLens) || !slices.Equal(first, c.firstSrc) {
			t.Errorf("%+v: lengths %v %v, first source %v; want %v %v %v", c.cfg, sl, tl, first, c.srcLens, c.tgtLens, c.firstSrc)
		}
	}
	// Checksums over 1000 pairs: Σ (rank+1)·i over the word stream, and Σ id·i over the
	// encoded sentences (</s> included) with the dictionary size.
	var sum, i uint64
	if err := DefaultSynth(1000, 1).ranks(ctx, func(s, tg []int) {
		for _, k := range append(append([]int(nil), s...), tg...) {
			i++
			sum += uint64(k+1) * i
		}
	}); err != nil {
		t.Fatal(err)
	}
	if sum != 5176364027744 || i != 59578 {
		t.Errorf("rank checksum %d over %d words, want 5176364027744 over 59578", sum, i)
	}
	sp, err := Synthetic(ctx, DefaultSynth(1000, 1))
	if err != nil {
		t.Fatal(err)
	}
	sum, i = 0, 0
	for p := range sp.Src {
		for _, id := range append(append([]int32(nil), sp.Src[p]...), sp.Tgt[p]...) {
			i++
			sum += uint64(id) * i
		}
	}
	if sum != 3062653474180 || i != 61578 || sp.SrcDict.Len() != 12480 {
		t.Errorf("id checksum %d over %d tokens, dictionary %d; want 3062653474180, 61578, 12480", sum, i, sp.SrcDict.Len())
	}
	// fairseq's batching as the script ports it (fairseq_batches, epoch_order).
	sp, err = Synthetic(ctx, DefaultSynth(2000, 1))
	if err != nil {
		t.Fatal(err)
	}
	frozen, _, err := train.Batches(sp, train.BatchConfig{MaxTokens: 1024, Multiple: 8, Seed: 1111, MaxSourcePos: 1024, MaxTargetPos: 1024})
	if err != nil {
		t.Fatal(err)
	}
	ep := train.EpochOrder(frozen, 1111, 1)
	if len(frozen) != 80 || !slices.Equal(frozen[0][:5], []int{1703, 1370, 466, 674, 1163}) || !slices.Equal(frozen[79][:3], []int{1720, 1947, 1254}) ||
		!slices.Equal(ep[0][:5], []int{480, 1103, 302, 1243, 1713}) || !slices.Equal(ep[1][:3], []int{753, 1806, 697}) {
		t.Errorf("batches differ from the script's: %d, %v, %v, %v, %v", len(frozen), frozen[0][:5], frozen[79][:3], ep[0][:5], ep[1][:3])
	}
}

// Synthetic equals xform preprocess of WriteText's output: same dictionary, same ids.
func TestSyntheticEqualsPreprocessedText(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := DefaultSynth(300, 5)
	if err := WriteText(ctx, cfg, filepath.Join(dir, "text", "train")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "text", "train.src"))
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(b), "\n"); lines != 300 {
		t.Fatalf("train.src has %d lines, want 300", lines)
	}
	opt := preprocess.Defaults()
	opt.SourceLang, opt.TargetLang = "src", "tgt"
	opt.TrainPref, opt.DestDir, opt.JoinedDictionary = filepath.Join(dir, "text", "train"), filepath.Join(dir, "bin"), true
	opt.Log = new(bytes.Buffer)
	if err := preprocess.Run(ctx, opt); err != nil {
		t.Fatal(err)
	}
	got, err := generate.LoadSplit(filepath.Join(dir, "bin"), "train", "src", "tgt")
	if err != nil {
		t.Fatal(err)
	}
	want, err := Synthetic(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !got.SrcDict.Equal(want.SrcDict) {
		t.Fatalf("dictionaries differ: %d vs %d symbols", got.SrcDict.Len(), want.SrcDict.Len())
	}
	for p := range want.Src {
		if !slices.Equal(got.Src[p], want.Src[p]) || !slices.Equal(got.Tgt[p], want.Tgt[p]) {
			t.Fatalf("pair %d differs:\n%v %v\n%v %v", p, got.Src[p], got.Tgt[p], want.Src[p], want.Tgt[p])
		}
	}
}

func TestSynthConfigErrors(t *testing.T) {
	for _, c := range []SynthConfig{
		{Pairs: 0, Vocab: 10, MinLen: 1, MaxLen: 2},
		{Pairs: 1, Vocab: 0, MinLen: 1, MaxLen: 2},
		{Pairs: 1, Vocab: 10, MinLen: 3, MaxLen: 2},
		{Pairs: 1, First: -1, Vocab: 10, MinLen: 1, MaxLen: 2},
	} {
		if _, err := Synthetic(context.Background(), c); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}

// The FLOP count of the 6L-6L transformer_wmt_en_de at s = t = 31 is 6·N plus attention
// (the number docs/benchmarks.md quotes), and TrainFLOPs counts non-pad tokens only.
func TestFLOPs(t *testing.T) {
	c := model.Config{EncoderLayers: 6, DecoderLayers: 6, EncoderEmbedDim: 512, DecoderEmbedDim: 512,
		EncoderFFNDim: 2048, DecoderFFNDim: 2048, TgtVocab: 32008}
	cases := []struct {
		name string
		c    model.Config
		s, t int
		want float64 // MFLOP per target token, training
	}{
		{"6L-6L", c, 31, 31, 365.998},
		{"18L-18L", func() model.Config { c := c; c.EncoderLayers, c.DecoderLayers = 18, 18; return c }(), 31, 31, 901.337},
	}
	for _, k := range cases {
		got := 3 * ForwardFLOPs(k.c, k.s, k.t) / float64(k.t) / 1e6
		if math.Abs(got-k.want) > 1e-3 {
			t.Errorf("%s: %.3f MFLOP per target token, want %.3f", k.name, got, k.want)
		}
	}
	// Two rows, the first padded: pads are not counted.
	b := &model.TrainBatch{B: 2, S: 3, T: 2,
		Src:    []int32{model.Pad, 5, 2, 6, 7, 2},
		Target: []int32{5, 2, 9, model.Pad}}
	want := 3 * (ForwardFLOPs(c, 2, 2) + ForwardFLOPs(c, 3, 1))
	if got := TrainFLOPs(c, b); got != want {
		t.Errorf("TrainFLOPs = %g, want %g", got, want)
	}
}

// A tiny model trains through the real Stepper on the CPU backend and every reported
// number is consistent.
func TestTrainTinyCPU(t *testing.T) {
	ctx := context.Background()
	sp, err := Synthetic(ctx, SynthConfig{Pairs: 200, Seed: 3, Vocab: 300, MinLen: 3, MaxLen: 8})
	if err != nil {
		t.Fatal(err)
	}
	c := model.Config{Arch: "transformer", Init: model.InitDefault, EncoderLayers: 1, DecoderLayers: 1, EncoderEmbedDim: 16, DecoderEmbedDim: 16,
		EncoderFFNDim: 32, DecoderFFNDim: 32, EncoderHeads: 2, DecoderHeads: 2, ShareAllEmbeddings: true,
		SrcVocab: sp.SrcDict.Len(), TgtVocab: sp.TgtDict.Len(), Activation: "relu", MaxSourcePositions: 1024, MaxTargetPositions: 1024}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	m, err := train.InitModel(c, 1)
	if err != nil {
		t.Fatal(err)
	}
	net, err := model.NewTrainNet(m, cpu.New(1))
	if err != nil {
		t.Fatal(err)
	}
	sched, err := train.NewSchedule(train.ScheduleConfig{Name: "inverse_sqrt", LR: []float64{1e-3}, WarmupUpdates: 10, WarmupInitLR: 1e-7})
	if err != nil {
		t.Fatal(err)
	}
	opt, err := train.NewOptimizer(net, train.OptimConfig{Name: "adam", Beta1: 0.9, Beta2: 0.98, Eps: 1e-8})
	if err != nil {
		t.Fatal(err)
	}
	s := &train.Stepper{Net: net, Opt: opt, Sched: sched, Cfg: train.StepConfig{LabelSmoothing: 0.1, Seed: 1}}
	batches, nFrozen, err := TrainBatches(ctx, sp, train.BatchConfig{MaxTokens: 128, Multiple: 8, Seed: 1, MaxSourcePos: 1024, MaxTargetPos: 1024}, 40)
	if err != nil {
		t.Fatal(err)
	}
	if len(batches) != 40 || nFrozen >= 40 {
		t.Fatalf("%d batches from %d frozen ones; want 40 from fewer (the epochs cycle)", len(batches), nFrozen)
	}
	syncs := 0
	// Host counters that every update advances (as a backend's plan and allocation
	// counts would): the result must hold the growth over the 4 timed updates only.
	var host HostUse
	var progress bytes.Buffer
	res, err := Train(ctx, s, batches[:5], TrainOptions{Warmup: 2, Updates: 4, Progress: &progress, Hooks: Hooks{
		Sync: func() error {
			syncs++
			host.GEMMPlans += 3
			host.GEMMRefused++
			host.GEMMPlanMs += 0.5
			host.GEMMQueries += 2
			host.GEMMReused++
			host.GEMMSkipped += 3
			host.GEMMTuned += 2
			host.GEMMTuneMs += 0.25
			host.DeviceAllocs += 2
			host.DeviceAllocGiB += 0.25
			host.DeviceWaitMs += 0.125
			return nil
		},
		Memory: func() (DeviceMemory, error) { return DeviceMemory{PeakAllocated: 1 << 20, Total: 1 << 30}, nil },
		Host:   func() HostUse { return host },
	}})
	if err != nil {
		t.Fatal(err)
	}
	if syncs != 6 || strings.Count(progress.String(), "\n") != 6 || s.NumUpdates != 6 {
		t.Errorf("%d syncs, %d progress lines, %d updates; want 6 each", syncs, strings.Count(progress.String(), "\n"), s.NumUpdates)
	}
	// The timed updates are batches 2, 3, 4 and 0 (cycling).
	tokens, flops := 0, 0.0
	for _, i := range []int{2, 3, 4, 0} {
		tokens += batches[i].NTokens
		flops += TrainFLOPs(c, batches[i])
	}
	if res.TargetTokens != tokens || res.Updates != 4 || res.Warmup != 2 {
		t.Errorf("target tokens %d, updates %d, warm-up %d; want %d, 4, 2", res.TargetTokens, res.Updates, res.Warmup, tokens)
	}
	close := func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }
	if !close(res.TargetTokensPerSec, float64(tokens)/res.Seconds) || !close(res.UpdatesPerSec, 4/res.Seconds) ||
		!close(res.MsPerUpdateMean, 1e3*res.Seconds/4) || !close(res.FLOPsPerTargetToken, flops/float64(tokens)) ||
		!close(res.MFU, flops/res.Seconds/1e12/DefaultPeakTFLOPs) {
		t.Errorf("inconsistent rates: %+v", res)
	}
	if res.MsPerUpdateMin > res.MsPerUpdateP50 || res.MsPerUpdateP50 > res.MsPerUpdateMax {
		t.Errorf("min %.3f, p50 %.3f, max %.3f out of order", res.MsPerUpdateMin, res.MsPerUpdateP50, res.MsPerUpdateMax)
	}
	if res.Memory.Device == nil || res.Memory.Device.PeakAllocated != 1<<20 || res.Memory.PeakRSS == 0 && ProcessRSSAvailable() {
		t.Errorf("memory %+v", res.Memory)
	}
	if math.IsNaN(res.FirstLoss) || math.IsNaN(res.LastLoss) || res.Model.Params != m.NumParams() {
		t.Errorf("loss %g -> %g, params %d", res.FirstLoss, res.LastLoss, res.Model.Params)
	}
	if want := (HostUse{GEMMPlans: 12, GEMMRefused: 4, GEMMPlanMs: 2, GEMMQueries: 8, GEMMReused: 4, GEMMSkipped: 12, GEMMTuned: 8, GEMMTuneMs: 1, DeviceAllocs: 8, DeviceAllocGiB: 1, DeviceWaitMs: 0.5}); res.Host == nil || *res.Host != want {
		t.Errorf("host costs %+v, want %+v (the 4 timed updates' growth)", res.Host, want)
	}
	var text bytes.Buffer
	if err := res.WriteText(&text); err != nil || !strings.Contains(text.String(), "target tokens/s") ||
		!strings.Contains(text.String(), "12 GEMM plans built (4 refused) in 2.0 ms, 8 device allocations (1.000 GiB); 8 heuristic queries, 4 plans on a reused algorithm, 12 remembered refusals; 8 autotuned in 1.0 ms") {
		t.Errorf("text %q, %v", text.String(), err)
	}
	// Blocked 0.125 ms per update; busy is the rest of the mean update time.
	wantBusy := fmt.Sprintf("blocked on the device 0.12 ms per update, busy %.2f ms per update", res.MsPerUpdateMean-0.125)
	if !strings.Contains(text.String(), wantBusy) {
		t.Errorf("text %q lacks %q", text.String(), wantBusy)
	}
	// Pipelined (a backend with deferred reads): the same updates and losses (the CPU
	// computes when queued, so the bits match), two synchronisations (the warm-up's end
	// and the last update), and the host counters' growth of the one in the timed part.
	m2, err := train.InitModel(c, 1)
	if err != nil {
		t.Fatal(err)
	}
	net2, err := model.NewTrainNet(m2, deferredCPU{cpu.New(1)})
	if err != nil {
		t.Fatal(err)
	}
	sched2, _ := train.NewSchedule(train.ScheduleConfig{Name: "inverse_sqrt", LR: []float64{1e-3}, WarmupUpdates: 10, WarmupInitLR: 1e-7})
	opt2, err := train.NewOptimizer(net2, train.OptimConfig{Name: "adam", Beta1: 0.9, Beta2: 0.98, Eps: 1e-8})
	if err != nil {
		t.Fatal(err)
	}
	s2 := &train.Stepper{Net: net2, Opt: opt2, Sched: sched2, Cfg: train.StepConfig{LabelSmoothing: 0.1, Seed: 1}}
	syncs, host = 0, HostUse{}
	progress.Reset()
	piped, err := Train(ctx, s2, batches[:5], TrainOptions{Warmup: 2, Updates: 4, Progress: &progress, Hooks: Hooks{
		Sync: func() error { syncs++; host.DeviceAllocs++; return nil },
		Host: func() HostUse { return host },
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !piped.Pipelined || syncs != 2 || strings.Count(progress.String(), "\n") != 6 || s2.NumUpdates != 6 || piped.Updates != 4 {
		t.Errorf("pipelined %v: %d syncs, %d progress lines, %d updates (%d timed); want true, 2, 6, 6 (4)", piped.Pipelined, syncs,
			strings.Count(progress.String(), "\n"), s2.NumUpdates, piped.Updates)
	}
	if piped.TargetTokens != res.TargetTokens || piped.FirstLoss != res.FirstLoss || piped.LastLoss != res.LastLoss ||
		piped.Host == nil || piped.Host.DeviceAllocs != 1 {
		t.Errorf("pipelined: %d tokens, loss %v -> %v, host %+v; unpipelined %d, %v -> %v, one sync's growth", piped.TargetTokens,
			piped.FirstLoss, piped.LastLoss, piped.Host, res.TargetTokens, res.FirstLoss, res.LastLoss)
	}
	// A time limit ends the timed updates early, after at least one.
	res, err = Train(ctx, s, batches, TrainOptions{Updates: 30, MaxSeconds: 1e-9})
	if err != nil || res.Updates != 1 || res.TargetTokens != batches[0].NTokens || res.Host != nil {
		t.Errorf("time limit: %v updates, %v tokens, %v", res.Updates, res.TargetTokens, err)
	}
	for _, bad := range []TrainOptions{{Updates: 0}, {Updates: 1, Warmup: -1}} {
		if _, err := Train(ctx, s, batches, bad); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Train(cctx, s, batches, TrainOptions{Updates: 1}); err == nil {
		t.Error("cancelled context: no error")
	}
}

func TestGenerateTinyCPU(t *testing.T) {
	ctx := context.Background()
	sp, err := Synthetic(ctx, SynthConfig{Pairs: 12, Seed: 3, Vocab: 100, MinLen: 3, MaxLen: 6})
	if err != nil {
		t.Fatal(err)
	}
	sp.Tgt = nil
	c := model.Config{Arch: "transformer", Init: model.InitDefault, EncoderLayers: 1, DecoderLayers: 1, EncoderEmbedDim: 16, DecoderEmbedDim: 16,
		EncoderFFNDim: 32, DecoderFFNDim: 32, EncoderHeads: 2, DecoderHeads: 2, ShareAllEmbeddings: true,
		SrcVocab: sp.SrcDict.Len(), TgtVocab: sp.TgtDict.Len(), Activation: "relu", MaxSourcePositions: 1024, MaxTargetPositions: 1024}
	m, err := train.InitModel(c, 1)
	if err != nil {
		t.Fatal(err)
	}
	r, err := model.NewRunner(m, cpu.New(1))
	if err != nil {
		t.Fatal(err)
	}
	search := model.DefaultBeamOptions()
	search.Beam, search.MaxLenA, search.MaxLenB = 2, 1, 3
	res, err := Generate(ctx, r, m, sp, GenerateOptions{Search: generate.Options{Search: search, MaxTokens: 1000, RequiredBatchSizeMultiple: 8, Seed: 1}, Warmup: 4})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sentences != 12 || res.Tokens < 12 || res.WarmupSentences != 4 || res.Beam != 2 || res.TokensPerSec <= 0 {
		t.Errorf("%+v", res)
	}
}

// ProcessRSSAvailable reports whether ProcessRSS can read this system's numbers.
func ProcessRSSAvailable() bool {
	p, _ := ProcessRSS()
	return p > 0
}

// deferredCPU is the CPU backend declaring deferred reads, so a Stepper pipelines on it
// as on the GPU.
type deferredCPU struct{ *cpu.Backend }

func (deferredCPU) DeferredReads() bool { return true }
