//go:build !onnxruntime

package onnxrun

import (
	"context"

	"github.com/xform-dev/xform/model"
)

// Model is an exported model directory opened in ONNX Runtime.
type Model struct{}

// Open fails: this build has no ONNX Runtime.
func Open(dir string, opt Options) (*Model, error) { return nil, ErrNotBuilt }

// Close does nothing.
func (m *Model) Close() error { return nil }

// Config is the zero config.
func (m *Model) Config() model.Config { return model.Config{} }

// MaxSourcePositions is 0.
func (m *Model) MaxSourcePositions() int { return 0 }

// MaxDecoderPositions is 0.
func (m *Model) MaxDecoderPositions() int { return 0 }

// Generate fails with ErrNotBuilt.
func (m *Model) Generate(ctx context.Context, src []int32, B, S int, opt model.BeamOptions) ([][]model.Hypothesis, error) {
	return nil, ErrNotBuilt
}
