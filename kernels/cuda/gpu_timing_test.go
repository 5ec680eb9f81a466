package cuda

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestTrainingShapeTiming logs the device time per call of Linear and LinearBackward at
// the GEMM shapes of a 6L-6L transformer_wmt_en_de training step (~6000 target tokens,
// d 512, FFN 2048, 24k vocabulary), fp32 and bf16 (through cuBLASLt with the bias
// epilogue, and with cuBLASLt turned off: GemmEx, bias written first), and of bf16's
// parts (operand rounding, the GemmEx alone, the bias write, the cuBLASLt matmul with
// its epilogue alone), so the step's GEMM time can be compared with cuBLAS's rate. It
// only measures; skipped with -short.
func TestTrainingShapeTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	be := gpu(t)
	old, oldSync := be.precision, be.syncCheck
	be.syncCheck = false
	defer func() { be.precision, be.syncCheck, be.lt.off = old, oldSync, false }()
	if _, err := func() (uintptr, error) { defer be.enter()(); return be.fastHandle() }(); err != nil {
		t.Fatal(err)
	}
	// µs per call on the device (timeDevice: events around n calls after a warm-up).
	timeIt := func(iters int, f func()) float64 { return timeDevice(t, be, iters, f).Seconds() * 1e6 }
	const m = 6000
	r := rand.New(rand.NewPCG(1, 2))
	for _, s := range []struct {
		name    string
		n, k    int
		hasBias bool
	}{{"qkv", 1536, 512, true}, {"fc1", 2048, 512, true}, {"fc2", 512, 2048, true}, {"out-proj", 24304, 512, false}} {
		x, w, y := be.Upload(randVec(r, m*s.k)), be.Upload(randVec(r, s.n*s.k)), be.Alloc(m*s.n)
		dx, dw := be.Alloc(m*s.k), be.Alloc(s.n*s.k)
		var bias, db = be.Alloc(s.n), be.Alloc(s.n)
		if !s.hasBias {
			bias, db = nil, nil
		}
		flop := 2 * float64(m) * float64(s.n) * float64(s.k)
		for _, c := range []struct {
			p     Precision
			noLt  bool
			label string
		}{{FP32, false, "fp32"}, {BF16, false, "bf16 Lt"}, {BF16, true, "bf16 GemmEx"}} {
			be.precision, be.lt.off = c.p, c.noLt
			fwd := timeIt(20, func() { be.Linear(y, x, w, bias, m, s.n, s.k) })
			bwd := timeIt(20, func() { be.LinearBackward(dx, dw, db, y, x, w, m, s.n, s.k) })
			t.Logf("%-8s %d×%d×%d %-11s: Linear %7.1f µs (%5.1f TFLOP/s)  LinearBackward %7.1f µs (%5.1f TFLOP/s)",
				s.name, m, s.n, s.k, c.label, fwd, flop/fwd/1e6, bwd, 2*flop/bwd/1e6)
		}
		be.lt.off = false
		be.precision = BF16
		cast := timeIt(20, func() {
			defer be.enter()()
			be.cast16([3]operand16{{addr(x), m * s.k}, {addr(w), s.n * s.k}})
		})
		var p [3]uint64
		func() { defer be.enter()(); p = be.cast16([3]operand16{{addr(x), m * s.k}, {addr(w), s.n * s.k}}) }()
		gemm := timeIt(20, func() {
			defer be.enter()()
			be.gemm16(false, true, m, s.n, s.k, 1, p[0], s.k, p[1], s.k, 1, addr(y), s.n)
		})
		fill := timeIt(20, func() {
			defer be.enter()()
			be.prm.reset().ptr(addr(y)).ptr(addr(x)).i32(m).i32(s.n)
			be.elem(be.fn.fillRows, int64(m)*int64(s.n))
		})
		var plan *ltPlan
		func() {
			defer be.enter()()
			plan = be.ltPlanFor(false, true, m, s.n, s.k, s.k, s.k, s.n, addr(y), addr(bias))
		}()
		lt := math.NaN()
		if plan != nil {
			lt = timeIt(20, func() {
				defer be.enter()()
				be.ltRun(plan, p[0], p[1], 0, addr(y), addr(bias))
			})
		}
		t.Logf("%-8s bf16 parts: cast %6.1f µs, GemmEx (fp32 C, beta 1) %6.1f µs (%5.1f TFLOP/s), bias fill %6.1f µs, cuBLASLt (epilogue %v, beta 0) %6.1f µs (%5.1f TFLOP/s)",
			s.name, cast, gemm, flop/gemm/1e6, fill, s.hasBias, lt, flop/lt/1e6)
	}
	t.Log(be.LtStatus())
}
