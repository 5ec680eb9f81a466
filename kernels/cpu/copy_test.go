package cpu

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// TestPermuteRowsMatchesGather checks the in-place reorder against a plain gather into
// a fresh buffer (exact: both only copy), on beam-like index patterns (rows staying,
// swapping, duplicating, cycles, shrinking) and random ones.
func TestPermuteRowsMatchesGather(t *testing.T) {
	be := New(2)
	r := rand.New(rand.NewPCG(3, 4))
	const rows, stride, n = 12, 7, 5
	cases := [][]int32{
		{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11},
		{1, 0, 2, 3, 5, 4, 6, 7, 8, 9, 11, 10},
		{0, 0, 0, 0, 4, 4, 5, 5, 8, 9, 10, 11},
		{1, 2, 3, 0, 7, 4, 5, 6, 11, 11, 11, 11},
		{4, 5, 6, 7, 8, 9, 10, 11},
		{11, 10, 9, 8},
	}
	for range 50 {
		idx := make([]int32, 1+r.IntN(rows))
		for i := range idx {
			idx[i] = int32(r.IntN(rows))
		}
		cases = append(cases, idx)
	}
	for _, idx := range cases {
		orig := make([][]float32, 3)
		bufs := make([]kernels.Buffer, 3)
		for b := range orig {
			orig[b] = make([]float32, rows*stride)
			for i := range orig[b] {
				orig[b][i] = r.Float32()
			}
			bufs[b] = Wrap(slices.Clone(orig[b]))
		}
		be.PermuteRows(bufs, stride, idx, n)
		for b := range orig {
			want := make([]float32, rows*stride)
			be.GatherRows(Wrap(want), stride, Wrap(orig[b]), stride, idx, n)
			got := f(bufs[b])
			for i := range idx {
				if !slices.Equal(got[i*stride:i*stride+n], want[i*stride:i*stride+n]) {
					t.Fatalf("idx %v buffer %d row %d: got %v, want %v", idx, b, i, got[i*stride:i*stride+n], want[i*stride:i*stride+n])
				}
			}
		}
	}
}
