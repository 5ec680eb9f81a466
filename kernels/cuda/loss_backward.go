package cuda

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/xform-dev/xform/kernels"
)

// LabelSmoothedLoss implements kernels.Trainer with one fused kernel (loss.cu): per row
// the log_softmax, the row's loss and nll, and the logits' gradient, then a row-order
// sum on the device. The host reads the two sums (16 bytes), the one synchronisation of
// the call.
func (be *Backend) LabelSmoothedLoss(dlogits, logits kernels.Buffer, targets []int32, rows, V int, eps float32, ignore int32, scale float32) (loss, nll float64) {
	return be.LabelSmoothedLossDeferred(dlogits, logits, targets, rows, V, eps, ignore, scale)()
}

// LabelSmoothedLossDeferred implements kernels.DeferredLosser.
func (be *Backend) LabelSmoothedLossDeferred(dlogits, logits kernels.Buffer, targets []int32, rows, V int, eps float32, ignore int32, scale float32) func() (loss, nll float64) {
	if rows == 0 || V == 0 {
		return func() (float64, float64) { return 0, 0 }
	}
	if len(targets) < rows {
		panic(fmt.Sprintf("cuda backend: %d targets for %d rows", len(targets), rows))
	}
	defer be.enter()()
	tp := be.stageInts(slotTargets, targets[:rows])
	perRow := be.newDoubles(2 * rows)
	block := uint32(blockRow)
	if V >= 8192 {
		block = 1024 // vocabulary rows are long: more threads per row, as rowKernel
	}
	be.prm.reset().ptr(addr(dlogits)).ptr(perRow.dptr()).ptr(addr(logits)).ptr(tp).
		i32(rows).i32(V).f32(eps).i32(int(ignore)).f32(scale)
	be.run(be.fn.train.lsLoss, be.rowsGrid(rows), block, 0)
	sums := be.newDoubles(2)
	be.prm.reset().ptr(sums.dptr()).ptr(perRow.dptr()).i64(rows).i32(2).i32(2)
	be.run(be.fn.train.sumStrided, [3]uint32{1, 1, 1}, blockElem, 0)
	read := be.readLater(sums, 16)
	return func() (float64, float64) {
		b := read()
		return math.Float64frombits(binary.LittleEndian.Uint64(b)), math.Float64frombits(binary.LittleEndian.Uint64(b[8:]))
	}
}
