package kernels

// RowPacker is implemented by a Trainer that can move whole rows between a padded batch
// [B·T, width] and the batch's packed rows [N, width] (its N non-pad tokens, in order).
// A model that computes its position-wise layers (projections, feed-forward, LayerNorm,
// the loss) on packed rows spends nothing on pad slots, which are ~19 % of a 2-bucket
// batch's; only attention, which needs each sentence's rows together, runs padded.
//
// An index is placed on the backend once (RowIndex) and then serves every PackRows of
// the step: a step packs and expands each layer's rows with the same four indices.
type RowPacker interface {
	// RowIndex places idx on the backend for PackRows: row i of a destination is row
	// idx[i] of a source of srcRows rows, or zeros where idx[i] < 0. Expanding packed
	// rows into a padded batch takes one entry per padded slot (-1 for pads); packing
	// takes one per packed row (its padded slot). It panics on an entry ≥ srcRows. The
	// index lives as long as the buffers of the running step (kernels.Scoper's scope).
	RowIndex(idx []int32, srcRows int) RowIndex
	// PackRows writes ix.Len() rows of width elements into dst from src by ix. Rows are
	// dense (row stride = width), and dst and src have the same element format: both
	// float32, or both the backend's 16-bit buffers (HalfBuffers), whose bits are
	// copied. It panics where dst or src is shorter than the rows ix names.
	PackRows(dst, src Buffer, ix RowIndex, width int)
}

// RowIndex is an index a RowPacker placed (RowPacker.RowIndex).
type RowIndex interface {
	// Len is the number of rows PackRows writes with it.
	Len() int
	// SrcRows is the number of source rows it indexes.
	SrcRows() int
}
