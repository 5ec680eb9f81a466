package cuda

import (
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// The chunk table of the list kernels: one (buffer, chunk) pair per block, in buffer
// order, empty buffers left out and the kept ones numbered as listDescriptor numbers
// them; chunk c of a buffer covers [c·listChunk, min((c+1)·listChunk, n)).
func TestListTasks(t *testing.T) {
	mk := func(n int) kernels.Buffer { return &buffer{a: &allocation{ptr: 0x1000}, n: n} }
	xs := []kernels.Buffer{mk(1), mk(0), mk(listChunk), mk(listChunk + 1), mk(3*listChunk - 5)}
	words, blocks := listTasks([]int32{7}, xs)
	want := []int32{7, 0, 0, 1, 0, 2, 0, 2, 1, 3, 0, 3, 1, 3, 2}
	if blocks != 7 || len(words) != len(want) {
		t.Fatalf("%d blocks, words %v; want 7 blocks, %v", blocks, words, want)
	}
	for i := range want {
		if words[i] != want[i] {
			t.Fatalf("words %v, want %v", words, want)
		}
	}
	// Every element of every kept buffer is in exactly one block's range.
	covered := make([]int, len(xs))
	kept := []int{0, 2, 3, 4}
	for b := 0; b < blocks; b++ {
		k, c := int(words[1+2*b]), int(words[2+2*b])
		n := xs[kept[k]].Len()
		covered[kept[k]] += min(listChunk, n-c*listChunk)
	}
	for i, x := range xs {
		if covered[i] != x.Len() {
			t.Errorf("buffer %d: %d elements covered of %d", i, covered[i], x.Len())
		}
	}
	// The table's offset in the staged words keeps it 8-byte aligned (int2 loads).
	d, n := listDescriptor(xs, xs, xs, xs)
	if n != 4 || (4*len(d))%8 != 0 {
		t.Errorf("descriptor of %d words for %d buffers", len(d), n)
	}
}

// ls_loss's launch: rows staged when 4·V bytes fit the opted-in bound, float4 only when
// every row of both arrays starts on 16 bytes, float arithmetic only when asked.
func TestLSLaunch(t *testing.T) {
	const maxStaged = (227*1024 - lsStaticShared) / 4 // an H100/H200 bound
	for _, tc := range []struct {
		V               int
		logits, dlogits uint64
		fast            bool
		block, shared   uint32
		mode            int
	}{
		{27472, 0x1000, 0x2000, true, lsBlockLong, 4 * 27472, lsStaged | lsVec | lsFast},
		{27472, 0x1000, 0, false, lsBlockLong, 4 * 27472, lsStaged | lsVec},
		{27472, 0x1004, 0x2000, true, lsBlockLong, 4 * 27472, lsStaged | lsFast},
		{27472, 0x1000, 0x2008, false, lsBlockLong, 4 * 27472, lsStaged},
		{27473, 0x1000, 0x2000, true, lsBlockLong, 4 * 27473, lsStaged | lsFast},
		{70000, 0x1000, 0x2000, true, lsBlockLong, 0, lsVec | lsFast},
		{1000, 0x1000, 0x1000, false, blockRow, 4000, lsStaged | lsVec},
	} {
		block, shared, mode := lsLaunch(tc.V, maxStaged, tc.logits, tc.dlogits, tc.fast)
		if block != tc.block || shared != tc.shared || mode != tc.mode {
			t.Errorf("lsLaunch(V %d, %#x, %#x, fast %v) = %d, %d, %d; want %d, %d, %d",
				tc.V, tc.logits, tc.dlogits, tc.fast, block, shared, mode, tc.block, tc.shared, tc.mode)
		}
	}
}
