package cuda

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

// DropoutMask implements kernels.Trainer with one grid-stride kernel: the mask is
// drawn where it is used instead of drawn on the host and uploaded. The threshold and
// scale are computed here by the same functions the CPU backend uses, so the kernel's
// only arithmetic is the integer hash.
func (be *Backend) DropoutMask(mask kernels.Buffer, p float64, seed uint64) {
	n := dev(mask).n
	t, keep := kernels.DropoutThreshold(p), kernels.DropoutScale(p)
	if n == 0 {
		return
	}
	defer be.enter()()
	be.prm.reset().ptr(addr(mask)).u64(seed).u64(t).f32(keep).i64(n)
	be.elem(be.fn.train.dropoutMask, int64(n))
}

// ApplyDropout implements kernels.DropoutApplier: dropout_mask's element times x, in
// one pass, nothing stored.
//
// y may be a 16-bit buffer (kernels.HalfBuffers): it gets the rounding of each product.
// x may be 16-bit too when y is (kernels.HalfOutputs; y may alias x): dropout_apply_hh8
// multiplies the widened values (dropout_apply_hh's bits, eight elements per thread).
func (be *Backend) ApplyDropout(y, x kernels.Buffer, p float64, seed uint64) {
	yp, n, format := be.outOf(y)
	if xh := halfOf(x); xh != nil {
		if format == xfOutF32 || xh.n != n {
			panic(fmt.Sprintf("cuda backend: ApplyDropout of a 16-bit x of %d elements into %T of %d", xh.n, y, n))
		}
		if n == 0 {
			return
		}
		t, keep := kernels.DropoutThreshold(p), kernels.DropoutScale(p)
		defer be.enter()()
		be.prm.reset().ptr(yp).ptr(xh.dptr()).u64(seed).u64(t).f32(keep).i64(n).i32(format)
		fn, grid := be.hhLaunch(be.fn.half.dropoutApplyHH8, be.fn.half.dropoutApplyHH, n)
		be.run(fn, grid, blockElem, 0)
		return
	}
	if dev(x).n != n {
		panic(fmt.Sprintf("cuda backend: ApplyDropout of %d elements into %d", dev(x).n, n))
	}
	t, keep := kernels.DropoutThreshold(p), kernels.DropoutScale(p)
	if n == 0 {
		return
	}
	defer be.enter()()
	be.prm.reset().ptr(yp).ptr(addr(x)).u64(seed).u64(t).f32(keep).i64(n)
	if format == xfOutF32 {
		be.elem(be.fn.train.dropoutApply, int64(n))
		return
	}
	be.prm.i32(format)
	// A thread takes four elements on the aligned path: size the grid for n/4.
	be.run(be.fn.half.dropoutApply16, [3]uint32{grid1D((int64(n)+3)/4, blockElem, be.info.SMs), 1, 1}, blockElem, 0)
}

var _ kernels.DropoutApplier = (*Backend)(nil)

var _ kernels.RoundedDropout = (*Backend)(nil)

// ApplyDropoutRounded implements kernels.RoundedDropout with one launch
// (dropout_apply2): the float32 product into y and its rounding into the 16-bit y16.
func (be *Backend) ApplyDropoutRounded(y, y16, x kernels.Buffer, p float64, seed uint64) {
	h := halfOf(y16)
	n := dev(y).n
	if h == nil || h.n != n || dev(x).n != n {
		panic(fmt.Sprintf("cuda backend: ApplyDropoutRounded of %d elements into %d and a 16-bit %T", dev(x).n, n, y16))
	}
	t, keep := kernels.DropoutThreshold(p), kernels.DropoutScale(p)
	if n == 0 {
		return
	}
	defer be.enter()()
	be.prm.reset().ptr(addr(y)).ptr(h.dptr()).ptr(addr(x)).u64(seed).u64(t).f32(keep).i64(n).i32(be.outFormat())
	be.run(be.fn.half.dropoutApply2, [3]uint32{grid1D((int64(n)+3)/4, blockElem, be.info.SMs), 1, 1}, blockElem, 0)
}
