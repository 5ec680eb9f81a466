package cuda

import (
	"math"
	"unsafe"
)

// GEMM tuning (Options.TuneGEMMs). cuBLASLt's heuristic ranks its algorithms for a
// shape without running them, and its first choice is sometimes far from the best:
// on the H200, the 6L-6L bench's bucket of 8,064 rows ran its weight gradients with
// the bias-gradient epilogue at 43-160 TFLOP/s where the buckets of 7,872 and 8,120
// rows ran the same products at 155-395, and its output projection ~2× slower (about
// 5 ms of a 25 ms step). So a tuned plan keeps the heuristic's first ltTuneCandidates
// answers and, at its ltTuneAfter-th use, times each on the call's own operands and
// keeps the fastest.
//
// The timed runs write scratch blocks, never the caller's output or bias gradient,
// so the call's results are those of the chosen algorithm alone. Different algorithms
// sum in different orders, so tuned runs are not bit-reproducible from run to run (the
// choice depends on timings); with tuning off (the default of Options) the heuristic's
// first answer is used, as before. Tuning never runs while a CUDA graph is being
// recorded or replayed (the plan's algorithm then stays what the eager steps chose)
// nor for plans whose epilogue has an auxiliary matrix (its pointer lives in the
// shared descriptor), and a shape used only once or twice is never timed: with
// fairseq's batching most row counts are new, and timing them would cost more than it
// saves.
const (
	ltTuneCandidates = 8
	ltTuneAfter      = 2 // the use that times the candidates
	ltTuneReps       = 3 // timed runs per candidate, after one untimed
)

// ltTuneWanted says whether this use of p should time its candidates now. It counts
// the use.
func (be *Backend) ltTuneWanted(p *ltPlan) bool {
	if !be.tuneGEMMs || p.tuned || len(p.cands) < 2 || be.graph.mode != graphOff {
		return false
	}
	p.uses++
	return p.uses >= ltTuneAfter
}

// ltTune times p's candidates on the operands of the call (a, b, beta, c as ltRun has
// them; c's extent from the plan's key) and sets p.algo to the fastest. It runs
// eagerly on the default stream and synchronises; any failure leaves the heuristic's
// choice. The caller holds the Backend.
func (be *Backend) ltTune(p *ltPlan, a, b uint64, beta float32, bias uint64) {
	p.tuned = true
	s := &be.lt
	l := s.lib
	k := p.key
	cBytes := uint64(extent(k.m, k.n, k.ldc)) * 4
	c, err := be.drv.memAlloc(max(cBytes, 256))
	if err != nil {
		return
	}
	defer func() { _ = be.drv.memFree(c) }()
	if k.epilogue&(ltEpiFlagBGrad|ltEpiBGradB) != 0 {
		// The bias gradient is written: into a scratch vector as long as any of the
		// product's dimensions.
		g, err := be.drv.memAlloc(uint64(max(k.m, k.n, k.k)) * 4)
		if err != nil {
			return
		}
		defer func() { _ = be.drv.memFree(g) }()
		bias = g
	}
	if bias != 0 {
		must(l.setDesc(p.desc, ltDescBiasPointer, unsafe.Pointer(&bias), 8))
	}
	start, err := be.drv.newEvent()
	if err != nil {
		return
	}
	defer be.drv.destroyEvent(start)
	stop, err := be.drv.newEvent()
	if err != nil {
		return
	}
	defer be.drv.destroyEvent(stop)
	alpha := float32(1)
	run := func(algo *[8]uint64) error {
		return ltCheck("cublasLtMatmul", call(l.matmul, s.handle, p.desc, uintptr(unsafe.Pointer(&alpha)),
			uintptr(b), p.a, uintptr(a), p.b, uintptr(unsafe.Pointer(&beta)), uintptr(c), p.c, uintptr(c), p.c,
			uintptr(unsafe.Pointer(algo)), uintptr(s.ws), uintptr(s.wsSize), 0))
	}
	best, bestMS := -1, float32(math.MaxFloat32)
	for i := range p.cands {
		algo := &p.cands[i]
		if run(algo) != nil {
			continue
		}
		if be.drv.record(start) != nil {
			return
		}
		ok := true
		for r := 0; r < ltTuneReps && ok; r++ {
			ok = run(algo) == nil
		}
		if !ok || be.drv.record(stop) != nil {
			continue
		}
		ms, err := be.drv.elapsed(start, stop)
		if err != nil {
			return
		}
		// Ties keep the earlier (the heuristic's preference).
		if ms < bestMS*0.98 || best < 0 {
			best, bestMS = i, ms
		}
	}
	if best >= 0 {
		p.algo = p.cands[best]
		p.tunedPick = best
	}
}
