package cuda

import (
	"runtime"
	"testing"
	"time"
)

// TestLinearHostCost splits the host time of a small Linear (64×512×512, one decoder
// step) into its parts, to find the ~30 µs per call that docs/cuda.md reports beyond
// the GEMM: the lock and cuCtxSetCurrent of enter, the bias launch, the cuBLAS call on
// the pedantic and on a default-math handle. Each part is timed for a short run (the
// launch queue never fills: pure host cost) and a long one (the queue fills and the
// host waits for the GPU: the device's throughput per call). It only measures and logs.
func TestLinearHostCost(t *testing.T) {
	be := gpu(t)
	old := be.syncCheck
	be.syncCheck = false
	defer func() { be.syncCheck = old }()
	const m, n, k = 64, 512, 512
	x, w, bias, y := be.Alloc(m*k), be.Alloc(n*k), be.Alloc(n), be.Alloc(m*n)
	fast, err := func() (uintptr, error) { defer be.enter()(); return be.fastHandle() }()
	if err != nil {
		t.Fatal(err)
	}
	// inLock runs body n times inside one enter (no per-call lock or context switch).
	inLock := func(body func()) func(int) {
		return func(reps int) {
			defer be.enter()()
			for i := 0; i < reps; i++ {
				body()
			}
		}
	}
	sgemm := func(h uintptr) func() {
		return func() {
			must(be.libs.blas.sgemmRowMajor(h, false, true, m, n, k, 1, addr(x), k, addr(w), k, 1, addr(y), n))
		}
	}
	perCall := func(f func()) func(int) {
		return func(reps int) {
			for i := 0; i < reps; i++ {
				f()
			}
		}
	}
	cases := []struct {
		name string
		run  func(int)
	}{
		{"enter+leave (lock, LockOSThread, cuCtxSetCurrent)", perCall(func() { be.enter()() })},
		{"cuCtxSetCurrent alone", func(reps int) {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			for i := 0; i < reps; i++ {
				must(be.drv.setCurrent(be.ctx))
			}
		}},
		{"fill_rows launch (bias), one lock", inLock(func() {
			be.prm.reset().ptr(addr(y)).ptr(addr(bias)).i32(m).i32(n)
			be.elem(be.fn.fillRows, int64(m)*int64(n))
		})},
		{"Sgemm pedantic handle, one lock", inLock(sgemm(be.blasH))},
		{"Sgemm default-math handle, one lock", inLock(sgemm(fast))},
		{"Linear without bias", perCall(func() { be.Linear(y, x, w, nil, m, n, k) })},
		{"Linear with bias", perCall(func() { be.Linear(y, x, w, bias, m, n, k) })},
		{"Residual 64×512 (small kernel)", perCall(func() { be.Residual(y, y, y, nil, 1, m, n) })},
	}
	for _, reps := range []int{64, 3000} {
		for _, c := range cases {
			c.run(8) // warm up
			must(be.Synchronize())
			start := time.Now()
			c.run(reps)
			enq := time.Since(start)
			must(be.Synchronize())
			total := time.Since(start)
			t.Logf("%4d calls  %-52s host %7.2f µs/call, until done %7.2f µs/call", reps, c.name,
				us(enq)/float64(reps), us(total)/float64(reps))
		}
	}
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
