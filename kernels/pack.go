package kernels

// RowPacker is implemented by a Trainer that can move whole rows between a padded batch
// [B·T, width] and the batch's packed rows [N, width] (its N non-pad tokens, in order).
// A model that computes its position-wise layers (projections, feed-forward, LayerNorm,
// the loss) on packed rows spends nothing on pad slots, which are ~19 % of a 2-bucket
// batch's; only attention, which needs each sentence's rows together, runs padded.
//
// PackRows sets dst row i to src row idx[i], or to zeros where idx[i] < 0, for
// i < len(idx); rows are dense (row stride = width), and dst and src have the same
// element format: both float32, or both the backend's 16-bit buffers (HalfBuffers), in
// which case the bits are copied. Expanding packed rows into a padded batch is a
// PackRows with one index per padded slot (-1 for pads); packing is one with one index
// per packed row (its padded slot). It panics where dst or src is too short for the
// rows it names, as the Backend's other copies do.
type RowPacker interface {
	PackRows(dst, src Buffer, idx []int32, width int)
}
