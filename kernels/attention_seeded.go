package kernels

// SeededAttention is implemented by a Trainer whose stored-probabilities training
// attention can draw the dropout mask from its seed inside the attention kernels
// instead of reading a stored one. DropoutMask would write [Batch, Heads, TQ, TK]
// floats that the forward and the backward then read again (at Batch 200, TQ = TK = 41,
// 8 heads: 10.8 MB written once and read twice per attention call, plus a launch); the
// seed is 8 bytes.
//
// Semantics: AttentionForwardSeeded(out, q, k, v, a, probs, dropP, dropSeed) is
//
//	DropoutMask(mask, dropP, dropSeed) // mask: Batch·Heads·TQ·TK elements
//	AttentionForward(out, q, k, v, a, probs, mask)
//
// and AttentionBackwardSeeded(dq, dk, dv, dout, q, k, v, a, probs, dropP, dropSeed) is
// AttentionBackward(dq, dk, dv, dout, q, k, v, a, probs, mask) with that mask, the mask
// never stored. Element ((b·Heads+h)·TQ+i)·TK+j of the mask multiplies probability
// (b, h, i, j), as FlashAttention's doc says, so it is kept, scaled by
// DropoutScale(dropP), exactly when DropoutKeep(dropSeed, that index,
// DropoutThreshold(dropP)). Unlike FlashAttention the results are the same bits as the
// stored-mask calls on the same backend and precision: out, probs (still the
// probabilities before the mask) and the gradients. dropP ≤ 0 is no dropout (the bits
// of a nil mask, which are those of a mask of ones). The backward takes the same dropP
// and dropSeed as its forward and reads the probs the forward wrote.
//
// Both methods return false, having done nothing, when the backend would not run the
// call on kernels that draw the mask; the caller then stores a mask and calls
// AttentionForward / AttentionBackward. The answer depends on a's shape and the
// backend's configuration only (never on dropP, dropSeed or the buffers), and
// AttentionBackwardSeeded accepts every call whose shape AttentionForwardSeeded
// accepted. KVIndex and Probs of a are not used (as in AttentionForward).
//
// 16-bit outputs: where the backend implements HalfAttention and Attention16(a) holds,
// out, and dq, dk, dv (all three or none), may be views of 16-bit buffers exactly as
// AttentionForward and AttentionBackward allow them there: out holds the rounding of
// the float32 output, the gradients are overwritten with their roundings instead of
// accumulated into.
type SeededAttention interface {
	// AttentionForwardSeeded is AttentionForward(out, q, k, v, a, probs, mask) where mask is
	// what DropoutMask(mask, dropP, dropSeed) would hold (dropP ≤ 0: no dropout), drawn in
	// the kernel, never stored; the same bits.
	AttentionForwardSeeded(out, q, k, v View, a AttentionArgs, probs Buffer, dropP float64, dropSeed uint64) bool
	// AttentionBackwardSeeded is AttentionBackward(dq, dk, dv, dout, q, k, v, a, probs,
	// mask) with the mask of AttentionForwardSeeded's dropP and dropSeed, drawn again;
	// gradients accumulated (+=) into float32 views, written into 16-bit ones. dq, dk and
	// dv may be column views of one buffer (disjoint elements).
	AttentionBackwardSeeded(dq, dk, dv, dout, q, k, v View, a AttentionArgs, probs Buffer, dropP float64, dropSeed uint64) bool
}
