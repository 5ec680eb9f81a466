package cuda

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

// The float attention kernels (attention_fast.cu) serve the mixed-precision modes
// (Options.Precision BF16/FP16): there the GEMMs around attention already differ from
// the CPU by ~1e-3, so attention trades the exact kernels' double sums in the CPU's order
// for fp32 FMA accumulation and shuffle reductions (relative error ~1e-7, bound 1e-5 in
// gpu_attention_fast_test.go). FP32 keeps the exact kernels. Shapes outside the fast
// kernels' bounds (more than afMaxKeys keys, head dimension over afMaxDim, a backward
// whose tiles exceed the device's shared memory) take the exact kernels in every mode.
const (
	afRows    = 4   // AF_R: query rows (or keys) per warp pass
	afThreads = 256 // AF_THREADS: the backward's block, the forward's largest
	afMaxKeys = 128 // a lane holds keys lane + 32·c, c < 4
	afMaxDim  = 64  // a lane owns output columns lane and lane + 32
	// afShared is the dynamic shared memory a launch may use without opting in.
	afShared = 48 * 1024
	// cuFuncSetAttribute's CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES.
	funcAttrMaxDynamicShared = 8
)

// afKernels are the kernel names, forward then backward, by NC = ⌈TK/32⌉ (1…4).
var afKernels = [...]string{
	"attention_fast_fwd1", "attention_fast_fwd2", "attention_fast_fwd3", "attention_fast_fwd4",
	"attention_fast_bwd1", "attention_fast_bwd2", "attention_fast_bwd3", "attention_fast_bwd4",
}

// attnFastFns are one Backend's fast kernels and what it has told the driver about
// them, looked up on first use and kept in the Backend (lazyKernels).
type attnFastFns struct {
	fwd, bwd  [4]uintptr
	optinMax  int    // the device's bound on dynamic shared memory per block, opted in
	bwdShared [4]int // dynamic shared memory each backward kernel is allowed beyond afShared
}

// fastFns returns the fast kernels. The caller holds the Backend (enter).
func (be *Backend) fastFns() *attnFastFns {
	if f := be.lazy.fastAttn; f != nil {
		return f
	}
	f := &attnFastFns{}
	var dst [len(afKernels)]uintptr
	for i, name := range afKernels {
		dst[i] = be.kernel(name)
	}
	copy(f.fwd[:], dst[:4])
	copy(f.bwd[:], dst[4:])
	optin, err := be.drv.attribute(be.dev, attrMaxSharedPerBlockOptin)
	if err != nil {
		panic(fmt.Errorf("cuda: shared memory bound of the device: %w", err))
	}
	f.optinMax = max(optin, afShared)
	be.lazy.fastAttn = f
	return f
}

// fastAttentionShape says whether the fast kernels take a call of this shape.
func fastAttentionShape(a kernels.AttentionArgs) bool {
	return a.Batch >= 1 && a.Heads >= 1 && a.TQ >= 1 && a.TK >= 1 && a.TK <= afMaxKeys &&
		a.HeadDim >= 1 && a.HeadDim <= afMaxDim && a.Batch <= 65535 && a.Heads <= 65535
}

func afQuad(n int) int { return (n + 3) &^ 3 }

// afLdk is the row stride of a tile that lanes read on distinct rows with float4 loads:
// the head dimension rounded up to a multiple of 4 whose quotient by 4 is odd, so the
// 8 lanes of a quarter-warp touch 8 distinct 16-byte bank groups.
func afLdk(d int) int {
	l := afQuad(d)
	if l/4%2 == 0 {
		l += 4
	}
	return l
}

// afNC is the number of keys per lane, ⌈TK/32⌉.
func afNC(tk int) int { return (tk + 31) / 32 }

// afForwardPlan is a launch of attention_fast_fwdNC: tiles × Heads × Batch blocks of
// warps warps, each warp afRows query rows. vOff is the float offset of a separate
// values tile in shared memory (0: the values reuse the keys' tile).
type afForwardPlan struct {
	warps, tiles, ldk, lds, shared, vOff int
}

// afForwardShared is the forward's dynamic shared memory: keys/values [TK4][ldk], then
// per warp afRows rows of lds floats.
func afForwardShared(a kernels.AttentionArgs, warps int) (ldk, lds, bytes int) {
	ldk = afLdk(a.HeadDim)
	lds = max(afQuad(a.HeadDim), afQuad(a.TK))
	return ldk, lds, 4 * (afQuad(a.TK)*ldk + warps*afRows*lds)
}

// planFastForward picks the block: up to 8 warps while the shared memory stays within
// afShared (one warp always fits: 37 KiB at TK 128, D 64), fewer when batch × heads
// alone would leave SMs idle, then the rows spread evenly over the tiles. Only the grid
// depends on it: a row's arithmetic is the same in any tile.
func planFastForward(a kernels.AttentionArgs, sms int) afForwardPlan {
	groups := (a.TQ + afRows - 1) / afRows
	w := min(afThreads/32, groups)
	for w > 1 {
		if _, _, b := afForwardShared(a, w); b <= afShared {
			break
		}
		w--
	}
	tiles := (groups + w - 1) / w
	for w > 1 && a.Batch*a.Heads*tiles < 4*max(sms, 1) {
		w = (w + 1) / 2
		tiles = (groups + w - 1) / w
	}
	w = (groups + tiles - 1) / tiles
	ldk, lds, bytes := afForwardShared(a, w)
	p := afForwardPlan{warps: w, tiles: tiles, ldk: ldk, lds: lds, shared: bytes}
	// A second tile for the values lets the kernel load them with the keys rather than
	// after the softmax (one latency less per block). Only within afShared: at the bench
	// shape (TK 41, D 64, 6 warps) it is 30 KiB, and registers, not shared memory, bound
	// the blocks per SM there.
	if vt := 4 * afQuad(a.TK) * ldk; bytes+vt <= afShared {
		p.vOff = bytes / 4
		p.shared = bytes + vt
	}
	return p
}

// afBackwardShared is the backward's dynamic shared memory (attention_fast.cu):
// X = max(TK4·ldk, TQ·D4), Y = TQ4·D4, Z = TQ4·TK4 floats.
func afBackwardShared(a kernels.AttentionArgs) (ldk, bytes int) {
	ldk = afLdk(a.HeadDim)
	d4, tk4, tq4 := afQuad(a.HeadDim), afQuad(a.TK), afQuad(a.TQ)
	return ldk, 4 * (max(tk4*ldk, a.TQ*d4) + tq4*d4 + tq4*tk4)
}

// launchFastForward enqueues attention_fast_fwdNC; kvp and padp are staged device copies
// of the KV index and the key padding (0: none), headProbs and dropMask device
// addresses (0: none). The caller holds the Backend.
func (be *Backend) launchFastForward(out, q, k, v kernels.View, a kernels.AttentionArgs, kvp, padp, headProbs, dropMask uint64) {
	p := planFastForward(a, be.info.SMs)
	be.prm.reset().
		views(out, q, k, v).
		i32(a.Heads).i32(a.HeadDim).i32(a.TQ).i32(a.TK).i32(p.ldk).i32(p.lds).f32(a.Scale).
		ptr(kvp).ptr(padp).i64(a.KeyPadStride).
		i32(boolInt(a.Causal)).i32(a.QueryOffset).
		ptr(headProbs).ptr(dropMask).i32(p.vOff)
	grid := [3]uint32{uint32(p.tiles), uint32(a.Heads), uint32(a.Batch)}
	be.run(be.fastFns().fwd[afNC(a.TK)-1], grid, uint32(32*p.warps), uint32(p.shared))
}

// attentionForwardFast is AttentionForward on attention_mma_fwd (tensor cores, where
// mmaUsable) or attention_fast_fwd; false (nothing done) when the shape is outside the
// fast kernels.
func (be *Backend) attentionForwardFast(out, q, k, v kernels.View, a kernels.AttentionArgs, probs, dropMask kernels.Buffer) bool {
	if !fastAttentionShape(a) {
		return false
	}
	a.KVIndex = nil // not used in training (the interface says so)
	checkTrainAttention(a, probs, dropMask)
	defer be.enter()()
	padp := be.stagePadding(a)
	if be.mmaForward(out, q, k, v, a, padp, probs, amDropout{mask: dropMask}) {
		return true
	}
	be.launchFastForward(out, q, k, v, a, 0, padp, addr(probs), addr(dropMask))
	return true
}

// attentionBackwardFast is AttentionBackward on the tensor-core kernels (mmaBackward,
// where mmaUsable) or attention_fast_bwd, one block per (head, batch); false (nothing done)
// when the shape is outside the fast kernels or its tiles exceed the device's shared
// memory (TQ and TK near 128 need the opt-in beyond 48 KiB; much longer query sequences
// need more than any device has).
func (be *Backend) attentionBackwardFast(dq, dk, dv, dout, q, k, v kernels.View, a kernels.AttentionArgs, probs, dropMask kernels.Buffer) bool {
	if !fastAttentionShape(a) {
		return false
	}
	a.KVIndex = nil
	checkTrainAttention(a, probs, dropMask)
	ldk, shared := afBackwardShared(a)
	defer be.enter()()
	if be.mmaBackward(dq, dk, dv, dout, q, k, v, a, probs, amDropout{mask: dropMask}) {
		return true
	}
	f := be.fastFns()
	nc := afNC(a.TK)
	if shared > f.optinMax {
		return false
	}
	fn := f.bwd[nc-1]
	if shared > afShared && shared > f.bwdShared[nc-1] {
		// Allow the device's whole bound once, rather than growing it shape by shape.
		must(be.drv.check("cuFuncSetAttribute", call(be.drv.cuFuncSetAttribute, fn,
			funcAttrMaxDynamicShared, uintptr(f.optinMax))))
		f.bwdShared[nc-1] = f.optinMax
	}
	be.prm.reset().
		views(dq, dk, dv, dout, q, k, v).
		ptr(addr(probs)).ptr(addr(dropMask)).
		i32(a.Heads).i32(a.HeadDim).i32(a.TQ).i32(a.TK).i32(ldk).f32(a.Scale)
	be.run(fn, [3]uint32{1, uint32(a.Heads), uint32(a.Batch)}, afThreads, uint32(shared))
	return true
}

// attentionFast is Backend.Attention on attention_fast_fwd (inference: KV index, query
// offset, decode steps, head-averaged probabilities); false (nothing done) when the
// shape is outside the fast kernels.
func (be *Backend) attentionFast(out, q, k, v kernels.View, a kernels.AttentionArgs) bool {
	if !fastAttentionShape(a) {
		return false
	}
	defer be.enter()()
	var kvp uint64
	if a.KVIndex != nil {
		kvp = be.stageInts(slotKV, a.KVIndex)
	}
	padp := be.stagePadding(a)
	var head *buffer
	var headp uint64
	if a.Probs != nil {
		head = be.newBuffer(a.Batch * a.Heads * a.TQ * a.TK)
		headp = head.dptr()
	}
	be.launchFastForward(out, q, k, v, a, kvp, padp, headp, 0)
	if head != nil {
		n := a.TQ * a.TK
		be.prm.reset().ptr(addr(a.Probs)).ptr(headp).i32(a.Batch).i32(a.Heads).i64(n)
		be.elem(be.fn.meanHeads, int64(a.Batch)*int64(n))
	}
	return true
}
