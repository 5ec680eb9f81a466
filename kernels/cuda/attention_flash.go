package cuda

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

// The flash attention kernels (attention_flash.cu) implement kernels.FlashAttention in
// the mixed-precision modes, for any sequence length and head dimensions up to
// flashMaxDim: they keep one float per query row instead of the [B, H, TQ, TK]
// probabilities and draw the dropout mask from its seed. Float arithmetic as the fast
// kernels (attention_fast.go), so FP32 declines and the model keeps the exact,
// CPU-identical stored-probabilities path there.
const (
	flashTile    = 64  // FA_T: query rows and keys per tile
	flashLD      = 68  // FA_LD: row stride of a shared tile, floats
	flashThreads = 256 // FA_THREADS
	flashMaxDim  = flashTile
	// Dynamic shared memory: Q, K, V, P tiles forward; Q, dout, K, V and a score tile
	// in each backward kernel. Both exceed 48 KiB, so the kernels are opted in.
	flashTileBytes = 4 * flashTile * flashLD
	flashFwdShared = 4 * flashTileBytes
	flashBwdShared = 5 * flashTileBytes
)

// flashKernels are the kernel names the launch code looks up: forward, dq, dk and dv.
var flashKernels = [...]string{"attention_flash_fwd", "attention_flash_bwd_q", "attention_flash_bwd_kv"}

// attnFlashFns are one Backend's flash kernels (lazyKernels); ok says whether the
// device lets a block have their shared memory (the attribute is set once here).
type attnFlashFns struct {
	fwd, bwdQ, bwdKV uintptr
	ok               bool
}

// flashFns returns the flash kernels, looked up and opted in on first use. The caller
// holds the Backend (enter).
func (be *Backend) flashFns() *attnFlashFns {
	if f := be.lazy.flash; f != nil {
		return f
	}
	f := &attnFlashFns{fwd: be.kernel(flashKernels[0]), bwdQ: be.kernel(flashKernels[1]), bwdKV: be.kernel(flashKernels[2])}
	optin, err := be.drv.attribute(be.dev, attrMaxSharedPerBlockOptin)
	if err != nil {
		panic(fmt.Errorf("cuda: shared memory bound of the device: %w", err))
	}
	if optin >= flashBwdShared {
		for _, k := range []struct {
			fn    uintptr
			bytes int
		}{{f.fwd, flashFwdShared}, {f.bwdQ, flashBwdShared}, {f.bwdKV, flashBwdShared}} {
			must(be.drv.check("cuFuncSetAttribute", call(be.drv.cuFuncSetAttribute, k.fn,
				funcAttrMaxDynamicShared, uintptr(k.bytes))))
		}
		f.ok = true
	}
	be.lazy.flash = f
	return f
}

// flashShape says whether the flash kernels take a call of this shape (grid limits:
// heads and batches are the grid's y and z).
func flashShape(a kernels.AttentionArgs) bool {
	return a.HeadDim >= 1 && a.HeadDim <= flashMaxDim && a.TK >= 1 &&
		a.Batch <= 65535 && a.Heads <= 65535
}

// flashTiles is the number of 64-row tiles of n rows (the grid's x).
func flashTiles(n int) uint32 { return uint32((n + flashTile - 1) / flashTile) }

// flashTake decides a FlashAttention call: take says whether the flash path owns it,
// work whether there is anything to launch. The caller holds the Backend.
func (be *Backend) flashTake(a kernels.AttentionArgs, lse kernels.Buffer) (take, work bool) {
	if be.precision == FP32 {
		return false, false
	}
	if a.Batch == 0 || a.Heads == 0 || a.TQ == 0 {
		return true, false
	}
	if !flashShape(a) || !be.flashFns().ok {
		return false, false
	}
	// Up to 128 keys the stored-probability float kernels are faster (B 200, T 41:
	// backward 136 µs against 298 µs; at T 512 flash is 12–24× faster than the exact
	// kernels those shapes take), and their memory is small there.
	if fastAttentionShape(a) && !be.flashAlways {
		return false, false
	}
	if n := a.Batch * a.Heads * a.TQ; lse == nil || lse.Len() < n {
		panic(fmt.Sprintf("cuda backend: flash attention needs lse of %d elements", n))
	}
	return true, true
}

// flashDropout is the kernels' view of dropout: threshold 0 means none (DropoutThreshold
// is 0 exactly when p ≤ 0, where DropoutMask would hold ones).
func flashDropout(p float64) (threshold uint64, keep float32) {
	return kernels.DropoutThreshold(p), kernels.DropoutScale(p)
}

// AttentionForwardLSE implements kernels.FlashAttention: attention_flash_fwd, one block
// per (64 query rows, head, batch).
func (be *Backend) AttentionForwardLSE(out, q, k, v kernels.View, a kernels.AttentionArgs, lse kernels.Buffer, dropP float64, dropSeed uint64) bool {
	threshold, keep := flashDropout(dropP)
	defer be.enter()()
	take, work := be.flashTake(a, lse)
	if !work {
		return take
	}
	padp := be.stagePadding(a)
	be.prm.reset().
		views(out, q, k, v).
		ptr(addr(lse)).
		i32(a.Heads).i32(a.HeadDim).i32(a.TQ).i32(a.TK).f32(a.Scale).
		ptr(padp).i64(a.KeyPadStride).i32(boolInt(a.Causal)).i32(a.QueryOffset).
		u64(dropSeed).u64(threshold).f32(keep)
	be.run(be.lazy.flash.fwd, [3]uint32{flashTiles(a.TQ), uint32(a.Heads), uint32(a.Batch)}, flashThreads, flashFwdShared)
	return true
}

// AttentionBackwardLSE implements kernels.FlashAttention in two launches without
// atomics: attention_flash_bwd_q per (64 query rows, head, batch) writes dq and the
// rows' Δ = dout·out, then attention_flash_bwd_kv per (64 keys, head, batch) reads Δ
// and writes dk and dv. Δ lives in a scratch buffer of Batch·Heads·TQ floats that joins
// the open scope.
func (be *Backend) AttentionBackwardLSE(dq, dk, dv, dout, q, k, v, out kernels.View, a kernels.AttentionArgs, lse kernels.Buffer, dropP float64, dropSeed uint64) bool {
	threshold, keep := flashDropout(dropP)
	defer be.enter()()
	take, work := be.flashTake(a, lse)
	if !work {
		return take
	}
	delta := be.scoped(be.newBuffer(a.Batch * a.Heads * a.TQ)).dptr()
	padp := be.stagePadding(a)
	be.prm.reset().
		views(dq, dout, q, k, v, out).
		ptr(addr(lse)).ptr(delta).
		i32(a.Heads).i32(a.HeadDim).i32(a.TQ).i32(a.TK).f32(a.Scale).
		ptr(padp).i64(a.KeyPadStride).i32(boolInt(a.Causal)).i32(a.QueryOffset).
		u64(dropSeed).u64(threshold).f32(keep)
	be.run(be.lazy.flash.bwdQ, [3]uint32{flashTiles(a.TQ), uint32(a.Heads), uint32(a.Batch)}, flashThreads, flashBwdShared)
	be.prm.reset().
		views(dk, dv, dout, q, k, v).
		ptr(addr(lse)).ptr(delta).
		i32(a.Heads).i32(a.HeadDim).i32(a.TQ).i32(a.TK).f32(a.Scale).
		ptr(padp).i64(a.KeyPadStride).i32(boolInt(a.Causal)).i32(a.QueryOffset).
		u64(dropSeed).u64(threshold).f32(keep)
	be.run(be.lazy.flash.bwdKV, [3]uint32{flashTiles(a.TK), uint32(a.Heads), uint32(a.Batch)}, flashThreads, flashBwdShared)
	return true
}

var _ kernels.FlashAttention = (*Backend)(nil)
