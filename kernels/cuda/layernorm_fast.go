package cuda

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

// The float residual + LayerNorm (layernorm_fast.cu) serves the mixed-precision modes
// (Options.Precision BF16/FP16): the forward in one launch and the backward in two
// (rows with per-block column partials, then the finish), each tensor read or written
// once, against residual_layernorm.cu's one and three launches in double. Relative
// error ~1e-7 against the CPU (bound 1e-5 in gpu_layernorm_fast_test.go). FP32 keeps
// the exact kernels, as does any dim over lfMaxDim.
const (
	lfWarps   = 8 // LF_WARPS: rows in flight per block
	lfThreads = lfWarps * 32
	lfMaxDim  = 32 * 32 // the largest NC is 32 columns per lane
)

// lfNCs are the instantiated columns-per-lane counts, each with a forward and a backward.
var lfNCs = [...]int{1, 2, 4, 8, 16, 32}

// lnFastFns are one Backend's float LayerNorm kernels, looked up on first use and kept
// in the Backend (lazyKernels); the _drop ones fold in the residual dropout.
type lnFastFns struct {
	fwd, bwd, fwdDrop [len(lfNCs)]uintptr
	finish            uintptr
}

// lnFns returns the float LayerNorm kernels. The caller holds the Backend (enter).
func (be *Backend) lnFns() *lnFastFns {
	if f := be.lazy.lnFast; f != nil {
		return f
	}
	f := &lnFastFns{finish: be.kernel("layernorm_fast_bwd_finish")}
	for i, nc := range lfNCs {
		f.fwd[i] = be.kernel(fmt.Sprintf("layernorm_fast_fwd%d", nc))
		f.bwd[i] = be.kernel(fmt.Sprintf("layernorm_fast_bwd%d", nc))
		f.fwdDrop[i] = be.kernel(fmt.Sprintf("layernorm_fast_fwd_drop%d", nc))
	}
	be.lazy.lnFast = f
	return f
}

// lnFastDim says whether the float kernels take rows of dim elements.
func lnFastDim(dim int) bool { return dim >= 1 && dim <= lfMaxDim }

// lfIndex is the index in lfNCs of the smallest NC with 32·NC ≥ dim.
func lfIndex(dim int) int {
	for i, nc := range lfNCs {
		if 32*nc >= dim {
			return i
		}
	}
	panic(fmt.Sprintf("cuda: layernorm_fast: dim %d over %d", dim, lfMaxDim))
}

// lfGrid is the number of blocks for rows: one row per warp, at most two blocks per
// SM for the backward (whose partials the finish reads), more for the forward.
func (be *Backend) lfGrid(rows, perSM int) int {
	return max(1, min((rows+lfWarps-1)/lfWarps, perSM*be.info.SMs))
}

// residualLayerNormFast is ResidualLayerNorm on layernorm_fast_fwd, or with dr
// ResidualLayerNormDropout on layernorm_fast_fwd_drop. rows, dim ≥ 1 and
// lnFastDim(dim).
func (be *Backend) residualLayerNormFast(z, y, x, branch, omega kernels.Buffer, alpha float32, gamma, beta kernels.Buffer, rows, dim int, eps float32, dr *resDrop) {
	defer be.enter()()
	f := be.lnFns()
	be.prm.reset().ptr(addr(z)).ptr(addr(y)).ptr(addr(x)).ptr(addr(branch)).ptr(addr(omega)).f32(alpha).
		ptr(addr(gamma)).ptr(addr(beta)).i32(rows).i32(dim).f32(eps)
	fn := f.fwd[lfIndex(dim)]
	if dr != nil {
		dr.args(be.prm)
		fn = f.fwdDrop[lfIndex(dim)]
	}
	be.run(fn, [3]uint32{uint32(be.lfGrid(rows, 32)), 1, 1}, lfThreads, 0)
}

// residualLayerNormBackwardFast is ResidualLayerNormBackward on layernorm_fast_bwd and
// its finish. rows, dim ≥ 1, lnFastDim(dim), and dz or a column gradient is wanted.
func (be *Backend) residualLayerNormBackwardFast(dz, dgamma, dbeta, domega, dy, z, x, gamma kernels.Buffer, alpha float32, rows, dim int, eps float32) {
	defer be.enter()()
	f := be.lnFns()
	nb := be.lfGrid(rows, 2)
	part := be.newBuffer(nb * 3 * dim)
	xp := uint64(0)
	if domega != nil {
		xp = addr(x)
	}
	be.prm.reset().ptr(part.dptr()).ptr(addr(dz)).
		ptr(addr(dy)).ptr(addr(z)).ptr(xp).ptr(addr(gamma)).i32(rows).i32(dim).f32(eps)
	be.run(f.bwd[lfIndex(dim)], [3]uint32{uint32(nb), 1, 1}, lfThreads, 0)
	if dgamma == nil && dbeta == nil && domega == nil {
		return
	}
	be.prm.reset().ptr(addr(dgamma)).ptr(addr(dbeta)).ptr(addr(domega)).ptr(part.dptr()).i32(nb).i32(dim).f32(alpha)
	be.runBlock(f.finish, [3]uint32{uint32((3*dim + 31) / 32), 1, 1}, [3]uint32{32, 8, 1}, 0)
}
