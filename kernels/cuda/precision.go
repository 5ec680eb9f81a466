package cuda

import (
	"fmt"
	"math"

	"github.com/xform-dev/xform/kernels"
)

// The 16-bit GEMM path (Options.Precision BF16 or FP16). Inputs, weights and outputs
// stay float32 buffers: just before each product the operands are rounded into a
// persistent scratch block owned by the Backend (one launch for all operands of the
// call), and cublasGemmEx multiplies them on the default-math handle with float32 C and
// CUBLAS_COMPUTE_32F, which is torch.autocast's Linear; Linear and LinearBackward do the
// same through cuBLASLt with a plan per shape and the bias in the epilogue
// (cublaslt.go), GemmEx being their fallback. The scratch block is reused by
// every call without synchronisation because every operation runs on the one default
// stream: a GEMM still queued on the old contents runs before the next cast overwrites
// them (the reasoning of memory.go's cache).

// Precision is the GEMM precision the Backend was made with.
func (be *Backend) Precision() Precision { return be.precision }

// checkPrecision makes the tensor-core handle at New (the context is current), so that
// a machine that cannot run the precision asked fails there with an error rather than
// at the first GEMM with a panic.
func (be *Backend) checkPrecision() error {
	if be.precision == FP32 {
		return nil
	}
	// cuBLAS has no bf16 GEMM before Ampere (CUBLAS_STATUS_ARCH_MISMATCH).
	if be.precision == BF16 && be.info.Major < 8 {
		return fmt.Errorf("cuda: bf16 GEMMs need compute capability 8.0 or newer; %s is %d.%d", be.info.Name, be.info.Major, be.info.Minor)
	}
	if _, err := be.fastHandle(); err != nil {
		return fmt.Errorf("cuda: cuBLAS handle for %v GEMMs: %w", be.precision, err)
	}
	return nil
}

// dataType16 is the cudaDataType of the rounded operands.
func (be *Backend) dataType16() uintptr {
	if be.precision == FP16 {
		return cudaR16F
	}
	return cudaR16BF
}

// operand16 is a float32 array of n elements at src to round to 16 bits.
type operand16 struct {
	src uint64
	n   int
}

// extent is how many elements a row-major rows×cols matrix with leading dimension ld
// spans, from its first element to its last (0 when it is empty).
func extent(rows, cols, ld int) int {
	if rows == 0 || cols == 0 {
		return 0
	}
	return (rows-1)*ld + cols
}

// halfAlign keeps each copy 256-byte aligned, as cuBLAS's fastest tensor-core kernels
// want (16 bytes is the minimum they accept); cuBLASLt plans are chosen for it.
const halfAlign = 256

// cast16 rounds the operands into the scratch block in one launch and returns the
// addresses of the copies, element for element in the same layout (an empty operand
// gets a valid address with nothing behind it). The caller holds the Backend.
func (be *Backend) cast16(ops [3]operand16) [3]uint64 {
	off, bytes := layout16(ops)
	base := be.halfScratch(max(bytes, halfAlign))
	var dst [3]uint64
	for i := range dst {
		dst[i] = base + off[i]
	}
	be.castInto(dst, ops)
	return dst
}

// layout16 places the 16-bit copies of ops one after the other, each halfAlign-aligned:
// their offsets and the bytes they take.
func layout16(ops [3]operand16) (off [3]uint64, bytes uint64) {
	for i, o := range ops {
		off[i] = bytes
		bytes += (uint64(o.n)*2 + halfAlign - 1) / halfAlign * halfAlign
	}
	return off, bytes
}

// castInto rounds the operands into dst in one launch. The caller holds the Backend.
func (be *Backend) castInto(dst [3]uint64, ops [3]operand16) {
	total := int64(0)
	for _, o := range ops {
		total += int64(o.n)
	}
	if total == 0 {
		return
	}
	fn := be.fn.castBF16x3
	if be.precision == FP16 {
		fn = be.fn.castF16x3
	}
	be.prm.reset()
	for i, o := range ops {
		be.prm.ptr(dst[i]).ptr(o.src).i64(o.n)
	}
	be.elem(fn, total)
}

// halfScratch returns the scratch block, at least bytes long.
func (be *Backend) halfScratch(bytes uint64) uint64 {
	if be.graph.mode != graphOff {
		// A graphed step's addresses must repeat; the cached block may be regrown
		// or handed back between steps.
		return be.arenaAlloc(bytes).ptr
	}
	if be.half == nil || be.half.bytes < bytes {
		be.dropHalf()
		// A quarter more than asked: batches vary in token count, and growing by
		// a few rows at every step would churn through the allocator.
		a, err := be.alloc(bytes + bytes/4)
		if err != nil {
			panic(err)
		}
		be.half = a
	}
	return be.half.ptr
}

// dropHalf hands the scratch block back to the cache of free blocks, at once: no
// synchronisation is needed, for the one-stream reason above.
func (be *Backend) dropHalf() {
	if a := be.half; a != nil {
		a.cleanup.Stop()
		be.pool.put(a.ptr, a.bytes)
		be.half = nil
	}
}

// gemm16 is sgemmRowMajor on 16-bit operand copies (addresses from cast16).
func (be *Backend) gemm16(transA, transB bool, m, n, k int, alpha float32, a uint64, lda int, b uint64, ldb int, beta float32, c uint64, ldc int) {
	h, err := be.fastHandle()
	must(err)
	be.blasCall("cublasGemmEx", []uint64{2, b2u(transA), b2u(transB), uint64(m), uint64(n), uint64(k), uint64(math.Float32bits(alpha)), a, uint64(lda), b, uint64(ldb), uint64(math.Float32bits(beta)), c, uint64(ldc)},
		func(uintptr) error {
			return be.libs.blas.gemmExRowMajor(h, be.dataType16(), transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		})
	if be.syncCheck {
		must(be.drv.synchronize())
	}
}

// gemmOp16 is Gemm in 16 bits: each operand is rounded over its whole strided extent
// (the gaps between rows too, which cuBLAS never reads), keeping its leading dimension.
func (be *Backend) gemmOp16(transA, transB bool, m, n, k int, alpha float32, a kernels.Buffer, lda int, b kernels.Buffer, ldb int, beta float32, c kernels.Buffer, ldc int) {
	ra, ca := m, k
	if transA {
		ra, ca = k, m
	}
	rb, cb := k, n
	if transB {
		rb, cb = n, k
	}
	p := be.cast16([3]operand16{{addr(a), extent(ra, ca, lda)}, {addr(b), extent(rb, cb, ldb)}})
	be.gemm16(transA, transB, m, n, k, alpha, p[0], lda, p[1], ldb, beta, addr(c), ldc)
}

// linear16 is Linear in 16 bits: y = x·wᵀ + bias. Through cuBLASLt the bias comes
// from the epilogue with beta = 0, so y is written once and never read; on the GemmEx
// path it is written first and the product added with beta = 1, as in fp32.
func (be *Backend) linear16(y, x, w, bias kernels.Buffer, m, n, k int) {
	plan := be.ltPlanFor(false, true, m, n, k, k, k, n, addr(y), addr(bias))
	p := be.cast16([3]operand16{{addr(x), m * k}, {addr(w), n * k}})
	be.product16(plan, false, true, m, n, k, p[0], k, p[1], k, 0, addr(y), n, addr(bias))
}

// product16 is c = op(a)·op(b) + beta·c (+ bias on each row, only for a c of n
// contiguous columns with beta = 0) on 16-bit copies: through cuBLASLt when plan is
// not nil and cuBLASLt takes it, else with GemmEx, the bias then written first.
func (be *Backend) product16(plan *ltPlan, transA, transB bool, m, n, k int, a uint64, lda int, b uint64, ldb int, beta float32, c uint64, ldc int, bias uint64) {
	if plan != nil && be.ltRun(plan, a, b, beta, c, bias) {
		return
	}
	if bias != 0 {
		be.prm.reset().ptr(c).ptr(bias).i32(m).i32(n)
		be.elem(be.fn.fillRows, int64(m)*int64(n))
		beta = 1
	}
	be.gemm16(transA, transB, m, n, k, 1, a, lda, b, ldb, beta, c, ldc)
}

// linearBackward16 is LinearBackward's two products in 16 bits, dx = dy·w and
// dw += dyᵀ·x, with dy, w and x rounded in one launch (dy once for both products),
// each through cuBLASLt when it has a plan for the shape; it reports whether it also
// added db (false: the caller's fp32 column sum must).
//
// db comes from the dw product's CUBLASLT_EPILOGUE_BGRADB. In cuBLASLt's column-major
// terms (ltColMajor) that product is D = A·op(B): A the 16-bit x as stored (k×m), B
// the 16-bit dy as stored (n×m) with op = T, D = dw seen as k×n, the GEMM's k our m.
// BGRADB reduces op(B) over the GEMM's k, one value per column of D: Σ_rows dy for
// each of our n outputs, taken while dy's tiles pass through the GEMM instead of in a
// separate pass over the fp32 dy (col_partial + col_finish).
// It sums the 16-bit copy of dy in float32, in cuBLASLt's order, each term off by at
// most the unit roundoff (2⁻⁸ bf16, 2⁻¹¹ fp16): db is no longer the fp32 column sum
// in these modes. torch.autocast sums 16-bit terms too: its Linear runs on 16-bit
// operands, so its output gradient dy is bf16/fp16, and the bias gradient is that
// tensor's column sum (even rounded to 16 bits before the cast back to the fp32
// parameter, which this is not). The epilogue writes its vector rather than
// accumulating (beta applies to D only), so it goes to a scratch vector that one
// add_to launch adds into db. The column sum remains for shapes cuBLASLt has no BGRADB
// algorithm for, a refusal at run time, and calls without dw.
func (be *Backend) linearBackward16(dx, dw, db, dy, x, w kernels.Buffer, m, n, k int) bool {
	return be.linearBackward16Kept(dx, dw, db, dy, x, w, 0, 0, m, n, k, freshGrads{}, nil, 0, nil)
}

// linearBackward16Kept is linearBackward16 where x16 and w16, when not 0, are the
// 16-bit copies of x and w that the forward made (LinearKeep): only dy is rounded, and
// not even dy when it is a 16-bit buffer (kernels.HalfBuffers).
//
// dx may be a 16-bit buffer (kernels.HalfOutputs): the product is written rounded
// (half_out.go).
//
// fresh.db says db holds zeros that nothing else adds to before this call
// (kernels.FreshBiasGrad): the BGRADB epilogue then writes it directly, without the
// scratch vector and the add_to launch (the same values, up to the sign of a zero).
// fresh.dw says the same of dw (kernels.FreshWeightGrad): its product runs with beta 0,
// here or in its deferred batch.
//
// dxBeta 1 adds the dx product to a float32 dx (kernels.InputGradAccumulator); 0
// writes it.
//
// kept, when not nil, holds x16 (LinearBackwardKept's copies): with a 16-bit dy too,
// the dw product (and db) may be queued for FlushWeightGrads (dw_deferred.go), the
// dx product still runs now.
func (be *Backend) linearBackward16Kept(dx, dw, db, dy, x, w kernels.Buffer, x16, w16 uint64, m, n, k int, fresh freshGrads, kept *kept16, dxBeta float32, fold *reluFold) bool {
	dbFresh := fresh.db
	dwBeta := float32(1)
	if fresh.dw {
		dwBeta = 0
	}
	var ops [3]operand16
	dy16 := uint64(0)
	if h := halfOf(dy); h != nil {
		dy16 = h.dptr()
	} else {
		ops[0] = operand16{addr(dy), m * n}
	}
	var pdx, pdw *ltPlan
	dxh := halfOf(dx)
	if dx != nil {
		if w16 == 0 {
			ops[1] = operand16{addr(w), n * k}
		}
		switch {
		case fold != nil:
			pdx = be.ltPlanD(false, false, m, k, n, n, k, k, dxh.dptr(), ltEpiDRelu, 0, fold.mask, fold.ld, be.dataType16())
		case dxh != nil:
			pdx = be.ltPlanD(false, false, m, k, n, n, k, k, dxh.dptr(), ltEpiDefault, 0, 0, 0, be.dataType16())
		default:
			pdx = be.ltPlanFor(false, false, m, k, n, n, k, k, addr(dx), 0)
		}
	}
	// bgrad is where the BGRADB epilogue writes the bias gradient (0: no epilogue).
	var bgrad uint64
	deferred := false
	if dw != nil && kept != nil && dy16 != 0 {
		var dbp uint64
		if db != nil && n > 0 {
			dbp = addr(db)
		}
		deferred = be.deferDW(x16, dy16, addr(dw), dbp, m, n, k, fresh.dw, kept, dy)
	}
	if dw != nil && !deferred {
		if x16 == 0 {
			ops[2] = operand16{addr(x), m * k}
		}
		// These lookups cannot evict pdx: eviction takes the least recently used plan.
		if db != nil && n > 0 && !be.bgradOff {
			if dbFresh {
				bgrad = addr(db)
			} else {
				// Scoped like the step's other buffers; a fresh block is 256-byte aligned.
				bgrad = be.scoped(be.newBuffer(n)).dptr()
			}
			pdw = be.ltPlanEpi(true, false, n, k, m, n, k, k, addr(dw), ltEpiBGradB, bgrad, 0, 0)
		}
		if pdw == nil {
			bgrad = 0
			pdw = be.ltPlanFor(true, false, n, k, m, n, k, k, addr(dw), 0)
		}
	}
	p := be.cast16(ops)
	if dy16 != 0 {
		p[0] = dy16
	}
	if w16 != 0 {
		p[1] = w16
	}
	if x16 != 0 {
		p[2] = x16
	}
	switch {
	case fold != nil:
		be.foldedProduct(pdx, fold, m, n, k, p[0], p[1], dxh)
	case dxh != nil:
		be.product16Half(pdx, false, false, m, k, n, p[0], n, p[1], k, dxh.dptr(), 0, nil, false)
	case dx != nil:
		be.product16(pdx, false, false, m, k, n, p[0], n, p[1], k, dxBeta, addr(dx), k, 0)
	}
	if dw == nil {
		return false
	}
	if deferred {
		return true // db, if any, comes with the flush
	}
	if bgrad != 0 {
		if be.ltRun(pdw, p[0], p[2], dwBeta, addr(dw), bgrad) {
			if !dbFresh {
				be.prm.reset().ptr(addr(db)).ptr(bgrad).i64(n)
				be.elem(be.fn.train.addTo, int64(n))
			}
			return true
		}
		// Refused at run time (ltRun marked the plan for GemmEx): the plain product,
		// and the caller's column sum.
		pdw = be.ltPlanFor(true, false, n, k, m, n, k, k, addr(dw), 0)
	}
	be.product16(pdw, true, false, n, k, m, p[0], n, p[2], k, dwBeta, addr(dw), k, 0)
	return false
}
