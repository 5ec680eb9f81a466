package cuda

import (
	"github.com/xform-dev/xform/kernels"
)

// sumsqBlocks is the fixed grid of sumsq_partial: the element → thread assignment, and
// so the summation order, depends on the buffers alone, never on the device.
const sumsqBlocks = 256

// stageList uploads the descriptors of xs for the list kernels of reduce.cu and
// optim.cu (see stageLists).
func (be *Backend) stageList(xs []kernels.Buffer) (uint64, int) { return be.stageLists(xs) }

// SumSquares implements kernels.Trainer (one buffer of SumSquaresAll).
func (be *Backend) SumSquares(x kernels.Buffer) float64 {
	return be.SumSquaresAll([]kernels.Buffer{x})
}

// SumSquaresAll implements kernels.MultiTensor: Σ x² over every buffer in one device
// reduction (a fixed grid of double partials, then their sum in order) and one host
// read of 8 bytes — the gradient norm of a whole model per update.
func (be *Backend) SumSquaresAll(xs []kernels.Buffer) float64 {
	defer be.enter()()
	desc, n := be.stageList(xs)
	if n == 0 {
		return 0
	}
	part := be.newDoubles(sumsqBlocks)
	be.prm.reset().ptr(part.dptr()).ptr(desc).i32(n)
	be.run(be.fn.train.sumsqPartial, [3]uint32{sumsqBlocks, 1, 1}, blockElem, 0)
	sum := be.newDoubles(1)
	be.prm.reset().ptr(sum.dptr()).ptr(part.dptr()).i64(sumsqBlocks).i32(1).i32(1)
	be.run(be.fn.train.sumStrided, [3]uint32{1, 1, 1}, blockElem, 0)
	return be.readDoubles(sum, 1)[0]
}

// ScaleAll implements kernels.MultiTensor: x = a·x over every buffer in one launch.
func (be *Backend) ScaleAll(xs []kernels.Buffer, a float32) {
	defer be.enter()()
	desc, n := be.stageList(xs)
	if n == 0 {
		return
	}
	var total int64
	for _, x := range xs {
		total = max(total, int64(x.Len()))
	}
	be.prm.reset().ptr(desc).i32(n).f32(a)
	be.elem(be.fn.train.scaleList, total)
}

// AdamStep implements kernels.Trainer with one fused kernel (optim.cu): both moments
// and the weight in one pass, in the CPU backend's float operation order.
func (be *Backend) AdamStep(p, g, m, v kernels.Buffer, s kernels.OptimStep) {
	n := dev(p).n
	if n == 0 {
		return
	}
	defer be.enter()()
	be.prm.reset().ptr(addr(p)).ptr(addr(g)).ptr(addr(m)).ptr(addr(v)).i64(n).
		f32(s.Beta1).f32(s.Beta2).f32(s.OneMinusBeta1).f32(s.OneMinusBeta2).f32(s.Eps).f32(s.Decay).f32(s.StepSize).
		i32(boolInt(s.Update))
	be.elem(be.fn.train.adamStep, int64(n))
}

// stageLists uploads the descriptors of parallel lists of equally long buffers for the
// list kernels (listDescriptor) and returns their device address and the count.
func (be *Backend) stageLists(lists ...[]kernels.Buffer) (uint64, int) {
	words, n := listDescriptor(lists...)
	if n == 0 {
		return 0, 0
	}
	return be.stageInts(slotList, words), n
}

// listDescriptor lays out what the list kernels read: the device addresses of lists[0],
// then of lists[1], …, then the lengths (taken from lists[0]), each a little-endian
// uint64 as two int32 words. Empty buffers are left out; it returns the words and the
// count of buffers kept. Buffers at the same index must have the same length.
func listDescriptor(lists ...[]kernels.Buffer) ([]int32, int) {
	var keep []int
	for i, x := range lists[0] {
		if b := dev(x); b != nil && b.n > 0 {
			keep = append(keep, i)
			for _, l := range lists[1:] {
				if dev(l[i]).n != b.n {
					panic("cuda backend: list buffers of different lengths")
				}
			}
		}
	}
	if len(keep) == 0 {
		return nil, 0
	}
	words := make([]int32, 0, 2*(len(lists)+1)*len(keep))
	put := func(d uint64) { words = append(words, int32(uint32(d)), int32(uint32(d>>32))) }
	for _, l := range lists {
		for _, i := range keep {
			put(dev(l[i]).dptr())
		}
	}
	for _, i := range keep {
		put(uint64(dev(lists[0][i]).n))
	}
	return words, len(keep)
}

// listElems is the launch size of a list kernel: its longest buffer.
func listElems(xs []kernels.Buffer) int64 {
	var n int64
	for _, x := range xs {
		n = max(n, int64(x.Len()))
	}
	return n
}

// AdamStepAll implements kernels.MultiTensor: AdamStep on every parameter in one launch
// (a training step of a 6L-6L model updates ~250 tensors; one launch each cost ~1.2 ms
// of host time per update).
func (be *Backend) AdamStepAll(p, g, m, v []kernels.Buffer, s kernels.OptimStep) {
	if len(g) != len(p) || len(m) != len(p) || len(v) != len(p) {
		panic("cuda backend: AdamStepAll lists of different lengths")
	}
	defer be.enter()()
	desc, n := be.stageLists(p, g, m, v)
	if n == 0 {
		return
	}
	be.prm.reset().ptr(desc).i32(n).
		f32(s.Beta1).f32(s.Beta2).f32(s.OneMinusBeta1).f32(s.OneMinusBeta2).f32(s.Eps).f32(s.Decay).f32(s.StepSize).
		i32(boolInt(s.Update))
	be.elem(be.fn.train.adamList, listElems(p))
}

// FillAll implements kernels.MultiTensor: every element of every buffer set to v in
// one launch (zeroing the gradients).
func (be *Backend) FillAll(xs []kernels.Buffer, v float32) {
	defer be.enter()()
	desc, n := be.stageLists(xs)
	if n == 0 {
		return
	}
	be.prm.reset().ptr(desc).i32(n).f32(v)
	be.elem(be.fn.train.fillList, listElems(xs))
}
