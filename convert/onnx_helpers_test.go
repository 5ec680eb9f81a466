package convert

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

// tinyConfig is a small valid config; tests tweak fields from it.
func tinyConfig() model.Config {
	return model.Config{
		Arch: "transformer_iwslt_de_en", Init: model.InitDefault,
		EncoderLayers: 2, DecoderLayers: 2, EncoderEmbedDim: 16, DecoderEmbedDim: 16,
		EncoderFFNDim: 24, DecoderFFNDim: 24, EncoderHeads: 4, DecoderHeads: 4,
		ShareAllEmbeddings: true, ShareDecoderInputOutputEmbed: true,
		Activation: "relu", MaxSourcePositions: 64, MaxTargetPositions: 64,
		SrcVocab: 40, TgtVocab: 40,
	}
}

// randomModel fills every expected parameter with seeded values of realistic scale:
// LN γ around 1, ω around 1.5, embeddings with a zero pad row.
func randomModel(t testing.TB, c model.Config, seed uint64) *model.Model {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	m := &model.Model{Config: c, Params: map[string]*tensor.Tensor{}}
	for _, p := range c.Expected() {
		n := tensor.Numel(p.Shape)
		v := make([]float32, n)
		fanIn := p.Shape[len(p.Shape)-1]
		for i := range v {
			switch {
			case strings.HasSuffix(p.Name, "_omega"):
				v[i] = 1.2 + 0.6*r.Float32()
			case strings.Contains(p.Name, "layer_norm.weight"):
				v[i] = 0.8 + 0.4*r.Float32()
			case strings.HasSuffix(p.Name, ".bias"):
				v[i] = 0.1 * float32(r.NormFloat64())
			default:
				v[i] = float32(r.NormFloat64() / math.Sqrt(float64(fanIn)))
			}
		}
		if strings.Contains(p.Name, "embed_") {
			for j := 0; j < p.Shape[1]; j++ {
				v[model.Pad*p.Shape[1]+j] = 0
			}
		}
		m.Params[p.Name] = tensor.FromF32(p.Shape, v)
	}
	if err := m.Validate(); err != nil {
		t.Fatalf("random model invalid: %v", err)
	}
	return m
}

// writeNPY writes an fp32 .npy file (format 1.0), for the Python reference.
func writeNPY(path string, shape []int, v []float32) error {
	dims := make([]string, len(shape))
	for i, s := range shape {
		dims[i] = fmt.Sprint(s)
	}
	sh := strings.Join(dims, ", ")
	if len(shape) == 1 {
		sh += ","
	}
	hdr := fmt.Sprintf("{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", sh)
	pad := 64 - (10+len(hdr)+1)%64
	hdr += strings.Repeat(" ", pad) + "\n"
	b := []byte("\x93NUMPY\x01\x00")
	b = binary.LittleEndian.AppendUint16(b, uint16(len(hdr)))
	b = append(b, hdr...)
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return os.WriteFile(path, b, 0o644)
}

// dumpParams writes every parameter as <name>.npy plus config.json into dir.
func dumpParams(t testing.TB, m *model.Model, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, p := range m.Params {
		v, err := p.F32()
		if err != nil {
			t.Fatal(err)
		}
		if err := writeNPY(filepath.Join(dir, name+".npy"), p.Shape, v); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := json.Marshal(m.Config)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}
