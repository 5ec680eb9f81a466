package cuda

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

var (
	_ kernels.ResidualNormer        = (*Backend)(nil)
	_ kernels.DropoutResidualNormer = (*Backend)(nil)
	_ kernels.RoundedResidualNormer = (*Backend)(nil)
	_ kernels.ResidualSumNormer     = (*Backend)(nil)
	_ kernels.ResidualRecomputer    = (*Backend)(nil)
)

// fusedFunctions are the kernels of residual_layernorm.cu.
type fusedFunctions struct {
	resln, reslnDrop, reslnBwdRows, reslnBwdCols, reslnBwdColsDrop, reslnBwdFinish uintptr
}

func (f *fusedFunctions) add(m map[string]*uintptr) {
	m["residual_layernorm"] = &f.resln
	m["residual_layernorm_drop"] = &f.reslnDrop
	m["residual_layernorm_bwd_rows"] = &f.reslnBwdRows
	m["residual_layernorm_bwd_cols"] = &f.reslnBwdCols
	m["residual_layernorm_bwd_cols_drop"] = &f.reslnBwdColsDrop
	m["residual_layernorm_bwd_finish"] = &f.reslnBwdFinish
}

// resDrop is the residual dropout a fused call folds in, as the _drop kernels take it:
// the seed, and the threshold and scale computed by the functions ApplyDropout uses,
// so the mask is dropout_apply's. nil: no dropout (the plain kernels).
type resDrop struct {
	p               float64
	seed, threshold uint64
	keep            float32
}

func newResDrop(p float64, seed uint64) *resDrop {
	return &resDrop{p: p, seed: seed, threshold: kernels.DropoutThreshold(p), keep: kernels.DropoutScale(p)}
}

// args appends the kernels' three trailing dropout arguments.
func (d *resDrop) args(p *params) {
	p.u64(d.seed).u64(d.threshold).f32(d.keep)
}

// ResidualLayerNorm implements kernels.ResidualNormer in one launch, with Residual's
// and LayerNorm's arithmetic and LayerNorm's launch shape, so the bits are theirs.
func (be *Backend) ResidualLayerNorm(z, y, x, branch, omega kernels.Buffer, alpha float32, gamma, beta kernels.Buffer, rows, dim int, eps float32) {
	be.residualLayerNorm(z, y, nil, x, branch, omega, alpha, gamma, beta, rows, dim, eps, nil)
}

// ResidualLayerNormDropout implements kernels.DropoutResidualNormer: ResidualLayerNorm's
// launch, its kernel reading the branch through the mask.
func (be *Backend) ResidualLayerNormDropout(z, y, x, branch, omega kernels.Buffer, alpha float32, gamma, beta kernels.Buffer, rows, dim int, eps float32, p float64, seed uint64) {
	be.residualLayerNorm(z, y, nil, x, branch, omega, alpha, gamma, beta, rows, dim, eps, newResDrop(p, seed))
}

// ResidualLayerNormDropoutRounded implements kernels.RoundedResidualNormer: on the
// float4 kernel (bf16/fp16, dim a multiple of 4, aligned tensors: the training
// shapes) y16 is one more store of the float that goes to y, 8 bytes per 4 elements,
// instead of the next Linear's cast (a read of y and the same write). Elsewhere
// ResidualLayerNormDropout, then ApplyDropout(y16, y, 0, 0), which rounds y·1 = y: the
// same bits, a pass more.
func (be *Backend) ResidualLayerNormDropoutRounded(z, y, y16, x, branch, omega kernels.Buffer, alpha float32, gamma, beta kernels.Buffer, rows, dim int, eps float32, p float64, seed uint64) {
	n := rows * dim
	mustHalfOf("ResidualLayerNormDropoutRounded", y16, n)
	if be.residualLayerNorm(z, y, y16, x, branch, omega, alpha, gamma, beta, rows, dim, eps, newResDrop(p, seed)) || n == 0 {
		return
	}
	be.ApplyDropout(y16, be.Slice(y, 0, n), 0, 0)
}

// mustHalfOf panics unless y16 is a 16-bit buffer of n elements (the rounded forwards'
// contract: the caller allocated it with AllocHalf).
func mustHalfOf(method string, y16 kernels.Buffer, n int) {
	if h := halfOf(y16); h == nil || h.n != n {
		got := 0
		if y16 != nil {
			got = y16.Len()
		}
		panic(fmt.Sprintf("cuda backend: %s: y16 is %T of %d elements, want a 16-bit buffer of %d", method, y16, got, n))
	}
}

// residualLayerNorm writes y16 (nil: none) only where it reports true: the float4
// kernel ran and took it.
func (be *Backend) residualLayerNorm(z, y, y16, x, branch, omega kernels.Buffer, alpha float32, gamma, beta kernels.Buffer, rows, dim int, eps float32, dr *resDrop) bool {
	if rows == 0 || dim == 0 {
		return false
	}
	if be.precision != FP32 && lnFastDim(dim) {
		return be.residualLayerNormFast(z, y, y16, x, branch, omega, alpha, gamma, beta, rows, dim, eps, dr)
	}
	defer be.enter()()
	be.prm.reset().ptr(addr(z)).ptr(addr(y)).ptr(addr(x)).ptr(addr(branch)).ptr(addr(omega)).f32(alpha).
		ptr(addr(gamma)).ptr(addr(beta)).i32(rows).i32(dim).f32(eps)
	fn := be.fn.fused.resln
	if dr != nil {
		dr.args(be.prm)
		fn = be.fn.fused.reslnDrop
	}
	be.run(fn, be.rowsGrid(rows), blockRow, 0)
	return false
}

// ResidualLayerNormBackward implements kernels.ResidualNormer in three launches: the
// row statistics (layernorm_bwd's, blockRow threads per row as there), one column pass
// that writes dz and the dγ, dβ and dω partials on colReduce's chunks, and one finish
// for the three. Unfused, LayerNormBackward and ResidualBackward's dω take six.
func (be *Backend) ResidualLayerNormBackward(dz, dgamma, dbeta, domega, dy, z, x, gamma kernels.Buffer, alpha float32, rows, dim int, eps float32) {
	be.residualLayerNormBackward(dz, nil, dgamma, dbeta, domega, dy, z, x, gamma, alpha, rows, dim, eps, nil)
}

// ResidualLayerNormBackwardDropout implements kernels.DropoutResidualNormer:
// ResidualLayerNormBackward's launches, the column pass also writing dbranch.
func (be *Backend) ResidualLayerNormBackwardDropout(dz, dbranch, dgamma, dbeta, domega, dy, z, x, gamma kernels.Buffer, alpha float32, rows, dim int, eps float32, p float64, seed uint64) {
	be.residualLayerNormBackward(dz, dbranch, dgamma, dbeta, domega, dy, z, x, gamma, alpha, rows, dim, eps, newResDrop(p, seed))
}

// residualLayerNormBackward: dbranch is written only when dr is not nil.
func (be *Backend) residualLayerNormBackward(dz, dbranch, dgamma, dbeta, domega, dy, z, x, gamma kernels.Buffer, alpha float32, rows, dim int, eps float32, dr *resDrop) {
	if rows == 0 || dim == 0 {
		return
	}
	wantCols := dgamma != nil || dbeta != nil || domega != nil
	if dz == nil && dbranch == nil && !wantCols {
		return
	}
	if be.precision != FP32 && lnFastDim(dim) {
		be.residualLayerNormBackwardFast(dz, dbranch, dgamma, dbeta, domega, dy, z, x, gamma, alpha, rows, dim, eps, dr)
		return
	}
	if dr != nil && halfOf(dbranch) != nil {
		// The exact kernels write float32 only: the unfused sequence, ApplyDropout
		// rounding into the 16-bit dbranch.
		if dz == nil {
			dz = be.AllocUninit(rows * dim)
		}
		be.residualLayerNormBackward(dz, nil, dgamma, dbeta, domega, dy, z, x, gamma, alpha, rows, dim, eps, nil)
		be.ApplyDropout(dbranch, dz, dr.p, dr.seed)
		return
	}
	defer be.enter()()
	stats := be.newDoubles(4 * rows)
	be.prm.reset().ptr(stats.dptr()).ptr(addr(dy)).ptr(addr(z)).ptr(addr(gamma)).i32(rows).i32(dim).f32(eps)
	be.run(be.fn.fused.reslnBwdRows, be.rowsGrid(rows), blockRow, 0)

	chunks, per := colChunks(rows)
	part := be.newDoubles(chunks * 3 * dim)
	xp := uint64(0)
	if domega != nil {
		xp = addr(x)
	}
	fn := be.fn.fused.reslnBwdCols
	be.prm.reset().ptr(part.dptr()).ptr(addr(dz))
	if dr != nil {
		fn = be.fn.fused.reslnBwdColsDrop
		be.prm.ptr(addr(dbranch))
	}
	be.prm.ptr(stats.dptr()).ptr(addr(dy)).ptr(addr(z)).ptr(xp).ptr(addr(gamma)).i32(rows).i32(dim).i32(per)
	if dr != nil {
		dr.args(be.prm)
	}
	be.runBlock(fn, [3]uint32{uint32((dim + 31) / 32), uint32(chunks), 1}, [3]uint32{32, 8, 1}, 0)

	if wantCols {
		be.prm.reset().ptr(addr(dgamma)).ptr(addr(dbeta)).ptr(addr(domega)).ptr(part.dptr()).i32(chunks).i32(dim).
			f64(float64(alpha))
		be.elem(be.fn.fused.reslnBwdFinish, int64(dim))
	}
}

// sumVec says whether the float4 backward kernels (layernorm_fast_bwd_vp*, _vr*) take
// rows of dim elements (alignment aside): the float kernels' modes and shapes.
func (be *Backend) sumVec(dim int) bool {
	if be.precision == FP32 || dim%4 != 0 || dim > lfvMaxDim {
		return false
	}
	f := be.lnFnsOutside()
	return !f.scalar && !f.sumOff
}

// lnFnsOutside is lnFns for a caller that does not hold the Backend.
func (be *Backend) lnFnsOutside() *lnFastFns {
	defer be.enter()()
	return be.lnFns()
}

// formSum is ResidualBackward(s.D, nil, s.DZ, nil, s.Omega, s.Alpha, rows, dim): the
// fallback of the methods below where no kernel reads the two parts.
func (be *Backend) formSum(s kernels.ResidualSum, rows, dim int) {
	if s.DZ != nil {
		be.ResidualBackward(s.D, nil, s.DZ, nil, s.Omega, s.Alpha, rows, dim)
	}
}

// ResidualLayerNormBackwardSum implements kernels.ResidualSumNormer: in bf16/fp16 at
// the float4 kernels' shapes one launch of layernorm_fast_bwd_vp* (+ the finish) that
// forms dy.D + (dy.DZ·ω)·α as it loads dy — residual_bwd's pass (read 2, write 1) for
// one more read — on the plain kernel's grid, so every output is the bits of
// ResidualBackward followed by ResidualLayerNormBackwardDropout; elsewhere that
// sequence.
func (be *Backend) ResidualLayerNormBackwardSum(dz, dbranch, dgamma, dbeta, domega kernels.Buffer, dy kernels.ResidualSum, z, x, gamma kernels.Buffer, alpha float32, rows, dim int, eps float32, p float64, seed uint64) {
	if rows == 0 || dim == 0 {
		return
	}
	var dr *resDrop
	if dbranch != nil {
		dr = newResDrop(p, seed)
	}
	if dy.DZ != nil && be.sumVec(dim) &&
		be.lfvBackward(lfvSum, dz, dbranch, dgamma, dbeta, domega, dy, z, x, nil, gamma, alpha, rows, dim, eps, dr) {
		return
	}
	be.formSum(dy, rows, dim)
	be.residualLayerNormBackward(dz, dbranch, dgamma, dbeta, domega, dy.D, z, x, gamma, alpha, rows, dim, eps, dr)
}

// RecomputesResidual implements kernels.ResidualRecomputer: false unless the
// recompute switch is on (lnFastFns.recompute: slower than reading z on the H200),
// then the float4 kernels' shapes in bf16/fp16.
func (be *Backend) RecomputesResidual(dim int) bool {
	return be.lnFnsOutside().recompute && be.sumVec(dim)
}

// ResidualLayerNormBackwardRecompute implements kernels.ResidualRecomputer with
// layernorm_fast_bwd_vr* (+ the finish): ResidualLayerNormBackwardSum's kernel reading
// the branch output instead of z and forming z as layernorm_fast_fwd_v* formed it, so
// the forward can skip z's 16 MB write at the training shape (the backward reads as
// many bytes as before). Where RecomputesResidual is false, or a tensor is not aligned
// for the float4 kernel, z is formed first by ResidualLayerNormDropout into scratch
// (the same bits, a forward pass more).
func (be *Backend) ResidualLayerNormBackwardRecompute(dz, dbranch, dgamma, dbeta, domega kernels.Buffer, dy kernels.ResidualSum, x, branch, omega kernels.Buffer, alpha float32, gamma kernels.Buffer, rows, dim int, eps float32, p float64, seed uint64) {
	if rows == 0 || dim == 0 {
		return
	}
	dr := newResDrop(p, seed)
	if be.sumVec(dim) && // the kernel runs whether or not RecomputesResidual says it is worth it
		be.lfvBackward(lfvRecomp, dz, dbranch, dgamma, dbeta, domega, dy, branch, x, omega, gamma, alpha, rows, dim, eps, dr) {
		return
	}
	n := rows * dim
	z, y := be.AllocUninit(n), be.AllocUninit(n)
	// beta only moves y, which is dropped: gamma stands in for it.
	be.residualLayerNorm(z, y, nil, x, branch, omega, alpha, gamma, gamma, rows, dim, eps, dr)
	be.ResidualLayerNormBackwardSum(dz, dbranch, dgamma, dbeta, domega, dy, z, x, gamma, alpha, rows, dim, eps, p, seed)
}

// ApplyDropoutSum implements kernels.ResidualSumNormer: one pass of
// residual_bwd_dropout4 (read dy.D and dy.DZ, write y) where dim is a multiple of 4 and
// the tensors are 16-byte aligned, in every precision (it is residual_bwd's and
// dropout_apply's float arithmetic, so their bits); elsewhere ResidualBackward then
// ApplyDropout.
func (be *Backend) ApplyDropoutSum(y kernels.Buffer, s kernels.ResidualSum, rows, dim int, p float64, seed uint64) {
	if s.DZ == nil {
		be.ApplyDropout(y, s.D, p, seed)
		return
	}
	if rows == 0 || dim == 0 {
		return
	}
	if be.applyDropoutSum4(y, s, rows, dim, p, seed) {
		return
	}
	be.formSum(s, rows, dim)
	be.ApplyDropout(y, s.D, p, seed)
}

func (be *Backend) applyDropoutSum4(y kernels.Buffer, s kernels.ResidualSum, rows, dim int, p float64, seed uint64) bool {
	if dim%4 != 0 || halfOf(y) != nil || be.lnFnsOutside().sumOff {
		return false
	}
	for _, b := range []kernels.Buffer{y, s.D, s.DZ, s.Omega} {
		if addr(b)%16 != 0 {
			return false
		}
	}
	defer be.enter()()
	f := be.lnFns()
	dr := newResDrop(p, seed)
	be.prm.reset().ptr(addr(y)).ptr(addr(s.D)).ptr(addr(s.DZ)).ptr(addr(s.Omega)).f32(s.Alpha).i32(rows).i32(dim / 4)
	dr.args(be.prm)
	grid, block := rowBlocks(rows, dim/4)
	be.run(f.resBwdDrop4, grid, block, 0)
	return true
}

// rowBlocks is the launch of residual.cu's float4 row kernels: a block per row (grid-
// stride beyond 65535·8 rows), a thread per float4 of the row up to 256.
func rowBlocks(rows, dim4 int) ([3]uint32, uint32) {
	block := min(256, max(32, (dim4+31)/32*32))
	return [3]uint32{uint32(min(rows, 65535*8)), 1, 1}, uint32(block)
}
