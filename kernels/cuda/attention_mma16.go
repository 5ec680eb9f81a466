package cuda

import "github.com/xform-dev/xform/kernels"

// Training attention with 16-bit inputs (kernels.HalfAttentionInputs): q, k, v (and
// dout) as views of 16-bit buffers, which the model's projections write with
// kernels.HalfOutputs, as torch.autocast's Linear returns bf16/fp16 q, k, v to SDPA and
// its backward hands SDPA a bf16/fp16 gradient. The tensor-core kernels round exactly
// those operands to 16 bits anyway (q after the fp32 product q·scale), so a 16-bit
// input is the value they would have made of a float32 one: the kernels below give the
// bits of today's kernels fed float32 copies of the same (widened) values. What changes
// for the model is who rounds: the GEMM's epilogue instead of the attention staging
// (half the bytes read, no fp32 write of q, k, v, dout).
//
//   - attention_mma2_fwd_h / attention_mma2_bwd_h: the second kernels with a bit per
//     operand (in16) saying which are 16-bit; every call the second kernels take,
//     mixed formats and unaligned rows included, so they are the fallback.
//   - attention_mma3_fwd_h / attention_mma3_bwd_h: the third kernels where every input
//     is 16-bit with 16-byte aligned rows: cp.async straight into double-buffered 16-bit
//     tiles, no landing area and no rounding pass; the same dispatch rules (fwdTakes,
//     bwdTakes) on their own plans.
//   - attention_mma3_fwd_hb* / attention_mma3_bwd_hb*: those with the float32-input
//     kernels' bits variant (keep bits drawn ahead into a bitmap) and short-key sizes
//     (hb2, hb3; hb for 4 key blocks), chosen as the float32 inputs' are (not the first
//     variant: am3Fns.firstVariant; the key blocks: bitsIndex).

var _ kernels.HalfAttentionInputs = (*Backend)(nil)

// am16Fns are the 16-bit input kernels (part of attnMMAFns) and their switches.
type am16Fns struct {
	fwd2, bwd2, fwd3, bwd3 uintptr
	bwd2Opt, fwd3Opt       bool // allowed the device's whole shared memory
	bwd3Opt                bool
	// fwd3B, bwd3B: the third kernels' bits variants by key blocks 2, 3, 4
	// (attention_mma3_*_hb2, _hb3, _hb), with their opt-in flags.
	fwd3B, bwd3B       [3]uintptr
	fwd3BOpt, bwd3BOpt [3]bool
	// fwd3R, bwd3R: the same on packed rows (attention_mma3_*_hr2, _hr3, _hr;
	// attention_packed.go), with their opt-in flags.
	fwd3R, bwd3R       [3]uintptr
	fwd3ROpt, bwd3ROpt [3]bool
	packed             int  // launches on packed rows (tests)
	off                bool // tests: AttentionInputs16 says false
	calls              int  // launches with a 16-bit input (tests: the path was taken)
}

// AttentionInputs16 implements kernels.HalfAttentionInputs, unless switched off
// (XFORM_CUDA_ATTN16=0). It was opt-in while its backward ran without the bits variant
// and the short-key sizes (92.9 µs per call against the float32 inputs' 76.9 in the
// 6L-6L step); with them (eleventh session, H200, B·T ≈ 8000, bf16) the 16-bit inputs
// take forward 31.5 / backward 57.1 µs at T 41 against 47.2 / 73.0, and the 2-bucket
// bench gained 4.8 %: exactly Attention16's calls
// (both directions on the second tensor-core kernels, whose _h variants take every one
// of them; the third kernels' only where they also fit), unless switched off (tests).
func (be *Backend) AttentionInputs16(a kernels.AttentionArgs) bool {
	if !be.attnIn16On || !be.Attention16(a) {
		return false
	}
	defer be.enter()()
	return !be.mmaFns().in16.off
}

// setAttnIn16Off switches AttentionInputs16 off (tests compare with float32 inputs) and
// returns the previous setting.
func (be *Backend) setAttnIn16Off(off bool) bool {
	defer be.enter()()
	f := &be.mmaFns().in16
	old := f.off
	f.off = off
	return old
}

// in16Bits is the _h kernels' in16 argument: bit i set when vs[i] is a 16-bit view.
func in16Bits(vs ...kernels.View) int {
	n := 0
	for i, v := range vs {
		if halfOf(v.Buf) != nil {
			n |= 1 << i
		}
	}
	return n
}

// am3Aligned16 says whether every view is 16-bit with rows starting on 16 bytes (the
// third kernels' 16-byte cp.async of 8 elements).
func am3Aligned16(vs ...kernels.View) bool {
	for _, v := range vs {
		h := halfOf(v.Buf)
		if h == nil || (h.dptr()+2*uint64(v.Off))%16 != 0 || v.BatchStride%8 != 0 || v.RowStride%8 != 0 {
			return false
		}
	}
	return true
}

// am2ZBytes is am2_zbytes: the backward's region for P (fp32 [TQ][TK]) then dS (16-bit
// [TQp][TKp+8]), the larger, in bytes rounded up to 16.
func am2ZBytes(a kernels.AttentionArgs) int {
	tqp, tkp := 16*amBlocks16(a.TQ), 16*amBlocks16(a.TK)
	return (max(4*a.TQ*a.TK, 2*tqp*(tkp+8)) + 15) &^ 15
}

// planMMA3ForwardH: planMMA3Forward's blocks and tiles; shared memory two buffers of Q
// [16·warps][72], K, V [TKp][72] (16-bit), then the TK padding flags rounded to 16, and
// with bits the keep bitmap of a query tile's rows (attention_mma3_fwd_hb*).
func planMMA3ForwardH(a kernels.AttentionArgs, sms, sharedPerSM, maxGrid int, bits bool) am3Plan {
	p2 := planMMA2Forward(a, false)
	p := am3Plan{warps: p2.warps, tiles: p2.tiles, items: p2.tiles * a.Heads * a.Batch}
	tkp := 16 * amBlocks16(a.TK)
	p.shared = 2*2*amLD*(16*p.warps+2*tkp) + (a.TK+15)&^15
	if bits {
		p.shared += am3KeepBytes(16 * p.warps * a.TK)
	}
	p.perSM = am3Resident(32*p.warps, p.shared, am3FwdMinBlocks, 128, sharedPerSM)
	p.grid = am3Grid(p.items, sms, max(p.perSM, 1), maxGrid)
	return p
}

// planMMA3BackwardH: two buffers of Qs, K, V, dO [·][72] (16-bit) and Z1 (am2ZBytes),
// then Z2 for P⊙M ([TQp][TKp+8] 16-bit), and with bits the keep bitmap of the item's
// TQ·TK elements (attention_mma3_bwd_hb*); planMMA3Backward's warps.
func planMMA3BackwardH(a kernels.AttentionArgs, sms, sharedPerSM, maxGrid int, bits bool) am3Plan {
	tqp, tkp := 16*amBlocks16(a.TQ), 16*amBlocks16(a.TK)
	p := am3Plan{warps: amBackwardWarps3(a), tiles: 1, items: a.Heads * a.Batch}
	buf := 2*amLD*(2*tqp+2*tkp) + am2ZBytes(a)
	p.shared = 2*buf + 2*tqp*(tkp+8)
	if bits {
		p.shared += am3KeepBytes(a.TQ * a.TK)
	}
	p.perSM = am3Resident(32*p.warps, p.shared, am3BwdMinBlocks, 256, sharedPerSM)
	p.grid = am3Grid(p.items, sms, max(p.perSM, 1), maxGrid)
	return p
}

// optIn allows fn the device's whole shared memory once (*done records it) when shared
// exceeds the default bound. The caller holds the Backend.
func (be *Backend) optIn(fn uintptr, shared int, done *bool) {
	if shared > afShared && !*done {
		must(be.drv.check("cuFuncSetAttribute", call(be.drv.cuFuncSetAttribute, fn,
			funcAttrMaxDynamicShared, uintptr(be.lazy.mma.optinMax))))
		*done = true
	}
}

// mma3ForwardH runs a call whose q, k and v are all 16-bit on attention_mma3_fwd_h when
// the third kernels take it (no stored mask, aligned rows, enough resident blocks);
// false, nothing done, otherwise. The caller (mma3Forward) holds the Backend.
func (be *Backend) mma3ForwardH(out, q, k, v kernels.View, a kernels.AttentionArgs, padp uint64, probs kernels.Buffer, drop amDropout) bool {
	f := be.lazy.mma
	t := &f.third
	if drop.mask != nil || !am3Aligned16(q, k, v) {
		return false
	}
	bits := !t.firstVariant(a)
	p := planMMA3ForwardH(a, be.info.SMs, t.sharedPerSM, t.sw.maxGrid, bits)
	if !t.fwdTakes(a, p, f.optinMax, t.fwdMinKeysH(a)) {
		return false
	}
	fn, opt := f.in16.fwd3, &f.in16.fwd3Opt
	if bits {
		i := f.in16.bitsIndex(a, t.sw.wide)
		fn, opt = f.in16.fwd3B[i], &f.in16.fwd3BOpt[i]
	}
	be.launchMMA3ForwardH(fn, opt, p, out, q, k, v, a, padp, probs, drop, nil)
	return true
}

// launchMMA3ForwardH launches a 16-bit-input third forward (attention_mma3_fwd_h, _hb*,
// or with spans the packed _hr*, whose parameter lists end with the two span arrays).
// The caller holds the Backend.
func (be *Backend) launchMMA3ForwardH(fn uintptr, opt *bool, p am3Plan, out, q, k, v kernels.View, a kernels.AttentionArgs, padp uint64, probs kernels.Buffer, drop amDropout, spans *[2]uint64) {
	be.optIn(fn, p.shared, opt)
	be.lazy.mma.in16.calls++
	be.prm.reset().views16(out, q, k, v).
		i32(a.Heads).i32(a.TQ).i32(a.TK).f32(a.Scale).
		ptr(padp).i64(a.KeyPadStride).
		i32(boolInt(a.Causal)).i32(a.QueryOffset).
		ptr(addr(probs)).i32(be.halfArg()).
		i32(be.viewsFormat(out)).seededArgs(drop).
		i32(p.tiles).i32(p.items)
	if spans != nil {
		be.prm.ptr(spans[0]).ptr(spans[1])
	}
	be.run(fn, [3]uint32{uint32(p.grid), 1, 1}, uint32(32*p.warps), uint32(p.shared))
}

// mma3BackwardH runs a call whose dout, q, k and v are all 16-bit on
// attention_mma3_bwd_h when the third kernels take it, as mma3ForwardH.
func (be *Backend) mma3BackwardH(dq, dk, dv, dout, q, k, v kernels.View, a kernels.AttentionArgs, probs kernels.Buffer, drop amDropout) bool {
	f := be.lazy.mma
	t := &f.third
	if drop.mask != nil || !am3Aligned16(dout, q, k, v) {
		return false
	}
	bits := !t.firstVariant(a)
	p := planMMA3BackwardH(a, be.info.SMs, t.sharedPerSM, t.sw.maxGrid, bits)
	if !t.bwdTakes(p, f.optinMax) {
		return false
	}
	fn, opt := f.in16.bwd3, &f.in16.bwd3Opt
	if bits {
		i := f.in16.bitsIndex(a, t.sw.wide)
		fn, opt = f.in16.bwd3B[i], &f.in16.bwd3BOpt[i]
	}
	be.launchMMA3BackwardH(fn, opt, p, dq, dk, dv, dout, q, k, v, a, probs, drop, nil)
	return true
}

// launchMMA3BackwardH is launchMMA3ForwardH's backward (attention_mma3_bwd_h, _hb*, or
// with spans _hr*).
func (be *Backend) launchMMA3BackwardH(fn uintptr, opt *bool, p am3Plan, dq, dk, dv, dout, q, k, v kernels.View, a kernels.AttentionArgs, probs kernels.Buffer, drop amDropout, spans *[2]uint64) {
	be.optIn(fn, p.shared, opt)
	be.lazy.mma.in16.calls++
	be.prm.reset().
		views16(dq, dk, dv).views16(dout, q, k, v).
		ptr(addr(probs)).
		i32(a.Heads).i32(a.TQ).i32(a.TK).f32(a.Scale).i32(be.halfArg()).i32(be.viewsFormat(dq, dk, dv)).
		seededArgs(drop).i32(p.items)
	if spans != nil {
		be.prm.ptr(spans[0]).ptr(spans[1])
	}
	be.run(fn, [3]uint32{uint32(p.grid), 1, 1}, uint32(32*p.warps), uint32(p.shared))
}

// bitsIndex is the index into fwd3B/bwd3B for a's keys: the kernels sized for 2, 3 or 4
// key blocks (4 with wide, as the float32 inputs' bits kernels, am3Fns.bitsKernels).
func (f *am16Fns) bitsIndex(a kernels.AttentionArgs, wide bool) int {
	nt := (a.TK + 15) / 16
	if wide || nt > 3 {
		return 2
	}
	return max(nt, 2) - 2
}
