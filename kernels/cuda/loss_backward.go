package cuda

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/xform-dev/xform/kernels"
)

// ls_loss launch shape and modes (loss.cu).
const (
	// lsBlockLong is the block for vocabulary-sized rows: 512 threads, two blocks per SM
	// (the kernel's __launch_bounds__), so two staged rows of up to ~110 KiB share an SM.
	lsBlockLong = 512
	// lsStaticShared bounds the kernel's static shared memory (its scratch takes 384
	// bytes); the dynamic part may use the device's opt-in bound less this.
	lsStaticShared = 1024
	lsStaged       = 1  // LS_STAGED
	lsVec          = 2  // LS_VEC
	lsFast         = 4  // LS_FAST
	lsOutBF16      = 8  // LS_OUT_BF16
	lsOutF16       = 16 // LS_OUT_F16
	// funcAttrCarveout is CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT.
	funcAttrCarveout = 9
)

// lossState is one Backend's setup of ls_loss: how many floats a row may have for
// ls_loss to stage it in shared memory, fixed when the function's shared memory bound
// was raised on first use (Backend.lazy.loss).
type lossState struct{ maxStaged int }

// lossSetup returns the Backend's lossState, opting ls_loss in to the device's shared
// memory bound on the first call. The caller holds the Backend.
func (be *Backend) lossSetup() *lossState {
	if be.lazy.loss != nil {
		return be.lazy.loss
	}
	optin, err := be.drv.attribute(be.dev, attrMaxSharedPerBlockOptin)
	if err != nil {
		panic(fmt.Errorf("cuda: shared memory bound of the device for ls_loss: %w", err))
	}
	st := &lossState{maxStaged: max(48*1024-lsStaticShared, 0) / 4}
	if dyn := optin - lsStaticShared; dyn > 48*1024-lsStaticShared {
		fn := be.fn.train.lsLoss
		must(be.drv.check("cuFuncSetAttribute(ls_loss, max dynamic shared)", call(be.drv.cuFuncSetAttribute, fn,
			funcAttrMaxDynamicShared, uintptr(dyn))))
		// A hint only: all of L1 as shared memory lets two staged rows share an SM.
		must(be.drv.check("cuFuncSetAttribute(ls_loss, carveout)", call(be.drv.cuFuncSetAttribute, fn,
			funcAttrCarveout, 100)))
		st.maxStaged = dyn / 4
	}
	be.lazy.loss = st
	return st
}

// lsLaunch is ls_loss's block, dynamic shared memory and mode for a call: the row
// staged in shared memory when it fits, float4 accesses when every row starts on 16
// bytes, float arithmetic in the 16-bit precisions. It depends on the shape, the
// precision and the buffers' alignment only.
func lsLaunch(V int, maxStaged int, logits, dlogits uint64, fast bool) (block, shared uint32, mode int) {
	block = blockRow
	if V >= 8192 {
		block = lsBlockLong // vocabulary rows are long: more threads per row
	}
	if V <= maxStaged {
		mode |= lsStaged
		shared = uint32(4 * V)
	}
	if V%4 == 0 && logits%16 == 0 && dlogits%16 == 0 {
		mode |= lsVec
	}
	if fast {
		mode |= lsFast
	}
	return block, shared, mode
}

// LabelSmoothedLoss implements kernels.Trainer with one fused kernel (loss.cu): per row
// the log_softmax, the row's loss and nll, and the logits' gradient, then a row-order
// sum on the device. The host reads the two sums (16 bytes), the one synchronisation of
// the call.
func (be *Backend) LabelSmoothedLoss(dlogits, logits kernels.Buffer, targets []int32, rows, V int, eps float32, ignore int32, scale float32) (loss, nll float64) {
	return be.LabelSmoothedLossDeferred(dlogits, logits, targets, rows, V, eps, ignore, scale)()
}

// LabelSmoothedLossDeferred implements kernels.DeferredLosser. dlogits may be a 16-bit
// buffer (kernels.HalfBuffers): each element is the rounding of the float gradient,
// which the output projection's backward then multiplies uncast. In FP32 the kernel keeps
// the CPU backend's double arithmetic; in BF16/FP16 it computes in float (expf, ≤ 2
// ulp), which is ~2× faster at a 27k vocabulary, the loss within ~1e-7 and dlogits
// within a few float ulps of the CPU (gpu_loss_test.go states the bounds).
func (be *Backend) LabelSmoothedLossDeferred(dlogits, logits kernels.Buffer, targets []int32, rows, V int, eps float32, ignore int32, scale float32) func() (loss, nll float64) {
	if rows == 0 || V == 0 {
		return func() (float64, float64) { return 0, 0 }
	}
	if len(targets) < rows {
		panic(fmt.Sprintf("cuda backend: %d targets for %d rows", len(targets), rows))
	}
	defer be.enter()()
	st := be.lossSetup()
	tp := be.stageInts(slotTargets, targets[:rows])
	perRow := be.newDoubles(2 * rows)
	gp, gn, format := be.outOf(dlogits)
	if dlogits != nil && gn < rows*V {
		panic(fmt.Sprintf("cuda backend: LabelSmoothedLoss gradient of %d elements for %d×%d logits", gn, rows, V))
	}
	// A 16-bit gradient row needs 8-byte alignment for LS_VEC's stores: the address
	// doubled stands for it in lsLaunch's 16-byte test.
	galign := gp
	if format != xfOutF32 {
		galign = 2 * gp
	}
	block, shared, mode := lsLaunch(V, st.maxStaged, addr(logits), galign, be.precision != FP32)
	switch format {
	case xfOutBF16:
		mode |= lsOutBF16
	case xfOutF16:
		mode |= lsOutF16
	}
	be.prm.reset().ptr(gp).ptr(perRow.dptr()).ptr(addr(logits)).ptr(tp).
		i32(rows).i32(V).f32(eps).i32(int(ignore)).f32(scale).i32(mode)
	be.run(be.fn.train.lsLoss, be.rowsGrid(rows), block, shared)
	sums := be.newDoubles(2)
	// 1024 threads: a 256-thread block spent ~30 dependent loads per thread on 8000 rows.
	be.prm.reset().ptr(sums.dptr()).ptr(perRow.dptr()).i64(rows).i32(2).i32(2)
	be.run(be.fn.train.sumStrided, [3]uint32{1, 1, 1}, 1024, 0)
	read := be.readLater(sums, 16)
	return func() (float64, float64) {
		b := read()
		return math.Float64frombits(binary.LittleEndian.Uint64(b)), math.Float64frombits(binary.LittleEndian.Uint64(b[8:]))
	}
}
