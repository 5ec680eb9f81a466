package onnxio

import (
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"
)

// tinyModel is y = MatMul(x, W) + b with W big enough to go external when forced.
func tinyModel(t *testing.T) *ModelProto {
	t.Helper()
	g := NewGraph("tiny", "t/")
	x := g.Input("x", TensorProto_FLOAT, Dyn("batch"), Fixed(64))
	w := make([]float32, 64*64)
	for i := range w {
		w[i] = float32(i%7) - 3
	}
	wn := g.Initializer(Float32Tensor("W", []int64{64, 64}, w))
	bn := g.Initializer(Float32Tensor("b", []int64{64}, make([]float32, 64)))
	y := g.Op("MatMul", []string{x, wn})
	g.NodeOut("Add", []string{y, bn}, []string{"y"})
	g.Output("y", TensorProto_FLOAT, Dyn("batch"), Fixed(64))
	m, err := NewModel(g.Proto, 17, "xform-test", "0", map[string]string{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSaveLoadRoundTrip(t *testing.T) {
	cases := []struct {
		name     string
		opt      SaveOptions
		external bool
	}{
		{"inline", SaveOptions{}, false},
		{"external", SaveOptions{ExternalAbove: 1}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := tinyModel(t)
			want := proto.Clone(m)
			p := filepath.Join(t.TempDir(), "m.onnx")
			if err := Save(p, m, c.opt); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(m, want) {
				t.Fatal("Save changed the in-memory model")
			}
			_, err := os.Stat(p + "_data")
			if got := err == nil; got != c.external {
				t.Fatalf("side file present = %v, want %v", got, c.external)
			}
			if c.external {
				raw, _ := os.ReadFile(p)
				on := &ModelProto{}
				if err := proto.Unmarshal(raw, on); err != nil {
					t.Fatal(err)
				}
				w := on.Graph.Initializer[0]
				if w.GetDataLocation() != TensorProto_EXTERNAL || len(w.RawData) != 0 {
					t.Fatalf("W not stored externally: %v", w)
				}
				if b := on.Graph.Initializer[1]; b.GetDataLocation() == TensorProto_EXTERNAL {
					t.Fatal("small tensor b moved to the side file")
				}
			}
			got, err := Load(p)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, want) {
				t.Fatal("round trip differs")
			}
		})
	}
}

func TestSubgraphInitializersGoOuter(t *testing.T) {
	outer := NewGraph("outer", "o/")
	a := NewSubgraph("then", "a/", outer)
	b := NewSubgraph("else", "b/", outer)
	for _, g := range []*Graph{a, b} {
		g.Initializer(Int64Tensor("shape", []int64{2}, []int64{0, 1}))
	}
	if len(outer.Proto.Initializer) != 1 || len(a.Proto.Initializer)+len(b.Proto.Initializer) != 0 {
		t.Fatalf("initializers: outer %d, branches %d+%d", len(outer.Proto.Initializer), len(a.Proto.Initializer), len(b.Proto.Initializer))
	}
	if x, y := a.Op("Identity", []string{"shape"}), b.Op("Identity", []string{"shape"}); x == y {
		t.Fatalf("branch value names clash: %s", x)
	}
}

func TestInitializerConflictPanics(t *testing.T) {
	g := NewGraph("g", "")
	g.Initializer(Int64Tensor("c", []int64{1}, []int64{1}))
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for two different tensors under one name")
		}
	}()
	g.Initializer(Int64Tensor("c", []int64{1}, []int64{2}))
}

func TestOpsetIR(t *testing.T) {
	for _, c := range []struct {
		opset int
		ir    int64
		ok    bool
	}{{17, 8, true}, {18, 8, true}, {19, 9, true}, {21, 10, true}, {23, 11, true}, {99, 0, false}} {
		ir, err := OpsetIR(c.opset)
		if (err == nil) != c.ok || ir != c.ir {
			t.Errorf("OpsetIR(%d) = %d, %v", c.opset, ir, err)
		}
	}
}

func TestLoadRejectsEscapingLocation(t *testing.T) {
	m := tinyModel(t)
	w := m.Graph.Initializer[0]
	w.RawData = nil
	w.DataLocation = TensorProto_EXTERNAL.Enum()
	w.ExternalData = []*StringStringEntryProto{{Key: proto.String("location"), Value: proto.String("../etc/passwd")}}
	p := filepath.Join(t.TempDir(), "m.onnx")
	b, _ := proto.Marshal(m)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil {
		t.Fatal("Load accepted a location outside the model directory")
	}
}

func FuzzUnmarshal(f *testing.F) {
	b, _ := proto.Marshal(&ModelProto{IrVersion: proto.Int64(8)})
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = Unmarshal(data) // must not panic
	})
}
