package cpu

import "github.com/xform-dev/xform/kernels"

var _ kernels.ResidualNormer = (*Backend)(nil)

// ResidualLayerNorm implements kernels.ResidualNormer as the unfused sequence itself:
// on the CPU there is no launch to save, and this is the reference the fused GPU
// kernels are held to.
func (be *Backend) ResidualLayerNorm(z, y, x, branch, omega kernels.Buffer, alpha float32, gamma, beta kernels.Buffer, rows, dim int, eps float32) {
	if rows == 0 || dim == 0 {
		return
	}
	if z == nil {
		// Inference: the sum goes to y and is normalised in place (LayerNorm reads a
		// row's statistics before writing it).
		z = y
	}
	be.Residual(z, x, branch, omega, alpha, rows, dim)
	be.LayerNorm(y, z, gamma, beta, rows, dim, eps)
}

// ResidualLayerNormBackward implements kernels.ResidualNormer as LayerNormBackward then
// ResidualBackward's ω part.
func (be *Backend) ResidualLayerNormBackward(dz, dgamma, dbeta, domega, dy, z, x, gamma kernels.Buffer, alpha float32, rows, dim int, eps float32) {
	if rows == 0 || dim == 0 {
		return
	}
	if dz == nil && domega != nil {
		// dω needs dz even when the caller does not.
		dz = be.Alloc(rows * dim)
	}
	be.LayerNormBackward(dz, dgamma, dbeta, dy, z, gamma, rows, dim, eps)
	if domega != nil {
		be.ResidualBackward(nil, domega, dz, x, nil, alpha, rows, dim)
	}
}
