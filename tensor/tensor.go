// Package tensor is the in-memory tensor that every xform package exchanges:
// a dtype, a shape and the raw little-endian bytes, so fp16/bf16 weights
// survive a round trip bit for bit and are widened to fp32 only when computed on.
package tensor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// DType names an element type by the name safetensors uses.
type DType string

const (
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
	F64  DType = "F64"
	I64  DType = "I64"
	I32  DType = "I32"
	I16  DType = "I16"
	I8   DType = "I8"
	U8   DType = "U8"
	Bool DType = "BOOL"
)

// ErrDType reports a dtype that an operation cannot handle.
var ErrDType = errors.New("unsupported dtype")

// Size returns the bytes per element, or 0 for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case F64, I64:
		return 8
	case F32, I32:
		return 4
	case F16, BF16, I16:
		return 2
	case I8, U8, Bool:
		return 1
	}
	return 0
}

// IsFloat reports whether d is a floating-point dtype.
func (d DType) IsFloat() bool { return d == F32 || d == F16 || d == BF16 || d == F64 }

// Tensor is a dense, contiguous, row-major tensor.
type Tensor struct {
	DType DType
	Shape []int
	Data  []byte
}

// Numel returns the number of elements of shape (1 for a scalar).
func Numel(shape []int) int {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return n
}

// Numel returns the number of elements.
func (t *Tensor) Numel() int { return Numel(t.Shape) }

// Validate checks that the byte length matches dtype and shape.
func (t *Tensor) Validate() error {
	es := t.DType.Size()
	if es == 0 {
		return fmt.Errorf("tensor: %w %q", ErrDType, t.DType)
	}
	for _, s := range t.Shape {
		if s < 0 {
			return fmt.Errorf("tensor: negative dimension in shape %v", t.Shape)
		}
	}
	if want := t.Numel() * es; want != len(t.Data) {
		return fmt.Errorf("tensor: shape %v %s needs %d bytes, have %d", t.Shape, t.DType, want, len(t.Data))
	}
	return nil
}

// ShapeEqual reports whether two shapes are identical.
func ShapeEqual(a, b []int) bool {
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

// F32 returns the elements widened to float32 (a fresh slice).
func (t *Tensor) F32() ([]float32, error) {
	n := t.Numel()
	if err := t.Validate(); err != nil {
		return nil, err
	}
	out := make([]float32, n)
	d := t.Data
	switch t.DType {
	case F32:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(d[4*i:]))
		}
	case F16:
		for i := range out {
			out[i] = HalfToFloat(binary.LittleEndian.Uint16(d[2*i:]))
		}
	case BF16:
		for i := range out {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(d[2*i:])) << 16)
		}
	case F64:
		for i := range out {
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(d[8*i:])))
		}
	default:
		return nil, fmt.Errorf("tensor: F32 of %s: %w", t.DType, ErrDType)
	}
	return out, nil
}

// I64 returns integer elements widened to int64.
func (t *Tensor) I64() ([]int64, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	n := t.Numel()
	out := make([]int64, n)
	d := t.Data
	switch t.DType {
	case I64:
		for i := range out {
			out[i] = int64(binary.LittleEndian.Uint64(d[8*i:]))
		}
	case I32:
		for i := range out {
			out[i] = int64(int32(binary.LittleEndian.Uint32(d[4*i:])))
		}
	case I16:
		for i := range out {
			out[i] = int64(int16(binary.LittleEndian.Uint16(d[2*i:])))
		}
	case I8:
		for i := range out {
			out[i] = int64(int8(d[i]))
		}
	case U8, Bool:
		for i := range out {
			out[i] = int64(d[i])
		}
	default:
		return nil, fmt.Errorf("tensor: I64 of %s: %w", t.DType, ErrDType)
	}
	return out, nil
}

// FromF32 builds an F32 tensor holding a copy of v.
func FromF32(shape []int, v []float32) *Tensor {
	if Numel(shape) != len(v) {
		panic(fmt.Sprintf("tensor.FromF32: shape %v has %d elements, got %d", shape, Numel(shape), len(v)))
	}
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return &Tensor{DType: F32, Shape: append([]int(nil), shape...), Data: b}
}

// Convert returns the tensor in dtype d (float dtypes only; rounding to nearest even).
func (t *Tensor) Convert(d DType) (*Tensor, error) {
	if t.DType == d {
		return t.Clone(), nil
	}
	v, err := t.F32()
	if err != nil {
		return nil, err
	}
	out := &Tensor{DType: d, Shape: append([]int(nil), t.Shape...), Data: make([]byte, len(v)*d.Size())}
	switch d {
	case F32:
		for i, x := range v {
			binary.LittleEndian.PutUint32(out.Data[4*i:], math.Float32bits(x))
		}
	case F16:
		for i, x := range v {
			binary.LittleEndian.PutUint16(out.Data[2*i:], FloatToHalf(x))
		}
	case BF16:
		for i, x := range v {
			binary.LittleEndian.PutUint16(out.Data[2*i:], FloatToBF16(x))
		}
	case F64:
		for i, x := range v {
			binary.LittleEndian.PutUint64(out.Data[8*i:], math.Float64bits(float64(x)))
		}
	default:
		return nil, fmt.Errorf("tensor: convert to %s: %w", d, ErrDType)
	}
	return out, nil
}

// Clone returns a deep copy.
func (t *Tensor) Clone() *Tensor {
	return &Tensor{DType: t.DType, Shape: append([]int(nil), t.Shape...), Data: append([]byte(nil), t.Data...)}
}
