package fairseqpt

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math"

	"github.com/xform-dev/xform/tensor"
)

// storageDTypes maps torch storage classes to dtypes.
var storageDTypes = map[string]tensor.DType{
	"FloatStorage":    tensor.F32,
	"HalfStorage":     tensor.F16,
	"BFloat16Storage": tensor.BF16,
	"DoubleStorage":   tensor.F64,
	"LongStorage":     tensor.I64,
	"IntStorage":      tensor.I32,
	"ShortStorage":    tensor.I16,
	"CharStorage":     tensor.I8,
	"ByteStorage":     tensor.U8,
	"BoolStorage":     tensor.Bool,
}

// storageClass is the value a torch.*Storage GLOBAL resolves to.
type storageClass struct {
	name  string
	dtype tensor.DType
}

// Storage is one torch storage: Numel elements of DType at a byte range of the file.
// Bytes are read only when a tensor is materialised.
type Storage struct {
	Key      string
	DType    tensor.DType
	Numel    int64
	Location string

	src    io.ReaderAt
	offset int64  // absolute offset of the first byte in src
	crc    uint32 // expected CRC-32 of the whole record (zip), when checkCRC
	check  bool
	path   string
}

// Bytes returns the whole storage (Numel × element size bytes).
func (s *Storage) Bytes() ([]byte, error) {
	n := s.Numel * int64(s.DType.Size())
	buf := make([]byte, n)
	if _, err := s.src.ReadAt(buf, s.offset); err != nil {
		return nil, fmt.Errorf("fairseqpt: %s: reading storage %s (%d bytes at %d): %w", s.path, s.Key, n, s.offset, err)
	}
	if s.check {
		if got := crc32.ChecksumIEEE(buf); got != s.crc {
			return nil, fmt.Errorf("fairseqpt: %s: storage data/%s: %w: CRC-32 %08x, header says %08x", s.path, s.Key, ErrCorrupt, got, s.crc)
		}
	}
	return buf, nil
}

// Tensor is a lazy torch tensor: a strided view onto a Storage.
type Tensor struct {
	Storage      *Storage
	Offset       int64
	Shape        []int
	Stride       []int64
	RequiresGrad bool
}

// DType is the element type.
func (t *Tensor) DType() tensor.DType { return t.Storage.DType }

// Numel is the number of elements of the view.
func (t *Tensor) Numel() int { return tensor.Numel(t.Shape) }

// Nbytes is the size of the view's elements.
func (t *Tensor) Nbytes() int64 { return int64(t.Numel()) * int64(t.Storage.DType.Size()) }

func (t *Tensor) String() string { return fmt.Sprintf("Tensor%v %s", t.Shape, t.DType()) }

// validate checks the view lies inside its storage, with no overflow.
func (t *Tensor) validate() error {
	if len(t.Shape) != len(t.Stride) {
		return fmt.Errorf("%w: tensor size %v and stride %v differ in rank", ErrCorrupt, t.Shape, t.Stride)
	}
	if t.Offset < 0 {
		return fmt.Errorf("%w: negative storage offset %d", ErrCorrupt, t.Offset)
	}
	numel := int64(1)
	last := t.Offset // index of the last element touched
	for i, s := range t.Shape {
		if s < 0 || t.Stride[i] < 0 {
			return fmt.Errorf("%w: negative size or stride in %v/%v", ErrCorrupt, t.Shape, t.Stride)
		}
		if s == 0 {
			return nil // empty view touches nothing
		}
		if numel > math.MaxInt32*int64(256)/int64(s) {
			return fmt.Errorf("%w: tensor shape %v too large", ErrCorrupt, t.Shape)
		}
		numel *= int64(s)
		if t.Stride[i] > 0 && int64(s-1) > (math.MaxInt64-last)/t.Stride[i] {
			return fmt.Errorf("%w: tensor extent overflows", ErrCorrupt)
		}
		last += int64(s-1) * t.Stride[i]
	}
	if last >= t.Storage.Numel {
		return fmt.Errorf("%w: tensor view %v (offset %d, stride %v) reaches element %d of a %d-element storage",
			ErrCorrupt, t.Shape, t.Offset, t.Stride, last, t.Storage.Numel)
	}
	return nil
}

// contiguous reports whether the view is row-major dense.
func (t *Tensor) contiguous() bool {
	want := int64(1)
	for i := len(t.Shape) - 1; i >= 0; i-- {
		if t.Shape[i] != 1 && t.Stride[i] != want {
			return false
		}
		want *= int64(t.Shape[i])
	}
	return true
}

// Materialize reads the view's elements into a dense row-major tensor.Tensor, keeping the
// stored dtype bit for bit.
func (t *Tensor) Materialize() (*tensor.Tensor, error) {
	es := int64(t.Storage.DType.Size())
	out := &tensor.Tensor{DType: t.Storage.DType, Shape: append([]int(nil), t.Shape...)}
	n := int64(t.Numel())
	if n == 0 {
		out.Data = []byte{}
		return out, nil
	}
	if t.contiguous() && !t.Storage.check {
		// Read just the view's bytes: the storage may be much larger (one flat buffer).
		out.Data = make([]byte, n*es)
		if _, err := t.Storage.src.ReadAt(out.Data, t.Storage.offset+t.Offset*es); err != nil {
			return nil, fmt.Errorf("fairseqpt: %s: reading tensor data: %w", t.Storage.path, err)
		}
		return out, nil
	}
	all, err := t.Storage.Bytes()
	if err != nil {
		return nil, err
	}
	if t.contiguous() {
		if t.Offset == 0 && n == t.Storage.Numel {
			out.Data = all // the usual case: the view is the whole storage
		} else {
			out.Data = append([]byte(nil), all[t.Offset*es:(t.Offset+n)*es]...)
		}
		return out, nil
	}
	out.Data = make([]byte, n*es)
	idx := make([]int, len(t.Shape))
	for k := int64(0); k < n; k++ {
		src := t.Offset
		for d, i := range idx {
			src += int64(i) * t.Stride[d]
		}
		copy(out.Data[k*es:(k+1)*es], all[src*es:(src+1)*es])
		for d := len(idx) - 1; d >= 0; d-- {
			idx[d]++
			if idx[d] < t.Shape[d] {
				break
			}
			idx[d] = 0
		}
	}
	return out, nil
}

// Float64s reads a small float or integer tensor as float64 values (for scalars such as
// version buffers and inspect summaries).
func (t *Tensor) Float64s() ([]float64, error) {
	m, err := t.Materialize()
	if err != nil {
		return nil, err
	}
	out := make([]float64, m.Numel())
	if m.DType.IsFloat() {
		if m.DType == tensor.F64 {
			for i := range out {
				out[i] = math.Float64frombits(binary.LittleEndian.Uint64(m.Data[8*i:]))
			}
			return out, nil
		}
		f, err := m.F32()
		if err != nil {
			return nil, err
		}
		for i, v := range f {
			out[i] = float64(v)
		}
		return out, nil
	}
	v, err := m.I64()
	if err != nil {
		return nil, err
	}
	for i, x := range v {
		out[i] = float64(x)
	}
	return out, nil
}
