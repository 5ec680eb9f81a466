package kernels

// PackedAttention is implemented by a Trainer whose seeded training attention
// (SeededAttention) can read and write packed rows (RowPacker's layout) itself, so a
// model on packed rows need not expand q, k, v and the output gradient into the padded
// layout and pack the results back around every attention call.
//
// Semantics: AttentionForwardPacked(out, q, k, v, a, qs, ks, probs, dropP, dropSeed) is
//
//	PackRows each of q, k, v into the padded layout (zeros at pads) by its spans
//	AttentionForwardSeeded(outPadded, qPadded, kPadded, vPadded, a, probs, dropP, dropSeed)
//	PackRows outPadded's real rows into out
//
// and AttentionBackwardPacked the same around AttentionBackwardSeeded, dq, dk and dv
// written (not accumulated) at their real rows. qs places the queries' sentences (q,
// out, dout, dq), ks the keys' (k, v, dk, dv). The views' BatchStride is unused (rows
// are where the spans say), their Off and RowStride as usual; every view is a 16-bit
// buffer (HalfBuffers). probs and the dropout keep the padded coordinates, as in
// SeededAttention, so the results are the bits of the sequence above on the same
// backend.
//
// Both return false, having done nothing, where the backend would not run the call on
// packed rows; the caller then expands. The answer depends on a's shape, the views'
// formats and alignment and the backend's configuration only, and
// AttentionBackwardPacked accepts every call whose forward was accepted.
type PackedAttention interface {
	// RowSpans places where each sentence's rows are in a packed tensor of rows rows:
	// item row i of sentence b (its position in the padded layout) is packed row
	// base[b] + i for lo[b] ≤ i < hi[b], and a pad elsewhere. It panics on spans that
	// leave [0, rows). The spans live as long as the running step's buffers.
	RowSpans(base, lo, hi []int32, rows int) RowSpans
	// PackedAttentionTakes says whether calls of a's shape run on packed rows, given
	// 16-bit views with 16-byte aligned rows (what AttentionForwardPacked also checks);
	// a.KeyPadding's contents do not matter and may be nil.
	// A model asks before packing a step: where the answer is no, every such call
	// would expand its rows around the padded call instead, which can cost more than
	// the packing saves.
	PackedAttentionTakes(a AttentionArgs) bool
	AttentionForwardPacked(out, q, k, v View, a AttentionArgs, qs, ks RowSpans, probs Buffer, dropP float64, dropSeed uint64) bool
	AttentionBackwardPacked(dq, dk, dv, dout, q, k, v View, a AttentionArgs, qs, ks RowSpans, probs Buffer, dropP float64, dropSeed uint64) bool
}

// RowSpans are a packed side's sentence spans placed on a backend
// (PackedAttention.RowSpans).
type RowSpans interface {
	// Len is the number of sentences.
	Len() int
	// Rows is the packed tensor's row count the spans were checked against.
	Rows() int
}

// CheckRowSpans panics unless base, lo and hi describe len(base) sentences within a
// packed tensor of rows rows (0 ≤ lo ≤ hi, 0 ≤ base + lo, base + hi ≤ rows where lo <
// hi). Backends call it from RowSpans.
func CheckRowSpans(base, lo, hi []int32, rows int) {
	if len(lo) != len(base) || len(hi) != len(base) {
		panic("kernels: RowSpans of unequal lengths")
	}
	for b := range base {
		if lo[b] < 0 || hi[b] < lo[b] {
			panic("kernels: RowSpans with lo < 0 or hi < lo")
		}
		if lo[b] < hi[b] && (int64(base[b])+int64(lo[b]) < 0 || int64(base[b])+int64(hi[b]) > int64(rows)) {
			panic("kernels: RowSpans outside the packed rows")
		}
	}
}
