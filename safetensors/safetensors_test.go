package safetensors

import (
	"bytes"
	"errors"
	"testing"

	"github.com/xform-dev/xform/tensor"
)

func TestRoundTripAndOrder(t *testing.T) {
	ts := map[string]*tensor.Tensor{
		"b": tensor.FromF32([]int{2, 2}, []float32{1, 2, 3, 4}),
		"a": {DType: tensor.F16, Shape: []int{3}, Data: []byte{0, 0x3c, 0, 0xc0, 0xff, 0x7b}},
		"s": tensor.FromF32(nil, []float32{7}),
	}
	var buf bytes.Buffer
	if err := Write(&buf, []string{"b", "a", "s"}, ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	if (buf.Len()-8)%8 != 0 && buf.Bytes()[8] != '{' {
		t.Fatal("header not aligned")
	}
	f, err := Read(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Names; len(got) != 3 || got[0] != "b" || got[1] != "a" || got[2] != "s" {
		t.Errorf("data order %v", got)
	}
	for n, w := range ts {
		g := f.Tensors[n]
		if g.DType != w.DType || !tensor.ShapeEqual(g.Shape, w.Shape) && !(len(w.Shape) == 0 && len(g.Shape) == 0) || !bytes.Equal(g.Data, w.Data) {
			t.Errorf("%s differs: %+v vs %+v", n, g, w)
		}
	}
	if f.Metadata["format"] != "pt" {
		t.Errorf("metadata %v", f.Metadata)
	}
	// Deterministic bytes.
	var again bytes.Buffer
	Write(&again, []string{"b", "a", "s"}, ts, map[string]string{"format": "pt"})
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("output is not deterministic")
	}
}

func TestMalformed(t *testing.T) {
	cases := map[string][]byte{
		"empty":           {},
		"huge header":     {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0},
		"bad json":        append([]byte{2, 0, 0, 0, 0, 0, 0, 0}, "{x"...),
		"offset past end": append([]byte{58, 0, 0, 0, 0, 0, 0, 0}, `{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}    `...),
		"shape mismatch":  append([]byte{58, 0, 0, 0, 0, 0, 0, 0}, append([]byte(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}    `), 0, 0, 0, 0)...),
	}
	for name, b := range cases {
		if _, err := Read(bytes.NewReader(b), int64(len(b))); err == nil || (!errors.Is(err, ErrFormat) && name != "empty") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzRead(f *testing.F) {
	var buf bytes.Buffer
	Write(&buf, []string{"w"}, map[string]*tensor.Tensor{"w": tensor.FromF32([]int{2}, []float32{1, 2})}, nil)
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		Read(bytes.NewReader(b), int64(len(b)))
	})
}
