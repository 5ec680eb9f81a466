package fairseqpt

import (
	"archive/zip"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nlpodyssey/gopickle/types"
	"github.com/xform-dev/xform/tensor"
)

// writerFixtures are torch-written files of every kind the reader handles.
var writerFixtures = []string{
	"../fixtures/torch/tensors_zip.pt",
	"../fixtures/torch/tensors_legacy.pt",
	"../fixtures/torch/a_admin_fp16.pt",
	"../fixtures/torch/a_admin_legacy.pt",
	"../fixtures/torch/b_postln_cfg.pt",
	"../fixtures/clinic/runs/a_admin/ckpt/checkpoint_last.pt",
	"../fixtures/clinic/runs/a_admin/ckpt/checkpoint_12_300.pt",
	"../fixtures/clinic/runs/a_admin/ckpt_u1/checkpoint_last.pt",
	"../fixtures/clinic/runs/b_postln/ckpt/checkpoint_last.pt",
	"../fixtures/clinic/runs/c_preln/ckpt/checkpoint_last.pt",
}

func writeToBytes(t *testing.T, root interface{}, archive string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, archive, root); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return buf.Bytes()
}

// Every fixture read and written back must read back to the same tree with bit-identical
// tensors; writing the re-read tree must give the same bytes again.
func TestWriteRoundTripFixtures(t *testing.T) {
	for _, path := range writerFixtures {
		t.Run(filepath.Base(filepath.Dir(filepath.Dir(path)))+"/"+filepath.Base(path), func(t *testing.T) {
			src, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			out := writeToBytes(t, src.Root, "checkpoint")
			back, err := Read("written", bytes.NewReader(out), int64(len(out)))
			if err != nil {
				t.Fatalf("reading the written file: %v", err)
			}
			if err := deepEqualValues(src.Root, back.Root, "root"); err != nil {
				t.Fatal(err)
			}
			if len(back.Storages) > len(src.Storages) {
				t.Errorf("written file has %d storages, source %d (ties or views were split)", len(back.Storages), len(src.Storages))
			}
			again := writeToBytes(t, back.Root, "checkpoint")
			if !bytes.Equal(out, again) {
				t.Errorf("writing the re-read tree gave different bytes (%d vs %d)", len(out), len(again))
			}
			checkZipLayout(t, out, "checkpoint", len(back.Storages))
		})
	}
}

// torch 2.11's own pickle of fixtures/torch/tensors_zip.pt (every dtype, views, a tie, a
// scalar, location 'cpu') must come out byte for byte.
func TestPickleMatchesTorch(t *testing.T) {
	path := "../fixtures/torch/tensors_zip.pt"
	src, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	zr, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	var want []byte
	for _, f := range zr.File {
		if strings.HasSuffix(f.Name, "/data.pkl") {
			rc, _ := f.Open()
			want, _ = io.ReadAll(rc)
			rc.Close()
		}
	}
	got, _, err := Pickle(src.Root)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("pickle differs from torch's at byte %d of %d/%d:\n got %q\nwant %q", i, len(got), len(want),
			got[max(0, i-40):min(len(got), i+40)], want[max(0, i-40):min(len(want), i+40)])
	}
}

func checkZipLayout(t *testing.T, data []byte, archive string, nStorages int) {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"data.pkl", ".format_version", ".storage_alignment", "byteorder"}
	for i := 0; i < nStorages; i++ {
		want = append(want, fmt.Sprintf("data/%d", i))
	}
	want = append(want, "version", ".data/serialization_id")
	if len(zr.File) != len(want) {
		t.Fatalf("%d records, want %d", len(zr.File), len(want))
	}
	for i, f := range zr.File {
		if f.Name != archive+"/"+want[i] {
			t.Errorf("record %d is %s, want %s/%s", i, f.Name, archive, want[i])
		}
		if f.Method != zip.Store {
			t.Errorf("%s: method %d, want stored", f.Name, f.Method)
		}
		off, err := f.DataOffset()
		if err != nil || off%64 != 0 {
			t.Errorf("%s: data at %d (err %v), want a multiple of 64", f.Name, off, err)
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Errorf("%s: %v (CRC)", f.Name, err)
		}
		rc.Close()
	}
}

// deepEqualValues compares two decoded trees: same structure, same scalars, tensors with
// the same shape, dtype and bytes, and tensors sharing a storage in a sharing it in b.
func deepEqualValues(a, b interface{}, path string) error {
	storeMap := map[*Storage]*Storage{}
	var eq func(a, b interface{}, path string) error
	eq = func(a, b interface{}, path string) error {
		switch x := a.(type) {
		case *Tensor:
			y, ok := b.(*Tensor)
			if !ok {
				return fmt.Errorf("%s: tensor became %T", path, b)
			}
			if s, ok := storeMap[x.Storage]; ok && s != y.Storage {
				return fmt.Errorf("%s: a shared storage was split", path)
			}
			storeMap[x.Storage] = y.Storage
			ta, err := x.Materialize()
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			tb, err := y.Materialize()
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			if ta.DType != tb.DType || !tensor.ShapeEqual(ta.Shape, tb.Shape) || !bytes.Equal(ta.Data, tb.Data) {
				return fmt.Errorf("%s: tensor %s%v differs from %s%v", path, ta.DType, ta.Shape, tb.DType, tb.Shape)
			}
			if x.Offset != y.Offset || fmt.Sprint(x.Stride) != fmt.Sprint(y.Stride) || x.RequiresGrad != y.RequiresGrad {
				return fmt.Errorf("%s: view offset/stride/requires_grad changed", path)
			}
			return nil
		case *types.Dict:
			y, ok := b.(*types.Dict)
			if !ok || x.Len() != y.Len() {
				return fmt.Errorf("%s: dict became %T", path, b)
			}
			for i := range *x {
				if fmt.Sprint((*x)[i].Key) != fmt.Sprint((*y)[i].Key) {
					return fmt.Errorf("%s: key %v became %v", path, (*x)[i].Key, (*y)[i].Key)
				}
				if err := eq((*x)[i].Value, (*y)[i].Value, fmt.Sprintf("%s[%v]", path, (*x)[i].Key)); err != nil {
					return err
				}
			}
			return nil
		case *types.OrderedDict:
			y, ok := b.(*types.OrderedDict)
			if !ok || x.Len() != y.Len() || len(x.PyDict) != len(y.PyDict) {
				return fmt.Errorf("%s: OrderedDict became %T", path, b)
			}
			ey := y.List.Front()
			for ex := x.List.Front(); ex != nil; ex = ex.Next() {
				kx, ky := ex.Value.(*types.OrderedDictEntry), ey.Value.(*types.OrderedDictEntry)
				if fmt.Sprint(kx.Key) != fmt.Sprint(ky.Key) {
					return fmt.Errorf("%s: key %v became %v", path, kx.Key, ky.Key)
				}
				if err := eq(kx.Value, ky.Value, fmt.Sprintf("%s[%v]", path, kx.Key)); err != nil {
					return err
				}
				ey = ey.Next()
			}
			for k, v := range x.PyDict {
				if err := eq(v, y.PyDict[k], path+"."+k); err != nil {
					return err
				}
			}
			return nil
		case *types.List:
			y, ok := b.(*types.List)
			if !ok || x.Len() != y.Len() {
				return fmt.Errorf("%s: list became %T", path, b)
			}
			for i := range *x {
				if err := eq((*x)[i], (*y)[i], fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
			return nil
		case *types.Tuple:
			y, ok := b.(*types.Tuple)
			if !ok || x.Len() != y.Len() {
				return fmt.Errorf("%s: tuple became %T", path, b)
			}
			for i := range *x {
				if err := eq((*x)[i], (*y)[i], fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
			return nil
		case *Object:
			y, ok := b.(*Object)
			if !ok || x.Class.String() != y.Class.String() || x.Reduced != y.Reduced || len(x.Args) != len(y.Args) {
				return fmt.Errorf("%s: object %v became %v", path, a, b)
			}
			for i := range x.Args {
				if err := eq(x.Args[i], y.Args[i], fmt.Sprintf("%s.args[%d]", path, i)); err != nil {
					return err
				}
			}
			if (x.Attrs == nil) != (y.Attrs == nil) {
				return fmt.Errorf("%s: attributes lost", path)
			}
			if x.Attrs != nil {
				if err := eq(x.Attrs, y.Attrs, path); err != nil {
					return err
				}
			}
			return eq(x.State, y.State, path+".state")
		case *Global:
			y, ok := b.(*Global)
			if !ok || x.String() != y.String() {
				return fmt.Errorf("%s: global %v became %v", path, a, b)
			}
			return nil
		case *big.Int:
			y, ok := b.(*big.Int)
			if !ok || x.Cmp(y) != 0 {
				return fmt.Errorf("%s: %v became %v", path, a, b)
			}
			return nil
		case []byte:
			y, ok := b.([]byte)
			if !ok || !bytes.Equal(x, y) {
				return fmt.Errorf("%s: bytes changed", path)
			}
			return nil
		}
		if fmt.Sprintf("%T %#v", a, a) != fmt.Sprintf("%T %#v", b, b) {
			return fmt.Errorf("%s: %T %#v became %T %#v", path, a, a, b, b)
		}
		return nil
	}
	return eq(a, b, path)
}

func TestWriteDeterministicAndTies(t *testing.T) {
	w := &tensor.Tensor{DType: tensor.F32, Shape: []int{2, 2}, Data: make([]byte, 16)}
	for i := range w.Data {
		w.Data[i] = byte(i)
	}
	h := &tensor.Tensor{DType: tensor.F16, Shape: []int{3}, Data: []byte{1, 2, 3, 4, 5, 6}}
	sd := types.NewOrderedDict()
	sd.Set("a.weight", w)
	sd.Set("b.weight", w) // tied: one storage
	sd.Set("h", h)
	root := types.NewDict()
	root.Set("model", sd)
	root.Set("n", big.NewInt(-1<<40))
	root.Set("f", 0.1)
	root.Set("b", []byte{0, 200, 255})
	root.Set("e", []byte{})
	root.Set("l", types.NewListFromSlice([]interface{}{1, 300, 70000, -5, "x", nil, true}))
	a := writeToBytes(t, root, "m")
	b := writeToBytes(t, root, "m")
	if !bytes.Equal(a, b) {
		t.Fatal("two writes of the same tree differ")
	}
	back, err := Read("m.pt", bytes.NewReader(a), int64(len(a)))
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Storages) != 2 {
		t.Errorf("%d storages, want 2 (tied tensor written once)", len(back.Storages))
	}
	checkZipLayout(t, a, "m", 2)
	m, _ := DictGet(back.Root, "model")
	x, _ := DictGet(m, "a.weight")
	y, _ := DictGet(m, "b.weight")
	if x.(*Tensor).Storage != y.(*Tensor).Storage {
		t.Error("tied tensors do not share a storage after reading back")
	}
	for _, c := range []struct {
		key  string
		want string
	}{{"n", "-1099511627776"}, {"f", "0.1"}, {"b", "[0 200 255]"}, {"e", "<builtins.bytes object>"}, {"l", "&[1 300 70000 -5 x <nil> true]"}} {
		v, _ := DictGet(back.Root, c.key)
		if got := fmt.Sprint(v); got != c.want {
			t.Errorf("%s = %s, want %s", c.key, got, c.want)
		}
	}
}

func TestEncodeLong(t *testing.T) {
	// Values from CPython's pickle.encode_long.
	cases := map[int64]string{0: "", 255: "ff00", -1: "ff", -128: "80", -129: "7fff", 1 << 40: "000000000001", -1 << 40: "0000000000ff"}
	for v, want := range cases {
		if got := fmt.Sprintf("%x", encodeLong(big.NewInt(v))); got != want {
			t.Errorf("encodeLong(%d) = %s, want %s", v, got, want)
		}
	}
}

func TestWriteFileRefusesExisting(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.pt")
	if err := os.WriteFile(path, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := types.NewDict()
	root.Set("x", 1)
	err := WriteFile(path, root, WriteOptions{})
	if !errors.Is(err, ErrExists) {
		t.Fatalf("err = %v, want ErrExists", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep" {
		t.Fatal("existing file was changed")
	}
	assertOnly(t, dir, "out.pt")
	if err := WriteFile(path, root, WriteOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if f.Prefix != "out" {
		t.Errorf("archive folder %q, want out", f.Prefix)
	}
	assertOnly(t, dir, "out.pt")
}

// assertOnly fails unless dir holds exactly names (no temporary files left).
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("directory holds %v, want %v", got, names)
	}
}

type failAfter struct {
	w io.Writer
	n int
}

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		k, _ := f.w.Write(p[:f.n])
		f.n = 0
		return k, syscall.ENOSPC
	}
	f.n -= len(p)
	return f.w.Write(p)
}

func bigRoot() interface{} {
	t := &tensor.Tensor{DType: tensor.F32, Shape: []int{512, 512}, Data: make([]byte, 4*512*512)}
	root := types.NewDict()
	root.Set("model", t)
	return root
}

// A write that fails part way (a full disk) leaves nothing behind, whatever the point.
func TestWriteFileFullDiskSimulated(t *testing.T) {
	for _, n := range []int{0, 100, 5000, 600000} {
		dir := t.TempDir()
		path := filepath.Join(dir, "out.pt")
		err := atomicWrite(path, false, func(w io.Writer) error { return Write(w, "out", bigRoot()) },
			func(w io.Writer) io.Writer { return &failAfter{w: w, n: n} })
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("fail after %d bytes: err = %v, want ENOSPC", n, err)
		}
		assertOnly(t, dir)
	}
}

// The same on a real full file system: a 256 KiB tmpfs (needs root; skipped otherwise).
func TestWriteFileFullDiskTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	defer exec.Command("umount", dir).Run()
	path := filepath.Join(dir, "out.pt")
	err := WriteFile(path, bigRoot(), WriteOptions{})
	if err == nil {
		t.Fatal("writing 1 MiB to a 256 KiB file system succeeded")
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Logf("error (not ENOSPC, still a failure): %v", err)
	}
	assertOnly(t, dir)
}
