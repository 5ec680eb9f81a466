package npy

import (
	"path/filepath"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		shape []int
	}{{"scalar", []int{}}, {"vec", []int{3}}, {"mat", []int{2, 3}}} {
		t.Run(tc.name, func(t *testing.T) {
			n := 1
			for _, s := range tc.shape {
				n *= s
			}
			v := make([]float32, n)
			iv := make([]int64, n)
			for i := range v {
				v[i] = float32(i) * 1.5
				iv[i] = int64(i) - 7
			}
			p := filepath.Join(dir, tc.name+".npy")
			if err := WriteF32(p, tc.shape, v); err != nil {
				t.Fatal(err)
			}
			a, err := Read(p)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := a.F32()
			if len(a.Shape) != len(tc.shape) || len(got) != n {
				t.Fatalf("shape %v", a.Shape)
			}
			for i := range v {
				if got[i] != v[i] {
					t.Fatalf("elem %d: %v != %v", i, got[i], v[i])
				}
			}
			if err := WriteI64(p, tc.shape, iv); err != nil {
				t.Fatal(err)
			}
			a, err = Read(p)
			if err != nil {
				t.Fatal(err)
			}
			gi, _ := a.Int()
			for i := range iv {
				if gi[i] != iv[i] {
					t.Fatalf("int elem %d", i)
				}
			}
		})
	}
}

func TestFixture(t *testing.T) {
	a, err := Read("../../fixtures/clinic/runs/a_admin/dump_last/batch/src_tokens.npy")
	if err != nil {
		t.Fatal(err)
	}
	if a.Descr != "<i8" || len(a.Shape) != 2 || a.Shape[0] != 4 {
		t.Fatalf("src_tokens: %s %v", a.Descr, a.Shape)
	}
	m, err := Read("../../fixtures/clinic/runs/a_admin/dump_last/cpu_fp32/encoder_padding_mask.npy")
	if err != nil {
		t.Fatal(err)
	}
	if m.Descr != "|b1" {
		t.Fatalf("mask descr %s", m.Descr)
	}
}
