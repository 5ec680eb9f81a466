package cuda

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

// The tensor-core attention kernels (attention_mma.cu) take the 16-bit modes' training
// attention (AttentionForward, AttentionBackward with stored probabilities) where it
// has the Transformer base shape: head dimension 64, at most 128 keys (and, for the
// backward, 128 query rows), on sm_80 and newer. They round q·scale, k, v, dout, P⊙M and
// dS to the backend's 16-bit type and multiply them on the tensor cores with fp32
// accumulation, as torch.autocast with SDPA does, where the float kernels
// (attention_fast.go) keep every operand in fp32. Other shapes and older devices keep
// the float kernels; Backend.lazy.mma.off (tests) forces them. Up to 64 keys (and 64
// query rows for the backward) the second kernels (attention_mma2_*) run, forward and
// backward; beyond, the first forward (attention_mma_fwd8) and the float backward.
// (A first tensor-core backward, attention_mma_bwd4/8, ran only under a test switch:
// slower than the float kernels at the training shapes, 255 against 136 µs at B 200,
// T 41; removed in the eighth session.)
const (
	amDim      = 64  // AM_D: the head dimension the kernels take
	amLD       = 72  // AM_LD: row stride, 16-bit elements, of a [rows][64] shared tile
	amMaxKeys  = 128 // 8 key blocks of 16 (MAXNT 8)
	amMaxRows  = 128 // the backward keeps every query row of a (b, h) in shared memory
	amFwdWarps = 4   // the forward's block: up to 64 query rows (__launch_bounds__(128))
)

// amKernels are the kernel names: the first forward for MAXNT 4 (TK ≤ 64) and 8, the
// rounding check of TestAttentionMMARounding, then the second and third kernels, their
// 16-bit input variants (attention_mma16.go) and the third kernels' bits variants
// (attention_mma3.go), with their short-key forms for at most 2 and 3 key blocks, and
// the 16-bit-input third kernels' bits variants (hb2, hb3, hb: 2, 3, 4 key blocks), and
// those on packed rows (hr2, hr3, hr: attention_packed.go).
var amKernels = [...]string{"attention_mma_fwd4", "attention_mma_fwd8", "attention_mma_round",
	"attention_mma2_fwd", "attention_mma2_bwd", "attention_mma3_fwd", "attention_mma3_bwd",
	"attention_mma2_fwd_h", "attention_mma2_bwd_h", "attention_mma3_fwd_h", "attention_mma3_bwd_h",
	"attention_mma3_fwd_b", "attention_mma3_bwd_b",
	"attention_mma3_fwd_b2", "attention_mma3_bwd_b2", "attention_mma3_fwd_b3", "attention_mma3_bwd_b3",
	"attention_mma3_fwd_hb2", "attention_mma3_bwd_hb2", "attention_mma3_fwd_hb3", "attention_mma3_bwd_hb3",
	"attention_mma3_fwd_hb", "attention_mma3_bwd_hb",
	"attention_mma3_fwd_hr2", "attention_mma3_bwd_hr2", "attention_mma3_fwd_hr3", "attention_mma3_bwd_hr3",
	"attention_mma3_fwd_hr", "attention_mma3_bwd_hr"}

// am2MaxT bounds the second kernels (attention_mma2_*): TK ≤ 64 forward, TQ and TK ≤ 64
// backward (MAXNT 4, a query block per warp). They replace the first forward there; it
// keeps longer key sequences, and the float backward longer ones in either direction.
const am2MaxT = 64

// attnMMAFns are one Backend's tensor-core kernels (lazyKernels) and the test switch.
type attnMMAFns struct {
	fwd      [2]uintptr // the first forward by MAXNT: 4, 8
	round    uintptr
	fwd2     uintptr // attention_mma2_fwd
	bwd2     uintptr // attention_mma2_bwd
	third    am3Fns  // attention_mma3_fwd/bwd (attention_mma3.go)
	bwd2Opt  bool    // attention_mma2_bwd allowed the device's whole shared memory
	in16     am16Fns // the 16-bit input kernels (attention_mma16.go)
	optinMax int     // the device's bound on dynamic shared memory per block, opted in
	ok       bool    // sm_80 or newer
	off      bool    // tests: keep the float kernels
	// first: tests: the first forward (attention_mma_fwd4/8) also where the second
	// kernels fit, for comparison; the backward then takes the float kernels.
	first bool
}

// mmaFns returns the tensor-core kernel set, looked up on first use. The caller holds
// the Backend (enter).
func (be *Backend) mmaFns() *attnMMAFns {
	if f := be.lazy.mma; f != nil {
		return f
	}
	f := &attnMMAFns{
		fwd:   [2]uintptr{be.kernel(amKernels[0]), be.kernel(amKernels[1])},
		round: be.kernel(amKernels[2]),
		fwd2:  be.kernel(amKernels[3]),
		bwd2:  be.kernel(amKernels[4]),
		third: am3Fns{fwd: be.kernel(amKernels[5]), bwd: be.kernel(amKernels[6]),
			fwdB: be.kernel(amKernels[11]), bwdB: be.kernel(amKernels[12]),
			fwdBN: [2]uintptr{be.kernel(amKernels[13]), be.kernel(amKernels[15])},
			bwdBN: [2]uintptr{be.kernel(amKernels[14]), be.kernel(amKernels[16])},
			sw:    am3Switch{wide: be.am3Wide}},
		in16: am16Fns{fwd2: be.kernel(amKernels[7]), bwd2: be.kernel(amKernels[8]),
			fwd3: be.kernel(amKernels[9]), bwd3: be.kernel(amKernels[10]),
			fwd3B: [3]uintptr{be.kernel(amKernels[17]), be.kernel(amKernels[19]), be.kernel(amKernels[21])},
			bwd3B: [3]uintptr{be.kernel(amKernels[18]), be.kernel(amKernels[20]), be.kernel(amKernels[22])},
			fwd3R: [3]uintptr{be.kernel(amKernels[23]), be.kernel(amKernels[25]), be.kernel(amKernels[27])},
			bwd3R: [3]uintptr{be.kernel(amKernels[24]), be.kernel(amKernels[26]), be.kernel(amKernels[28])}},
		ok: be.info.Major >= 8,
	}
	optin, err := be.drv.attribute(be.dev, attrMaxSharedPerBlockOptin)
	if err != nil {
		panic(fmt.Errorf("cuda: shared memory bound of the device: %w", err))
	}
	f.optinMax = max(optin, afShared)
	perSM, err := be.drv.attribute(be.dev, attrMaxSharedPerSM)
	if err != nil {
		panic(fmt.Errorf("cuda: shared memory per multiprocessor of the device: %w", err))
	}
	f.third.sharedPerSM = perSM
	be.lazy.mma = f
	return f
}

// setMMAOff switches the tensor-core kernels off (tests compare them with the float
// kernels) and returns the previous setting.
func (be *Backend) setMMAOff(off bool) bool {
	defer be.enter()()
	f := be.mmaFns()
	old := f.off
	f.off = off
	return old
}

// mmaShape says whether the tensor-core kernels take a call of this shape: head
// dimension 64, 1…128 keys; backward also 1…128 query rows. (Batch and heads are the
// grid's z and y: fastAttentionShape has bounded them.)
func mmaShape(a kernels.AttentionArgs, backward bool) bool {
	return a.HeadDim == amDim && a.TK >= 1 && a.TK <= amMaxKeys && a.TQ >= 1 &&
		(!backward || a.TQ <= amMaxRows) && a.Batch >= 1 && a.Heads >= 1
}

// amBlocks16 is the number of 16-row blocks of n rows.
func amBlocks16(n int) int { return (n + 15) / 16 }

// amVariant is the kernel index by key blocks: 0 for MAXNT 4 (TK ≤ 64), 1 for 8.
func amVariant(tk int) int {
	if amBlocks16(tk) <= 4 {
		return 0
	}
	return 1
}

// amForwardPlan is a launch of attention_mma_fwd: tiles × Heads × Batch blocks of warps
// warps, a warp per 16 query rows.
type amForwardPlan struct{ warps, tiles, shared int }

// planMMAForward: the query rows in tiles of at most 64 (one block stages K and V once
// for all of them); shared memory Q [16·warps][72], K and V [TKp][72] (16-bit), then
// the TK key-padding bytes, at most 46,208 bytes (no opt-in).
func planMMAForward(a kernels.AttentionArgs) amForwardPlan {
	w := min(amBlocks16(a.TQ), amFwdWarps)
	tiles := (a.TQ + 16*w - 1) / (16 * w)
	tkp := 16 * amBlocks16(a.TK)
	shared := 2*amLD*(16*w+2*tkp) + (a.TK+15)&^15
	return amForwardPlan{warps: w, tiles: tiles, shared: shared}
}

// mmaUsable says whether this Backend would run a call on the tensor-core kernels: a
// forward of mmaShape on the first or the second kernels, a backward only where the
// second ones fit (mma2; the float kernels take the others). The caller holds the
// Backend.
func (be *Backend) mmaUsable(a kernels.AttentionArgs, backward bool) bool {
	if be.precision == FP32 || !mmaShape(a, backward) {
		return false
	}
	f := be.mmaFns()
	if !f.ok || f.off {
		return false
	}
	return !backward || be.mma2(a, true)
}

// mma2 says whether a call mmaUsable takes runs on the second kernels. The caller holds
// the Backend.
func (be *Backend) mma2(a kernels.AttentionArgs, backward bool) bool {
	f := be.mmaFns()
	return !f.first && a.TK <= am2MaxT && (!backward || a.TQ <= am2MaxT && amBackwardShared2(a, true) <= f.optinMax)
}

// setMMAFirst has the first tensor-core kernels taken where the second ones fit (tests)
// and returns the previous setting.
func (be *Backend) setMMAFirst(on bool) bool {
	defer be.enter()()
	f := be.mmaFns()
	old := f.first
	f.first = on
	return old
}

// planMMA2Forward is planMMAForward's launch with attention_mma2_fwd's shared memory:
// Q [16·warps][72], K and V [TKp][72] (16-bit), the tile's mask rows [16·warps][TK]
// (fp32, a multiple of 4; only with a mask), then TK padding bytes rounded to 16. At most
// 44,096 bytes (TK 64, 4 warps): no opt-in.
func planMMA2Forward(a kernels.AttentionArgs, mask bool) amForwardPlan {
	p := planMMAForward(a)
	tkp := 16 * amBlocks16(a.TK)
	p.shared = 2*amLD*(16*p.warps+2*tkp) + (a.TK+15)&^15
	if mask {
		p.shared += 4 * ((16*p.warps*a.TK + 3) &^ 3)
	}
	return p
}

// amBackwardShared2 is attention_mma2_bwd's dynamic shared memory: Qs, K, V, dO
// [·][72] (16-bit), then a region of am2_zbytes (P then dS) and one for M then P⊙M:
// am2_zbytes with a stored mask, else P⊙M's [TQp][TKp+8] 16-bit alone (no mask, or
// one the kernel draws). mma2 decides with the larger, so whether a shape runs there
// does not depend on the mask.
func amBackwardShared2(a kernels.AttentionArgs, mask bool) int {
	tqp, tkp := 16*amBlocks16(a.TQ), 16*amBlocks16(a.TK)
	z := (max(4*a.TQ*a.TK, 2*tqp*(tkp+8)) + 15) &^ 15
	z2 := 2 * tqp * (tkp + 8) // a multiple of 16: tqp is
	if mask {
		z2 = z
	}
	return 2*amLD*(2*tqp+2*tkp) + z + z2
}

// amBackwardWarps2: a warp per query block (phase A in one pass) and at least one per
// key block.
func amBackwardWarps2(a kernels.AttentionArgs) int {
	return max(amBlocks16(a.TQ), amBlocks16(a.TK))
}

func (be *Backend) halfArg() int { return boolInt(be.precision == FP16) }

// amDropout is a tensor-core launch's attention dropout: a stored mask (mask non-nil),
// one the second kernels draw from seed (threshold non-zero, kernels.DropoutThreshold;
// keep is kernels.DropoutScale), or none.
type amDropout struct {
	mask      kernels.Buffer
	seed      uint64
	threshold uint64
	keep      float32
}

// drawn says whether the kernel draws the mask (and needs no shared memory for one).
func (d amDropout) drawn() bool { return d.mask == nil && d.threshold != 0 }

// seededDropout is the drawn mask of kernels.SeededAttention: DropoutMask's threshold
// and scale, computed by the functions the CPU backend uses; p ≤ 0 gives threshold 0,
// no dropout.
func seededDropout(p float64, seed uint64) amDropout {
	return amDropout{seed: seed, threshold: kernels.DropoutThreshold(p), keep: kernels.DropoutScale(p)}
}

// seededArgs appends the second kernels' (seed, threshold, keep) arguments: zeros
// unless the mask is drawn, so a stored or absent mask is not multiplied again.
func (p *params) seededArgs(d amDropout) *params {
	if !d.drawn() {
		return p.u64(0).u64(0).f32(0)
	}
	return p.u64(d.seed).u64(d.threshold).f32(d.keep)
}

// mmaForward runs AttentionForward on attention_mma_fwd when mmaUsable; false (nothing
// done) otherwise. padp is the staged key padding (0: none). The caller holds the
// Backend and has checked the arguments (checkTrainAttention). A drawn mask needs the
// second kernels (the caller has checked mma2: mmaSeeded).
func (be *Backend) mmaForward(out, q, k, v kernels.View, a kernels.AttentionArgs, padp uint64, probs kernels.Buffer, drop amDropout) bool {
	if !be.mmaUsable(a, false) {
		return false
	}
	f := be.lazy.mma
	p, fn := planMMAForward(a), f.fwd[amVariant(a.TK)]
	in16 := in16Bits(q, k, v)
	if !be.mma2(a, false) {
		if halfOf(out.Buf) != nil {
			panic("cuda backend: a 16-bit attention output outside Attention16's calls")
		}
		if in16 != 0 {
			panic("cuda backend: 16-bit attention inputs outside AttentionInputs16's calls")
		}
		if drop.drawn() {
			panic("cuda backend: a drawn attention dropout mask outside the second tensor-core kernels")
		}
		be.prm.reset().views(out, q, k, v)
	} else {
		if be.mma3Forward(out, q, k, v, a, padp, probs, drop) {
			return true
		}
		// Only the second kernels write a 16-bit output (kernels.HalfAttention) and read
		// 16-bit inputs (kernels.HalfAttentionInputs: the _h kernel).
		p, fn = planMMA2Forward(a, drop.mask != nil), f.fwd2
		if in16 != 0 {
			fn = f.in16.fwd2
			f.in16.calls++
		}
		be.prm.reset().views16(out, q, k, v)
	}
	be.prm.
		i32(a.Heads).i32(a.TQ).i32(a.TK).f32(a.Scale).
		ptr(padp).i64(a.KeyPadStride).
		i32(boolInt(a.Causal)).i32(a.QueryOffset).
		ptr(addr(probs)).ptr(addr(drop.mask)).i32(be.halfArg())
	if fn == f.fwd2 || fn == f.in16.fwd2 {
		be.prm.i32(be.viewsFormat(out)).seededArgs(drop)
	}
	if fn == f.in16.fwd2 {
		be.prm.i32(in16)
	}
	grid := [3]uint32{uint32(p.tiles), uint32(a.Heads), uint32(a.Batch)}
	be.run(fn, grid, uint32(32*p.warps), uint32(p.shared))
	return true
}

// mmaBackward runs AttentionBackward on the third or second tensor-core kernels, one
// block per (head, batch) for the second, when mmaUsable; false (nothing done)
// otherwise. The caller holds the Backend and has checked the arguments.
func (be *Backend) mmaBackward(dq, dk, dv, dout, q, k, v kernels.View, a kernels.AttentionArgs, probs kernels.Buffer, drop amDropout) bool {
	if !be.mmaUsable(a, true) {
		return false
	}
	if be.mma3Backward(dq, dk, dv, dout, q, k, v, a, probs, drop) {
		return true
	}
	f := be.lazy.mma
	dropMask := drop.mask
	shared := amBackwardShared2(a, dropMask != nil)
	// 16-bit inputs (kernels.HalfAttentionInputs) take the _h kernel: the same
	// layout, so the same shared memory.
	fn, opted, in16 := f.bwd2, &f.bwd2Opt, in16Bits(q, k, v, dout)
	if in16 != 0 {
		fn, opted = f.in16.bwd2, &f.in16.bwd2Opt
		f.in16.calls++
	}
	if shared > afShared && !*opted {
		must(be.drv.check("cuFuncSetAttribute", call(be.drv.cuFuncSetAttribute, fn,
			funcAttrMaxDynamicShared, uintptr(f.optinMax))))
		*opted = true
	}
	// Only the second kernels write 16-bit gradients (kernels.HalfAttention).
	format := be.viewsFormat(dq, dk, dv)
	be.prm.reset().
		views16(dq, dk, dv).views16(dout, q, k, v).
		ptr(addr(probs)).ptr(addr(dropMask)).
		i32(a.Heads).i32(a.TQ).i32(a.TK).f32(a.Scale).i32(be.halfArg()).i32(format).
		seededArgs(drop)
	if in16 != 0 {
		be.prm.i32(in16)
	}
	grid := [3]uint32{1, uint32(a.Heads), uint32(a.Batch)}
	be.run(fn, grid, uint32(32*amBackwardWarps2(a)), uint32(shared))
	return true
}
