package cuda

import (
	"fmt"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
)

// kernels.ReLUDropoutFolder: the feed-forward block's activation-dropout and ReLU
// backward inside fc2's input-gradient product, instead of relu_dropout_bwd_hh8's pass
// over the [rows × F] gradient (three 16-bit arrays of rows·F elements: ~25 µs a layer
// at the bench shape, 12 layers a 6L-6L update).
//
// The forward's dropout (dropout_apply_hh8m) writes, beside the dropped activation a,
// a bit per element: a > 0. That is the layout of cuBLASLt's ReLU mask (bit r·ld + c of
// 32-bit little-endian words, ld its leading dimension in bits) when a row's F columns
// are a multiple of 128, which TestDReLU16Probe checked on the H200 against the mask
// CUBLASLT_EPILOGUE_RELU_AUX_BIAS writes. fc2's dx product then runs with
// CUBLASLT_EPILOGUE_DRELU on that mask and alpha = s, the dropout's keep scale, into the
// 16-bit g: g = RN16(s·(dy·w2)) where a > 0, else 0, which is ReLUDropoutBackward of the
// unrounded product. The same probe found DRELU with a 16-bit D equal to RN16 of the
// float32-D epilogue's output, element for element. (DRELU_BGRAD, which would also give
// fc1's bias gradient, plans with a 16-bit D only with a 16-bit bias gradient, which in
// bf16 it got badly wrong against the float32 sums: 17.7 relative at a column; so fc1's
// bias gradient stays the column sum of g.)
//
// Where cuBLASLt plans no DRELU product (or refuses at run time) the fold falls back to
// the two steps it replaces: the plain product into g, then relu_dropout_bwd_hh8 with a.
//
// Opt-in (XFORM_CUDA_RELU_FOLD=1, Backend.reluFoldOn), because it is slower with the
// cuBLASLt it was measured with (13.1, H200, tenth session; GPU profile of the bench,
// 2 buckets): the DRELU product with a 16-bit D took 109.0 µs a call at 7872×2048×512
// against the plain product's 33.5, far more than the 24.7 µs of relu_dropout_bwd_hh8
// it saves, and dropout_apply_hh8m 27.4 against dropout_apply_hh8's 24.2 µs (the byte
// stores): bench 618,746 / 619,484 → 579,293 / 578,940 target tokens/s. It is kept, with
// its tests, for a cuBLASLt whose DRELU kernels run at the plain product's speed.

// reluFold is one folded dx product's extra arguments (device addresses).
type reluFold struct {
	mask  uint64  // ApplyDropoutMask's bits
	ld    int     // the mask's leading dimension in bits (= the columns)
	alpha float32 // the dropout's keep scale
	a     uint64  // the dropped activation, for the fallback
}

var _ kernels.ReLUDropoutFolder = (*Backend)(nil)

// reluFoldable says whether ApplyDropoutMask can record a call of rows×cols elements at
// p with these buffers: dropout_apply_hh8m's 16-byte path for every group (16-byte
// aligned y and x, the eight-per-thread kernels in use, p < 1) and cuBLASLt's mask
// layout (cols a multiple of 128).
func (be *Backend) reluFoldable(y, x *half, cols int, p float64) bool {
	return be.reluFoldOn && !be.fn.half.hh4 && be.precision != FP32 && cols > 0 && cols%128 == 0 &&
		y.dptr()%16 == 0 && x.dptr()%16 == 0 && kernels.DropoutThreshold(p) < 1<<24
}

// ApplyDropoutMask implements kernels.ReLUDropoutFolder (see reluFold above): one launch
// of dropout_apply_hh8m, the y bits of ApplyDropout (dropout_apply_hh8) and a mask of
// rows·cols/8 bytes in the step's scope. nil, nothing done, where reluFoldable says no
// (also whenever the fold is off, the default).
func (be *Backend) ApplyDropoutMask(y, x kernels.Buffer, rows, cols int, p float64, seed uint64) kernels.Buffer {
	yh, xh := halfOf(y), halfOf(x)
	n := rows * cols
	if yh == nil || xh == nil || yh.n != n || xh.n != n {
		panic(fmt.Sprintf("cuda backend: ApplyDropoutMask of %T into %T, wanted 16-bit buffers of %d×%d", x, y, rows, cols))
	}
	if n == 0 || !be.reluFoldable(yh, xh, cols, p) {
		return nil
	}
	t, keep := kernels.DropoutThreshold(p), kernels.DropoutScale(p)
	defer be.enter()()
	// n/8 bytes, rounded up to whole float32 elements; a fresh block is 256-byte aligned.
	mask := be.scoped(be.newBuffer((n/8 + 3) / 4))
	be.prm.reset().ptr(yh.dptr()).ptr(xh.dptr()).u64(seed).u64(t).f32(keep).i64(n).i32(be.outFormat()).ptr(mask.dptr())
	be.run(be.fn.half.dropoutApplyHH8M, [3]uint32{grid1D(int64(n)/8, blockElem, be.info.SMs), 1, 1}, blockElem, 0)
	be.lt.reluMasks++
	return mask
}

// LinearBackwardKeptReLU implements kernels.ReLUDropoutFolder: linearBackwardKept with the
// dx product folded (reluFold; foldedProduct).
func (be *Backend) LinearBackwardKeptReLU(g, dw, db, dy, kept kernels.Buffer, m, n, k int, a, mask kernels.Buffer, p float64) {
	gh, ah := halfOf(g), halfOf(a)
	if gh == nil || ah == nil || gh.n != m*k || ah.n != m*k {
		panic(fmt.Sprintf("cuda backend: LinearBackwardKeptReLU into %T with %T, wanted 16-bit buffers of %d×%d", g, a, m, k))
	}
	mb := dev(mask)
	if mb == nil {
		panic("cuda backend: LinearBackwardKeptReLU without a mask (where ApplyDropoutMask returns nil, the caller takes LinearBackwardKept and ReLUDropoutBackward)")
	}
	if mb.n*32 < m*k || k%128 != 0 {
		panic(fmt.Sprintf("cuda backend: LinearBackwardKeptReLU with a mask of %d words for %d×%d (not ApplyDropoutMask's)", mb.n, m, k))
	}
	fold := &reluFold{mask: mb.dptr(), ld: k, alpha: kernels.DropoutScale(p), a: ah.dptr()}
	be.linearBackwardKeptFold(g, dw, db, dy, kept, m, n, k, freshGrads{}, 0, fold)
}

// foldedProduct writes g [m, k] = RN16(alpha·(dy·w)) masked, by the DRELU plan pdx when
// there is one and cuBLASLt runs it, else the plain product and relu_dropout_bwd_hh8 (the
// two steps the fold replaces, their bits). The caller holds the Backend.
func (be *Backend) foldedProduct(pdx *ltPlan, fold *reluFold, m, n, k int, dy, w uint64, g *half) {
	if pdx != nil {
		must(be.lt.lib.setDesc(pdx.desc, ltDescAuxPointer, unsafe.Pointer(&fold.mask), 8))
		if be.ltRunScaled(pdx, fold.alpha, dy, w, 0, g.dptr(), 0) {
			be.lt.reluFolds++
			return
		}
	}
	be.lt.reluFoldFallbacks++
	plain := be.ltPlanD(false, false, m, k, n, n, k, k, g.dptr(), ltEpiDefault, 0, 0, 0, be.dataType16())
	be.product16Half(plain, false, false, m, k, n, dy, n, w, k, g.dptr(), 0, nil, false)
	be.prm.reset().ptr(g.dptr()).ptr(g.dptr()).ptr(fold.a).f32(fold.alpha).i64(m * k).i32(be.outFormat())
	fn, grid := be.hhLaunch(be.fn.half.reluDropoutBwdHH8, be.fn.half.reluDropoutBwdHH, m*k)
	be.run(fn, grid, blockElem, 0)
}
