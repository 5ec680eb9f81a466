package data

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

const clinic = "../../fixtures/clinic"

func needFixtures(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(clinic, "data-bin", "dict.src.txt")); err != nil {
		t.Skipf("clinic fixtures not found at %s: %v", clinic, err)
	}
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// The reference data-bin must read back as the reference corpus encoded with
// the reference dictionary.
func TestReadReferenceDataBin(t *testing.T) {
	needFixtures(t)
	d, err := LoadDictionary(filepath.Join(clinic, "data-bin", "dict.src.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Len() != 128 {
		t.Fatalf("Len = %d, want 128", d.Len())
	}
	if got := d.Symbol(4); got != "s00" {
		t.Errorf("Symbol(4) = %q, want s00", got)
	}
	if got := d.Index("t46"); got != 5 {
		t.Errorf("Index(t46) = %d, want 5", got)
	}
	if got := d.Index("nope"); got != Unk {
		t.Errorf("Index(nope) = %d, want Unk", got)
	}
	for _, split := range []string{"train", "valid", "test"} {
		for _, lang := range []string{"src", "tgt"} {
			prefix := filepath.Join(clinic, "data-bin", split+".src-tgt."+lang)
			ds, err := OpenIndexedDataset(prefix, d)
			if err != nil {
				t.Fatal(err)
			}
			lines := readLines(t, filepath.Join(clinic, "corpus", split+"."+lang))
			if ds.Len() != len(lines) {
				t.Fatalf("%s: Len = %d, want %d", prefix, ds.Len(), len(lines))
			}
			for i, line := range lines {
				got, err := ds.Get(i)
				if err != nil {
					t.Fatal(err)
				}
				want, nUnk := d.Encode(line, true)
				if nUnk != 0 || !equalIDs(got, want) || ds.Size(i) != len(want) {
					t.Fatalf("%s[%d] = %v (size %d), want %v", prefix, i, got, ds.Size(i), want)
				}
				if s := d.String(got, "", false); s != line {
					t.Fatalf("String = %q, want %q", s, line)
				}
			}
			ds.Close()
		}
	}
}

// Writing the reference sentences again must give the reference bytes.
func TestWriterMatchesReferenceMMap(t *testing.T) {
	needFixtures(t)
	d, err := LoadDictionary(filepath.Join(clinic, "data-bin", "dict.src.txt"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, split := range []string{"valid", "test"} {
		ref := filepath.Join(clinic, "data-bin", split+".src-tgt.tgt")
		w, err := NewWriter(filepath.Join(dir, split), ImplMMap, d.Len())
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range readLines(t, filepath.Join(clinic, "corpus", split+".tgt")) {
			ids, _ := d.Encode(line, true)
			if err := w.Add(ids); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		for _, ext := range []string{".bin", ".idx"} {
			sameFile(t, filepath.Join(dir, split)+ext, ref+ext)
		}
		if _, err := os.Stat(filepath.Join(dir, split) + ".sizes.tmp"); !os.IsNotExist(err) {
			t.Errorf("side file left behind: %v", err)
		}
	}
}

func TestDictionaryRoundTrip(t *testing.T) {
	needFixtures(t)
	path := filepath.Join(clinic, "data-bin", "dict.tgt.txt")
	d, err := LoadDictionary(path)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "dict.txt")
	if err := d.Save(out); err != nil {
		t.Fatal(err)
	}
	sameFile(t, out, path)
	d2, err := LoadDictionary(out)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Equal(d2) {
		t.Error("reloaded dictionary differs")
	}
}

func sameFile(t *testing.T, got, want string) {
	t.Helper()
	g, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g, w) {
		i := 0
		for i < len(g) && i < len(w) && g[i] == w[i] {
			i++
		}
		t.Errorf("%s differs from %s (%d vs %d bytes, first difference at byte %d)", got, want, len(g), len(w), i)
	}
}

func equalIDs(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
