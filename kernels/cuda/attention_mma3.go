package cuda

import "github.com/xform-dev/xform/kernels"

// The third tensor-core kernels (attention_mma3_fwd/bwd in attention_mma.cu): the second
// kernels' arithmetic in persistent blocks that fetch the next work item (cp.async into
// a shared landing area) while they compute the current one, for the calls the training
// step makes (no stored mask: a drawn one or none). They run inside mmaForward and
// mmaBackward's second-kernel branch, so the dispatch and the results (bits) are the
// second kernels'; only the speed differs.
//
// Each comes in two variants: attention_mma3_fwd/bwd as first measured, and the "bits"
// variants attention_mma3_fwd_b/bwd_b (the default up to am3BitsMaxKeys keys), which
// draw an item's dropout keep bits with the whole block into a shared bitmap before its
// compute, so the per-element loops of the softmax and of the backward's phase A run
// branch-free (attention_mma.cu, am3_keep_bits). The same bits either way; am3Switch.old keeps the first variant
// (TestAttentionMMA3SameBits compares both with the second kernels, TestAttentionMMA3Timing
// times both).

const (
	am3FwdMinBlocks = 4    // AM3_FWD_MINB: blocks of 128 threads per SM the registers allow
	am3BwdMinBlocks = 2    // AM3_BWD_MINB: blocks of 256 threads
	am3Reserved     = 1024 // shared memory the driver keeps per block (sm_80 and newer)
	am3MaxBlocks    = 32   // resident blocks per SM, sm_80 and newer
	am3MaxThreads   = 2048 // resident threads per SM
)

// am3Fns are the third kernels and their switches (part of attnMMAFns).
type am3Fns struct {
	fwd, bwd         uintptr
	fwdB, bwdB       uintptr    // the bits variants (attention_mma3_fwd_b, attention_mma3_bwd_b)
	fwdBN, bwdBN     [2]uintptr // their short-key forms for ≤ 2 and ≤ 3 key blocks (_b2, _b3)
	fwdOpt, bwdOpt   bool       // allowed the device's whole shared memory per block
	fwdBOpt, bwdBOpt bool
	fwdBNOpt         [2]bool
	bwdBNOpt         [2]bool
	sharedPerSM      int // the device's shared memory per SM
	sw               am3Switch
}

// am3Switch are the tests' switches of the third kernels.
type am3Switch struct {
	off     bool // keep the second kernels
	force   bool // take the third kernels wherever they fit (not only where they measured faster)
	maxGrid int  // at most this many blocks (0: no bound), to make blocks loop over many items
	old     bool // the first variant (attention_mma3_fwd/bwd) instead of the bits variant
	// wide: the bits variant sized for 4 key blocks at every key length (_b, as before
	// the short-key forms _b2/_b3; XFORM_CUDA_AM3NT=0 sets it at New: Backend.am3Wide).
	wide bool
}

// bitsKernels returns the bits variant's forward and backward for a's keys, with their
// shared-memory opt-in flags: attention_mma3_*_b2 up to 32 keys, _b3 up to 48 (the same
// bits, less dead work: attention_mma.cu, AM3_B_NT), _b beyond or with sw.wide.
func (t *am3Fns) bitsKernels(a kernels.AttentionArgs) (fwd, bwd uintptr, fwdOpt, bwdOpt *bool) {
	nt := (a.TK + 15) / 16
	if t.sw.wide || nt > 3 {
		return t.fwdB, t.bwdB, &t.fwdBOpt, &t.bwdBOpt
	}
	i := max(nt, 2) - 2
	return t.fwdBN[i], t.bwdBN[i], &t.fwdBNOpt[i], &t.bwdBNOpt[i]
}

// Where the third kernels run by default, from TestAttentionMMA3Timing on the H200
// (bf16, seeded dropout, B·T ≈ 8000; µs per call, second → third kernels):
//
//	T 20: forward 56.8 → 62.7, backward 97.5 → 70.4
//	T 28: forward 48.4 → 36.6, backward 88.8 → 62.7
//	T 35: forward 62.3 → 48.1, backward 87.6 → 74.2
//	T 41: forward 67.2 → 52.0, backward 93.6 → 84.5
//	T 64: forward 59.2 → 48.0, backward 104.1 → 92.9 (1 block per SM)
//
// The forward wants at least 2 resident blocks per SM and 24 keys (T 20 was slower, T 28
// faster; the boundary between them was not measured); the backward runs there whenever
// one block fits. Those were the first variant's times; the bits variant (the default)
// has the same plans but for its bitmap (≤ 528 bytes; the blocks per SM unchanged at T
// 28–64, TestAttentionMMA3Plans checks T 41; T 20's forward goes from 7 to 6). The same
// rule holds for it but for the forward's keys (am3FwdMinKeysBits: it is faster than
// the second kernels at T 20 too); it measured faster than the first variant at T 20–41
// and slower at T 64 (am3BitsMaxKeys).
const (
	am3FwdMinResident = 2
	am3FwdMinKeys     = 24
	am3BwdMinResident = 1
)

// am3BitsMaxKeys bounds the key lengths where the bits variant runs by default. On the
// H200 (TestAttentionMMA3Timing, eighth session, bf16, B·T ≈ 8000) it was faster at T
// 20–41 (backward 1.01–1.06×, forward up to 1.08×) and slower at T 64 (forward 47.4 →
// 56.0 µs, backward 91.8 → 95.8); the cut is T 41's three 16-key tiles, the boundary
// between 41 and 64 unmeasured.
const am3BitsMaxKeys = 48

// firstVariant says whether a runs on the first variant (attention_mma3_fwd/bwd): the
// old switch, or keys past am3BitsMaxKeys unless the tests force the third kernels (and
// so the bits variant, at every shape).
func (t *am3Fns) firstVariant(a kernels.AttentionArgs) bool {
	return t.sw.old || !t.sw.force && a.TK > am3BitsMaxKeys
}

// am3FwdMinKeysBits is am3FwdMinKeys for the bits variant: on the H200 (eighth
// session, B 400, T 20, bf16) its forward took 43.5 µs against the second kernels'
// 56.6, where the first variant's had taken 62.0; shorter keys were not measured.
const am3FwdMinKeysBits = 20

// am3FwdMinKeysH16 is am3FwdMinKeys for the 16-bit-input bits kernels
// (attention_mma3_fwd_hb*): on the H200 (eleventh session, B 400, T 20, bf16) they took
// 28.0 µs against the second kernels' (_h) 56.1, the gap as wide as at T 28–64, so no
// bound on the keys; TestAttentionInputs16Timing also times T 12.
const am3FwdMinKeysH16 = 1

// fwdMinKeysH is fwdTakes's minKeys for the 16-bit-input forward of a.
func (t *am3Fns) fwdMinKeysH(a kernels.AttentionArgs) int {
	if t.firstVariant(a) {
		return am3FwdMinKeys
	}
	return am3FwdMinKeysH16
}

// fwdTakes says whether the forward of a, planned as p, runs on the third kernels:
// where it has at least minKeys keys (am3FwdMinKeys, or am3FwdMinKeysBits for the bits
// variant) and enough resident blocks.
func (t *am3Fns) fwdTakes(a kernels.AttentionArgs, p am3Plan, optinMax, minKeys int) bool {
	if t.sw.off || p.shared > optinMax || p.perSM < 1 {
		return false
	}
	return t.sw.force || p.perSM >= am3FwdMinResident && a.TK >= minKeys
}

// fwdMinKeys is fwdTakes's minKeys for the float32-input forward of a.
func (t *am3Fns) fwdMinKeys(a kernels.AttentionArgs) int {
	if t.firstVariant(a) {
		return am3FwdMinKeys
	}
	return am3FwdMinKeysBits
}

// bwdTakes says the same for the backward.
func (t *am3Fns) bwdTakes(p am3Plan, optinMax int) bool {
	if t.sw.off || p.shared > optinMax || p.perSM < 1 {
		return false
	}
	return t.sw.force || p.perSM >= am3BwdMinResident
}

// am3Plan is a third-kernel launch: grid blocks of warps warps, shared bytes each,
// perSM of them resident per SM; tiles query tiles per (b, h) (forward).
type am3Plan struct{ warps, tiles, shared, perSM, grid, items int }

// am3Resident is how many blocks of threads threads and shared bytes fit on one SM, with
// registers for minBlocks blocks of boundThreads threads (__launch_bounds__).
func am3Resident(threads, shared, minBlocks, boundThreads, sharedPerSM int) int {
	return max(0, min(minBlocks*boundThreads/threads, sharedPerSM/(shared+am3Reserved), am3MaxBlocks, am3MaxThreads/threads))
}

// am3Grid spreads items over at most sms·perSM blocks evenly: each block takes
// ⌈items/resident⌉ of them, and no more blocks are launched than that needs, so no block
// has one item more than most.
func am3Grid(items, sms, perSM, maxGrid int) int {
	res := max(sms*perSM, 1)
	if maxGrid > 0 {
		res = min(res, maxGrid)
	}
	per := (items + res - 1) / res
	return max((items+per-1)/per, 1)
}

// planMMA3Forward: planMMA2Forward's blocks and tiles (no stored mask), then the landing
// area: the Q rows [16·warps][64] and K, V rows [TK][64], fp32.
func planMMA3Forward(a kernels.AttentionArgs, sms, sharedPerSM, maxGrid int) am3Plan {
	p2 := planMMA2Forward(a, false)
	p := am3Plan{warps: p2.warps, tiles: p2.tiles, items: p2.tiles * a.Heads * a.Batch}
	p.shared = p2.shared + 4*amDim*(16*p.warps+2*a.TK)
	p.perSM = am3Resident(32*p.warps, p.shared, am3FwdMinBlocks, 128, sharedPerSM)
	p.grid = am3Grid(p.items, sms, max(p.perSM, 1), maxGrid)
	return p
}

// amBackwardWarps3: phase A's query blocks and phase B's 2·NT items each in one pass.
func amBackwardWarps3(a kernels.AttentionArgs) int {
	return max(amBlocks16(a.TQ), 2*amBlocks16(a.TK))
}

// planMMA3Backward: attention_mma2_bwd's shared memory without a stored mask, then the
// landing area: q, k, v, dout rows ([TQ], [TK], [TK], [TQ] × 64) and P (TQ·TK), fp32.
func planMMA3Backward(a kernels.AttentionArgs, sms, sharedPerSM, maxGrid int) am3Plan {
	p := am3Plan{warps: amBackwardWarps3(a), tiles: 1, items: a.Heads * a.Batch}
	p.shared = amBackwardShared2(a, false) + 4*amDim*(2*a.TQ+2*a.TK) + 4*a.TQ*a.TK
	p.perSM = am3Resident(32*p.warps, p.shared, am3BwdMinBlocks, 256, sharedPerSM)
	p.grid = am3Grid(p.items, sms, max(p.perSM, 1), maxGrid)
	return p
}

// am3KeepBytes is am3_keep_words's bitmap for n mask elements, in bytes: a bit each, two
// words of slack for am3_row_bits, rounded up to 16 bytes.
func am3KeepBytes(n int) int {
	return 4 * (((n+31)/32 + 2 + 3) &^ 3)
}

// planMMA3ForwardB is planMMA3Forward with the bits variant's bitmap of a query tile's
// rows (attention_mma3_fwd_b).
func planMMA3ForwardB(a kernels.AttentionArgs, sms, sharedPerSM, maxGrid int) am3Plan {
	p := planMMA3Forward(a, sms, sharedPerSM, maxGrid)
	p.shared += am3KeepBytes(16 * p.warps * a.TK)
	p.perSM = am3Resident(32*p.warps, p.shared, am3FwdMinBlocks, 128, sharedPerSM)
	p.grid = am3Grid(p.items, sms, max(p.perSM, 1), maxGrid)
	return p
}

// planMMA3BackwardB is planMMA3Backward with the bitmap of a (b, h)'s TQ·TK elements
// (attention_mma3_bwd_b).
func planMMA3BackwardB(a kernels.AttentionArgs, sms, sharedPerSM, maxGrid int) am3Plan {
	p := planMMA3Backward(a, sms, sharedPerSM, maxGrid)
	p.shared += am3KeepBytes(a.TQ * a.TK)
	p.perSM = am3Resident(32*p.warps, p.shared, am3BwdMinBlocks, 256, sharedPerSM)
	p.grid = am3Grid(p.items, sms, max(p.perSM, 1), maxGrid)
	return p
}

// planForward is the float32-input forward's plan for the variant the switches choose.
func (t *am3Fns) planForward(a kernels.AttentionArgs, sms int) am3Plan {
	if t.firstVariant(a) {
		return planMMA3Forward(a, sms, t.sharedPerSM, t.sw.maxGrid)
	}
	return planMMA3ForwardB(a, sms, t.sharedPerSM, t.sw.maxGrid)
}

// planBackward is the same for the backward.
func (t *am3Fns) planBackward(a kernels.AttentionArgs, sms int) am3Plan {
	if t.firstVariant(a) {
		return planMMA3Backward(a, sms, t.sharedPerSM, t.sw.maxGrid)
	}
	return planMMA3BackwardB(a, sms, t.sharedPerSM, t.sw.maxGrid)
}

// am3Aligned says whether every row of the views starts on 16 bytes (the kernels' 16-byte
// cp.async).
func am3Aligned(vs ...kernels.View) bool {
	for _, v := range vs {
		if viewAddr(v)%16 != 0 || v.BatchStride%4 != 0 || v.RowStride%4 != 0 {
			return false
		}
	}
	return true
}

// mma3Forward runs the call on attention_mma3_fwd when it takes it (no stored mask,
// aligned rows, enough resident blocks); false, nothing done, otherwise. The caller
// (mmaForward) holds the Backend and has chosen the second kernels.
func (be *Backend) mma3Forward(out, q, k, v kernels.View, a kernels.AttentionArgs, padp uint64, probs kernels.Buffer, drop amDropout) bool {
	f := be.lazy.mma
	t := &f.third
	switch in16Bits(q, k, v) {
	case 0:
	case 7:
		return be.mma3ForwardH(out, q, k, v, a, padp, probs, drop)
	default:
		return false // mixed: the second kernels' _h variant
	}
	if drop.mask != nil || !am3Aligned(q, k, v) {
		return false
	}
	p := t.planForward(a, be.info.SMs)
	if !t.fwdTakes(a, p, f.optinMax, t.fwdMinKeys(a)) {
		return false
	}
	fn, _, opt, _ := t.bitsKernels(a)
	if t.firstVariant(a) {
		fn, opt = t.fwd, &t.fwdOpt
	}
	be.optIn(fn, p.shared, opt)
	be.prm.reset().views16(out).views(q, k, v).
		i32(a.Heads).i32(a.TQ).i32(a.TK).f32(a.Scale).
		ptr(padp).i64(a.KeyPadStride).
		i32(boolInt(a.Causal)).i32(a.QueryOffset).
		ptr(addr(probs)).ptr(0).i32(be.halfArg()).
		i32(be.viewsFormat(out)).seededArgs(drop).
		i32(p.tiles).i32(p.items)
	be.run(fn, [3]uint32{uint32(p.grid), 1, 1}, uint32(32*p.warps), uint32(p.shared))
	return true
}

// mma3Backward runs the call on attention_mma3_bwd when it takes it, as mma3Forward.
func (be *Backend) mma3Backward(dq, dk, dv, dout, q, k, v kernels.View, a kernels.AttentionArgs, probs kernels.Buffer, drop amDropout) bool {
	f := be.lazy.mma
	t := &f.third
	switch in16Bits(q, k, v, dout) {
	case 0:
	case 15:
		return be.mma3BackwardH(dq, dk, dv, dout, q, k, v, a, probs, drop)
	default:
		return false // mixed: the second kernels' _h variant
	}
	if drop.mask != nil || !am3Aligned(dout, q, k, v) {
		return false
	}
	p := t.planBackward(a, be.info.SMs)
	if !t.bwdTakes(p, f.optinMax) {
		return false
	}
	_, fn, _, opt := t.bitsKernels(a)
	if t.firstVariant(a) {
		fn, opt = t.bwd, &t.bwdOpt
	}
	be.optIn(fn, p.shared, opt)
	be.prm.reset().
		views16(dq, dk, dv).views(dout, q, k, v).
		ptr(addr(probs)).ptr(0).
		i32(a.Heads).i32(a.TQ).i32(a.TK).f32(a.Scale).i32(be.halfArg()).i32(be.viewsFormat(dq, dk, dv)).
		seededArgs(drop).i32(p.items)
	be.run(fn, [3]uint32{uint32(p.grid), 1, 1}, uint32(32*p.warps), uint32(p.shared))
	return true
}

// mma3Taken says whether a call of a's shape with these views and no stored mask would
// run on the third kernels (tests): attention_mma3_*_h when every view is 16-bit. The
// caller holds the Backend.
func (be *Backend) mma3Taken(a kernels.AttentionArgs, backward bool, views ...kernels.View) bool {
	if !be.mmaUsable(a, backward) || !be.mma2(a, backward) {
		return false
	}
	f := be.lazy.mma
	t := &f.third
	if n := in16Bits(views...); n != 0 {
		if n != 1<<len(views)-1 || !am3Aligned16(views...) {
			return false
		}
		bits := !t.firstVariant(a)
		if backward {
			return t.bwdTakes(planMMA3BackwardH(a, be.info.SMs, t.sharedPerSM, t.sw.maxGrid, bits), f.optinMax)
		}
		return t.fwdTakes(a, planMMA3ForwardH(a, be.info.SMs, t.sharedPerSM, t.sw.maxGrid, bits), f.optinMax, t.fwdMinKeysH(a))
	}
	if !am3Aligned(views...) {
		return false
	}
	if backward {
		return t.bwdTakes(t.planBackward(a, be.info.SMs), f.optinMax)
	}
	return t.fwdTakes(a, t.planForward(a, be.info.SMs), f.optinMax, t.fwdMinKeys(a))
}

// setMMA3 sets the third kernels' test switches and returns the previous ones.
func (be *Backend) setMMA3(sw am3Switch) am3Switch {
	defer be.enter()()
	t := &be.mmaFns().third
	old := t.sw
	t.sw = sw
	return old
}
