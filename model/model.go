package model

import (
	"fmt"
	"math"
	"sort"

	"github.com/xform-dev/xform/tensor"
)

// Model is the one in-memory truth: a config and its parameters under canonical names.
type Model struct {
	Config Config
	Params map[string]*tensor.Tensor
}

func pow(x, y float64) float64 { return math.Pow(x, y) }

// Validate checks the config and that the parameters are exactly the expected set, with
// the expected shapes, a floating dtype and data of the right length.
func (m *Model) Validate() error { return m.validate(true) }

// ValidateLayout is Validate without the data-length check, for models whose parameters are
// placeholders (shape and dtype only), as `inspect` builds them without reading weights.
func (m *Model) ValidateLayout() error { return m.validate(false) }

func (m *Model) validate(data bool) error {
	if err := m.Config.Validate(); err != nil {
		return err
	}
	want := m.Config.Expected()
	seen := make(map[string]bool, len(want))
	for _, p := range want {
		seen[p.Name] = true
		t, ok := m.Params[p.Name]
		if !ok {
			return fmt.Errorf("model: missing parameter %s %v", p.Name, p.Shape)
		}
		if !tensor.ShapeEqual(t.Shape, p.Shape) {
			return fmt.Errorf("model: parameter %s has shape %v, config implies %v", p.Name, t.Shape, p.Shape)
		}
		if !t.DType.IsFloat() {
			return fmt.Errorf("model: parameter %s has dtype %s, want a float dtype", p.Name, t.DType)
		}
		if !data {
			continue
		}
		if err := t.Validate(); err != nil {
			return fmt.Errorf("model: parameter %s: %w", p.Name, err)
		}
	}
	var extra []string
	for name := range m.Params {
		if !seen[name] {
			extra = append(extra, name)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return fmt.Errorf("model: unexpected parameters %v", extra)
	}
	return nil
}

// DecoderEmbedding returns the decoder's input embedding, resolving sharing.
func (m *Model) DecoderEmbedding() *tensor.Tensor {
	if m.Config.ShareAllEmbeddings {
		return m.Params[EncEmbed]
	}
	return m.Params[DecEmbed]
}

// OutputProjection returns the [V, d] output matrix, resolving tying.
func (m *Model) OutputProjection() *tensor.Tensor {
	if m.Config.TiedOutput() {
		return m.DecoderEmbedding()
	}
	return m.Params[OutProj]
}

// NumParams counts parameter elements (shared tensors once).
func (m *Model) NumParams() int {
	n := 0
	for _, t := range m.Params {
		n += t.Numel()
	}
	return n
}
