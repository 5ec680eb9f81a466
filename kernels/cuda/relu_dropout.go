package cuda

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

var _ kernels.ReLUDropoutBackwarder = (*Backend)(nil)

// ReLUDropoutBackward implements kernels.ReLUDropoutBackwarder with one elementwise
// launch (relu_dropout_bwd: float4 loads and stores where the three buffers are
// 16-byte aligned), replacing dropout_apply and activate_bwd on the gradient: the
// pass reads da and a and writes dpre, where those two read da twice, pre once and
// write twice. s is the float32 that dropout_apply multiplies by, so the product's
// bits are the same.
//
// dpre may be a 16-bit buffer (kernels.HalfBuffers), then not aliasing da or a: it gets
// the rounding of each element (relu_dropout_bwd16).
//
// da and a may be 16-bit too, both, with a 16-bit dpre (kernels.HalfOutputs; dpre may
// alias da or a): relu_dropout_bwd_hh8 on the widened values (relu_dropout_bwd_hh's
// bits, eight elements per thread).
func (be *Backend) ReLUDropoutBackward(dpre, da, a kernels.Buffer, p float64) {
	dp, n, format := be.outOf(dpre)
	if dah, ah := halfOf(da), halfOf(a); dah != nil || ah != nil {
		if dah == nil || ah == nil || format == xfOutF32 || dah.n != n || ah.n != n {
			panic(fmt.Sprintf("cuda backend: ReLUDropoutBackward of %T and %T into %T: 16-bit inputs need all three 16-bit, of one length", da, a, dpre))
		}
		if n == 0 {
			return
		}
		defer be.enter()()
		be.prm.reset().ptr(dp).ptr(dah.dptr()).ptr(ah.dptr()).f32(kernels.DropoutScale(p)).i64(n).i32(format)
		fn, grid := be.hhLaunch(be.fn.half.reluDropoutBwdHH8, be.fn.half.reluDropoutBwdHH, n)
		be.run(fn, grid, blockElem, 0)
		return
	}
	if dev(da).n != n || dev(a).n != n {
		panic(fmt.Sprintf("cuda backend: ReLUDropoutBackward of %d and %d elements into %d", dev(da).n, dev(a).n, n))
	}
	if n == 0 {
		return
	}
	defer be.enter()()
	fn := be.fn.train.reluDropoutBwd
	be.prm.reset().ptr(dp).ptr(addr(da)).ptr(addr(a)).f32(kernels.DropoutScale(p)).i64(n)
	if format != xfOutF32 {
		fn = be.fn.half.reluDropoutBwd16
		be.prm.i32(format)
	}
	// A thread takes four elements on the aligned path: size the grid for n/4.
	be.run(fn, [3]uint32{grid1D((int64(n)+3)/4, blockElem, be.info.SMs), 1, 1}, blockElem, 0)
}

var _ kernels.ReLUDropoutBiasBackwarder = (*Backend)(nil)

// reluBiasPer is relu_dropout_bwd_hh8p's rows per chunk: at the bench's 7,872 × 2,048,
// 62 chunks × 8 column blocks = 496 blocks of 256 threads, each thread 16 rows with
// two rows of loads in flight, and a finish over 62 partials per column.
const reluBiasPer = 128

// ReLUDropoutBackwardBias implements kernels.ReLUDropoutBiasBackwarder on 16-bit dpre,
// da and a (relu_dropout_bwd_hh8p, then bias_grad_finish1): dpre as ReLUDropoutBackward
// writes it, the same bits, and db += the column sums of the stored dpre, summed in
// float32 in an order fixed by rows (chunks of reluBiasPer rows, eight row lanes each,
// then the chunks in order). false, nothing done, unless the three are 16-bit and
// 16-byte aligned, cols a multiple of 8, and the switch on (XFORM_CUDA_RELU_BIAS=0 turns
// it off).
func (be *Backend) ReLUDropoutBackwardBias(dpre, da, a, db kernels.Buffer, rows, cols int, p float64) bool {
	dph, dah, ah := halfOf(dpre), halfOf(da), halfOf(a)
	n := rows * cols
	if be.reluBiasOff || dph == nil || dah == nil || ah == nil || dph.n != n || dah.n != n || ah.n != n ||
		cols%8 != 0 || n == 0 || (dph.dptr()|dah.dptr()|ah.dptr())%16 != 0 || be.fn.half.hh4 {
		return false
	}
	if dev(db).n != cols {
		panic(fmt.Sprintf("cuda backend: ReLUDropoutBackwardBias into a db of %d for %d columns", dev(db).n, cols))
	}
	defer be.enter()()
	chunks := (rows + reluBiasPer - 1) / reluBiasPer
	part := be.scoped(be.newBuffer(chunks * cols))
	be.prm.reset().ptr(dph.dptr()).ptr(dah.dptr()).ptr(ah.dptr()).f32(kernels.DropoutScale(p)).
		i32(rows).i32(cols).i32(reluBiasPer).ptr(part.dptr()).i32(be.outFormat())
	be.runBlock(be.fn.half.reluDropoutBwdHH8P, [3]uint32{uint32((cols/8 + 31) / 32), uint32(chunks), 1}, [3]uint32{32, 8, 1}, 0)
	if !be.deferBiasFinish(addr(db), part, chunks, cols) {
		be.prm.reset().ptr(addr(db)).ptr(part.dptr()).i32(chunks).i32(cols)
		be.elem(be.fn.train.biasGradFinish1, int64(cols))
	}
	be.reluBiasCalls++
	return true
}
