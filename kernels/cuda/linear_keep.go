package cuda

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

var _ kernels.LinearKeeper = (*Backend)(nil)

// LinearKeep implements kernels.LinearKeeper: in bf16/fp16 the 16-bit copies of x and
// w that the product multiplies go to a buffer of the step's scope instead of the
// shared scratch, so LinearBackwardKept rounds only dy (the backward rounded x and w
// again before: about 0.7 ms of casts per 6L-6L step). In FP32 nothing is rounded:
// it is Linear and returns nil.
func (be *Backend) LinearKeep(y, x, w, bias kernels.Buffer, m, n, k int) kernels.Buffer {
	if be.precision == FP32 || m == 0 || n == 0 {
		be.Linear(y, x, w, bias, m, n, k)
		return nil
	}
	defer be.enter()()
	ops := [3]operand16{{addr(x), m * k}, {addr(w), n * k}}
	off, bytes := layout16(ops)
	kept := be.scoped(be.newBuffer(int((max(bytes, halfAlign) + 3) / 4)))
	dst := [3]uint64{kept.dptr() + off[0], kept.dptr() + off[1], kept.dptr() + off[2]}
	be.castInto(dst, ops)
	plan := be.ltPlanFor(false, true, m, n, k, k, k, n, addr(y), addr(bias))
	be.product16(plan, false, true, m, n, k, dst[0], k, dst[1], k, 0, addr(y), n, addr(bias))
	return kept
}

// LinearBackwardKept implements kernels.LinearKeeper: LinearBackward with the copies
// LinearKeep kept (same m, n, k), the same products on the same 16-bit operands.
func (be *Backend) LinearBackwardKept(dx, dw, db, dy, kept kernels.Buffer, m, n, k int) {
	if m == 0 {
		return
	}
	ops := [3]operand16{{0, m * k}, {0, n * k}}
	off, bytes := layout16(ops)
	kb := dev(kept)
	if kb == nil || uint64(kb.n)*4 < bytes {
		panic(fmt.Sprintf("cuda backend: LinearBackwardKept of %d×%d×%d without LinearKeep's buffer of %d bytes", m, n, k, bytes))
	}
	defer be.enter()()
	dbDone := false
	if dx != nil || dw != nil {
		dbDone = be.linearBackward16Kept(dx, dw, db, dy, nil, nil, kb.dptr()+off[0], kb.dptr()+off[1], m, n, k)
	}
	if db != nil && n > 0 && !dbDone {
		part, chunks, nout := be.colReduce(0, addr(dy), 0, 0, m, n)
		be.colFinish(db, part, chunks, nout, 0, n, 1)
	}
}
