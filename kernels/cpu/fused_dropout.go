package cpu

import "github.com/xform-dev/xform/kernels"

var _ kernels.DropoutResidualNormer = (*Backend)(nil)

// ResidualLayerNormDropout implements kernels.DropoutResidualNormer as the unfused
// sequence itself, into a scratch so that branch is only read: on the CPU there is no
// pass to save, and this is the reference the fused GPU kernels are held to (and what
// lets the model's CPU tests take the fused path).
func (be *Backend) ResidualLayerNormDropout(z, y, x, branch, omega kernels.Buffer, alpha float32, gamma, beta kernels.Buffer, rows, dim int, eps float32, p float64, seed uint64) {
	if rows == 0 || dim == 0 {
		return
	}
	n := rows * dim
	d := be.Alloc(n)
	be.ApplyDropout(d, be.Slice(branch, 0, n), p, seed)
	be.ResidualLayerNorm(z, y, x, d, omega, alpha, gamma, beta, rows, dim, eps)
}

// ResidualLayerNormBackwardDropout implements kernels.DropoutResidualNormer as
// ResidualLayerNormBackward then ApplyDropout.
func (be *Backend) ResidualLayerNormBackwardDropout(dz, dbranch, dgamma, dbeta, domega, dy, z, x, gamma kernels.Buffer, alpha float32, rows, dim int, eps float32, p float64, seed uint64) {
	if rows == 0 || dim == 0 {
		return
	}
	n := rows * dim
	if dz == nil && dbranch != nil {
		// dbranch is made from dz even when the caller does not want dz.
		dz = be.Alloc(n)
	}
	be.ResidualLayerNormBackward(dz, dgamma, dbeta, domega, dy, z, x, gamma, alpha, rows, dim, eps)
	if dbranch != nil {
		be.ApplyDropout(be.Slice(dbranch, 0, n), be.Slice(dz, 0, n), p, seed)
	}
}
