package cuda

import (
	"fmt"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
)

// viewAddr is the device address of a view's first element.
func viewAddr(w kernels.View) uint64 {
	if halfOf(w.Buf) != nil {
		// Only the launches that take 16-bit views (views16) reach them; anything else
		// would read them as float32.
		panic("cuda backend: a 16-bit view where a kernel reads float32 (16-bit attention operands go only to the calls kernels.HalfAttention and kernels.HalfAttentionInputs accept)")
	}
	return addr(w.Buf) + uint64(w.Off)*4
}

// checkTrainAttention panics on arguments the training kernels do not take: they read
// keys of batch b itself (no KVIndex) and index probs/masks as [Batch, Heads, TQ, TK].
func checkTrainAttention(a kernels.AttentionArgs, probs, dropMask kernels.Buffer) {
	n := a.Batch * a.Heads * a.TQ * a.TK
	if a.KVIndex != nil {
		panic("cuda backend: training attention with a KV index")
	}
	if probs == nil || probs.Len() < n || (dropMask != nil && dropMask.Len() < n) {
		panic(fmt.Sprintf("cuda backend: training attention needs probs (and masks) of %d elements", n))
	}
	if a.Batch > 65535 || a.Heads > 65535 {
		panic(fmt.Sprintf("cuda backend: attention batch %d or heads %d over the grid limit", a.Batch, a.Heads))
	}
}

// stagePadding uploads the key padding mask (a Go bool is one byte holding 0 or 1, the
// layout the kernels read); 0 when there is none.
func (be *Backend) stagePadding(a kernels.AttentionArgs) uint64 {
	if len(a.KeyPadding) == 0 {
		return 0
	}
	return be.stage(slotPad, unsafe.Pointer(&a.KeyPadding[0]), len(a.KeyPadding))
}

// AttentionForward implements kernels.Trainer. In the 16-bit precisions, the float
// kernels of attention_fast.go where the shape allows; else attention_tiled for short
// sequences, else the inference row kernel. All store the per-head probabilities into
// probs and apply the dropout mask to them before they weight the values.
func (be *Backend) AttentionForward(out, q, k, v kernels.View, a kernels.AttentionArgs, probs, dropMask kernels.Buffer) {
	if be.precision != FP32 && be.attentionForwardFast(out, q, k, v, a, probs, dropMask) {
		return
	}
	if a.Batch == 0 || a.TQ == 0 || a.Heads == 0 {
		return
	}
	a.KVIndex = nil // not used in training (the interface says so)
	checkTrainAttention(a, probs, dropMask)
	tiled := be.useTiledForward(a)
	shared := 4 * (a.HeadDim + a.TK)
	if !tiled && shared > maxAttnShared {
		panic(fmt.Sprintf("cuda backend: attention over %d keys exceeds the kernel's shared-memory bound", a.TK))
	}
	defer be.enter()()
	padp := be.stagePadding(a)
	if tiled {
		be.launchTiledForward(out, q, k, v, a, 0, padp, addr(probs), addr(dropMask))
		return
	}
	be.prm.reset().
		views(out, q, k, v).
		i32(a.Heads).i32(a.HeadDim).i32(a.TQ).i32(a.TK).f32(a.Scale).
		ptr(0).ptr(padp).i64(a.KeyPadStride).
		i32(boolInt(a.Causal)).i32(a.QueryOffset).
		ptr(addr(probs)).ptr(addr(dropMask))
	be.run(be.fn.attention, [3]uint32{uint32(a.TQ), uint32(a.Heads), uint32(a.Batch)}, blockAttn, uint32(shared))
}

// AttentionBackward implements kernels.Trainer. In the 16-bit precisions, the float
// kernel of attention_fast.go where the shape allows; else attention_bwd_tiled, one
// block per (batch, head), when TQ, TK and the head dimension are at most attnTileMax; else two
// passes of row kernels (attention.cu): per query row, dS and dq; per key row, dk and
// dv, with dS a double scratch of the probabilities' size. Padding and causal masks
// need no arguments here: masked keys have probability 0 and every sum skips them, as
// the CPU does.
func (be *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v kernels.View, a kernels.AttentionArgs, probs, dropMask kernels.Buffer) {
	if be.precision != FP32 && be.attentionBackwardFast(dq, dk, dv, dout, q, k, v, a, probs, dropMask) {
		return
	}
	if a.Batch == 0 || a.TQ == 0 || a.Heads == 0 || a.TK == 0 {
		return
	}
	a.KVIndex = nil
	checkTrainAttention(a, probs, dropMask)
	defer be.enter()()
	if be.useTiledBackward(a) {
		be.launchTiledBackward(dq, dk, dv, dout, q, k, v, a, addr(probs), addr(dropMask))
		return
	}
	ds := be.newDoubles(a.Batch * a.Heads * a.TQ * a.TK)
	be.prm.reset().
		views(dq, dout, k, v).
		ptr(addr(probs)).ptr(addr(dropMask)).ptr(ds.dptr()).
		i32(a.Heads).i32(a.HeadDim).i32(a.TQ).i32(a.TK).f32(a.Scale)
	be.run(be.fn.train.attentionBwdQ, [3]uint32{uint32(a.TQ), uint32(a.Heads), uint32(a.Batch)}, blockAttn, 0)
	// The key pass has one thread per head dimension: a block of the next multiple of
	// 32 (at most blockAttn; larger heads loop).
	block := uint32(min(max((a.HeadDim+31)/32*32, 32), blockAttn))
	be.prm.reset().
		views(dk, dv, q, dout).
		ptr(addr(probs)).ptr(addr(dropMask)).ptr(ds.dptr()).
		i32(a.Heads).i32(a.HeadDim).i32(a.TQ).i32(a.TK).f32(a.Scale)
	be.run(be.fn.train.attentionBwdKV, [3]uint32{uint32(a.TK), uint32(a.Heads), uint32(a.Batch)}, block, 0)
}
