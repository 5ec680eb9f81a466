package cuda

import (
	"fmt"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
)

// Deferred weight gradients (kernels.WeightGradDeferrer).
//
// A weight-gradient product dW += dyᵀ·x of the 6L-6L step is 512×512 (or 1024, 1536,
// 2048 × 512) over ~8,000 rows: 16 output tiles of 128×128 on 132 SMs, so each runs
// at ~200 TFLOP/s even alone. Nothing reads dW before the optimizer, so between
// DeferWeightGrads and FlushWeightGrads LinearBackwardKept queues the product (when
// both of its 16-bit operands live until the step's scope ends) and the flush runs
// each group of same-shape products as one cuBLASLt matmul in pointer-array batch mode
// (the members sit wherever the allocator put them), the group's bias gradients as one
// column-sum pair of launches (bias_grad.cu: pointer-array batches have no BGRADB
// epilogue). Measured on the H200 (TestPointerArrayWeightGradTiming): 24 products of
// 512×512×7872 with BGRADB 526 µs one by one, 141 µs batched without it.
//
// Numerics: the batched algorithm may sum in another order than the one-by-one
// product's (fp32 accumulation either way: within the GEMM bounds, bits may differ),
// and db is the float32 column sum of the 16-bit dy in row-chunk order instead of the
// epilogue's; both accumulate into dw and db as before (beta = 1, db +=).

var _ kernels.WeightGradDeferrer = (*Backend)(nil)

// dwJob is one queued weight-gradient product: dw[n×k] += dyᵀ·x over m rows, and
// db[n] += Σ_rows dy when db is not 0. keep holds the operands' blocks reachable until
// the flush.
type dwJob struct {
	x, dy, dw, db uint64
	m, n, k       int
	// fresh: dw holds zeros nothing adds to first (kernels.FreshWeightGrad): beta 0.
	fresh bool
	keep  [2]any
}

// dwShape is what a batch's members share.
type dwShape struct{ m, n, k int }

// dwDeferState is the Backend's queue.
type dwDeferState struct {
	on     bool // Options.DeferWeightGrads / XFORM_CUDA_DEFER_DW
	active bool // between DeferWeightGrads and FlushWeightGrads
	// noBatches: the library refused the pointer-array batch mode itself (a cuBLASLt
	// older than the mode): DeferWeightGrads answers false from then on, since every
	// batch would fall back to single products.
	noBatches bool
	jobs      []dwJob
	plans     map[dwBatchKey]*ltPlan
	// Counters for tests and the bench: products queued, matmuls the flushes ran.
	queued, batches, singles int
}

// dwBatchKey is a pointer-array plan: the shape, the member count, the 16-bit type and
// the alignment class of the dw pointers (the 16-bit operands are step buffers:
// 256-byte aligned).
type dwBatchKey struct {
	dwShape
	count  int
	dtype  uintptr
	alignC uint32
}

// dwBatchMax bounds a batch (and so the plans per shape); a larger group is split.
const dwBatchMax = 64

// cuBLASLt's batch attributes (cublasLt.h).
const (
	ltLayoutBatchCount  = 5 // CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: int32
	ltLayoutBatchMode   = 8 // CUBLASLT_MATRIX_LAYOUT_BATCH_MODE: uint32
	ltBatchPointerArray = 1 // CUBLASLT_BATCH_MODE_POINTER_ARRAY
)

// DeferWeightGrads implements kernels.WeightGradDeferrer: it reports whether the
// Backend defers (the option is on, the GEMMs are 16-bit and cuBLASLt can set batch
// layouts) and, if so, starts queueing.
func (be *Backend) DeferWeightGrads() bool {
	defer be.enter()()
	d := &be.dwDefer
	if !d.on || d.noBatches || be.precision == FP32 || !be.ltReady() || be.lt.lib.layoutSetAttr == 0 {
		return false
	}
	d.active = true
	return true
}

// FlushWeightGrads implements kernels.WeightGradDeferrer: it runs the queued products
// and stops queueing.
func (be *Backend) FlushWeightGrads() {
	defer be.enter()()
	be.flushDW()
}

// WeightGradCounts reports the products queued and the batched and single matmuls the
// flushes ran, since New (tests, the bench).
func (be *Backend) WeightGradCounts() (queued, batches, singles int) {
	defer be.enter()()
	d := &be.dwDefer
	return d.queued, d.batches, d.singles
}

// deferDW queues dw += dyᵀ·x (and db += Σ dy) when deferring; false: run it now. x16
// and dy16 must be blocks of the step (the kept copies, a 16-bit buffer) that live
// until the scope ends; keep holds them. The caller holds the Backend.
func (be *Backend) deferDW(x16, dy16, dw, db uint64, m, n, k int, fresh bool, keepX, keepDy any) bool {
	d := &be.dwDefer
	if !d.active || x16 == 0 || dy16 == 0 || n%2 != 0 {
		return false
	}
	d.jobs = append(d.jobs, dwJob{x: x16, dy: dy16, dw: dw, db: db, m: m, n: n, k: k, fresh: fresh, keep: [2]any{keepX, keepDy}})
	d.queued++
	return true
}

// flushDW runs the queue: groups of one shape (first appearance order) as batches,
// the rest one by one. Members of a batch must write distinct dw and db (a weight
// used twice would race): a repeated one starts another batch. The caller holds the
// Backend.
func (be *Backend) flushDW() {
	d := &be.dwDefer
	// The finishes first: where a bias gradient got both a finish and a deferred
	// product's column sum, the finish ran first before finishes were deferred too.
	be.flushFinishes()
	d.active = false
	if len(d.jobs) == 0 {
		return
	}
	jobs := d.jobs
	d.jobs = nil
	var order []dwShape
	groups := map[dwShape][][]dwJob{}
	for _, j := range jobs {
		s := dwShape{j.m, j.n, j.k}
		gs, seen := groups[s]
		if !seen {
			order = append(order, s)
		}
		placed := false
		for gi := range gs {
			if len(gs[gi]) < dwBatchMax && !conflicts(gs[gi], j) {
				gs[gi] = append(gs[gi], j)
				placed = true
				break
			}
		}
		if !placed {
			gs = append(gs, []dwJob{j})
		}
		groups[s] = gs
	}
	// One upload for every batch's address arrays: x, dy, dw, db per member.
	var words []uint64
	type batch struct {
		jobs []dwJob
		at   int // index of its first word
	}
	var batches []batch
	var singles []dwJob
	for _, s := range order {
		for _, g := range groups[s] {
			if len(g) == 1 {
				singles = append(singles, g[0])
				continue
			}
			b := batch{jobs: g, at: len(words)}
			for _, part := range [4]func(dwJob) uint64{
				func(j dwJob) uint64 { return j.x }, func(j dwJob) uint64 { return j.dy },
				func(j dwJob) uint64 { return j.dw }, func(j dwJob) uint64 { return j.db },
			} {
				for _, j := range g {
					words = append(words, part(j))
				}
			}
			batches = append(batches, b)
		}
	}
	var arrays uint64
	if len(words) > 0 {
		arrays = be.stage(slotDW, unsafe.Pointer(&words[0]), 8*len(words))
	}
	for _, b := range batches {
		c := len(b.jobs)
		at := arrays + 8*uint64(b.at)
		xs, dys, dws, dbs := at, at+8*uint64(c), at+16*uint64(c), at+24*uint64(c)
		if !be.dwBatched(b.jobs, xs, dys, dws) {
			for _, j := range b.jobs {
				be.dwSingle(j)
			}
			continue
		}
		d.batches++
		if b.jobs[0].db != 0 {
			be.biasGradBatch(b.jobs, dys, dbs)
		}
	}
	for _, j := range singles {
		be.dwSingle(j)
	}
}

// conflicts says whether j may not join g: a job of g writes j's dw or db (the batch
// would race), has a bias gradient where j has none (the batch's column sums run
// for all of its members), or another beta (fresh).
func conflicts(g []dwJob, j dwJob) bool {
	for _, o := range g {
		if o.dw == j.dw || (j.db != 0 && o.db == j.db) || (o.db == 0) != (j.db == 0) || o.fresh != j.fresh {
			return true
		}
	}
	return false
}

// dwSingle is the product the Backend runs without deferral: BGRADB into a scratch
// vector added to db (or the column sum when the epilogue is refused).
func (be *Backend) dwSingle(j dwJob) {
	be.dwDefer.singles++
	n, k, m := j.n, j.k, j.m
	var bgrad uint64
	var pdw *ltPlan
	if j.db != 0 && !be.bgradOff {
		bgrad = be.scoped(be.newBuffer(n)).dptr()
		pdw = be.ltPlanEpi(true, false, n, k, m, n, k, k, j.dw, ltEpiBGradB, bgrad, 0, 0)
	}
	if pdw != nil {
		if be.ltRun(pdw, j.dy, j.x, j.beta(), j.dw, bgrad) {
			be.prm.reset().ptr(j.db).ptr(bgrad).i64(n)
			be.elem(be.fn.train.addTo, int64(n))
			return
		}
	}
	pdw = be.ltPlanFor(true, false, n, k, m, n, k, k, j.dw, 0)
	be.product16(pdw, true, false, n, k, m, j.dy, n, j.x, k, j.beta(), j.dw, k, 0)
	if j.db != 0 {
		be.biasGradBatch([]dwJob{j}, 0, 0)
	}
}

// dwBatched runs dw_i += dy_iᵀ·x_i for the batch as one pointer-array matmul (xs, dys,
// dws: device arrays of the members' addresses); false when cuBLASLt has no algorithm
// for it (nothing queued).
func (be *Backend) dwBatched(jobs []dwJob, xs, dys, dws uint64) bool {
	j := jobs[0]
	align := uint32(256)
	for _, o := range jobs {
		align = min(align, alignOf(o.dw))
	}
	key := dwBatchKey{dwShape: dwShape{j.m, j.n, j.k}, count: len(jobs), dtype: be.dataType16(), alignC: align}
	p := be.dwBatchPlan(key)
	if p == nil {
		return false
	}
	return be.ltRun(p, dys, xs, j.beta(), dws, 0)
}

// beta is the job's dw product's beta: 0 for a fresh gradient, else 1.
func (j dwJob) beta() float32 {
	if j.fresh {
		return 0
	}
	return 1
}

// dwBatchPlan returns the pointer-array plan of key (nil when cuBLASLt has none; the
// answer is kept either way).
func (be *Backend) dwBatchPlan(key dwBatchKey) *ltPlan {
	d := &be.dwDefer
	if p, ok := d.plans[key]; ok {
		if p.none {
			return nil
		}
		return p
	}
	if d.plans == nil {
		d.plans = map[dwBatchKey]*ltPlan{}
	}
	if len(d.plans) >= 1024 {
		// Fairseq's batching makes a new row count at almost every update: start over
		// rather than keep every shape ever met.
		for k, p := range d.plans {
			be.ltDestroy(p)
			delete(d.plans, k)
		}
	}
	p, modeRefused, err := be.newDWBatchPlan(key, halfAlign)
	if err != nil && !modeRefused {
		// Pointer-array algorithms may want the matrices' alignment stated lower.
		p, modeRefused, err = be.newDWBatchPlan(key, 16)
	}
	if modeRefused {
		d.noBatches = true
	}
	if err != nil {
		be.ltNote(fmt.Errorf("weight gradients: %d × %d×%d×%d as a pointer-array batch: %w", key.count, key.n, key.k, key.m, err))
		p = &ltPlan{none: true}
	}
	d.plans[key] = p
	if p.none {
		return nil
	}
	return p
}

// newDWBatchPlan builds key's pointer-array plan, telling the heuristic that the 16-bit
// operands are aligned to alignAB bytes. modeRefused: the library refused the batch
// attributes themselves (not this shape).
func (be *Backend) newDWBatchPlan(key dwBatchKey, alignAB uint32) (_ *ltPlan, modeRefused bool, _ error) {
	n, k, m := key.n, key.k, key.m
	lk := ltKey{transA: true, m: n, n: k, k: m, lda: n, ldb: k, ldc: k, dtype: key.dtype, dtypeD: cudaR32F,
		biasType: cudaR32F, epilogue: ltEpiDefault, alignAB: alignAB, alignC: min(key.alignC, alignAB)}
	p := &ltPlan{key: lk}
	err := be.ltBuild(p, lk, 0, 0)
	l := be.lt.lib
	count, mode := int32(key.count), uint32(ltBatchPointerArray)
	for _, h := range []uintptr{p.a, p.b, p.c} {
		if err != nil {
			break
		}
		if err = ltCheck("cublasLtMatrixLayoutSetAttribute", call(l.layoutSetAttr, h, ltLayoutBatchCount, uintptr(unsafe.Pointer(&count)), 4)); err == nil {
			err = ltCheck("cublasLtMatrixLayoutSetAttribute", call(l.layoutSetAttr, h, ltLayoutBatchMode, uintptr(unsafe.Pointer(&mode)), 4))
		}
		modeRefused = err != nil
	}
	if err == nil {
		p.algo, err = be.ltHeuristic(p, lk)
	}
	if err != nil {
		be.ltDestroy(p)
		return nil, modeRefused, err
	}
	p.name = fmt.Sprintf("cublasLt dW batch %dx %dx%dx%d", key.count, n, k, m)
	return p, false, nil
}

// biasGradBatch adds each member's column sum of its 16-bit dy into its db
// (bias_grad.cu), in two launches. dys and dbs are device arrays of the members'
// addresses; 0 stages them here.
func (be *Backend) biasGradBatch(jobs []dwJob, dys, dbs uint64) {
	j := jobs[0]
	m, n, c := j.m, j.n, len(jobs)
	if dys == 0 {
		words := make([]uint64, 0, 2*c)
		for _, o := range jobs {
			words = append(words, o.dy)
		}
		for _, o := range jobs {
			words = append(words, o.db)
		}
		a := be.stage(slotDWBias, unsafe.Pointer(&words[0]), 8*len(words))
		dys, dbs = a, a+8*uint64(c)
	}
	chunks, per := biasGradChunks(m)
	part := be.scoped(be.newBuffer(c * chunks * n))
	threads := min(256, (n/2+31)/32*32)
	be.prm.reset().ptr(part.dptr()).ptr(dys).i32(m).i32(n).i32(per).i32(be.outFormat())
	be.runBlock(be.fn.train.biasGradPartial, [3]uint32{uint32((n/2 + threads - 1) / threads), uint32(chunks), uint32(c)}, [3]uint32{uint32(threads), 1, 1}, 0)
	be.prm.reset().ptr(dbs).ptr(part.dptr()).i32(chunks).i32(n).i32(c)
	be.elem(be.fn.train.biasGradFinish, int64(c)*int64(n))
}

// biasGradChunks splits m rows into chunks of per rows for bias_grad16_partial: 256
// rows each (hundreds of blocks of eight loads in flight per thread for a batch of
// 8,000-row members; with 64 the finish's serial loop over ~120 chunks took 19 µs a
// call), at most 128 chunks. Fixed by m alone, so the summation order is.
func biasGradChunks(m int) (chunks, per int) {
	per = max(256, (m+127)/128)
	return max(1, (m+per-1)/per), per
}
