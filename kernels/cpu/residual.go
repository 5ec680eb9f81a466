package cpu

import "github.com/xform-dev/xform/kernels"

// Residual implements kernels.Backend: y = alpha·(x⊙omega) + branch. The products are
// formed in the reference's order (x·ω first, then ·α); multiplying by an α or ω of 1
// is exact, so plain Post-LN gets exactly x + branch.
func (be *Backend) Residual(y, x, branch, omega kernels.Buffer, alpha float32, rows, dim int) {
	yd, xd, bd, om := f(y), f(x), f(branch), f(omega)
	n := rows * dim
	yd, xd, bd = yd[:n], xd[:n], bd[:n]
	if om == nil {
		for i, v := range xd {
			yd[i] = v*alpha + bd[i]
		}
		return
	}
	for r := 0; r < rows; r++ {
		o := r * dim
		for j, w := range om[:dim] {
			yd[o+j] = (xd[o+j]*w)*alpha + bd[o+j]
		}
	}
}
