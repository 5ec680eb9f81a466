package cuda

import (
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// The descriptor the list kernels read (Σx², scaling, Adam over all parameters, zeroing):
// every list's addresses in order, then the lengths, as little-endian uint64s; empty
// buffers left out of every list; slices addressed from their own first element.
func TestListDescriptor(t *testing.T) {
	mk := func(ptr uint64, n, off int) kernels.Buffer { return &buffer{a: &allocation{ptr: ptr}, n: n, off: off} }
	p := []kernels.Buffer{mk(0x1000, 3, 0), mk(0x2000, 0, 0), mk(0x3_0000_0000, 5, 2)}
	g := []kernels.Buffer{mk(0x4000, 3, 0), mk(0x5000, 0, 0), mk(0x6000, 5, 0)}
	words, n := listDescriptor(p, g)
	if n != 2 {
		t.Fatalf("kept %d buffers, want 2 (the empty one left out)", n)
	}
	want := []uint64{0x1000, 0x3_0000_0000 + 2*4, 0x4000, 0x6000, 3, 5}
	if len(words) != 2*len(want) {
		t.Fatalf("%d words, want %d", len(words), 2*len(want))
	}
	for i, w := range want {
		got := uint64(uint32(words[2*i])) | uint64(uint32(words[2*i+1]))<<32
		if got != w {
			t.Errorf("entry %d = %#x, want %#x", i, got, w)
		}
	}
	if words, n := listDescriptor([]kernels.Buffer{mk(1, 0, 0)}); n != 0 || words != nil {
		t.Errorf("all empty: %v, %d", words, n)
	}
	defer func() {
		if recover() == nil {
			t.Error("lists of different lengths did not panic")
		}
	}()
	listDescriptor([]kernels.Buffer{mk(1, 3, 0)}, []kernels.Buffer{mk(2, 4, 0)})
}
