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

// lossState is one Backend's setup of the loss kernels, fixed on first use
// (Backend.lazy.loss): how many floats a row may have for ls_loss to stage it in shared
// memory, and the ls_pipe_* kernels with their shared memory bounds.
type lossState struct {
	maxStaged int
	// pipe holds ls_pipe_f32, ls_pipe_bf16, ls_pipe_f16 by the logits' format (xfOut*);
	// all 0 before sm_80 (cp.async).
	pipe [3]uintptr
	// pipeDyn is the pipe kernels' dynamic shared memory bound, perSM the shared memory
	// of one SM (for the grid: blocks that fit at once).
	pipeDyn, perSM int
	// pipeOff: tests: ls_loss for every call (16-bit logits widened first), the
	// kernel the pipe kernels replaced, for before/after timings.
	pipeOff bool
	// ex2 makes the pipe kernels take exp as ex2.approx((x − m)·log2 e) rather than
	// expf (loss.cu's fexp), set from lsPipeEx2 in lossSetup.
	ex2 bool
}

// lsPipeEx2 is the pipe kernels' exp by default: see lossState.ex2. Off: ex2.approx
// saved only ~4 % (16 µs per call at the bench's shape on the H200) for ~2e-6 relative
// error on the smallest p, where expf keeps the float kernels' ≤ 2 ulp.
const lsPipeEx2 = false

// ls_pipe_* (loss.cu) launch constants.
const (
	lspNV       = 8    // LSP_NV: float4 groups of a row per thread
	lspMaxBlock = 1024 // __launch_bounds__(1024, 1): 64 registers
	lspMinBlock = 128
	// attrMaxSharedPerSM is CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR.
	attrMaxSharedPerSM = 81
)

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
	st := &lossState{maxStaged: max(48*1024-lsStaticShared, 0) / 4, ex2: lsPipeEx2}
	if dyn := optin - lsStaticShared; dyn > 48*1024-lsStaticShared {
		fn := be.fn.train.lsLoss
		must(be.drv.check("cuFuncSetAttribute(ls_loss, max dynamic shared)", call(be.drv.cuFuncSetAttribute, fn,
			funcAttrMaxDynamicShared, uintptr(dyn))))
		// A hint only: all of L1 as shared memory lets two staged rows share an SM.
		must(be.drv.check("cuFuncSetAttribute(ls_loss, carveout)", call(be.drv.cuFuncSetAttribute, fn,
			funcAttrCarveout, 100)))
		st.maxStaged = dyn / 4
	}
	if be.info.Major >= 8 {
		st.pipeDyn = max(optin-lsStaticShared, 0)
		st.perSM = optin
		if v, err := be.drv.attribute(be.dev, attrMaxSharedPerSM); err == nil && v > 0 {
			st.perSM = v
		}
		for i, name := range [3]string{xfOutF32: "ls_pipe_f32", xfOutBF16: "ls_pipe_bf16", xfOutF16: "ls_pipe_f16"} {
			fn := be.kernel(name)
			if st.pipeDyn > 48*1024 {
				must(be.drv.check("cuFuncSetAttribute("+name+", max dynamic shared)", call(be.drv.cuFuncSetAttribute, fn,
					funcAttrMaxDynamicShared, uintptr(st.pipeDyn))))
				must(be.drv.check("cuFuncSetAttribute("+name+", carveout)", call(be.drv.cuFuncSetAttribute, fn,
					funcAttrCarveout, 100)))
			} else {
				st.pipeDyn = 48*1024 - lsStaticShared
			}
			st.pipe[i] = fn
		}
	}
	be.lazy.loss = st
	return st
}

// lsPipe is one launch of an ls_pipe_* kernel.
type lsPipe struct {
	fn                  uintptr
	grid, block, shared uint32
	stages, ex2         int
}

// lsPipeFor says whether the call takes ls_pipe_* and how: the float arithmetic
// (16-bit precisions), sm_80+, rows of whole float4 groups within 4·lspNV·1024
// elements whose bytes are a multiple of 16 and start 16-byte aligned (cp.async),
// at least one row in shared memory, and a gradient aligned for ls_store4. Two rows
// are kept in flight when they fit. in and gformat are the logits' and the gradient's
// formats (xfOut*); gp is 0 without a gradient. It depends on the shape, the precision
// and the buffers' alignment only.
func (be *Backend) lsPipeFor(st *lossState, rows, V, in int, logits, gp uint64, gformat int) (lsPipe, bool) {
	if be.precision == FP32 || st.pipeOff || st.pipe[in] == 0 || V%4 != 0 || V > 4*lspNV*lspMaxBlock {
		return lsPipe{}, false
	}
	size := 4
	if in != xfOutF32 {
		size = 2
	}
	bytes := V * size
	if bytes%16 != 0 || logits%16 != 0 || bytes > st.pipeDyn {
		return lsPipe{}, false
	}
	if gp != 0 && (gformat == xfOutF32 && gp%16 != 0 || gformat != xfOutF32 && gp%8 != 0) {
		return lsPipe{}, false
	}
	p := lsPipe{fn: st.pipe[in], stages: 1}
	if st.ex2 {
		p.ex2 = 1
	}
	if 2*bytes <= st.pipeDyn {
		p.stages = 2
	}
	p.shared = uint32(p.stages * bytes)
	// About four float4 groups per thread for short rows; vocabulary rows fill 1024
	// threads (up to lspNV groups each).
	b := (V/4 + 3) / 4
	b = min(max((b+31)/32*32, lspMinBlock), lspMaxBlock)
	p.block = uint32(b)
	// Persistent blocks: as many as fit on the SMs at once (64 registers per thread,
	// the staged rows), each walking rows with the grid's stride.
	perSM := min(lspMaxBlock/b, st.perSM/(int(p.shared)+lsStaticShared))
	p.grid = uint32(min(rows, max(perSM, 1)*be.info.SMs))
	return p, true
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
// which the output projection's backward then multiplies uncast. logits may be one too,
// as torch.autocast's output projection writes them: the kernel widens each element to
// float and computes as for float32 logits. In FP32 the kernel keeps the CPU backend's
// double arithmetic; in BF16/FP16 it computes in float (expf, ≤ 2 ulp), on rows of up
// to 32,768 aligned elements with ls_pipe_* (each logit read once, rows prefetched while
// the previous one is computed), the loss within ~1e-7 and dlogits within a few float
// ulps of the CPU (gpu_lossoptim_test.go and gpu_loss16_test.go state the bounds).
// Shapes the pipe kernels decline take ls_loss, 16-bit logits through a widened float32
// copy.
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
	lh := halfOf(logits)
	in, lp := xfOutF32, uint64(0)
	if lh != nil {
		if lh.n < rows*V {
			panic(fmt.Sprintf("cuda backend: LabelSmoothedLoss of %d 16-bit logits for %d×%d", lh.n, rows, V))
		}
		in, lp = be.outFormat(), lh.dptr()
	} else {
		lp = addr(logits)
	}
	if p, ok := be.lsPipeFor(st, rows, V, in, lp, gp, format); ok {
		be.prm.reset().ptr(gp).ptr(perRow.dptr()).ptr(lp).ptr(tp).
			i32(rows).i32(V).f32(eps).i32(int(ignore)).f32(scale).i32(format).i32(p.stages).i32(p.ex2)
		be.run(p.fn, [3]uint32{p.grid, 1, 1}, p.block, p.shared)
	} else {
		if lh != nil {
			lp = be.widen16(lh).dptr()
		}
		// A 16-bit gradient row needs 8-byte alignment for LS_VEC's stores: the address
		// doubled stands for it in lsLaunch's 16-byte test.
		galign := gp
		if format != xfOutF32 {
			galign = 2 * gp
		}
		block, shared, mode := lsLaunch(V, st.maxStaged, lp, galign, be.precision != FP32)
		switch format {
		case xfOutBF16:
			mode |= lsOutBF16
		case xfOutF16:
			mode |= lsOutF16
		}
		be.prm.reset().ptr(gp).ptr(perRow.dptr()).ptr(lp).ptr(tp).
			i32(rows).i32(V).f32(eps).i32(int(ignore)).f32(scale).i32(mode)
		be.run(be.fn.train.lsLoss, be.rowsGrid(rows), block, shared)
	}
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
