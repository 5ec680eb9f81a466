package cuda

import (
	"context"
	"fmt"
	"math/rand/v2"
	"unsafe"
)

// GemmResult is one timed GEMM configuration.
type GemmResult struct {
	M, N, K int
	DType   string // "fp32" (cublasSgemm, pedantic fp32) or "bf16" (cublasGemmEx, fp32 accumulation)
	Iters   int
	Seconds float64 // per product, median-free mean over Iters after warm-up
	TFLOPS  float64
}

func (r GemmResult) String() string {
	return fmt.Sprintf("%-4s %5d×%5d×%5d  %9.1f µs  %7.1f TFLOP/s", r.DType, r.M, r.N, r.K, r.Seconds*1e6, r.TFLOPS)
}

// BenchGemm times C[m,n] = A[m,k]·B[k,n]ᵀ (the Linear layout) on random data with
// device events, after three warm-up products. bf16 runs on a second cuBLAS handle
// in default math mode, so cuBLAS may use the tensor cores (the fp32 handle is pedantic).
func (be *Backend) BenchGemm(ctx context.Context, m, n, k int, bf16 bool, iters int) (GemmResult, error) {
	res := GemmResult{M: m, N: n, K: k, DType: "fp32", Iters: iters}
	if bf16 {
		res.DType = "bf16"
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	r := rand.New(rand.NewPCG(uint64(m), uint64(n*k)))
	rnd := func(sz int) []float32 {
		v := make([]float32, sz)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	a, b, c := be.Upload(rnd(m*k)), be.Upload(rnd(n*k)), be.Alloc(m*n)
	defer be.enter()()
	var handle uintptr
	var a16, b16, c16 *buffer
	if bf16 {
		h, err := be.fastHandle()
		if err != nil {
			return res, err
		}
		handle = h
		// Half-size buffers: n float32 slots hold 2n bf16 values.
		a16, b16, c16 = be.newBuffer((m*k+1)/2), be.newBuffer((n*k+1)/2), be.newBuffer((m*n+1)/2)
		for _, p := range [][2]*buffer{{a16, dev(a)}, {b16, dev(b)}} {
			be.prm.reset().ptr(p[0].dptr()).ptr(p[1].dptr()).i64(p[1].n)
			be.elem(be.fn.f32ToBF16, int64(p[1].n))
		}
	}
	gemm := func() error {
		if !bf16 {
			return be.libs.blas.sgemmRowMajor(be.blasH, false, true, m, n, k, 1, addr(a), k, addr(b), k, 0, addr(c), n)
		}
		return be.libs.blas.gemmExRowMajorBF16(handle, m, n, k, a16.dptr(), k, b16.dptr(), k, c16.dptr(), n)
	}
	for i := 0; i < 3; i++ {
		if err := gemm(); err != nil {
			return res, err
		}
	}
	start, err := be.drv.newEvent()
	if err != nil {
		return res, err
	}
	defer be.drv.destroyEvent(start)
	stop, err := be.drv.newEvent()
	if err != nil {
		return res, err
	}
	defer be.drv.destroyEvent(stop)
	if err := be.drv.record(start); err != nil {
		return res, err
	}
	for i := 0; i < iters; i++ {
		if err := gemm(); err != nil {
			return res, err
		}
	}
	if err := be.drv.record(stop); err != nil {
		return res, err
	}
	ms, err := be.drv.elapsed(start, stop)
	if err != nil {
		return res, err
	}
	res.Seconds = float64(ms) / 1e3 / float64(iters)
	res.TFLOPS = 2 * float64(m) * float64(n) * float64(k) / res.Seconds / 1e12
	return res, nil
}

// fastHandle is a cuBLAS handle in default math mode (tensor cores allowed), made on
// first use.
func (be *Backend) fastHandle() (uintptr, error) {
	if be.blasFast != 0 {
		return be.blasFast, nil
	}
	var h uintptr
	if err := be.libs.blas.check("cublasCreate_v2", call(be.libs.blas.create, uintptr(unsafe.Pointer(&h)))); err != nil {
		return 0, err
	}
	be.blasFast = h
	if be.graph.mode == graphCapture {
		be.blasStreams(be.graph.stream)
	}
	return h, nil
}

// gemmExRowMajorBF16 computes row-major C[m,n] = A[m,k]·B[n,k]ᵀ with bf16 A, B, C and
// fp32 accumulation (see sgemmRowMajor for the operand swap).
func (b *cublas) gemmExRowMajorBF16(h uintptr, m, n, k int, a uint64, lda int, bm uint64, ldb int, c uint64, ldc int) error {
	alpha, beta := float32(1), float32(0)
	return b.check("cublasGemmEx", call(b.gemmEx, h, opT, opN, uintptr(n), uintptr(m), uintptr(k),
		uintptr(unsafe.Pointer(&alpha)), uintptr(bm), cudaR16BF, uintptr(ldb), uintptr(a), cudaR16BF, uintptr(lda),
		uintptr(unsafe.Pointer(&beta)), uintptr(c), cudaR16BF, uintptr(ldc), computeF32, uintptr(uint32(0xffffffff))))
}

func (d *driver) newEvent() (uintptr, error) {
	var e uintptr
	err := d.check("cuEventCreate", call(d.cuEventCreate, uintptr(unsafe.Pointer(&e)), 0))
	return e, err
}

// newEventNoTiming makes an event for waiting only (CU_EVENT_DISABLE_TIMING: cheaper to
// record and to wait for).
func (d *driver) newEventNoTiming() (uintptr, error) {
	var e uintptr
	err := d.check("cuEventCreate", call(d.cuEventCreate, uintptr(unsafe.Pointer(&e)), 2))
	return e, err
}

func (d *driver) destroyEvent(e uintptr) { call(d.cuEventDestroy, e) }

func (d *driver) record(e uintptr) error {
	return d.check("cuEventRecord", call(d.cuEventRecord, e, 0))
}

// elapsed waits for stop and returns the milliseconds between the events.
func (d *driver) elapsed(start, stop uintptr) (float32, error) {
	if err := d.check("cuEventSynchronize", call(d.cuEventSynchronize, stop)); err != nil {
		return 0, err
	}
	var ms float32
	err := d.check("cuEventElapsedTime", call(d.cuEventElapsedTime, uintptr(unsafe.Pointer(&ms)), start, stop))
	return ms, err
}
