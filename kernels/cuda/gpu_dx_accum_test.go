package cuda

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestLinearBackwardKeptAccum: LinearBackwardKeptAccum (the dx product with beta 1 onto
// dx) against the sequence it replaces, LinearBackwardKept into a fresh buffer and
// AddTo, in bf16 and fp16, at the decoder's cross-attention K/V shape of the bench
// (7,872 encoder rows, 1,024 outputs, 512 inputs) and at small and odd ones. Both add
// the same float32 product to the same float32 dx, one rounding each, so dx, dw and db
// must be the same bits (a GEMM epilogue that formed alpha·acc + beta·c otherwise
// would show here).
func TestLinearBackwardKeptAccum(t *testing.T) {
	for _, ft := range formats {
		for _, sh := range []struct{ m, n, k int }{{7872, 1024, 512}, {300, 96, 64}, {1, 64, 32}, {33, 10, 6}} {
			t.Run(fmt.Sprintf("%v/%dx%dx%d", ft.prec, sh.m, sh.n, sh.k), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				g.BeginScope()
				defer g.EndScope()
				m, n, k := sh.m, sh.n, sh.k
				r := rand.New(rand.NewPCG(91, uint64(m*n*k)))
				x, w, dy := g.Upload(randVec(r, m*k)), g.Upload(randVec(r, n*k)), upload16(g, randVec(r, m*n))
				dx0, dw0, db0 := randVec(r, m*k), randVec(r, n*k), randVec(r, n)
				run := func(accum bool) (dx, dw, db []float32) {
					gdx, gdw, gdb := g.Upload(dx0), g.Upload(dw0), g.Upload(db0)
					kept := g.LinearKeep(g.Alloc(m*n), x, w, nil, m, n, k)
					if kept == nil {
						t.Fatal("LinearKeep kept nothing in a 16-bit precision")
					}
					if accum {
						g.LinearBackwardKeptAccum(gdx, gdw, gdb, dy, kept, m, n, k)
					} else {
						de := g.Alloc(m * k)
						g.LinearBackwardKept(de, gdw, gdb, dy, kept, m, n, k)
						g.AddTo(gdx, de)
					}
					return down(g, gdx), down(g, gdw), down(g, gdb)
				}
				wantDX, wantDW, wantDB := run(false)
				gotDX, gotDW, gotDB := run(true)
				checkExact(t, "dx", gotDX, wantDX)
				checkExact(t, "dw", gotDW, wantDW)
				checkExact(t, "db", gotDB, wantDB)
				// The scratch-and-AddTo switch is the same sequence as the reference.
				g.dxAccumOff = true
				offDX, _, _ := run(true)
				g.dxAccumOff = false
				checkExact(t, "dx, XFORM_CUDA_DX_ACCUM=0", offDX, wantDX)
			})
		}
	}
}

// switchTraining trains the fixture model and the head dimension 64 model, 12 updates
// each, in bf16 and fp16 with both recipes of sameBitsCases, three times: on a Backend
// whose switch under test off sets to its other value, on a default one and on a
// default graphed one (all three first set up by all, when not nil); check compares the
// runs.
func switchTraining(t *testing.T, all, off func(*Backend), check func(t *testing.T, offBE, onBE *Backend, off, on, graphed trainResult)) {
	gpu(t)
	eachTrainCase(t, func(t *testing.T, mc trainModel, prec Precision, rc trainCase) {
		offBE := newGraphTestBackend(t, prec, false)
		onBE := newGraphTestBackend(t, prec, false)
		graphBE := newGraphTestBackend(t, prec, true)
		if all != nil {
			for _, be := range []*Backend{offBE, onBE, graphBE} {
				all(be)
			}
		}
		off(offBE)
		offRun, _ := runTrain(t, mc.m, offBE, rc, mc.batches)
		onRun, _ := runTrain(t, mc.m, onBE, rc, mc.batches)
		graphed, _ := runTrain(t, mc.m, graphBE, rc, mc.batches)
		check(t, offBE, onBE, offRun, onRun, graphed)
	})
}

// TestDXAccumTrainingSameBits: with the decoder's cross-attention K/V input gradients
// added onto dEnc by the product (LinearBackwardKeptAccum) against the scratch buffer
// and AddTo per layer (dxAccumOff): every update's log and the final weights the same
// bits (TestLinearBackwardKeptAccum's reason), eagerly and graphed. The keys and values
// per layer in all three runs (kvBatchOff): batched, there is one product and nothing
// to add.
func TestDXAccumTrainingSameBits(t *testing.T) {
	switchTraining(t, func(be *Backend) { be.kvBatchOff = true }, func(be *Backend) { be.dxAccumOff = true }, func(t *testing.T, _, _ *Backend, off, on, graphed trainResult) {
		checkSameRun(t, "accumulated", on, "AddTo", off)
		checkSameRun(t, "accumulated, graphed", graphed, "accumulated, eager", on)
	})
}

// TestHalfBiasTrainingSameBits: with fc1's bias as a 16-bit copy that the rounding
// optimizer writes with the weights (kernels.HalfBiases) against fc1 rounding its
// float32 bias at every call (halfBiasOff): every update's log and the final weights the
// same bits, eagerly and graphed. A copy the optimizer failed to refresh would hold the
// first step's bias and differ from the second update on.
func TestHalfBiasTrainingSameBits(t *testing.T) {
	switchTraining(t, nil, func(be *Backend) { be.halfBiasOff = true }, func(t *testing.T, offBE, onBE *Backend, off, on, graphed trainResult) {
		if offBE.lt.halfBias16 != 0 || onBE.lt.halfBias16 == 0 {
			t.Fatalf("products with a 16-bit bias: %d with the copies off, %d on", offBE.lt.halfBias16, onBE.lt.halfBias16)
		}
		checkSameRun(t, "16-bit bias copy", on, "bias rounded per call", off)
		checkSameRun(t, "16-bit bias copy, graphed", graphed, "16-bit bias copy, eager", on)
	})
}

// TestCrossKVBatchTraining: the decoder's cross-attention keys and values from one
// product for all layers, and their input gradient from one (kernels.CrossKVBatcher),
// against one product per layer (kvBatchOff): the same values summed in another order
// (dEnc over L·2d inside one GEMM), so held to checkTrainClose's bounds; graphed and
// eager the same bits. (model.TestCrossKVBatchGradients checks the model's side on the
// CPU: the same loss bits, gradients within float32 roundings, finite differences.)
func TestCrossKVBatchTraining(t *testing.T) {
	switchTraining(t, nil, func(be *Backend) { be.kvBatchOff = true }, func(t *testing.T, offBE, onBE *Backend, off, on, graphed trainResult) {
		if offBE.kvBatchYes != 0 || onBE.kvBatchYes == 0 {
			t.Fatalf("BatchCrossKV said yes %d times with the switch off, %d on", offBE.kvBatchYes, onBE.kvBatchYes)
		}
		checkTrainClose(t, "keys and values batched", on, "per layer", off)
		checkSameRun(t, "graphed", graphed, "eager", on)
	})
}

// TestHalfBiasAttn16SameBits: TestHalfBiasTrainingSameBits with 16-bit attention inputs
// (attnIn16On in all three runs): the self-attention qkv and cross-attention q, k/v
// projections then write 16-bit outputs and add their biases' 16-bit copies, which the
// rounding optimizer must keep fresh, against rounding the float32 biases per call.
func TestHalfBiasAttn16SameBits(t *testing.T) {
	switchTraining(t, func(be *Backend) { be.attnIn16On = true }, func(be *Backend) { be.halfBiasOff = true }, func(t *testing.T, offBE, onBE *Backend, off, on, graphed trainResult) {
		if onBE.lt.halfBias16 == 0 || offBE.lt.halfBias16 != 0 {
			t.Fatalf("products with a 16-bit bias: %d with the copies off, %d on", offBE.lt.halfBias16, onBE.lt.halfBias16)
		}
		checkSameRun(t, "16-bit bias copies", on, "biases rounded per call", off)
		checkSameRun(t, "16-bit bias copies, graphed", graphed, "16-bit bias copies, eager", on)
	})
}
