package cuda

import (
	"encoding/binary"
	"math"
	"slices"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
)

var _ kernels.ClippedOptimizer = (*Backend)(nil)

// The list kernels (sumsq_partial, scale_list in reduce.cu; adam_list, fill_list in
// optim.cu) give each block listChunk elements of one buffer (LIST_CHUNK, LIST_THREADS
// there). Constants, so the chunks, and so sumsq's summation order, depend on the
// buffer lengths alone, never on the device.
const (
	listChunk   = 8192
	listThreads = 256
	// listSumThreads is sum_strided's block for the sumsq partials: one per chunk, ~7,200
	// for the 58M gradients of a 6L-6L model, so 1024 threads add ~7 each.
	listSumThreads = 1024
)

// listJob is a staged list descriptor with its chunk table: desc and n for the kernels'
// desc and nbuf, tasks the table's device address, blocks its entries (the grid).
type listJob struct {
	desc, tasks uint64
	n, blocks   int
	// half is adam_list's list of 16-bit copy addresses (stageAdamLists), 0 for none.
	half uint64
}

// SumSquares implements kernels.Trainer (one buffer of SumSquaresAll).
func (be *Backend) SumSquares(x kernels.Buffer) float64 {
	return be.SumSquaresAll([]kernels.Buffer{x})
}

// SumSquaresAll implements kernels.MultiTensor: Σ x² over every buffer in one device
// reduction (a double partial per chunk, then their sum in a fixed order) and one host
// read of 8 bytes — the gradient norm of a whole model per update.
func (be *Backend) SumSquaresAll(xs []kernels.Buffer) float64 {
	defer be.enter()()
	sum := be.sumSquares(xs)
	if sum == nil {
		return 0
	}
	return be.readDoubles(sum, 1)[0]
}

// sumSquares queues SumSquaresAll's two kernels and returns the device double they
// write (nil when xs holds no elements). The caller holds the Backend.
func (be *Backend) sumSquares(xs []kernels.Buffer) *buffer {
	j := be.stageLists(xs)
	if j.n == 0 {
		return nil
	}
	return be.sumSquaresOf(j, j.desc, 1, 1)
}

// sumSquaresOf queues Σ (pre·x)² over the list at desc (j.n addresses) with the lengths
// and chunk table of j, whose descriptor holds lists lists before the lengths (1 for
// SumSquaresAll, 4 for the p, g, m, v of AdamStepClipped), and returns the device double
// it writes. The caller holds the Backend.
func (be *Backend) sumSquaresOf(j listJob, desc uint64, lists int, pre float32) *buffer {
	part := be.newDoubles(j.blocks)
	lens := j.desc + 8*uint64(lists*j.n)
	be.prm.reset().ptr(part.dptr()).ptr(desc).ptr(lens).ptr(j.tasks).f32(pre)
	be.run(be.fn.train.sumsqPartial, [3]uint32{uint32(j.blocks), 1, 1}, listThreads, 0)
	return be.sumPartials(part, j.blocks)
}

// sumPartials adds the n doubles of part in sum_strided's fixed order into a new device
// double. The caller holds the Backend.
func (be *Backend) sumPartials(part *buffer, n int) *buffer {
	sum := be.newDoubles(1)
	be.prm.reset().ptr(sum.dptr()).ptr(part.dptr()).i64(n).i32(1).i32(1)
	be.run(be.fn.train.sumStrided, [3]uint32{1, 1, 1}, listSumThreads, 0)
	return sum
}

// ScaleAll implements kernels.MultiTensor: x = a·x over every buffer in one launch.
func (be *Backend) ScaleAll(xs []kernels.Buffer, a float32) {
	be.listWithScalar(be.fn.train.scaleList, xs, a)
}

// listWithScalar launches a list kernel taking (desc, n, one float, tasks) over xs.
func (be *Backend) listWithScalar(fn uintptr, xs []kernels.Buffer, v float32) {
	defer be.enter()()
	j := be.stageLists(xs)
	if j.n == 0 {
		return
	}
	be.prm.reset().ptr(j.desc).i32(j.n).f32(v).ptr(j.tasks)
	be.run(fn, [3]uint32{uint32(j.blocks), 1, 1}, listThreads, 0)
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

// stageLists uploads, in one copy, the descriptors of parallel lists of equally long
// buffers for the list kernels (listDescriptor) followed by their chunk table
// (listTasks), and returns where each starts.
func (be *Backend) stageLists(lists ...[]kernels.Buffer) listJob {
	return be.stageListsWith(nil, lists...)
}

// stageListsWith is stageLists with extra words (one uint64 per kept buffer, as
// halfTargetWords lays them out) between the lengths and the chunk table, in the same
// upload; j.half is their address (0 when extra is empty).
func (be *Backend) stageListsWith(extra []int32, lists ...[]kernels.Buffer) listJob {
	words, n := listDescriptor(lists...)
	if n == 0 {
		return listJob{}
	}
	at := len(words)
	words = append(words, extra...)
	head := len(words)
	words, blocks := listTasks(words, lists[0])
	desc := be.stageListWords(words)
	j := listJob{desc: desc, tasks: desc + 4*uint64(head), n: n, blocks: blocks}
	if len(extra) > 0 {
		j.half = desc + 4*uint64(at)
	}
	return j
}

// listTasks appends to words the list kernels' chunk table for xs (empty buffers left
// out, as listDescriptor does): per block, the buffer's index among the kept ones and
// the chunk's index within it, two int32 words. It returns the words and the count of
// blocks.
func listTasks(words []int32, xs []kernels.Buffer) ([]int32, int) {
	k, blocks := 0, 0
	for _, x := range xs {
		b := dev(x)
		if b == nil || b.n == 0 {
			continue
		}
		for c := 0; c*listChunk < b.n; c++ {
			words = append(words, int32(k), int32(c))
			blocks++
		}
		k++
	}
	return words, blocks
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

// AdamStepAll implements kernels.MultiTensor: AdamStep on every parameter in one launch
// (a training step of a 6L-6L model updates ~250 tensors; one launch each cost ~1.2 ms
// of host time per update).
func (be *Backend) AdamStepAll(p, g, m, v []kernels.Buffer, s kernels.OptimStep) {
	if len(g) != len(p) || len(m) != len(p) || len(v) != len(p) {
		panic("cuda backend: AdamStepAll lists of different lengths")
	}
	defer be.enter()()
	j := be.stageLists(p, g, m, v)
	if j.n == 0 {
		return
	}
	be.adamList(j, s, 1, nil, 0, nil)
}

// adamList launches adam_list over the staged p, g, m, v lists of j with the gradient
// factor pre and, when sumsq is not nil, the norm test and clipping from the device
// double Σ (pre·g)² (optim.cu); j.half (0: none) is the 16-bit copies' address list.
// With part (then sumsq must be nil) the _norm kernels also write sumsq_partial's
// per-chunk partials of Σ (pre·g)² there. The caller holds the Backend.
func (be *Backend) adamList(j listJob, s kernels.OptimStep, pre float32, sumsq *buffer, maxNorm float64, part *buffer) {
	be.prm.reset().ptr(j.desc).i32(j.n).
		f32(s.Beta1).f32(s.Beta2).f32(s.OneMinusBeta1).f32(s.OneMinusBeta2).f32(s.Eps).f32(s.Decay).f32(s.StepSize).
		i32(boolInt(s.Update)).ptr(j.tasks).f32(pre).ptr(addr(sumsq)).f64(maxNorm)
	fn, fnBF16, fnF16 := be.fn.train.adamList, be.fn.train.adamListBF16, be.fn.train.adamListF16
	if part != nil {
		fn, fnBF16, fnF16 = be.fn.train.adamListNorm, be.fn.train.adamListBF16Norm, be.fn.train.adamListF16Norm
	}
	if j.half != 0 {
		// The format is the kernel's template parameter (optim.cu: registers).
		be.prm.ptr(j.half)
		fn = fnBF16
		if be.precision == FP16 {
			fn = fnF16
		}
	}
	if part != nil {
		be.prm.ptr(part.dptr())
	}
	be.run(fn, [3]uint32{uint32(j.blocks), 1, 1}, listThreads, 0)
}

// AdamStepClipped implements kernels.ClippedOptimizer in three launches and one
// descriptor upload: Σ (pre·g)² (sumsq_partial, sum_strided: the bits SumSquaresAll
// gives after ScaleAll(g, pre)), then adam_list, which takes the norm, the clipping
// coefficient and the skip from that device double itself. Against ScaleAll,
// SumSquaresAll (a host read), ScaleAll when clipping, AdamStepAll, it saves one or two
// passes over the gradients (~130 µs each for the 58M of a 6L-6L model on an H200), two
// uploads and the wait for the norm before the update is queued: the returned function
// reads the 8 bytes afterwards. p, m and v get AdamStepAll's bits after the two
// ScaleAll calls; g is not written.
func (be *Backend) AdamStepClipped(p, g, m, v []kernels.Buffer, pre float32, maxNorm float64, s kernels.OptimStep) func() float64 {
	if len(g) != len(p) || len(m) != len(p) || len(v) != len(p) {
		panic("cuda backend: AdamStepClipped lists of different lengths")
	}
	defer be.enter()()
	j := be.stageLists(p, g, m, v)
	if j.n == 0 {
		return func() float64 { return 0 }
	}
	return be.adamClipped(j, pre, maxNorm, s)
}

// adamClipped queues AdamStepClipped's launches over the staged lists of j (with j.half's
// copies, if any) and returns the norm's reader. The caller holds the Backend.
//
// With s.NormAfter and no clipping the update forms the partials itself (adam_list's
// norm form: the same terms in the same order as sumsq_partial, so the same norm) and
// sum_strided adds them after it: one pass over the gradients instead of two (~150 µs
// an update at 18L-18L on the H200), no skip of a non-finite update.
func (be *Backend) adamClipped(j listJob, pre float32, maxNorm float64, s kernels.OptimStep) func() float64 {
	var sum *buffer
	if s.NormAfter && maxNorm <= 0 && !be.normAfterOff {
		part := be.newDoubles(j.blocks)
		be.adamList(j, s, pre, nil, 0, part)
		sum = be.sumPartials(part, j.blocks)
		be.normsAfter++
	} else {
		sum = be.sumSquaresOf(j, j.desc+8*uint64(j.n), 4, pre)
		be.adamList(j, s, pre, sum, maxNorm, nil)
	}
	read := be.readLater(sum, 8)
	return func() float64 { return math.Sqrt(math.Float64frombits(binary.LittleEndian.Uint64(read()))) }
}

var _ kernels.RoundingOptimizer = (*Backend)(nil)

// RoundsUpdates implements kernels.RoundingOptimizer: in bf16 and fp16, where the
// 16-bit copies exist, unless a test turned the fused copies off (roundedAdamOff).
func (be *Backend) RoundsUpdates() bool {
	return be.precision != FP32 && !be.halfOff && !be.roundedAdamOff
}

// AdamStepClippedRounded implements kernels.RoundingOptimizer: AdamStepClipped whose
// adam_list also stores RN16 of every updated weight into its copy (optim.cu), in the
// same pass and launch; the copies' addresses travel in the same descriptor upload.
// Against AdamStepClipped then RoundAll at the next step it saves a read of the
// weights and a launch (~150 µs for the 6L-6L copies on an H200).
func (be *Backend) AdamStepClippedRounded(p, g, m, v []kernels.Buffer, half []kernels.HalfTarget, pre float32, maxNorm float64, s kernels.OptimStep) func() float64 {
	if len(g) != len(p) || len(m) != len(p) || len(v) != len(p) {
		panic("cuda backend: AdamStepClippedRounded lists of different lengths")
	}
	defer be.enter()()
	j := be.stageListsWith(be.halfTargetWords(half, p), p, g, m, v)
	if j.n == 0 {
		return func() float64 { return 0 }
	}
	be.roundedUpdates++
	return be.adamClipped(j, pre, maxNorm, s)
}

// AdamStepAllRounded implements kernels.RoundingOptimizer: AdamStepAll writing the
// copies as AdamStepClippedRounded does.
func (be *Backend) AdamStepAllRounded(p, g, m, v []kernels.Buffer, half []kernels.HalfTarget, s kernels.OptimStep) {
	if len(g) != len(p) || len(m) != len(p) || len(v) != len(p) {
		panic("cuda backend: AdamStepAllRounded lists of different lengths")
	}
	defer be.enter()()
	j := be.stageListsWith(be.halfTargetWords(half, p), p, g, m, v)
	if j.n == 0 {
		return
	}
	be.roundedUpdates++
	be.adamList(j, s, 1, nil, 0, nil)
}

// FillAll implements kernels.MultiTensor: every element of every buffer set to v in
// one launch (zeroing the gradients).
func (be *Backend) FillAll(xs []kernels.Buffer, v float32) {
	be.listWithScalar(be.fn.train.fillList, xs, v)
}

// listUpload is a list-kernel descriptor kept on the device (Backend.listCache).
type listUpload struct {
	words []int32
	ptr   uint64
}

// listCacheMax bounds Backend.listCache: a training run meets a handful of lists (the
// parameters, gradients and optimizer states of the clipped Adam step, the gradient
// norm, the gradient clearing), the same ones every update.
const listCacheMax = 16

// stageListWords uploads a list kernel's descriptor words, or returns the device copy
// of the same words uploaded before. The lists of a training run are the same buffers
// every update, so after the first update their descriptors need no copy: an upload
// from pageable memory may wait for the device (the driver's staging memory is freed as
// the stream reaches earlier copies), and the optimizer's, queued behind a whole
// backward, did (the twelfth session's 18L-18L profile, call F: ~3 ms of host time an update
// inside its cuMemcpyHtoDAsync). In a graphed step the words are staged as every
// upload is (the recording reads its own copy).
func (be *Backend) stageListWords(words []int32) uint64 {
	if be.graph.mode != graphOff || len(words) == 0 {
		return be.stageInts(slotList, words)
	}
	for _, u := range be.listCache {
		if slices.Equal(u.words, words) {
			return u.ptr
		}
	}
	if len(be.listCache) >= listCacheMax {
		return be.stageInts(slotList, words)
	}
	bytes := uint64(4 * len(words))
	ptr, err := be.drv.memAlloc(bytes)
	if err != nil {
		return be.stageInts(slotList, words)
	}
	must(be.drv.htodQueued(ptr, unsafe.Pointer(&words[0]), bytes))
	be.listCache = append(be.listCache, listUpload{words: slices.Clone(words), ptr: ptr})
	return ptr
}
