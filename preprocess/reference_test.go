package preprocess

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const clinic = "../fixtures/clinic"

// sameDataBin checks that every dict.*.txt, *.bin and *.idx of ref exists in
// got with the same bytes, and that got holds no other such file.
func sameDataBin(t *testing.T, got, ref string) {
	t.Helper()
	want := dataBinFiles(t, ref)
	have := dataBinFiles(t, got)
	if len(want) == 0 {
		t.Fatalf("no reference files in %s", ref)
	}
	for name := range have {
		if !want[name] {
			t.Errorf("unexpected output %s", name)
		}
	}
	sameBytes(t, got, ref, want)
}

func dataBinFiles(t *testing.T, dir string) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "dict.") && strings.HasSuffix(n, ".txt") ||
			strings.HasSuffix(n, ".bin") || strings.HasSuffix(n, ".idx") {
			m[n] = true
		}
	}
	return m
}

// The recorded fixture command, with 1 and with several workers (and a chunk
// size small enough that several workers really share each file).
func TestClinicDataBinByteIdentical(t *testing.T) {
	corpus := filepath.Join(clinic, "corpus")
	ref := filepath.Join(clinic, "data-bin")
	if _, err := os.Stat(filepath.Join(ref, "dict.src.txt")); err != nil {
		t.Skipf("clinic fixtures not found: %v", err)
	}
	wantLog, err := os.ReadFile(filepath.Join(ref, "preprocess.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ workers, chunk int }{{1, 0}, {2, 0}, {3, 1000}, {5, 37}} {
		workers := tc.workers
		dest := filepath.Join(t.TempDir(), "data-bin")
		var log bytes.Buffer
		o := Defaults()
		o.SourceLang, o.TargetLang = "src", "tgt"
		o.TrainPref = filepath.Join(corpus, "train")
		o.ValidPref = filepath.Join(corpus, "valid")
		o.TestPref = filepath.Join(corpus, "test")
		o.DestDir = dest
		o.JoinedDictionary = true
		o.Workers = workers
		o.chunkSize = tc.chunk
		o.Log = &log
		if err := Run(context.Background(), o); err != nil {
			t.Fatalf("workers=%d: %v", workers, err)
		}
		sameDataBin(t, dest, ref)
		// The report lines match the reference's, paths aside.
		got := strings.ReplaceAll(log.String(), corpus, "/tmp/x/raw")
		got = strings.ReplaceAll(got, dest, "/tmp/x/data-bin")
		for _, line := range strings.Split(strings.TrimSpace(got), "\n") {
			if !bytes.Contains(wantLog, []byte(line+"\n")) {
				t.Errorf("workers=%d: log line %q not in the reference log", workers, line)
			}
		}
		if n := strings.Count(got, "\n"); n != 13 {
			t.Errorf("workers=%d: %d log lines, want 13:\n%s", workers, n, got)
		}
	}
}

// sameBytes checks that each named file of ref exists in got with the same bytes, and
// says where the first difference is.
func sameBytes(t *testing.T, got, ref string, names map[string]bool) {
	t.Helper()
	for name := range names {
		a, err := os.ReadFile(filepath.Join(got, name))
		if err != nil {
			t.Errorf("missing output: %v", err)
			continue
		}
		b, err := os.ReadFile(filepath.Join(ref, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			i := 0
			for i < len(a) && i < len(b) && a[i] == b[i] {
				i++
			}
			t.Errorf("%s: %d bytes, reference %d; first difference at byte %d", name, len(a), len(b), i)
		}
	}
}
