package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train"
)

// DeviceMemory is what an accelerator reports about its memory, in bytes.
// PeakAllocated is comparable to torch.cuda.max_memory_allocated, PeakHeld to
// max_memory_reserved; Used/Total are the driver's view of the whole device.
type DeviceMemory struct {
	PeakAllocated uint64 `json:"peak_allocated_bytes"`
	PeakHeld      uint64 `json:"peak_held_bytes"`
	Used          uint64 `json:"device_used_bytes"`
	Total         uint64 `json:"device_total_bytes"`
}

// Hooks connect the measurement to the backend; every field may be nil (the CPU).
type Hooks struct {
	// Sync waits until the device has finished the work queued so far, so that a
	// timed update ends when its last kernel does.
	Sync func() error
	// Memory reads the device's memory counters after the run.
	Memory func() (DeviceMemory, error)
	// Host reads the backend's cumulative host-side costs (HostUse's counters); Train
	// reports their growth over the timed updates.
	Host func() HostUse
}

// HostUse counts host-side work that depends on how many distinct step shapes a run
// meets rather than on its size: GEMM plans built (each a cuBLASLt heuristic query;
// Refused of them were declined) and the time they took, and device allocations the
// block cache could not serve (each synchronises the device). With fairseq's batching
// every batch has a new row count; with static buckets the timed updates should
// count none.
//
// With plan reuse (the CUDA backend's XFORM_CUDA_PLAN_REUSE) a plan need not be a
// query: GEMMQueries counts the heuristic queries, GEMMReused the plans built on an
// algorithm kept for nearby shapes, GEMMSkipped the products answered "no plan" from
// refusals remembered per kind (no plan built). GEMMTuned counts the plans (or classes)
// whose candidate algorithms the CUDA backend's autotune timed, GEMMTuneMs that timing
// (part of GEMMPlanMs: it waits for the device).
type HostUse struct {
	GEMMPlans      int     `json:"gemm_plans"`
	GEMMRefused    int     `json:"gemm_plans_refused"`
	GEMMPlanMs     float64 `json:"gemm_plan_ms"`
	GEMMQueries    int     `json:"gemm_heuristic_queries"`
	GEMMReused     int     `json:"gemm_plans_reused"`
	GEMMSkipped    int     `json:"gemm_refusals_remembered"`
	GEMMTuned      int     `json:"gemm_autotuned"`
	GEMMTuneMs     float64 `json:"gemm_autotune_ms"`
	DeviceAllocs   int     `json:"device_allocs"`
	DeviceAllocGiB float64 `json:"device_alloc_gib"`
	// DeviceWaitMs is the host time spent blocked on the device (synchronisations,
	// reads of results). Wall time minus it is the host's own work: where that is
	// close to the update's wall time, the host, not the GPU, sets the pace.
	DeviceWaitMs float64 `json:"device_wait_ms"`
	// LNBackward counts the CUDA backend's float4 LayerNorm backward launches,
	// LNBackwardStep those that ran the body compiled for the training step's calls
	// (a diagnostic: in a bf16/fp16 step with dropout at d 128·k nearly all should).
	LNBackward     int `json:"ln_backward_calls,omitempty"`
	LNBackwardStep int `json:"ln_backward_step_form,omitempty"`
	// PDLLaunches counts the kernels launched with programmatic dependent launch
	// (the CUDA backend, on by default from compute capability 9.0).
	PDLLaunches int `json:"pdl_launches,omitempty"`
}

// sub is h − o, counter by counter.
func (h HostUse) sub(o HostUse) HostUse {
	return HostUse{GEMMPlans: h.GEMMPlans - o.GEMMPlans, GEMMRefused: h.GEMMRefused - o.GEMMRefused,
		GEMMPlanMs: h.GEMMPlanMs - o.GEMMPlanMs, GEMMQueries: h.GEMMQueries - o.GEMMQueries,
		GEMMReused: h.GEMMReused - o.GEMMReused, GEMMSkipped: h.GEMMSkipped - o.GEMMSkipped,
		GEMMTuned: h.GEMMTuned - o.GEMMTuned, GEMMTuneMs: h.GEMMTuneMs - o.GEMMTuneMs,
		DeviceAllocs: h.DeviceAllocs - o.DeviceAllocs, DeviceAllocGiB: h.DeviceAllocGiB - o.DeviceAllocGiB,
		DeviceWaitMs: h.DeviceWaitMs - o.DeviceWaitMs,
		LNBackward:   h.LNBackward - o.LNBackward, LNBackwardStep: h.LNBackwardStep - o.LNBackwardStep,
		PDLLaunches: h.PDLLaunches - o.PDLLaunches}
}

// ModelInfo identifies the benchmarked model.
type ModelInfo struct {
	Arch          string `json:"arch"`
	Init          string `json:"init"`
	EncoderLayers int    `json:"encoder_layers"`
	DecoderLayers int    `json:"decoder_layers"`
	EmbedDim      int    `json:"embed_dim"`
	FFNDim        int    `json:"ffn_dim"`
	Heads         int    `json:"heads"`
	Vocab         int    `json:"vocab"`
	Params        int    `json:"params"`
}

// Info describes m.
func Info(m *model.Model) ModelInfo {
	c := m.Config
	return ModelInfo{Arch: c.Arch, Init: string(c.Init), EncoderLayers: c.EncoderLayers, DecoderLayers: c.DecoderLayers,
		EmbedDim: c.EncoderEmbedDim, FFNDim: c.EncoderFFNDim, Heads: c.EncoderHeads, Vocab: c.TgtVocab, Params: m.NumParams()}
}

// Memory is a process's resident memory and the device's, in bytes.
type Memory struct {
	PeakRSS uint64        `json:"peak_rss_bytes"` // VmHWM
	RSS     uint64        `json:"rss_bytes"`      // VmRSS at the end
	Device  *DeviceMemory `json:"device,omitempty"`
}

// TrainOptions configure Train.
type TrainOptions struct {
	Warmup  int // updates run before timing starts (compilation, caches, allocator)
	Updates int // timed updates
	// MaxSeconds, when positive, ends the timed updates early once they have taken this
	// long (at least one runs); the result counts the updates that ran.
	MaxSeconds float64
	PeakTFLOPs float64 // the device's peak for MFU (DefaultPeakTFLOPs when 0)
	Hooks      Hooks
	// Progress, when set, gets one line per update.
	Progress io.Writer
	// NoPipeline reads each update's results before queueing the next even where the
	// Stepper could pipeline (xform bench --sync-each-update).
	NoPipeline bool
	// Timed, when set, is called with true as the timed updates start and with false
	// when they end (xform bench --cpuprofile profiles the host there alone).
	Timed func(start bool)
}

// TrainResult is what xform bench --mode train reports. Rates count the timed
// updates only; tokens are fairseq's ntokens (non-pad target tokens, </s> included).
type TrainResult struct {
	Mode      string    `json:"mode"` // "train"
	Date      string    `json:"date"` // RFC 3339, UTC
	Device    string    `json:"device"`
	Precision string    `json:"precision"` // GEMM operands: fp32, bf16 or fp16
	Model     ModelInfo `json:"model"`
	Data      string    `json:"data"`
	MaxTokens int       `json:"max_tokens"`
	// Batching is "fairseq" (fairseq 0.8's batches, as xform train) or "bucket" (static
	// [B_L, L] shapes, tools/bench/torch_competitor.py's compile modes); BucketLengths are
	// the bucket edges L (empty for fairseq's batching). Both under the competitor's keys.
	Batching      string `json:"batching"`
	BucketLengths []int  `json:"bucket_lengths"`
	// PackedRows: packing was on (xform bench --pack-tokens true, or auto with 16-bit
	// GEMMs on the GPU, where it packs the steps whose attention runs on packed rows).
	PackedRows bool `json:"packed_rows,omitempty"`
	// Graphs says how the CUDA graphs of the training step were used (nil: off).
	Graphs *GraphUse `json:"cuda_graphs,omitempty"`
	// Host is the host-side work of the timed updates (nil: the backend has no
	// counters, as the CPU).
	Host *HostUse `json:"host_costs,omitempty"`
	// Pipelined says each update was queued before the previous one's results were
	// read (train.Stepper.Pipelined), as xform train runs on the GPU.
	Pipelined bool `json:"pipelined"`
	Warmup    int  `json:"warmup_updates"`
	Updates   int  `json:"updates"`

	TargetTokens int     `json:"target_tokens"`
	SourceTokens int     `json:"source_tokens"`
	Sentences    int     `json:"sentences"`
	Seconds      float64 `json:"seconds"`

	TargetTokensPerSec    float64 `json:"target_tokens_per_s"`
	UpdatesPerSec         float64 `json:"updates_per_s"`
	MsPerUpdateMean       float64 `json:"ms_per_update_mean"`
	MsPerUpdateP50        float64 `json:"ms_per_update_p50"`
	MsPerUpdateMin        float64 `json:"ms_per_update_min"`
	MsPerUpdateMax        float64 `json:"ms_per_update_max"`
	TargetTokensPerUpdate float64 `json:"target_tokens_per_update"`
	// PaddingFraction is the share of the timed batches' source and target slots (B·S +
	// B·T) holding pad tokens, as the competitor's padding_fraction counts it.
	PaddingFraction float64 `json:"padding_fraction"`

	FLOPsPerTargetToken float64 `json:"flops_per_target_token"` // TrainFLOPs over the timed updates / their target tokens
	SixNPerTargetToken  float64 `json:"six_n_per_target_token"` // 6·params, the usual rough figure, for comparison
	ModelTFLOPsPerSec   float64 `json:"model_tflops_per_s"`
	PeakTFLOPs          float64 `json:"peak_tflops"`
	MFU                 float64 `json:"mfu"`

	FirstLoss float64 `json:"first_loss"` // bits per token, the first update (warm-up included)
	LastLoss  float64 `json:"last_loss"`
	Memory    Memory  `json:"memory"`
}

// Train runs opt.Warmup+opt.Updates updates of s (the trainer xform train uses), one
// batch each, taking batches in order (cycling when there are fewer), and measures the
// timed ones (see the loop for what an update's time is, pipelined or not).
func Train(ctx context.Context, s *train.Stepper, batches []*model.TrainBatch, opt TrainOptions) (*TrainResult, error) {
	if opt.Updates < 1 || opt.Warmup < 0 {
		return nil, fmt.Errorf("bench: need at least one timed update and no negative warm-up (got %d, %d)", opt.Updates, opt.Warmup)
	}
	if len(batches) == 0 {
		return nil, fmt.Errorf("bench: no batches")
	}
	peak := opt.PeakTFLOPs
	if peak <= 0 {
		peak = DefaultPeakTFLOPs
	}
	c := s.Net.Config()
	res := &TrainResult{Mode: "train", Date: time.Now().UTC().Format(time.RFC3339), Device: s.Net.Backend().Name(),
		Model: Info(s.Net.Model()), Warmup: opt.Warmup, Updates: opt.Updates, PeakTFLOPs: peak}
	var times []float64
	var flops, slots float64
	var host0 HostUse
	res.Pipelined = s.Pipelined() && !opt.NoPipeline
	sync := func(i int) error {
		if opt.Hooks.Sync != nil {
			if err := opt.Hooks.Sync(); err != nil {
				return fmt.Errorf("bench: update %d: %w", i+1, err)
			}
		}
		return nil
	}
	// record books update i (its log lg, dt seconds); it reports whether the timed
	// updates are done (the time limit).
	record := func(i int, lg train.StepLog, dt float64) bool {
		b := batches[i%len(batches)]
		if i == 0 {
			res.FirstLoss = lg.Loss
		}
		res.LastLoss = lg.Loss
		if opt.Progress != nil {
			tag := "timed"
			if i < opt.Warmup {
				tag = "warm-up"
			}
			fmt.Fprintf(opt.Progress, "| update %d (%s): %.1f ms, %d target tokens, loss %.3f\n", i+1, tag, 1e3*dt, lg.NTokens, lg.Loss)
		}
		if i < opt.Warmup {
			return false
		}
		times = append(times, dt)
		res.Seconds += dt
		res.TargetTokens += lg.NTokens
		res.Sentences += lg.NSentences
		res.SourceTokens += countNonPad(b.Src)
		flops += TrainFLOPs(c, b)
		slots += float64(b.B * (b.S + b.T))
		return opt.MaxSeconds > 0 && res.Seconds >= opt.MaxSeconds
	}
	// Pipelined (the GPU), update i+1 is queued before update i's
	// results are read, as xform train runs, and the host syncs only at the warm-up's
	// end and after the last update: an update's time runs from the previous update's
	// results to its own (the device's pace once the queue is full). Otherwise each
	// update runs from the start of Stepper.Step to the end of Hooks.Sync after it.
	var prev *train.Pending
	prevAt, prevI := time.Now(), -1
	finish := func() (bool, error) {
		if prev == nil {
			return false, nil
		}
		lg, err := prev.Wait()
		if err != nil {
			return false, fmt.Errorf("bench: update %d: %w", prevI+1, err)
		}
		now := time.Now()
		dt := now.Sub(prevAt).Seconds()
		prevAt, prev = now, nil
		return record(prevI, lg, dt), nil
	}
	for i := 0; i < opt.Warmup+opt.Updates; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if i == opt.Warmup {
			// The timed updates start on an idle device (unpipelined, each update
			// ends with a synchronisation already).
			if res.Pipelined {
				if _, err := finish(); err != nil {
					return nil, err
				}
				if err := sync(i); err != nil {
					return nil, err
				}
			}
			if opt.Hooks.Host != nil {
				host0 = opt.Hooks.Host()
			}
			if opt.Timed != nil {
				opt.Timed(true)
				defer opt.Timed(false)
			}
			prevAt = time.Now()
		}
		b := batches[i%len(batches)]
		t0 := time.Now()
		if !res.Pipelined {
			lg, err := s.Step(ctx, []*model.TrainBatch{b})
			if err != nil {
				return nil, fmt.Errorf("bench: update %d: %w", i+1, err)
			}
			if err := sync(i); err != nil {
				return nil, err
			}
			if record(i, lg, time.Since(t0).Seconds()) {
				break
			}
			continue
		}
		p, err := s.Queue(ctx, []*model.TrainBatch{b})
		if err != nil {
			return nil, fmt.Errorf("bench: update %d: %w", i+1, err)
		}
		done, err := finish()
		if err != nil {
			return nil, err
		}
		prev, prevI = p, i
		if done {
			break
		}
	}
	if prev != nil {
		// The last update: its time includes the final synchronisation.
		lg, err := prev.Wait()
		if err != nil {
			return nil, fmt.Errorf("bench: update %d: %w", prevI+1, err)
		}
		if err := sync(prevI); err != nil {
			return nil, err
		}
		record(prevI, lg, time.Since(prevAt).Seconds())
	}
	res.Updates = len(times)
	if opt.Hooks.Host != nil {
		h := opt.Hooks.Host().sub(host0)
		res.Host = &h
	}
	n := float64(res.Updates)
	res.TargetTokensPerSec = float64(res.TargetTokens) / res.Seconds
	res.UpdatesPerSec = n / res.Seconds
	res.MsPerUpdateMean = 1e3 * res.Seconds / n
	sorted := slices.Sorted(slices.Values(times))
	res.MsPerUpdateP50 = 1e3 * median(sorted)
	res.MsPerUpdateMin, res.MsPerUpdateMax = 1e3*sorted[0], 1e3*sorted[len(sorted)-1]
	res.TargetTokensPerUpdate = float64(res.TargetTokens) / n
	res.PaddingFraction = 1 - float64(res.TargetTokens+res.SourceTokens)/max(slots, 1)
	if res.TargetTokens > 0 {
		res.FLOPsPerTargetToken = flops / float64(res.TargetTokens)
	}
	res.SixNPerTargetToken = 6 * float64(res.Model.Params)
	res.ModelTFLOPsPerSec = flops / res.Seconds / 1e12
	res.MFU = res.ModelTFLOPsPerSec / peak
	res.Memory = readMemory(opt.Hooks)
	return res, nil
}

// GenerateResult is what xform bench --mode generate reports.
type GenerateResult struct {
	Mode      string    `json:"mode"` // "generate"
	Date      string    `json:"date"`
	Device    string    `json:"device"`
	Model     ModelInfo `json:"model"`
	Data      string    `json:"data"`
	Beam      int       `json:"beam"`
	MaxTokens int       `json:"max_tokens"`

	WarmupSentences int     `json:"warmup_sentences"`
	Sentences       int     `json:"sentences"`
	SourceTokens    int     `json:"source_tokens"`
	Tokens          int     `json:"tokens"` // tokens of the best hypotheses, as fairseq's "| Translated" line counts them
	Seconds         float64 `json:"seconds"`
	TokensPerSec    float64 `json:"tokens_per_s"`
	SentencesPerSec float64 `json:"sentences_per_s"`
	Memory          Memory  `json:"memory"`
}

// GenerateOptions configure Generate.
type GenerateOptions struct {
	Search generate.Options
	// Warmup sentences (the first of the split) are translated once, untimed, before
	// the timed run over the whole split.
	Warmup int
	Hooks  Hooks
	// Timed, as TrainOptions.Timed, brackets the timed translation.
	Timed func(start bool)
}

// Generate times beam search (generate.Run, what xform generate runs) over sp.
func Generate(ctx context.Context, r *model.Runner, m *model.Model, sp *generate.Split, opt GenerateOptions) (*GenerateResult, error) {
	if len(sp.Src) == 0 {
		return nil, fmt.Errorf("bench: no sentences to translate")
	}
	res := &GenerateResult{Mode: "generate", Date: time.Now().UTC().Format(time.RFC3339), Device: r.Backend().Name(),
		Model: Info(m), Beam: opt.Search.Search.Beam, MaxTokens: opt.Search.MaxTokens}
	so := opt.Search
	so.Quiet = true
	if w := min(opt.Warmup, len(sp.Src)); w > 0 {
		sub := *sp
		sub.Src = sp.Src[:w]
		if sp.Tgt != nil {
			sub.Tgt = sp.Tgt[:w]
		}
		if _, err := generate.Run(ctx, r, &sub, so, io.Discard, io.Discard); err != nil {
			return nil, fmt.Errorf("bench: warm-up: %w", err)
		}
		res.WarmupSentences = w
	}
	if opt.Hooks.Sync != nil {
		if err := opt.Hooks.Sync(); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
	}
	if opt.Timed != nil {
		opt.Timed(true)
		defer opt.Timed(false)
	}
	t0 := time.Now()
	out, err := generate.Run(ctx, r, sp, so, io.Discard, io.Discard)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	if opt.Hooks.Sync != nil {
		if err := opt.Hooks.Sync(); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
	}
	res.Seconds = time.Since(t0).Seconds()
	res.Sentences, res.Tokens = out.Sentences, out.Tokens
	for _, s := range sp.Src {
		res.SourceTokens += len(s)
	}
	res.TokensPerSec = float64(res.Tokens) / res.Seconds
	res.SentencesPerSec = float64(res.Sentences) / res.Seconds
	res.Memory = readMemory(opt.Hooks)
	return res, nil
}

// TrainBatches returns the first n training batches xform train would run on sp with
// cfg (the frozen batches in the seeded order of epoch 1, then epoch 2, …; fairseq's, or
// bucket batching's with cfg.Buckets), collated as xform train collates them (with
// cfg.Buckets: to their bucket's static shape), with the number of frozen batches per
// epoch.
func TrainBatches(ctx context.Context, sp *generate.Split, cfg train.BatchConfig, n int) ([]*model.TrainBatch, int, error) {
	frozen, _, err := train.Batches(sp, cfg)
	if err != nil {
		return nil, 0, fmt.Errorf("bench: %w", err)
	}
	collate, err := cfg.Collator(sp)
	if err != nil {
		return nil, 0, fmt.Errorf("bench: %w", err)
	}
	out := make([]*model.TrainBatch, 0, n)
	for epoch := 1; len(out) < n; epoch++ {
		for _, b := range train.EpochOrder(frozen, cfg.Seed, epoch) {
			if len(out) == n {
				break
			}
			if err := ctx.Err(); err != nil {
				return nil, 0, err
			}
			tb, err := collate(b)
			if err != nil {
				return nil, 0, fmt.Errorf("bench: %w", err)
			}
			out = append(out, tb)
		}
	}
	return out, len(frozen), nil
}

// ShapeWarmup returns what tools/bench/torch_competitor.py's compile modes run before
// their --warmup updates: per bucket edge, the first frozen batch of that bucket (in
// bucket order, not epoch order) repeated times, so that every static shape has been
// seen (compiled, recorded as a CUDA graph) before timing starts. Buckets with no batch
// add nothing; fairseq's batching (cfg.Buckets 0) gets none.
func ShapeWarmup(ctx context.Context, sp *generate.Split, cfg train.BatchConfig, times int) ([]*model.TrainBatch, error) {
	if cfg.Buckets <= 0 || times <= 0 {
		return nil, nil
	}
	frozen, _, err := train.Batches(sp, cfg)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	collate, err := cfg.Collator(sp)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	var out []*model.TrainBatch
	seen := map[int]bool{}
	for _, b := range frozen {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		tb, err := collate(b)
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		if seen[tb.S] { // S = T = L: the shape names the bucket
			continue
		}
		seen[tb.S] = true
		for range times {
			out = append(out, tb)
		}
	}
	return out, nil
}

func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

func countNonPad(ids []int32) int { return nonPad(ids) }

func readMemory(h Hooks) Memory {
	var m Memory
	m.PeakRSS, m.RSS = ProcessRSS()
	if h.Memory != nil {
		if d, err := h.Memory(); err == nil {
			m.Device = &d
		}
	}
	return m
}

// ProcessRSS returns the process's peak and current resident set size (Linux
// /proc/self/status VmHWM and VmRSS); zeros where that file does not exist.
func ProcessRSS() (peak, cur uint64) {
	if runtime.GOOS != "linux" {
		return 0, 0
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseUint(string(f[1]), 10, 64)
		if err != nil {
			continue
		}
		switch string(f[0]) {
		case "VmHWM:":
			peak = v << 10
		case "VmRSS:":
			cur = v << 10
		}
	}
	return peak, cur
}

// GraphUse counts the training steps run eagerly, captured and replayed as CUDA graphs
// (whole run, warm-up included), the replays that diverged from their capture, the
// kernel nodes updated before replays, and the device arena the graphed steps use.
type GraphUse struct {
	Eager       int    `json:"eager"`
	Captures    int    `json:"captures"`
	Replays     int    `json:"replays"`
	Divergences int    `json:"divergences"`
	NodeUpdates int    `json:"node_updates"`
	ArenaBytes  uint64 `json:"arena_bytes"`
	// ReplayHostMs is the host time per replay (dry run, node updates, launch);
	// ReplayWaitMs the time per replay it then waited for the previous launch (pipelined:
	// what is left of the previous update's device work after the dry run).
	ReplayHostMs float64 `json:"replay_host_ms"`
	ReplayWaitMs float64 `json:"replay_wait_ms"`
}

// WriteText prints r for people.
func (r *TrainResult) WriteText(w io.Writer) error {
	m := r.Model
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "| bench train on %s (%s GEMMs), %s (%s), %dL-%dL, d %d, FFN %d, %d heads, vocab %d, %d params\n",
		r.Device, r.Precision, m.Arch, m.Init, m.EncoderLayers, m.DecoderLayers, m.EmbedDim, m.FFNDim, m.Heads, m.Vocab, m.Params)
	batching := r.Batching
	if batching == "" {
		batching = "fairseq"
	}
	if len(r.BucketLengths) > 0 {
		batching += fmt.Sprintf(" (lengths %v)", r.BucketLengths)
	}
	pipe := ""
	if r.Pipelined {
		pipe = ", pipelined (results read one update late)"
	}
	if r.PackedRows {
		batching += " batching, packed rows"
	} else {
		batching += " batching"
	}
	fmt.Fprintf(bw, "| data %s, max tokens %d, %s, %d warm-up + %d timed updates%s (%s)\n", r.Data, r.MaxTokens, batching, r.Warmup, r.Updates, pipe, r.Date)
	fmt.Fprintf(bw, "| target tokens/s %.0f | updates/s %.2f | ms/update mean %.1f p50 %.1f (min %.1f, max %.1f) | target tokens/update %.0f | padding %.1f%%\n",
		r.TargetTokensPerSec, r.UpdatesPerSec, r.MsPerUpdateMean, r.MsPerUpdateP50, r.MsPerUpdateMin, r.MsPerUpdateMax, r.TargetTokensPerUpdate,
		100*r.PaddingFraction)
	fmt.Fprintf(bw, "| model FLOPs %.1f MFLOP/target token (6N = %.1f) | %.2f TFLOP/s | MFU %.2f%% of %.0f TFLOP/s\n",
		r.FLOPsPerTargetToken/1e6, r.SixNPerTargetToken/1e6, r.ModelTFLOPsPerSec, 100*r.MFU, r.PeakTFLOPs)
	fmt.Fprintf(bw, "| loss %.3f -> %.3f bits | %s\n", r.FirstLoss, r.LastLoss, r.Memory.text())
	if g := r.Graphs; g != nil {
		fmt.Fprintf(bw, "| CUDA graphs: %d steps eager, %d captured, %d replayed (%d diverged, host %.2f ms each, then %.2f ms waiting for the previous launch), %d kernel nodes updated, arena %s\n",
			g.Eager, g.Captures, g.Replays, g.Divergences, g.ReplayHostMs, g.ReplayWaitMs, g.NodeUpdates, gib(g.ArenaBytes))
	}
	if h := r.Host; h != nil {
		tuned := ""
		if h.GEMMTuned > 0 {
			tuned = fmt.Sprintf("; %d autotuned in %.1f ms", h.GEMMTuned, h.GEMMTuneMs)
		}
		fmt.Fprintf(bw, "| host, timed updates: %d GEMM plans built (%d refused) in %.1f ms, %d device allocations (%.3f GiB); %d heuristic queries, %d plans on a reused algorithm, %d remembered refusals%s\n",
			h.GEMMPlans, h.GEMMRefused, h.GEMMPlanMs, h.DeviceAllocs, h.DeviceAllocGiB, h.GEMMQueries, h.GEMMReused, h.GEMMSkipped, tuned)
		if r.Updates > 0 && r.Seconds > 0 {
			per := h.DeviceWaitMs / float64(r.Updates)
			fmt.Fprintf(bw, "| host, timed updates: blocked on the device %.2f ms per update, busy %.2f ms per update (%.0f%% of the wall time)\n",
				per, 1e3*r.Seconds/float64(r.Updates)-per, 100*(1-h.DeviceWaitMs/(1e3*r.Seconds)))
		}
	}
	return bw.Flush()
}

// WriteText prints r for people.
func (r *GenerateResult) WriteText(w io.Writer) error {
	m := r.Model
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "| bench generate on %s, %s, %dL-%dL, d %d, vocab %d, beam %d, data %s (%s)\n",
		r.Device, m.Arch, m.EncoderLayers, m.DecoderLayers, m.EmbedDim, m.Vocab, r.Beam, r.Data, r.Date)
	fmt.Fprintf(bw, "| %d sentences (%d source tokens) -> %d tokens in %.2f s | tokens/s %.0f | sentences/s %.1f\n",
		r.Sentences, r.SourceTokens, r.Tokens, r.Seconds, r.TokensPerSec, r.SentencesPerSec)
	fmt.Fprintf(bw, "| %s\n", r.Memory.text())
	return bw.Flush()
}

func (m Memory) text() string {
	s := fmt.Sprintf("peak RSS %s", gib(m.PeakRSS))
	if d := m.Device; d != nil {
		s += fmt.Sprintf(" | device peak allocated %s, held %s, used %s of %s", gib(d.PeakAllocated), gib(d.PeakHeld), gib(d.Used), gib(d.Total))
	}
	return s
}

func gib(b uint64) string {
	if b == 0 {
		return "n/a"
	}
	return strconv.FormatFloat(math.Round(float64(b)/(1<<30)*1000)/1000, 'f', 3, 64) + " GiB"
}
