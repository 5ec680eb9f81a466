package cpu

import (
	"github.com/xform-dev/xform/kernels"
)

// Gemm implements kernels.Backend. The engine reads both operands with k contiguous
// (x [m,k], w [n,k]); an operand stored the other way is transposed into a scratch
// copy first, which costs O(mk + nk) against the product's O(mnk).
func (be *Backend) Gemm(transA, transB bool, m, n, k int, alpha float32, a kernels.Buffer, lda int, b kernels.Buffer, ldb int, beta float32, c kernels.Buffer, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	ad, bd := f(a), f(b)
	if transA { // a is [k,m]
		ad, lda = be.transposed(ad, k, m, lda), k
	}
	if !transB { // b is [k,n]
		bd, ldb = be.transposed(bd, k, n, ldb), k
	}
	be.gemmNT(&ntArgs{m: m, n: n, k: k, x: ad, ldx: lda, w: bd, ldw: ldb, c: f(c), ldc: ldc,
		alpha: float64(alpha), beta: float64(beta)})
}

// Linear implements kernels.Backend with the GEMM engine (w [n,k] is already in its
// layout). Float32 FMA chains of at most kcChunk/8 products are widened to float64 and
// the bias is added before the single rounding, which keeps the parity tests against
// the reference dumps within their 1e-5; WithFloat64Linear selects linear64 instead.
func (be *Backend) Linear(y, x, w, bias kernels.Buffer, m, n, k int) {
	if be.linear64 {
		be.linear64Tiles(y, x, w, bias, m, n, k)
		return
	}
	be.gemmNT(&ntArgs{m: m, n: n, k: k, x: f(x), ldx: k, w: f(w), ldw: k, c: f(y), ldc: n,
		alpha: 1, bias: f(bias)})
}
