package cpu

import (
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"

	"github.com/xform-dev/xform/kernels"
)

func trans(t bool) blas.Transpose {
	if t {
		return blas.Trans
	}
	return blas.NoTrans
}

// Gemm implements kernels.Backend with gonum's Sgemm (which splits large products over
// GOMAXPROCS goroutines itself).
func (*Backend) Gemm(transA, transB bool, m, n, k int, alpha float32, a kernels.Buffer, lda int, b kernels.Buffer, ldb int, beta float32, c kernels.Buffer, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	gonum.Implementation{}.Sgemm(trans(transA), trans(transB), m, n, k, alpha, f(a), lda, f(b), ldb, beta, f(c), ldc)
}

// Linear implements kernels.Backend: the bias is written first and the product added
// on top (beta = 1), as torch's addmm does.
func (be *Backend) Linear(y, x, w, bias kernels.Buffer, m, n, k int) {
	yd := f(y)[:m*n]
	beta := float32(0)
	if bd := f(bias); bd != nil {
		for r := 0; r < m; r++ {
			copy(yd[r*n:(r+1)*n], bd[:n])
		}
		beta = 1
	}
	be.Gemm(false, true, m, n, k, 1, x, k, w, k, beta, y, n)
}
