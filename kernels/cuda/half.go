package cuda

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

var (
	_ kernels.HalfBuffers     = (*Backend)(nil)
	_ kernels.LinearActKeeper = (*Backend)(nil)
)

// half is the kernels.HalfBuffers buffer: n elements in the Backend's 16-bit format
// (bf16 or IEEE half), from the start of an allocation. It is its own type, not a
// buffer, so that dev and addr, which every float32 operation goes through, panic on it
// ("foreign buffer"): only the operations that document a 16-bit operand take it, via
// halfOf.
type half struct {
	a *allocation
	n int
}

func (h *half) Len() int { return h.n }

func (h *half) dptr() uint64 { return h.a.ptr }

// halfOf returns b as a 16-bit buffer, or nil when b is nil or a float32 buffer.
func halfOf(b kernels.Buffer) *half {
	h, _ := b.(*half)
	return h
}

// AllocHalf implements kernels.HalfBuffers: nil in FP32, else n 16-bit elements of a
// block of the step's scope (halfAlign-aligned, as the cuBLASLt plans want; a fresh
// block is). With poisoning on it is filled with NaNs, as AllocUninit's buffers are.
func (be *Backend) AllocHalf(n int) kernels.Buffer {
	if be.precision == FP32 || be.halfOff {
		return nil
	}
	if n < 0 {
		panic(fmt.Sprintf("cuda backend: 16-bit allocation of %d elements", n))
	}
	defer be.enter()()
	words := (n + 1) / 2
	a, err := be.alloc(uint64(max(words, 1)) * 4)
	if err != nil {
		panic(err)
	}
	be.scopeAlloc(a)
	if be.poison && words > 0 {
		nan := uint32(0x7fc07fc0) // two bf16 quiet NaNs
		if be.precision == FP16 {
			nan = 0x7e007e00
		}
		be.memset32(a.ptr, nan, uint64(words))
	}
	return &half{a: a, n: n}
}

// hhLaunch is the kernel and grid for a 16-bit feed-forward elementwise pass over n
// elements: the eight-per-thread kernel fn8, or fn4 (four per thread) under the hh4
// test switch. Both loop grid-stride, so the grid only sizes the work per thread.
func (be *Backend) hhLaunch(fn8, fn4 uintptr, n int) (uintptr, [3]uint32) {
	fn, per := fn8, int64(8)
	if be.fn.half.hh4 {
		fn, per = fn4, 4
	}
	return fn, [3]uint32{grid1D((int64(n)+per-1)/per, blockElem, be.info.SMs), 1, 1}
}

// halfFunctions are the kernels that write 16-bit outputs for kernels.HalfBuffers.
type halfFunctions struct {
	dropoutApply16, dropoutApply2, reluDropoutBwd16 uintptr
	roundList, dropoutApplyHH, reluDropoutBwdHH     uintptr
	dropoutApplyHH8, reluDropoutBwdHH8              uintptr
	dropoutApplyHH8M                                uintptr // dropout_apply_hh8m: with the y > 0 mask (relu_fold.go)
	reluDropoutBwdHH8P                              uintptr // relu_dropout_bwd_hh8p: with column sums (relu_dropout.go)

	// hh4: tests: the 16-bit feed-forward elementwise passes take the previous kernels
	// (dropout_apply_hh, relu_dropout_bwd_hh: four elements per thread) instead of
	// dropout_apply_hh8 and relu_dropout_bwd_hh8, which give the same bits.
	hh4 bool
}

func (f *halfFunctions) add(m map[string]*uintptr) {
	m["dropout_apply16"] = &f.dropoutApply16
	m["dropout_apply2"] = &f.dropoutApply2
	m["relu_dropout_bwd16"] = &f.reluDropoutBwd16
	m["round_list"] = &f.roundList
	m["dropout_apply_hh"] = &f.dropoutApplyHH
	m["relu_dropout_bwd_hh"] = &f.reluDropoutBwdHH
	m["dropout_apply_hh8"] = &f.dropoutApplyHH8
	m["dropout_apply_hh8m"] = &f.dropoutApplyHH8M
	m["relu_dropout_bwd_hh8p"] = &f.reluDropoutBwdHH8P
	m["relu_dropout_bwd_hh8"] = &f.reluDropoutBwdHH8
}

var _ kernels.HalfRounder = (*Backend)(nil)

// RoundAll implements kernels.HalfRounder with one launch (half.cu's round_list) over
// every pair, whatever their number: dst[i] (a 16-bit buffer from AllocHalf) gets
// RN16 of the float32 src[i] (a buffer or a Slice), element for element, the bits
// cast16 gives the same values. A training step calls it once for all of a model's
// Linear weights, so that no Linear casts its weight again.
//
// The descriptor goes through the staging block like the optimizer's lists (in a
// graphed step the arena, so the recorded launch reads this step's copy), and depends
// on the buffers alone: the same pairs give the same launch every step.
func (be *Backend) RoundAll(dst, src []kernels.Buffer) {
	if len(dst) != len(src) {
		panic(fmt.Sprintf("cuda backend: RoundAll of %d sources into %d buffers", len(src), len(dst)))
	}
	if be.precision == FP32 {
		if len(dst) > 0 {
			panic("cuda backend: RoundAll in FP32")
		}
		return
	}
	defer be.enter()()
	be.roundAlls++
	words, kept := roundListDescriptor(dst, src)
	if kept == 0 {
		return
	}
	head := len(words)
	// listTasks skips the empty sources, as roundListDescriptor does.
	words, blocks := listTasks(words, src)
	desc := be.stageInts(slotList, words)
	be.prm.reset().ptr(desc).i32(kept).ptr(desc + 4*uint64(head)).i32(be.outFormat())
	be.run(be.fn.half.roundList, [3]uint32{uint32(blocks), 1, 1}, listThreads, 0)
}

// roundListDescriptor lays out round_list's desc: the 16-bit destinations, the float32
// sources, the lengths, each a little-endian uint64 as two int32 words, for the pairs
// whose source is not empty; it returns the words and the count of pairs kept.
func roundListDescriptor(dst, src []kernels.Buffer) ([]int32, int) {
	var keep []int
	for i, s := range src {
		h, b := halfOf(dst[i]), dev(s)
		if h == nil || b == nil || h.n != b.n {
			panic(fmt.Sprintf("cuda backend: RoundAll pair %d: %T into %T (16-bit buffers of the source's length wanted)", i, s, dst[i]))
		}
		if b.n > 0 {
			keep = append(keep, i)
		}
	}
	if len(keep) == 0 {
		return nil, 0
	}
	words := make([]int32, 0, 6*len(keep))
	put := func(d uint64) { words = append(words, int32(uint32(d)), int32(uint32(d>>32))) }
	for _, i := range keep {
		put(halfOf(dst[i]).dptr())
	}
	for _, i := range keep {
		put(dev(src[i]).dptr())
	}
	for _, i := range keep {
		put(uint64(dev(src[i]).n))
	}
	return words, len(keep)
}

// halfTargetWords lays out adam_list's half list for the parameters p (the kept ones,
// as listDescriptor keeps them: not empty): per parameter the address of the 16-bit
// element that mirrors p[i][0], or 0 when half[i].Buf is nil, as two int32 words each.
// It returns nil when no parameter has a copy (adam_list then gets a null list).
func (be *Backend) halfTargetWords(half []kernels.HalfTarget, p []kernels.Buffer) []int32 {
	if half == nil {
		return nil
	}
	if len(half) != len(p) {
		panic(fmt.Sprintf("cuda backend: %d 16-bit targets for %d parameters", len(half), len(p)))
	}
	var words []int32
	any := false
	for i, x := range p {
		b := dev(x)
		if b == nil || b.n == 0 {
			continue
		}
		var a uint64
		if t := half[i]; t.Buf != nil {
			h := halfOf(t.Buf)
			if h == nil || t.Off < 0 || t.Off+b.n > h.n {
				panic(fmt.Sprintf("cuda backend: 16-bit target %d: %T at %d for %d elements (a 16-bit buffer that holds them wanted)", i, t.Buf, t.Off, b.n))
			}
			if be.precision == FP32 {
				panic("cuda backend: 16-bit copies in FP32")
			}
			a, any = h.dptr()+2*uint64(t.Off), true
		}
		words = append(words, int32(uint32(a)), int32(uint32(a>>32)))
	}
	if !any {
		return nil
	}
	return words
}

// outOf is the address, element count and format (xfOut*) of an operation's output
// that may be float32 or 16-bit.
func (be *Backend) outOf(b kernels.Buffer) (ptr uint64, n int, format int) {
	if h := halfOf(b); h != nil {
		return h.dptr(), h.n, be.outFormat()
	}
	x := dev(b)
	if x == nil {
		return 0, 0, xfOutF32
	}
	return x.dptr(), x.n, xfOutF32
}

// floatAddr is the address of b's values as float32: b itself, or a widened copy
// (widen16) when b is 16-bit. The caller holds the Backend.
func (be *Backend) floatAddr(b kernels.Buffer) uint64 {
	if h := halfOf(b); h != nil {
		return be.widen16(h).dptr()
	}
	return addr(b)
}

// widen16 returns a float32 copy of the 16-bit h in a block of the step's scope, for
// the rare fallbacks that have no 16-bit input path. The caller holds the Backend.
func (be *Backend) widen16(h *half) *buffer {
	b := be.scoped(be.newBuffer(h.n))
	fn := be.fn.bf16ToF32
	if be.precision == FP16 {
		fn = be.fn.f16ToF32
	}
	be.prm.reset().ptr(b.dptr()).ptr(h.dptr()).i64(h.n)
	be.elem(fn, int64(h.n))
	return b
}

// outFormat is the kernels' 16-bit output switch (xform.cuh's XF_OUT_*): which format a
// 16-bit output of this Backend is written in.
func (be *Backend) outFormat() int {
	if be.precision == FP16 {
		return xfOutF16
	}
	return xfOutBF16
}

// The output-format values kernels take for an output that may be 16-bit (XF_OUT_* in
// xform.cuh).
const (
	xfOutF32  = 0
	xfOutBF16 = 1
	xfOutF16  = 2
)

// views16 is views for kernels that take each operand as float32 or 16-bit (their
// format argument says which): a 16-bit view's offset and strides count 16-bit
// elements.
func (p *params) views16(vs ...kernels.View) *params {
	for _, v := range vs {
		a := uint64(0)
		if h := halfOf(v.Buf); h != nil {
			a = h.dptr() + uint64(v.Off)*2
		} else {
			a = viewAddr(v)
		}
		p.ptr(a).i64(v.BatchStride).i64(v.RowStride)
	}
	return p
}

// viewsFormat is the common format (xfOut*) of views that must all be float32 or all
// 16-bit.
func (be *Backend) viewsFormat(vs ...kernels.View) int {
	n := 0
	for _, v := range vs {
		if halfOf(v.Buf) != nil {
			n++
		}
	}
	switch n {
	case 0:
		return xfOutF32
	case len(vs):
		return be.outFormat()
	}
	panic("cuda backend: attention gradients mix 16-bit and float32 buffers")
}

var _ kernels.HalfAttention = (*Backend)(nil)

// Attention16 implements kernels.HalfAttention: the calls whose stored-probabilities
// forward and backward both run on the second tensor-core kernels
// (attention_mma2_fwd/bwd, attention_mma.go), which write a 16-bit output and 16-bit
// gradients, and which the flash kernels decline (flashTake).
func (be *Backend) Attention16(a kernels.AttentionArgs) bool {
	if be.precision == FP32 || be.halfOff || be.flashAlways || !fastAttentionShape(a) || a.KVIndex != nil {
		return false
	}
	defer be.enter()()
	return be.mmaUsable(a, false) && be.mma2(a, false) && be.mmaUsable(a, true) && be.mma2(a, true)
}
