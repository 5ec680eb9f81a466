package cuda

import (
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"
	"unsafe"
)

// cuBLASLt autotune (Options.Autotune, xform's --cuda-autotune, or XFORM_CUDA_AUTOTUNE=1;
// off by default).
//
// The heuristic's first answer is sometimes far slower than what it gives a
// neighbouring shape: on the H200 the weight-gradient product 512×512×k with the
// BGRADB epilogue took 25.7 µs at k = 7,872 but 60.5 at 8,184 and 94.0 at 8,064, and
// asking at the exact shape (plan reuse off) picked the same. So, where a plan asks
// the heuristic (ltNewPlan for its key, ltClassAlgo for a class's representative),
// ltChoose asks for up to ltTuneAlgos results, times each usable one on scratch
// operands of the plan's layouts and keeps the fastest; within ltTuneTie of the
// fastest the heuristic's order decides, so near-equal candidates do not flip from run
// to run.
//
// The timing runs cuBLASLt and the driver directly on stream 0, not through the
// backend's funnels (be.blasCall, be.run): it is not part of the step, must not be
// recorded, and waits for its own end event. So it happens only with graphs off
// (eager, including the eager warm-up step of every graph key) and without the GPU
// profile (whose per-op events would time the tuning as the Linear's). It touches only
// its own scratch, never a buffer of the step. Epilogues with an auxiliary matrix keep
// the heuristic's first answer (their scratch would need the aux layout too).
//
// Decisions are kept in the Backend's GEMMTuneMemo (Options.TuneMemo may share one
// between Backends): a key tuned once is not timed again, and a plan made where timing
// is not allowed (inside a capture) still gets the tuned algorithm when that key was
// tuned before, in the graph key's eager warm-up. Across processes the choice may
// differ where two candidates are within noise of each other beyond ltTuneTie.

const (
	// ltTuneAlgos is how many heuristic results are timed at most (the default of
	// Backend.tuneAlgos); ltTuneAlgosMax bounds XFORM_CUDA_TUNE_ALGOS. 32 since the
	// thirteenth session: at 18L-18L (packed, 2 buckets) every run with 32 or 64 was
	// faster than every run with 8 (calls A and C, nine runs: +0.5–0.9 %), at 6L-6L no
	// difference; the heuristic returns fewer than 8 for most shapes, so the extra
	// timing is small.
	ltTuneAlgos    = 32
	ltTuneAlgosMax = 64
	// ltTuneReps is how many timed runs each candidate gets after an untimed one.
	ltTuneReps = 5
	// ltTuneTie: a candidate within this fraction of the fastest counts as as fast.
	ltTuneTie = 0.02
	// ltTuneMemoMax bounds a memo's decisions; the map is cleared when full (with
	// plan reuse a run meets a few hundred class keys, so this is never reached in
	// training; without reuse every exact shape is a key).
	ltTuneMemoMax = 16384
	// ltTuneKeepBytes is the most scratch kept between timings: the output
	// projection's fp32 logits (8,184 × 27,472 rows × vocabulary) alone need 900 MB,
	// which should not stay held for the rest of a run.
	ltTuneKeepBytes = 256 << 20
)

// ltTuneKey is what a tuned decision depends on besides the library: the device, the
// workspace offered and the plan key.
type ltTuneKey struct {
	dev int32
	ws  uint64
	key ltKey
}

// GEMMTuneMemo holds autotune decisions by device, workspace and plan key, so that a
// key timed once is not timed again and a plan made where timing is not allowed
// (inside a capture) still gets the tuned algorithm. Each Backend has its own unless
// Options.TuneMemo hands several the same one (tests comparing an eager Backend with a
// graphed one want the same algorithms, not two timings that noise may split). Safe
// for concurrent use.
type GEMMTuneMemo struct {
	mu sync.Mutex
	m  map[ltTuneKey][8]uint64
}

// NewGEMMTuneMemo returns an empty memo.
func NewGEMMTuneMemo() *GEMMTuneMemo { return &GEMMTuneMemo{} }

func (t *GEMMTuneMemo) recall(k ltTuneKey) ([8]uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a, ok := t.m[k]
	return a, ok
}

func (t *GEMMTuneMemo) remember(k ltTuneKey, algo [8]uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil || len(t.m) >= ltTuneMemoMax {
		t.m = map[ltTuneKey][8]uint64{}
	}
	t.m[k] = algo
}

func (t *GEMMTuneMemo) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// ltTuneStats counts the autotune's work for HostStats and LtStatus.
type ltTuneStats struct {
	timed   int           // keys whose candidates were timed
	changed int           // of those, keys where another than the heuristic's first won
	memo    int           // keys that took a decision timed earlier (GEMMTuneMemo)
	failed  int           // keys where the timing failed (the heuristic's first kept)
	time    time.Duration // host time of the timing, synchronisation included
}

// ltTuneScratch is the autotune's device memory: operands, output and a bias vector
// carved from one allocation grown on demand, and the events timing the candidates.
type ltTuneScratch struct {
	ptr, size uint64
	events    []uintptr // 2 per candidate: start, stop; flags 0 (timing)
}

// ltPickFastest returns the index of the candidate to keep given each one's time
// (negative: it did not run): the earliest within ltTuneTie of the fastest, so the
// heuristic's order breaks near-ties. -1 when none ran.
func ltPickFastest(us []float64) int {
	best := -1
	for i, t := range us {
		if t >= 0 && !math.IsNaN(t) && (best < 0 || t < us[best]) {
			best = i
		}
	}
	if best < 0 {
		return -1
	}
	limit := us[best] * (1 + ltTuneTie)
	for i, t := range us {
		if t >= 0 && t <= limit {
			return i
		}
	}
	return best
}

// ltChoose is the algorithm for p's descriptor and layouts: the heuristic's first,
// or with the autotune the fastest of its first results (see the top of the file).
// bias is the plan's real bias pointer, set back on the descriptor after the timing.
// The caller holds the Backend.
func (be *Backend) ltChoose(p *ltPlan, key ltKey, bias uint64) ([8]uint64, error) {
	s := &be.lt
	if !be.autotune || key.epilogue&ltEpiFlagAux != 0 {
		return be.ltHeuristic(p, key)
	}
	mk := ltTuneKey{dev: be.dev, ws: s.wsSize, key: key}
	if algo, ok := be.tuneMemo.recall(mk); ok {
		s.tune.memo++
		return algo, nil
	}
	if be.graph.mode != graphOff || (be.profile != nil && be.profile.gpu) {
		return be.ltHeuristic(p, key)
	}
	res, err := be.ltHeuristicN(p, key, be.tuneAlgos)
	if err != nil {
		return [8]uint64{}, err
	}
	if len(res) == 1 {
		be.tuneMemo.remember(mk, res[0].algo)
		return res[0].algo, nil
	}
	algos := make([][8]uint64, len(res))
	for i := range res {
		algos[i] = res[i].algo
	}
	t0 := time.Now()
	us, err := be.ltTimeAlgos(p, key, bias, algos, ltTuneReps)
	s.tune.time += time.Since(t0)
	i := ltPickFastest(us)
	if err != nil || i < 0 {
		// Not remembered: a later plan of the key (more memory free, another
		// Backend sharing the memo) may time it.
		s.tune.failed++
		return algos[0], nil
	}
	s.tune.timed++
	if i != 0 {
		s.tune.changed++
	}
	be.tuneMemo.remember(mk, algos[i])
	return algos[i], nil
}

// tuneAlgosFrom is the autotune's candidate count for XFORM_CUDA_TUNE_ALGOS: a number
// from 1 to ltTuneAlgosMax, else ltTuneAlgos (for A/B runs of the candidate count).
func tuneAlgosFrom(env string) int {
	n, err := strconv.Atoi(env)
	if err != nil || n < 1 || n > ltTuneAlgosMax {
		return ltTuneAlgos
	}
	return n
}

// ltTuneBytes rounds n bytes up to the 256 bytes every scratch piece starts on (the
// alignment class the heuristic was told is at most that).
func ltTuneBytes(n int) uint64 { return uint64(n+255) &^ 255 }

func ltTypeBytes(dt uintptr) int {
	if dt == cudaR32F {
		return 4
	}
	return 2
}

// ltTimeAlgos runs each algorithm on p's descriptor and layouts over scratch operands
// (once untimed, then reps times between two events on stream 0) and returns the
// device microseconds per call, -1 for one cuBLASLt refused. It waits for the device.
// Graphs must be off. The caller holds the Backend.
func (be *Backend) ltTimeAlgos(p *ltPlan, key ltKey, bias uint64, algos [][8]uint64, reps int) (_ []float64, err error) {
	s := &be.lt
	l := s.lib
	sh := ltColMajor(key.transA, key.transB, key.m, key.n, key.k, key.lda, key.ldb, key.ldc)
	aBytes := ltTuneBytes(sh.aLD * sh.aCols * ltTypeBytes(key.dtype))
	bBytes := ltTuneBytes(sh.bLD * sh.bCols * ltTypeBytes(key.dtype))
	cBytes := ltTuneBytes(sh.cLD * sh.cCols * ltTypeBytes(key.dtypeD))
	vBytes := ltTuneBytes(4 * max(key.m, key.n, key.k))
	sc := &s.tuneScratch
	if need := aBytes + bBytes + cBytes + vBytes; need > sc.size {
		if sc.ptr != 0 {
			// A timing that failed half way may have left runs queued on it.
			if err := be.drv.synchronize(); err != nil {
				return nil, fmt.Errorf("autotune: before growing the scratch: %w", err)
			}
			_ = be.drv.memFree(sc.ptr)
			sc.ptr, sc.size = 0, 0
		}
		ptr, err := be.drv.memAlloc(need)
		if err != nil {
			return nil, fmt.Errorf("autotune scratch of %s: %w", fmtBytes(need), err)
		}
		sc.ptr, sc.size = ptr, need
	}
	for len(sc.events) < 2*len(algos) {
		ev, err := be.drv.newEvent()
		if err != nil {
			return nil, fmt.Errorf("autotune event: %w", err)
		}
		sc.events = append(sc.events, ev)
	}
	pa, pb := sc.ptr, sc.ptr+aBytes
	pc := pb + bBytes
	pv := pc + cBytes
	// One in the operand type, in both halves of the word: the tensor cores multiply
	// real numbers (zeros could take shortcuts in the memory system's compression).
	one := uint32(0x3F80)
	if key.dtype == cudaR16F {
		one = 0x3C00
	}
	be.memset32(pa, one|one<<16, (aBytes+bBytes)/4)
	be.memset32(pc, 0, (cBytes+vBytes)/4)
	hasBias := key.epilogue&(ltEpiFlagBias|ltEpiFlagBGrad|ltEpiBGradB) != 0
	if hasBias {
		if err := l.setDesc(p.desc, ltDescBiasPointer, unsafe.Pointer(&pv), 8); err != nil {
			return nil, fmt.Errorf("autotune bias pointer: %w", err)
		}
		defer func() {
			if e := l.setDesc(p.desc, ltDescBiasPointer, unsafe.Pointer(&bias), 8); e != nil && err == nil {
				err = fmt.Errorf("autotune: restoring the bias pointer: %w", e)
			}
		}()
	}
	defer func() {
		if sc.size > ltTuneKeepBytes {
			// An error path may have left runs queued on it.
			if be.drv.synchronize() != nil {
				return
			}
			_ = be.drv.memFree(sc.ptr)
			sc.ptr, sc.size = 0, 0
		}
	}()
	alpha, beta := float32(1), float32(0)
	run := func(algo *[8]uint64) error {
		return ltCheck("cublasLtMatmul", call(l.matmul, s.handle, p.desc, uintptr(unsafe.Pointer(&alpha)),
			uintptr(pa), p.a, uintptr(pb), p.b, uintptr(unsafe.Pointer(&beta)), uintptr(pc), p.c, uintptr(pc), p.c,
			uintptr(unsafe.Pointer(algo)), uintptr(s.ws), uintptr(s.wsSize), 0))
	}
	us := make([]float64, len(algos))
	last := uintptr(0)
	for i := range algos {
		us[i] = -1
		if err := run(&algos[i]); err != nil {
			if ltRefusal(err) {
				continue
			}
			return nil, fmt.Errorf("autotune run of candidate %d: %w", i, err)
		}
		start, stop := sc.events[2*i], sc.events[2*i+1]
		if err := be.drv.record(start); err != nil {
			return nil, err
		}
		for range reps {
			if err := run(&algos[i]); err != nil {
				return nil, fmt.Errorf("autotune timed run of candidate %d: %w", i, err)
			}
		}
		if err := be.drv.record(stop); err != nil {
			return nil, err
		}
		us[i], last = 0, stop
	}
	if last == 0 {
		return us, nil
	}
	if err := be.drv.eventSync(last); err != nil {
		return nil, fmt.Errorf("autotune: waiting for the timing: %w", err)
	}
	for i := range algos {
		if us[i] < 0 {
			continue
		}
		ms, err := be.drv.elapsed(sc.events[2*i], sc.events[2*i+1])
		if err != nil {
			return nil, fmt.Errorf("autotune: elapsed time of candidate %d: %w", i, err)
		}
		us[i] = 1e3 * float64(ms) / float64(reps)
	}
	return us, nil
}

// closeTune frees the autotune's scratch and events (closeLt, after Close synchronised).
func (be *Backend) closeTune() {
	sc := &be.lt.tuneScratch
	if sc.ptr != 0 {
		_ = be.drv.memFree(sc.ptr)
	}
	for _, ev := range sc.events {
		be.drv.destroyEvent(ev)
	}
	*sc = ltTuneScratch{}
}
