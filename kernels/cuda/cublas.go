package cuda

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/ebitengine/purego"
)

// cublas holds the cuBLAS entry points used.
type cublas struct {
	path                                    string
	create, destroy, setStream, setMathMode uintptr
	sgemm, gemmEx, getProperty              uintptr
	// setWorkspace (cublasSetWorkspace_v2, cuBLAS 11.2+) gives a handle memory of its
	// own, so that calls captured into a CUDA graph never allocate; 0 when absent.
	setWorkspace uintptr
}

func loadCublas(path string) (*cublas, error) {
	h, err := dlopen(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoLibrary, err)
	}
	b := &cublas{path: path}
	err = bind(h, path, []symbol{
		{"cublasCreate_v2", &b.create}, {"cublasDestroy_v2", &b.destroy},
		{"cublasSetStream_v2", &b.setStream}, {"cublasSetMathMode", &b.setMathMode},
		{"cublasSgemm_v2", &b.sgemm}, {"cublasGemmEx", &b.gemmEx},
		{"cublasGetProperty", &b.getProperty},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoLibrary, err)
	}
	if a, err := purego.Dlsym(h, "cublasSetWorkspace_v2"); err == nil {
		b.setWorkspace = a
	}
	return b, nil
}

var cublasStatus = map[int32]string{
	1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
	8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
	14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR",
}

func (b *cublas) check(op string, r int32) error { return blasError(op, r) }

// blasError turns a cublasStatus_t (cuBLAS's and cuBLASLt's) into an error naming op.
func blasError(op string, r int32) error {
	if r == 0 {
		return nil
	}
	name := cublasStatus[r]
	if name == "" {
		name = fmt.Sprintf("cublasStatus(%d)", r)
	}
	return &Error{Lib: "cublas", Op: op, Code: int(r), Name: name}
}

// versionString asks cublasGetProperty for MAJOR, MINOR and PATCH (libraryPropertyType
// 0, 1, 2); it needs no handle or device.
func (b *cublas) versionString() string {
	var v [3]int32
	for i := range v {
		if call(b.getProperty, uintptr(i), uintptr(unsafe.Pointer(&v[i]))) != 0 {
			return ""
		}
	}
	return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2])
}

// cuBLAS enum values (cublas_api.h, library_types.h).
const (
	opN = 0
	opT = 1

	cudaR32F  = 0
	cudaR16F  = 2
	cudaR16BF = 14

	computeF32         = 68 // CUBLAS_COMPUTE_32F
	computeF32Pedantic = 69
	gemmDefault        = -1 // CUBLAS_GEMM_DEFAULT
	mathPedantic       = 2  // CUBLAS_PEDANTIC_MATH: no TF32 or other reduced precision
)

func (b *cublas) newHandle() (uintptr, error) {
	var h uintptr
	if err := b.check("cublasCreate_v2", call(b.create, uintptr(unsafe.Pointer(&h)))); err != nil {
		return 0, err
	}
	// fp32 parity with the CPU backend needs true fp32 products: pedantic math forbids
	// cuBLAS from using TF32 tensor cores even if NVIDIA_TF32_OVERRIDE asks for it.
	if err := b.check("cublasSetMathMode", call(b.setMathMode, h, mathPedantic)); err != nil {
		call(b.destroy, h)
		return 0, err
	}
	return h, nil
}

// blasOp is cuBLAS's cublasOperation_t for an operand transposed or not.
func blasOp(trans bool) uintptr {
	if trans {
		return opT
	}
	return opN
}

// sgemmRowMajor computes row-major C[m,n] = alpha·op(A)·op(B) + beta·C. cuBLAS is
// column-major, and a row-major matrix is its transpose in column-major, so it runs
// Cᵀ = op(B)ᵀ·op(A)ᵀ: the operands swap places and m, n swap.
func (b *cublas) sgemmRowMajor(h uintptr, transA, transB bool, m, n, k int, alpha float32, a uint64, lda int, bm uint64, ldb int, beta float32, c uint64, ldc int) error {
	ta, tb := blasOp(transA), blasOp(transB)
	return b.check("cublasSgemm_v2", call(b.sgemm, h, tb, ta, uintptr(n), uintptr(m), uintptr(k),
		uintptr(unsafe.Pointer(&alpha)), uintptr(bm), uintptr(ldb), uintptr(a), uintptr(lda),
		uintptr(unsafe.Pointer(&beta)), uintptr(c), uintptr(ldc)))
}

// gemmExRowMajor is sgemmRowMajor with A and B of cudaDataType ab (cudaR16BF or
// cudaR16F), C float32 and float32 accumulation (CUBLAS_COMPUTE_32F, so alpha and beta
// are float32). On a default-math handle cuBLAS runs it on the tensor cores.
func (b *cublas) gemmExRowMajor(h uintptr, ab uintptr, transA, transB bool, m, n, k int, alpha float32, a uint64, lda int, bm uint64, ldb int, beta float32, c uint64, ldc int) error {
	ta, tb := blasOp(transA), blasOp(transB)
	return b.check("cublasGemmEx", call(b.gemmEx, h, tb, ta, uintptr(n), uintptr(m), uintptr(k),
		uintptr(unsafe.Pointer(&alpha)), uintptr(bm), ab, uintptr(ldb), uintptr(a), ab, uintptr(lda),
		uintptr(unsafe.Pointer(&beta)), uintptr(c), cudaR32F, uintptr(ldc), computeF32, uintptr(uint32(0xffffffff))))
}

// sgemm is sgemmRowMajor on the fp32 handle, recorded in a graphed step.
func (be *Backend) sgemm(transA, transB bool, m, n, k int, alpha float32, a uint64, lda int, b uint64, ldb int, beta float32, c uint64, ldc int) {
	be.blasCall("cublasSgemm", []uint64{1, b2u(transA), b2u(transB), uint64(m), uint64(n), uint64(k), uint64(math.Float32bits(alpha)), a, uint64(lda), b, uint64(ldb), uint64(math.Float32bits(beta)), c, uint64(ldc)},
		func(uintptr) error {
			return be.libs.blas.sgemmRowMajor(be.blasH, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		})
	if be.syncCheck {
		must(be.drv.synchronize())
	}
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
