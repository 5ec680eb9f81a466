package cuda

import (
	"errors"
	"math/bits"
	"slices"
	"unsafe"
)

// cuBLASLt plan reuse across nearby shapes (XFORM_CUDA_PLAN_REUSE, on by default).
//
// With fairseq's batching nearly every update has a new row count, and each GEMM of the
// step then built a plan from scratch: descriptor, layouts, a preference and one
// cublasLtMatmulAlgoGetHeuristic query, the costly part (the heuristic evaluates its
// candidate kernels for the shape). The algorithm the heuristic picks changes with the
// number of tiles and waves, which a few percent more or fewer rows barely move. So each
// class key — the plan key with m, n and k rounded up to their classes (ltDimClass) —
// gets one heuristic query, at the class's representative shape (the class key itself,
// whatever exact shape came first), and its answer is kept. A new exact shape of a known
// class builds only its descriptor and layouts and takes the class's algorithm once
// cublasLtMatmulAlgoCheck accepts it for the exact shape (cuBLASLt's own validation of
// an algorithm against descriptors; it also gives the workspace the shape needs); a
// refusal, or a library without the symbol, asks the heuristic for the exact shape as
// before. So a key's algorithm depends on the key alone, not on the shapes met before
// it: runs stay reproducible, a resumed run picks what the uninterrupted one did. All
// three dimensions are classed because the varying one is not always m: a weight
// gradient dw += dyᵀ·x has the batch's rows as its reduction length k. A dimension
// bounded by a leading dimension (n by ldc; k or m by the operand layouts) keeps its
// exact value where its class would exceed that bound, so the representative's layouts
// are valid; the rows of a batch never are bounded. Leading dimensions, types, epilogue
// and alignment classes stay exact (they decide which kernels are valid at all).
//
// Refusals that do not depend on the shape are remembered per kind: the plan key
// without m, n and k (leading dimensions, types, transposes, epilogue and alignments
// kept). cuBLASLt refused an fp32 bias with a 16-bit D at every shape tried, and
// linearHalfOut asked for that plan first at every new shape; once ltKindRefusals
// distinct keys of a kind were refused and none accepted, the kind is answered "no
// plan" without a query (linearHalfOut goes straight to the 16-bit-bias plan). One
// acceptance of a kind turns that off for good.
//
// Off (XFORM_CUDA_PLAN_REUSE=0 or Backend.planReuse false), every new exact key asks
// the heuristic and the plan cache holds ltMaxPlans, as before: next session's A/B.

const (
	// ltClassBits gives 2^ltClassBits classes per power of two: a class spans at most
	// 1/16 of its values (at 8,000 rows, 256 rows: one or two row tiles of the
	// kernels cuBLASLt picks there). Values up to 2^(ltClassBits+1) are exact classes,
	// as are multiples of the step (512, 1536, 2048 are their own classes).
	ltClassBits = 4
	// ltKindRefusals is how many distinct keys of a kind must be refused, with none
	// accepted, before the kind is refused without asking.
	ltKindRefusals = 2
	// ltMaxAlgos bounds the class entries (an algorithm and a few counters each).
	ltMaxAlgos = 1024
	// ltMaxPlansReuse is the plan cache's bound with reuse on. A plan holds a matmul
	// descriptor (256 bytes in cuBLAS 13's header) and three layouts (64 bytes each)
	// on the C heap, the Go plan and its map entry: about 1 KiB (TestLtPlanHostMemory
	// measures it), so 4,096 plans are a few MiB. A step has ~45 keys per
	// (source rows, target rows) pair: 256 plans held five updates' shapes, fewer than
	// an epoch of the bench's data, so an LRU cycling through the epoch missed at
	// every update.
	ltMaxPlansReuse = 4096
	// ltKeepRecent is how many of the most recent plans eviction keeps whatever the
	// bound (an operation holds up to three plans while it looks up more).
	ltKeepRecent = 8
)

// ltDimClass rounds d up to its class: d itself up to 2^(ltClassBits+1), else the
// next multiple of 2^(⌊log₂(d−1)⌋ − ltClassBits).
func ltDimClass(d int) int {
	if d <= 2<<ltClassBits {
		return d
	}
	step := 1 << (bits.Len(uint(d-1)) - ltClassBits - 1)
	return (d + step - 1) / step * step
}

// classKey is k with its dimensions rounded to their classes, each that a leading
// dimension bounds kept exact where its class would exceed the bound: the key of the
// class's representative product, a valid one.
func (k ltKey) classKey() ltKey {
	c := k
	c.m, c.n, c.k = ltDimClass(k.m), ltDimClass(k.n), ltDimClass(k.k)
	sh := ltColMajor(c.transA, c.transB, c.m, c.n, c.k, c.lda, c.ldb, c.ldc)
	if sh.cRows > c.ldc {
		c.n = k.n
	}
	if sh.aRows > c.ldb { // cuBLASLt's A is the caller's B: n×k, or k×n transposed
		if c.transB {
			c.k = k.k
		} else {
			c.n = k.n
		}
	}
	if sh.bRows > c.lda { // cuBLASLt's B is the caller's A: k×m, or m×k transposed
		if c.transA {
			c.m = k.m
		} else {
			c.k = k.k
		}
	}
	return c
}

// kindKey is k without its dimensions.
func (k ltKey) kindKey() ltKey {
	k.m, k.n, k.k = 0, 0, 0
	return k
}

// ltAlgoEntry is the heuristic's answer for a class's representative (none: it had no
// algorithm, and exact keys of the class ask for themselves).
type ltAlgoEntry struct {
	algo [8]uint64
	none bool
	used uint64
}

// ltKindStat counts a kind's refusals at plan time.
type ltKindStat struct {
	refused  int
	last     ltKey // the last key refused, so a key rebuilt after eviction counts once
	accepted bool
}

// ltReuse is the bookkeeping of plan reuse, apart from cuBLASLt (tested on the CPU).
type ltReuse struct {
	algos map[ltKey]*ltAlgoEntry
	kinds map[ltKey]*ltKindStat
	clock uint64
}

// algo returns the algorithm kept for key's class; known says whether the class has
// an entry at all (ok false with known: the representative had no algorithm).
func (r *ltReuse) algo(key ltKey) (algo [8]uint64, ok, known bool) {
	e := r.algos[key.classKey()]
	if e == nil {
		return [8]uint64{}, false, false
	}
	r.clock++
	e.used = r.clock
	return e.algo, !e.none, true
}

// keep records the heuristic's algorithm for key's class representative, and its
// kind as accepted.
func (r *ltReuse) keep(key ltKey, algo [8]uint64) {
	r.put(key, &ltAlgoEntry{algo: algo})
	r.accept(key)
}

// keepNone records that key's class representative has no algorithm.
func (r *ltReuse) keepNone(key ltKey) { r.put(key, &ltAlgoEntry{none: true}) }

func (r *ltReuse) put(key ltKey, e *ltAlgoEntry) {
	if r.algos == nil {
		r.algos = map[ltKey]*ltAlgoEntry{}
	}
	c := key.classKey()
	if r.algos[c] == nil && len(r.algos) >= ltMaxAlgos {
		for _, old := range ltOldest(r.algos, func(e *ltAlgoEntry) uint64 { return e.used }, ltMaxAlgos/8) {
			delete(r.algos, old)
		}
	}
	r.clock++
	e.used = r.clock
	r.algos[c] = e
}

// forget marks key's class as having no algorithm to reuse (it was refused at run
// time): its exact keys ask for themselves from now on.
func (r *ltReuse) forget(key ltKey) {
	if r.algos[key.classKey()] != nil {
		r.keepNone(key)
	}
}

// accept marks key's kind as one cuBLASLt takes.
func (r *ltReuse) accept(key ltKey) {
	if st := r.kind(key); !st.accepted {
		st.accepted = true
	}
}

// refuse counts a plan-time refusal of key.
func (r *ltReuse) refuse(key ltKey) {
	st := r.kind(key)
	if st.refused == 0 || st.last != key {
		st.refused++
		st.last = key
	}
}

// skip says whether key's kind is refused without asking.
func (r *ltReuse) skip(key ltKey) bool {
	st := r.kinds[key.kindKey()]
	return st != nil && !st.accepted && st.refused >= ltKindRefusals
}

func (r *ltReuse) kind(key ltKey) *ltKindStat {
	if r.kinds == nil {
		r.kinds = map[ltKey]*ltKindStat{}
	}
	k := key.kindKey()
	st := r.kinds[k]
	if st == nil {
		st = &ltKindStat{}
		r.kinds[k] = st
	}
	return st
}

// ltOldest returns the n least recently used keys of m (used gives an entry's clock).
// Evicting a batch at once keeps a miss from scanning the whole cache each time.
func ltOldest[V any](m map[ltKey]V, used func(V) uint64, n int) []ltKey {
	type ku struct {
		k ltKey
		u uint64
	}
	all := make([]ku, 0, len(m))
	for k, v := range m {
		all = append(all, ku{k, used(v)})
	}
	slices.SortFunc(all, func(a, b ku) int {
		switch {
		case a.u < b.u:
			return -1
		case a.u > b.u:
			return 1
		}
		return 0
	})
	n = min(max(n, 0), len(all))
	out := make([]ltKey, n)
	for i := range out {
		out[i] = all[i].k
	}
	return out
}

// errLtNoAlgo is the heuristic finding no algorithm: a refusal of the configuration.
var errLtNoAlgo = errors.New("cuBLASLt heuristic returned no algorithm")

// ltPlanRefused says whether a plan-time error is cuBLASLt declining the configuration
// (counted for the kind) rather than a failure.
func ltPlanRefused(err error) bool { return errors.Is(err, errLtNoAlgo) || ltRefusal(err) }

// ltAlgoFits asks cublasLtMatmulAlgoCheck whether algo runs p's descriptor and layouts
// within the workspace. The caller holds the Backend.
func (be *Backend) ltAlgoFits(p *ltPlan, algo [8]uint64) bool {
	s := &be.lt
	if s.lib.algoCheck == 0 {
		return false
	}
	var res ltHeuristicResult
	r := call(s.lib.algoCheck, s.handle, p.desc, p.a, p.b, p.c, p.c, uintptr(unsafe.Pointer(&algo)), uintptr(unsafe.Pointer(&res)))
	return r == 0 && res.state == 0 && res.workspaceSize <= s.wsSize
}

// ltClassAlgo asks the heuristic for the algorithm of key's class representative
// (descriptor and layouts built for it with key's bias and auxiliary pointers, then
// dropped) and keeps the answer, or that there is none. The caller holds the Backend.
func (be *Backend) ltClassAlgo(key ltKey, bias, aux uint64) ([8]uint64, bool) {
	s := &be.lt
	c := key.classKey()
	rp := &ltPlan{}
	defer be.ltDestroy(rp)
	err := be.ltBuild(rp, c, bias, aux)
	var algo [8]uint64
	if err == nil {
		s.queries++
		algo, err = be.ltChoose(rp, c, bias)
	}
	if err != nil {
		if ltPlanRefused(err) {
			s.reuse.refuse(c)
		}
		s.reuse.keepNone(key)
		return algo, false
	}
	s.reuse.keep(key, algo)
	return algo, true
}

// ltPlanCap is the plan cache's bound: XFORM_CUDA_LT_PLANS when set, else by reuse.
func (be *Backend) ltPlanCap() int {
	switch {
	case be.ltPlans > 0:
		return be.ltPlans
	case be.planReuse:
		return ltMaxPlansReuse
	}
	return ltMaxPlans
}
