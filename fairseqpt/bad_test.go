package fairseqpt

import (
	"archive/zip"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readFixture(t testing.TB, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rezip rewrites a torch zip with edit applied to each record (nil drops it).
func rezip(t testing.TB, src []byte, edit func(name string, data []byte) []byte) []byte {
	zr, err := zip.NewReader(bytes.NewReader(src), int64(len(src)))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, f := range zr.File {
		rc, _ := f.Open()
		var d bytes.Buffer
		d.ReadFrom(rc)
		rc.Close()
		nd := edit(f.Name, d.Bytes())
		if nd == nil {
			continue
		}
		w, _ := zw.CreateHeader(&zip.FileHeader{Name: f.Name, Method: zip.Store})
		w.Write(nd)
	}
	zw.Close()
	return buf.Bytes()
}

func TestBadInput(t *testing.T) {
	ck := readFixture(t, "../fixtures/clinic/runs/b_postln/ckpt/checkpoint_last.pt")
	legacy := readFixture(t, torchDir+"a_admin_legacy.pt")
	tar := make([]byte, 1024)
	copy(tar, "model.pkl")
	copy(tar[257:], "ustar\x0000")
	// A storage record with one byte flipped: the CRC in the header no longer matches.
	crcBad := append([]byte(nil), ck...)
	{
		zr, _ := zip.NewReader(bytes.NewReader(ck), int64(len(ck)))
		for _, f := range zr.File {
			if strings.HasSuffix(f.Name, "data/1") {
				off, _ := f.DataOffset()
				crcBad[off+3] ^= 0x40
			}
		}
	}
	cases := []struct {
		name string
		data []byte
		want error
		text string
	}{
		{"empty", nil, ErrNotTorch, "empty"},
		{"text file", []byte("hello, this is not a checkpoint\n"), ErrNotTorch, ""},
		{"truncated zip", ck[:len(ck)/2], ErrTruncated, ""},
		{"truncated legacy", legacy[:len(legacy)-1000], ErrTruncated, ""},
		{"wrong magic", append([]byte{0x80, 0x02, 0x8a, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, legacy[14:]...), ErrNotTorch, ""},
		{"plain pickle", []byte("\x80\x02}q\x00.") /* {} */, ErrNotTorch, "plain pickle"},
		{"crc mismatch", crcBad, ErrCorrupt, "CRC"},
		{"legacy tar", tar, ErrLegacyTar, ""},
		{"torchscript", rezip(t, ck, func(n string, d []byte) []byte {
			if strings.HasSuffix(n, "/version") {
				return d
			}
			return d
		}), nil, ""}, // placeholder replaced below
		{"storage larger than its record", rezip(t, ck, func(n string, d []byte) []byte {
			if strings.HasSuffix(n, "data/1") {
				return d[:len(d)/2]
			}
			return d
		}), ErrCorrupt, "record holds"},
		{"missing storage record", rezip(t, ck, func(n string, d []byte) []byte {
			if strings.HasSuffix(n, "data/5") {
				return nil
			}
			return d
		}), ErrTruncated, "data/5 is missing"},
		{"big-endian", rezip(t, ck, func(n string, d []byte) []byte {
			if strings.HasSuffix(n, "byteorder") {
				return []byte("big")
			}
			return d
		}), ErrUnsupported, "byteorder"},
	}
	// A TorchScript archive has constants.pkl beside data.pkl.
	cases[8] = struct {
		name string
		data []byte
		want error
		text string
	}{"torchscript", addRecord(t, ck, "checkpoint_last/constants.pkl", []byte("\x80\x02).")), ErrTorchScript, ""}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".pt")
			os.WriteFile(p, c.data, 0o644)
			f, err := Open(p)
			if err == nil {
				// Lazy errors surface when tensors are read.
				ck, ierr := Interpret(f)
				if ierr == nil {
					for _, nt := range ck.State {
						if _, err = nt.Tensor.Materialize(); err != nil {
							break
						}
					}
				} else {
					err = ierr
				}
				f.Close()
			}
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, c.want) {
				t.Errorf("error %q does not wrap %q", err, c.want)
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name the file", err)
			}
			if c.text != "" && !strings.Contains(err.Error(), c.text) {
				t.Errorf("error %q does not mention %q", err, c.text)
			}
		})
	}
}

func addRecord(t testing.TB, src []byte, name string, data []byte) []byte {
	out := rezip(t, src, func(n string, d []byte) []byte { return d })
	zr, _ := zip.NewReader(bytes.NewReader(out), int64(len(out)))
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, f := range zr.File {
		w, _ := zw.CreateHeader(&zip.FileHeader{Name: f.Name, Method: zip.Store})
		rc, _ := f.Open()
		var d bytes.Buffer
		d.ReadFrom(rc)
		w.Write(d.Bytes())
	}
	w, _ := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
	w.Write(data)
	zw.Close()
	return buf.Bytes()
}

// A pickle that would run os.system and builtins.eval under Python's pickle loads here as inert
// data: nothing is executed and inspect can list the globals.
func TestMaliciousPickleIsInert(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "pwned")
	pkl := []byte("\x80\x02}q\x00(X\x05\x00\x00\x00modelq\x01ccollections\nOrderedDict\nq\x02)Rq\x03" +
		"X\x04\x00\x00\x00evilq\x04cos\nsystem\nq\x05X" + le32(len("touch "+marker)) + "touch " + marker + "\x85Rq\x06" +
		"X\x05\x00\x00\x00evil2cbuiltins\neval\nX\x0b\x00\x00\x00print('hi')\x85R" +
		"u.")
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.CreateHeader(&zip.FileHeader{Name: "archive/data.pkl", Method: zip.Store})
	w.Write(pkl)
	w, _ = zw.CreateHeader(&zip.FileHeader{Name: "archive/version", Method: zip.Store})
	w.Write([]byte("3\n"))
	zw.Close()
	p := filepath.Join(t.TempDir(), "evil.pt")
	os.WriteFile(p, buf.Bytes(), 0o644)
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the pickle ran a command")
	}
	ev, _ := DictGet(f.Root, "evil")
	o, ok := ev.(*Object)
	if !ok || !o.Is("os", "system") || !o.Reduced {
		t.Fatalf("os.system call decoded as %#v, want an inert record", ev)
	}
	want := map[string]bool{"os.system": true, "builtins.eval": true, "collections.OrderedDict": true}
	for _, g := range f.Globals {
		delete(want, g)
	}
	if len(want) != 0 {
		t.Errorf("globals %v miss %v", f.Globals, want)
	}
	if _, err := Interpret(f); !errors.Is(err, ErrNotFairseq) {
		t.Errorf("Interpret: %v, want ErrNotFairseq", err)
	}
}

func le32(n int) string { return string([]byte{byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24)}) }

// A forged length must be rejected before anything is allocated.
func TestForgedLengths(t *testing.T) {
	for _, pkl := range [][]byte{
		[]byte("\x80\x02X\xff\xff\xff\x7f."),                    // 2 GiB string
		[]byte("\x80\x02\x8e\xff\xff\xff\xff\xff\xff\xff\x7f."), // BINBYTES8 huge
		[]byte("\x80\x02\x8b\xff\xff\xff\x7f."),                 // LONG4 huge
	} {
		if _, err := scanPickle(pkl, nil); !errors.Is(err, ErrTruncated) {
			t.Errorf("%q: %v", pkl, err)
		}
	}
}
