package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
)

// cuBLASLt attributes for strided batches (cublasLt.h; part of the library's ABI).
const (
	ltLayoutBatchStride   = 6  // CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: int64, elements
	ltDescBiasBatchStride = 10 // CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE: int64, elements
)

// batchedDW is one weight-gradient product dW[n,k] = dyᵀ·x over m rows, for a batch of
// count members laid out at fixed strides, as cuBLASLt descriptors: the product the
// step's LinearBackward plans (ltPlanEpi(true, false, n, k, m, …)), batched.
type batchedDW struct {
	desc, a, b, c uintptr
	algo          [8]uint64
}

func newBatchedDW(t *testing.T, g *Backend, m, n, k, count int, bgrad bool, bias uint64) *batchedDW {
	return newBatchedDWMode(t, g, m, n, k, count, bgrad, bias, ltBatchStrided)
}

// CUBLASLT_BATCH_MODE_STRIDED, the layouts' default (dw_deferred.go has the others).
const ltBatchStrided = 0

// newBatchedDWMode is newBatchedDW in the batch mode given: with ltBatchPointerArray the
// matmul's A, B, C and D arguments are device arrays of count member addresses, so the
// members need not sit at a fixed stride (the step's buffers do not).
func newBatchedDWMode(t *testing.T, g *Backend, m, n, k, count int, bgrad bool, bias uint64, mode uint32) *batchedDW {
	t.Helper()
	defer g.enter()()
	if !g.ltReady() {
		t.Skip("no cuBLASLt")
	}
	s := &g.lt
	l := s.lib
	if l.layoutSetAttr == 0 {
		t.Skip("cuBLASLt without cublasLtMatrixLayoutSetAttribute")
	}
	must := func(what string, err error) {
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	sh := ltColMajor(true, false, n, k, m, n, k, k)
	p := &batchedDW{}
	must("desc", ltCheck("cublasLtMatmulDescCreate", call(l.descCreate, uintptr(unsafe.Pointer(&p.desc)), computeF32, cudaR32F)))
	epi := uint32(ltEpiDefault)
	if bgrad {
		epi = ltEpiBGradB
	}
	must("transA", l.setDesc(p.desc, ltDescTransA, unsafe.Pointer(&sh.opA), 4))
	must("transB", l.setDesc(p.desc, ltDescTransB, unsafe.Pointer(&sh.opB), 4))
	must("epilogue", l.setDesc(p.desc, ltDescEpilogue, unsafe.Pointer(&epi), 4))
	if bgrad {
		bt, stride := int32(cudaR32F), int64(n)
		must("bias type", l.setDesc(p.desc, ltDescBiasType, unsafe.Pointer(&bt), 4))
		must("bias pointer", l.setDesc(p.desc, ltDescBiasPointer, unsafe.Pointer(&bias), 8))
		if count > 1 {
			must("bias batch stride", l.setDesc(p.desc, ltDescBiasBatchStride, unsafe.Pointer(&stride), 8))
		}
	}
	dt := g.dataType16()
	var err error
	for _, lay := range []struct {
		h              *uintptr
		dt             uintptr
		rows, cols, ld int
		stride         int64
	}{
		{&p.a, dt, sh.aRows, sh.aCols, sh.aLD, int64(m * k)},
		{&p.b, dt, sh.bRows, sh.bCols, sh.bLD, int64(m * n)},
		{&p.c, cudaR32F, sh.cRows, sh.cCols, sh.cLD, int64(n * k)},
	} {
		*lay.h, err = l.newLayout(lay.dt, lay.rows, lay.cols, lay.ld)
		must("layout", err)
		if count > 1 {
			c := int32(count)
			must("batch count", ltCheck("cublasLtMatrixLayoutSetAttribute", call(l.layoutSetAttr, *lay.h, ltLayoutBatchCount, uintptr(unsafe.Pointer(&c)), 4)))
			if mode == ltBatchStrided {
				must("batch stride", ltCheck("cublasLtMatrixLayoutSetAttribute", call(l.layoutSetAttr, *lay.h, ltLayoutBatchStride, uintptr(unsafe.Pointer(&lay.stride)), 8)))
			} else if err := ltCheck("cublasLtMatrixLayoutSetAttribute", call(l.layoutSetAttr, *lay.h, ltLayoutBatchMode, uintptr(unsafe.Pointer(&mode)), 4)); err != nil {
				t.Skipf("cuBLASLt refuses batch mode %d: %v", mode, err)
			}
		}
	}
	key := ltKey{transA: true, m: n, n: k, k: m, lda: n, ldb: k, ldc: k, dtype: dt, dtypeD: cudaR32F, alignAB: 16, alignC: 16}
	pl := &ltPlan{desc: p.desc, a: p.a, b: p.b, c: p.c}
	p.algo, err = g.ltHeuristic(pl, key)
	if err != nil && mode != ltBatchStrided {
		t.Logf("%d × %d×%d×%d (BGRADB %v), batch mode %d: no algorithm: %v", count, n, k, m, bgrad, mode, err)
		g.ltDestroy(pl)
		return nil
	}
	if err != nil {
		t.Skipf("%d × %d×%d×%d (BGRADB %v): no algorithm: %v", count, n, k, m, bgrad, err)
	}
	t.Cleanup(func() {
		defer g.enter()()
		g.ltDestroy(pl)
	})
	return p
}

// run computes the batch (or the one product) at x, dy into dw, on stream 0.
func (p *batchedDW) run(t *testing.T, g *Backend, x, dy, dw uint64) {
	s := &g.lt
	alpha, beta := float32(1), float32(0)
	if err := ltCheck("cublasLtMatmul", call(s.lib.matmul, s.handle, p.desc, uintptr(unsafe.Pointer(&alpha)),
		uintptr(x), p.a, uintptr(dy), p.b, uintptr(unsafe.Pointer(&beta)), uintptr(dw), p.c, uintptr(dw), p.c,
		uintptr(unsafe.Pointer(&p.algo)), uintptr(s.ws), uintptr(s.wsSize), 0)); err != nil {
		t.Fatal(err)
	}
}

// TestBatchedWeightGradTiming measures docs/cuda.md's plan item 0 before building it:
// the step's same-shape weight-gradient products (24 of 512×512 per 6L-6L update, 6 of
// 1024×512 and of 1536×512, over 7,872 token rows), each a matmul of its own as today,
// against one strided-batched matmul, with and without the BGRADB epilogue (bias
// gradients at BIAS_BATCH_STRIDE). Checks the batched dW and db against the separate
// ones (tolFor(m) and 1e-5: the algorithms may differ) and logs µs per group. -short
// skips it.
func TestBatchedWeightGradTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	g := withPrecision(t, BF16)
	const m = 7872
	for _, c := range []struct{ n, k, count int }{{512, 512, 24}, {1024, 512, 6}, {1536, 512, 6}} {
		n, k, count := c.n, c.k, c.count
		g.BeginScope() // the shape's ~400 MB of operands go at its end
		r := rand.New(rand.NewPCG(uint64(n), uint64(count)))
		// Members with values of their own, so that a wrong stride shows.
		x16, dy16 := g.AllocHalf(count*m*k), g.AllocHalf(count*m*n)
		for i := range count {
			g.BeginScope()
			xs, dys := upload16(g, randVec(r, m*k)), upload16(g, randVec(r, m*n))
			func() {
				defer g.enter()()
				g.copyDtoD(halfOf(x16).dptr()+uint64(2*i*m*k), halfOf(xs).dptr(), uint64(2*m*k))
				g.copyDtoD(halfOf(dy16).dptr()+uint64(2*i*m*n), halfOf(dys).dptr(), uint64(2*m*n))
			}()
			g.EndScope()
		}
		xp, dyp := halfOf(x16).dptr(), halfOf(dy16).dptr()
		for _, bgrad := range []bool{false, true} {
			what := fmt.Sprintf("%d × dW %d×%d×%d, BGRADB %v", count, n, k, m, bgrad)
			sepW, batW := g.Alloc(count*n*k), g.Alloc(count*n*k)
			sepB, batB := g.Alloc(count*n), g.Alloc(count*n)
			one := make([]*batchedDW, count)
			for i := range count {
				one[i] = newBatchedDW(t, g, m, n, k, 1, bgrad, addr(sepB)+uint64(4*i*n))
			}
			all := newBatchedDW(t, g, m, n, k, count, bgrad, addr(batB))
			separate := func() {
				for i, p := range one {
					p.run(t, g, xp+uint64(2*i*m*k), dyp+uint64(2*i*m*n), addr(sepW)+uint64(4*i*n*k))
				}
			}
			batched := func() { all.run(t, g, xp, dyp, addr(batW)) }
			ts, tb := us(timeDevice(t, g, 20, separate)), us(timeDevice(t, g, 20, batched))
			t.Logf("%s: separate %.1f µs, batched %.1f µs (%.2f×)", what, ts, tb, ts/tb)
			checkClose(t, what+" dW batched vs separate", down(g, batW), down(g, sepW), tolFor(m))
			if bgrad {
				checkClose(t, what+" db batched vs separate", down(g, batB), down(g, sepB), 1e-5)
			}
		}
		g.EndScope()
	}
}

// uploadAddrs puts device addresses into a device array (for pointer-array batches).
func uploadAddrs(g *Backend, a []uint64) kernels.Buffer {
	v := make([]float32, 2*len(a))
	for i, x := range a {
		v[2*i], v[2*i+1] = math.Float32frombits(uint32(x)), math.Float32frombits(uint32(x>>32))
	}
	return g.Upload(v)
}

// TestPointerArrayWeightGradTiming is TestBatchedWeightGradTiming with members that
// sit wherever the allocator put them, batched through cuBLASLt's pointer-array mode
// (CUBLASLT_BATCH_MODE_POINTER_ARRAY), which deferred weight gradients would use: the
// step's x and dy buffers are not at a fixed stride. Logs the cuBLASLt version, whether
// the mode is accepted (with and without BGRADB: a contiguous bias block at
// BIAS_BATCH_STRIDE), µs against separate products, and checks the results against the
// separate ones (tolFor(m); 1e-5 for db). -short skips it. (`xform env` reports the
// cuBLAS version: 13.1 on the H200 where it ran.)
func TestPointerArrayWeightGradTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	g := withPrecision(t, BF16)
	const m = 7872
	for _, c := range []struct{ n, k, count int }{{512, 512, 24}, {512, 512, 18}, {1024, 512, 6}, {1536, 512, 6}} {
		n, k, count := c.n, c.k, c.count
		g.BeginScope()
		r := rand.New(rand.NewPCG(uint64(n), uint64(count)))
		xs, dys := make([]kernels.Buffer, count), make([]kernels.Buffer, count)
		xa, dya := make([]uint64, count), make([]uint64, count)
		for i := range count {
			xs[i], dys[i] = upload16(g, randVec(r, m*k)), upload16(g, randVec(r, m*n))
			xa[i], dya[i] = halfOf(xs[i]).dptr(), halfOf(dys[i]).dptr()
		}
		for _, bgrad := range []bool{false, true} {
			what := fmt.Sprintf("%d × dW %d×%d×%d, BGRADB %v", count, n, k, m, bgrad)
			sepW, batW := g.Alloc(count*n*k), g.Alloc(count*n*k)
			sepB, batB := g.Alloc(count*n), g.Alloc(count*n)
			dwa := make([]uint64, count)
			for i := range count {
				dwa[i] = addr(batW) + uint64(4*i*n*k)
			}
			xArr, dyArr, dwArr := uploadAddrs(g, xa), uploadAddrs(g, dya), uploadAddrs(g, dwa)
			one := make([]*batchedDW, count)
			for i := range count {
				one[i] = newBatchedDW(t, g, m, n, k, 1, bgrad, addr(sepB)+uint64(4*i*n))
			}
			all := newBatchedDWMode(t, g, m, n, k, count, bgrad, addr(batB), ltBatchPointerArray)
			separate := func() {
				for i, p := range one {
					p.run(t, g, xa[i], dya[i], addr(sepW)+uint64(4*i*n*k))
				}
			}
			ts := us(timeDevice(t, g, 20, separate))
			if all == nil {
				t.Logf("%s: separate %.1f µs; pointer array: no algorithm", what, ts)
				continue
			}
			batched := func() { all.run(t, g, addr(xArr), addr(dyArr), addr(dwArr)) }
			tb := us(timeDevice(t, g, 20, batched))
			t.Logf("%s: separate %.1f µs, pointer array %.1f µs (%.2f×)", what, ts, tb, ts/tb)
			checkClose(t, what+" dW pointer array vs separate", down(g, batW), down(g, sepW), tolFor(m))
			if bgrad {
				checkClose(t, what+" db pointer array vs separate", down(g, batB), down(g, sepB), 1e-5)
			}
		}
		g.EndScope()
	}
}
