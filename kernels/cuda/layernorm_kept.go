package cuda

import "github.com/xform-dev/xform/kernels"

// The residual dropout's keep bits, stored by the LayerNorm forward and read by its
// backward (kernels.KeptMaskNormer): the Sum backward otherwise draws the mask again
// from its seed, 4·NV hashes a lane per row, ~2.5 µs of ~29 at 8000 × 512 (the
// ablation's stage 4). The words are 32 per row (lfp_keep's, bit 4c + k of lane l is
// element 4(l + 32c) + k), 1 MB at 8000 rows, written and read once.

var _ kernels.KeptMaskNormer = (*Backend)(nil)

// KeptMaskWords implements kernels.KeptMaskNormer: 32 words a row where the pipelined
// float4 forward and the float4 Sum backward run (bf16/fp16, dim a multiple of 4 up to
// 1024, the default kernels), unless XFORM_CUDA_LN_KEEP=0; else 0.
func (be *Backend) KeptMaskWords(rows, dim int) int {
	if be.lnKeepOff || rows <= 0 || !be.sumVec(dim) {
		return 0
	}
	f := be.lnFnsOutside()
	if !f.pipe || f.pipePlain || !f.legacy {
		return 0
	}
	return 32 * rows
}

// ResidualLayerNormDropoutRoundedKept implements kernels.KeptMaskNormer.
func (be *Backend) ResidualLayerNormDropoutRoundedKept(z, y, y16, kept, x, branch, omega kernels.Buffer, alpha float32, gamma, beta kernels.Buffer, rows, dim int, eps float32, p float64, seed uint64) bool {
	n := rows * dim
	mustHalfOf("ResidualLayerNormDropoutRoundedKept", y16, n)
	if p <= 0 || n == 0 || be.KeptMaskWords(rows, dim) == 0 || !lnFastDim(dim) {
		be.ResidualLayerNormDropoutRounded(z, y, y16, x, branch, omega, alpha, gamma, beta, rows, dim, eps, p, seed)
		return false
	}
	wrote, keeps := be.residualLayerNormFastKept(z, y, y16, kept, x, branch, omega, alpha, gamma, beta, rows, dim, eps, newResDrop(p, seed))
	if !wrote {
		be.ApplyDropout(y16, be.Slice(y, 0, n), 0, 0)
	}
	return keeps
}

// ResidualLayerNormBackwardSumKept implements kernels.KeptMaskNormer: the kept form of
// the float4 Sum backward where ResidualLayerNormBackwardSum would run the float4 one,
// else that method (which draws the mask; the same bits).
func (be *Backend) ResidualLayerNormBackwardSumKept(dz, dbranch, dgamma, dbeta, domega kernels.Buffer, dy kernels.ResidualSum, z, x, gamma, kept kernels.Buffer, alpha float32, rows, dim int, eps float32, p float64, seed uint64) {
	if rows > 0 && dim > 0 && dbranch != nil && dy.DZ != nil && p > 0 && be.sumVec(dim) &&
		be.lfvBackwardKept(lfvSum, dz, dbranch, dgamma, dbeta, domega, dy, z, x, nil, gamma, kept, alpha, rows, dim, eps, newResDrop(p, seed)) {
		return
	}
	be.ResidualLayerNormBackwardSum(dz, dbranch, dgamma, dbeta, domega, dy, z, x, gamma, alpha, rows, dim, eps, p, seed)
}

// ResidualLayerNormBackwardRecomputeKept implements kernels.KeptMaskNormer: the kept form
// of the float4 recomputing backward where ResidualLayerNormBackwardRecompute would
// run the float4 one, else that method.
func (be *Backend) ResidualLayerNormBackwardRecomputeKept(dz, dbranch, dgamma, dbeta, domega kernels.Buffer, dy kernels.ResidualSum, x, branch, omega kernels.Buffer, alpha float32, gamma, kept kernels.Buffer, rows, dim int, eps float32, p float64, seed uint64) {
	if rows > 0 && dim > 0 && dbranch != nil && p > 0 && be.sumVec(dim) &&
		be.lfvBackwardKept(lfvRecomp, dz, dbranch, dgamma, dbeta, domega, dy, branch, x, omega, gamma, kept, alpha, rows, dim, eps, newResDrop(p, seed)) {
		return
	}
	be.ResidualLayerNormBackwardRecompute(dz, dbranch, dgamma, dbeta, domega, dy, x, branch, omega, alpha, gamma, rows, dim, eps, p, seed)
}
