package cuda

import (
	"github.com/xform-dev/xform/kernels"
)

// The tiled attention kernels (attention.cu: attention_tiled, attention_bwd_tiled) stage
// one (batch, head)'s keys and values in shared memory and compute every product matrix
// with register tiles, for the short sequences of training and encoding; the row
// kernels (attention, attention_bwd_q/kv) remain for the rest. Both give the CPU
// backend's bits (the tiled ones also in the two sums the row kernels do as a tree).
const (
	attnTileMax     = 64  // AT_MAX: bound on TK, HeadDim and, in the backward, TQ
	attnTileThreads = 256 // AT_THREADS
)

// useTiledForward says whether attention_tiled takes this call. A decode step (one
// query row) stays on the row kernel: a block per row is the better shape there.
// Backend.tiledOff (tests) sends every call to the row kernels.
func (be *Backend) useTiledForward(a kernels.AttentionArgs) bool {
	return !be.tiledOff && a.TQ > 1 && a.TK >= 1 && a.TK <= attnTileMax && a.HeadDim >= 1 && a.HeadDim <= attnTileMax
}

// useTiledBackward says whether attention_bwd_tiled takes this call: one block holds
// a (batch, head)'s whole TQ×TK matrix of score gradients.
func (be *Backend) useTiledBackward(a kernels.AttentionArgs) bool {
	return !be.tiledOff && a.TQ <= attnTileMax && a.TK >= 1 && a.TK <= attnTileMax && a.HeadDim >= 1 && a.HeadDim <= attnTileMax
}

// attnTiledFns are the tiled kernels of one Backend, looked up in its modules on first
// use and kept in the Backend (lazyKernels).
type attnTiledFns struct{ fwd, bwd uintptr }

// attnTiledKernels are the kernel names the launch code below looks up.
var attnTiledKernels = [...]string{"attention_tiled", "attention_bwd_tiled"}

// tiledFns returns the tiled kernels, looking them up in the loaded modules the first
// time. The caller holds the Backend (enter), so the context is current.
func (be *Backend) tiledFns() *attnTiledFns {
	if f := be.lazy.tiled; f != nil {
		return f
	}
	f := &attnTiledFns{fwd: be.kernel(attnTiledKernels[0]), bwd: be.kernel(attnTiledKernels[1])}
	be.lazy.tiled = f
	return f
}

// attnQueryTile is the number of query rows per block of attention_tiled: at most
// attnTileMax, the rows split evenly over the tiles, and smaller tiles (down to 8 rows)
// when batch × heads alone would leave SMs idle. It sets only the grid: a row's
// arithmetic does not depend on its tile.
func attnQueryTile(a kernels.AttentionArgs, sms int) int {
	nt := (a.TQ + attnTileMax - 1) / attnTileMax
	qt := (a.TQ + nt - 1) / nt
	for qt > 8 && a.Batch*a.Heads*((a.TQ+qt-1)/qt) < 2*max(sms, 1) {
		qt = (qt + 1) / 2
	}
	return qt
}

// launchTiledForward enqueues attention_tiled; kvp and padp are staged device copies
// of the KV index and the key padding (0: none), headProbs and dropMask device
// addresses (0: none). The caller holds the Backend and has checked the grid limits.
func (be *Backend) launchTiledForward(out, q, k, v kernels.View, a kernels.AttentionArgs, kvp, padp, headProbs, dropMask uint64) {
	qt := attnQueryTile(a, be.info.SMs)
	be.prm.reset().
		views(out, q, k, v).
		i32(a.Heads).i32(a.HeadDim).i32(a.TQ).i32(a.TK).i32(qt).f32(a.Scale).
		ptr(kvp).ptr(padp).i64(a.KeyPadStride).
		i32(boolInt(a.Causal)).i32(a.QueryOffset).
		ptr(headProbs).ptr(dropMask)
	grid := [3]uint32{uint32((a.TQ + qt - 1) / qt), uint32(a.Heads), uint32(a.Batch)}
	be.run(be.tiledFns().fwd, grid, attnTileThreads, 0)
}

// launchTiledBackward enqueues attention_bwd_tiled, one block per (head, batch).
func (be *Backend) launchTiledBackward(dq, dk, dv, dout, q, k, v kernels.View, a kernels.AttentionArgs, probs, dropMask uint64) {
	be.prm.reset().
		views(dq, dk, dv, dout, q, k, v).
		ptr(probs).ptr(dropMask).
		i32(a.Heads).i32(a.HeadDim).i32(a.TQ).i32(a.TK).f32(a.Scale)
	be.run(be.tiledFns().bwd, [3]uint32{1, uint32(a.Heads), uint32(a.Batch)}, attnTileThreads, 0)
}
