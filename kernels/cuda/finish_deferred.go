package cuda

import (
	"math"
	"os"
	"unsafe"
)

// Deferred column-sum finishes.
//
// The float4 LayerNorm backward leaves its dγ, dβ, dω as per-block partials and a
// second launch (layernorm_fast_bwd_finish_v) adds them up; fc1's ReLU + dropout
// backward does the same for its bias gradient (bias_grad_finish1). Each finish is a
// few microseconds of a latency-bound launch on a small grid (48 blocks for d 512):
// 28 + 12 of them in a 6L-6L update. Nothing reads those gradients before the
// optimizer, so while the weight gradients are deferred (DeferWeightGrads) the
// finishes are queued too and FlushWeightGrads runs each kind as one launch over every
// queued call (layernorm_fast_bwd_finish_list, bias_grad_finish1_list: blockIdx.y the
// call). Each call's sums are the one-launch kernel's, the same operands in the same
// order, so the gradients are the same bits; the partials are scoped buffers of the
// step, alive until the flush at the end of its backward. A call whose outputs overlap
// a queued one's flushes the queue first (two list members must not add into one
// gradient at once). XFORM_CUDA_DEFER_FINISH=0 turns it off.

// lnFinishJob is one queued finish_v: its lfl_job.
type lnFinishJob struct {
	dgamma, dbeta, domega, part uint64
	nparts, dim                 int
	alpha                       float32
	keep                        any
}

// biasFinishJob is one queued bias_grad_finish1: its bgf_job.
type biasFinishJob struct {
	db, part    uint64
	chunks, col int
	keep        any
}

// finishQueue is the Backend's queue of finishes (under its lock).
type finishQueue struct {
	off  bool
	ln   []lnFinishJob
	bias []biasFinishJob
	// queued and lists count the finishes queued and the list launches run (tests).
	queued, lists int
}

func (q *finishQueue) init() {
	q.off = !envSwitch(true, os.Getenv("XFORM_CUDA_DEFER_FINISH"))
}

// deferring says whether a finish may be queued now (the caller holds the Backend).
func (be *Backend) finishDeferring() bool {
	return be.dwDefer.active && !be.finish.off
}

// overlaps says whether any of the outputs is one a queued finish adds into.
func (q *finishQueue) overlaps(outs ...uint64) bool {
	for _, o := range outs {
		if o == 0 {
			continue
		}
		for _, j := range q.ln {
			if o == j.dgamma || o == j.dbeta || o == j.domega {
				return true
			}
		}
		for _, j := range q.bias {
			if o == j.db {
				return true
			}
		}
	}
	return false
}

// deferLNFinish queues finish_v's sums of part into dgamma, dbeta, domega; false: the
// caller launches finish_v now. The caller holds the Backend.
func (be *Backend) deferLNFinish(dgamma, dbeta, domega uint64, part *buffer, nparts, dim int, alpha float32) bool {
	if !be.finishDeferring() {
		return false
	}
	q := &be.finish
	if q.overlaps(dgamma, dbeta, domega) {
		be.flushFinishes()
	}
	q.ln = append(q.ln, lnFinishJob{dgamma: dgamma, dbeta: dbeta, domega: domega, part: part.dptr(), nparts: nparts, dim: dim, alpha: alpha, keep: part})
	q.queued++
	return true
}

// deferBiasFinish queues bias_grad_finish1's sums of part into db; false: the caller
// launches it now. The caller holds the Backend.
func (be *Backend) deferBiasFinish(db uint64, part *buffer, chunks, cols int) bool {
	if !be.finishDeferring() {
		return false
	}
	q := &be.finish
	if q.overlaps(db) {
		be.flushFinishes()
	}
	q.bias = append(q.bias, biasFinishJob{db: db, part: part.dptr(), chunks: chunks, col: cols, keep: part})
	q.queued++
	return true
}

// flushFinishes launches the queued finishes, one list launch per kind. The caller
// holds the Backend.
func (be *Backend) flushFinishes() {
	q := &be.finish
	if len(q.ln) > 0 {
		words := make([]uint64, 0, 6*len(q.ln))
		cols := 0
		for _, j := range q.ln {
			words = append(words, j.dgamma, j.dbeta, j.domega, j.part,
				uint64(uint32(int32(j.nparts)))|uint64(uint32(int32(j.dim)))<<32, uint64(math.Float32bits(j.alpha)))
			cols = max(cols, 3*j.dim)
		}
		jobs := be.stage(slotFinishLN, unsafe.Pointer(&words[0]), 8*len(words))
		be.prm.reset().ptr(jobs)
		be.runBlock(be.lnFns().vfinishList, [3]uint32{uint32((cols + 31) / 32), uint32(len(q.ln)), 1}, [3]uint32{32, 32, 1}, 0)
		clear(q.ln) // drop the partials' references
		q.ln = q.ln[:0]
		q.lists++
	}
	if len(q.bias) > 0 {
		words := make([]uint64, 0, 3*len(q.bias))
		cols := 0
		for _, j := range q.bias {
			words = append(words, j.db, j.part, uint64(uint32(int32(j.chunks)))|uint64(uint32(int32(j.col)))<<32)
			cols = max(cols, j.col)
		}
		jobs := be.stage(slotFinishBias, unsafe.Pointer(&words[0]), 8*len(words))
		be.prm.reset().ptr(jobs)
		const threads = 256
		be.runBlock(be.fn.train.biasGradFinish1List, [3]uint32{uint32((cols + threads - 1) / threads), uint32(len(q.bias)), 1}, [3]uint32{threads, 1, 1}, 0)
		clear(q.bias)
		q.bias = q.bias[:0]
		q.lists++
	}
}

// FinishCounts reports the finishes queued and the list launches run since New (tests).
func (be *Backend) FinishCounts() (queued, lists int) {
	defer be.enter()()
	return be.finish.queued, be.finish.lists
}
