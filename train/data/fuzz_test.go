package data

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// Seeds live in testdata/fuzz/<Target>/ (small real files from the clinic
// fixtures and their truncations); f.Add adds a few hand-made edge cases.

func FuzzReadDictionary(f *testing.F) {
	f.Add([]byte("a 1\nb 2\n"))
	f.Add([]byte("two words +3\r\n\xff 1\r x _1\n"))
	f.Add([]byte(" 5\n5\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ReadDictionary(bytes.NewReader(b))
		if err != nil {
			return
		}
		// Whatever loaded must save and load again to the same mapping,
		// unless a symbol held a line break of its own.
		var buf bytes.Buffer
		if _, err := d.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		d2, err := ReadDictionary(&buf)
		if err != nil {
			t.Fatalf("reloading saved dictionary: %v", err)
		}
		if d2.Len() != d.Len() {
			t.Fatalf("Len %d after reload, want %d", d2.Len(), d.Len())
		}
		_ = d.String([]int32{0, 1, 2, 3, 4, -1, int32(d.Len()), 1 << 30}, "@@ ", true)
	})
}

func fuzzIndex(t *testing.T, idx, bin []byte, open func(string) (IndexedDataset, error)) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x")
	if err := os.WriteFile(p+".idx", idx, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p+".bin", bin, 0o644); err != nil {
		t.Fatal(err)
	}
	ds, err := open(p)
	if err != nil {
		return
	}
	defer ds.Close()
	for i := -1; i <= ds.Len(); i++ {
		ids, err := ds.Get(i)
		if err == nil && len(ids) != ds.Size(i) {
			t.Fatalf("Get(%d) gave %d ids, Size says %d", i, len(ids), ds.Size(i))
		}
	}
}

func FuzzMMapIndex(f *testing.F) {
	f.Add([]byte("MMIDIDX\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x08\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"), []byte{5, 0, 2, 0})
	f.Add([]byte("MMIDIDX\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x04\xff\xff\xff\xff\xff\xff\xff\x0f"), []byte{})
	f.Fuzz(func(t *testing.T, idx, bin []byte) {
		fuzzIndex(t, idx, bin, func(p string) (IndexedDataset, error) { return OpenMMap(p) })
		fuzzIndex(t, idx, bin, func(p string) (IndexedDataset, error) { return OpenIndexedDataset(p, NewDictionary()) })
	})
}

func FuzzTNTIndex(f *testing.F) {
	f.Add([]byte("TNTIDX\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"+
		"\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"+
		"\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00"+
		"\x02\x00\x00\x00\x00\x00\x00\x00"), []byte{6, 0, 0, 0, 3, 0, 0, 0})
	f.Fuzz(func(t *testing.T, idx, bin []byte) {
		fuzzIndex(t, idx, bin, func(p string) (IndexedDataset, error) { return OpenTNT(p) })
	})
}

func FuzzTokenize(f *testing.F) {
	f.Add([]byte("a\u00a0b\x1cc \u3000 d\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if CheckUTF8(b) != nil {
			return
		}
		EachToken(b, func(tok []byte) {
			if len(tok) == 0 {
				t.Fatal("empty token")
			}
			for _, r := range string(tok) {
				if IsPySpace(r) {
					t.Fatalf("token %q holds whitespace %U", tok, r)
				}
			}
		})
		for len(b) > 0 {
			_, adv, ok := SplitLine(b, true)
			if !ok || adv <= 0 {
				t.Fatalf("SplitLine made no progress on %q", b)
			}
			b = b[adv:]
		}
	})
}
