// Package safetensors reads and writes the safetensors format: an 8-byte little-endian header
// length, a JSON header mapping names to dtype, shape and byte offsets, then the raw data.
// xform uses it for its own model directories so that Python, Rust and JS tools read them too.
package safetensors

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/xform-dev/xform/tensor"
)

// ErrFormat wraps every malformed-file error.
var ErrFormat = errors.New("malformed safetensors file")

// maxHeader bounds the JSON header (the reference implementation uses 100 MB).
const maxHeader = 100 << 20

type entry struct {
	DType       string   `json:"dtype"`
	Shape       []int    `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

// Write writes tensors (in the given name order) and string metadata to w. Output is
// deterministic: names in order, header padded with spaces to a multiple of 8.
func Write(w io.Writer, names []string, tensors map[string]*tensor.Tensor, metadata map[string]string) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	// Build the header by hand so key order follows names (encoding/json sorts map keys).
	hdr := []byte{'{'}
	if len(metadata) > 0 {
		mk := make([]string, 0, len(metadata))
		for k := range metadata {
			mk = append(mk, k)
		}
		sort.Strings(mk)
		hdr = append(hdr, `"__metadata__":{`...)
		for i, k := range mk {
			if i > 0 {
				hdr = append(hdr, ',')
			}
			kb, _ := json.Marshal(k)
			vb, _ := json.Marshal(metadata[k])
			hdr = append(append(append(hdr, kb...), ':'), vb...)
		}
		hdr = append(hdr, '}')
	}
	off := int64(0)
	for i, n := range names {
		t, ok := tensors[n]
		if !ok {
			return fmt.Errorf("safetensors: no tensor named %q", n)
		}
		if err := t.Validate(); err != nil {
			return fmt.Errorf("safetensors: %s: %w", n, err)
		}
		if i > 0 || len(metadata) > 0 {
			hdr = append(hdr, ',')
		}
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		e, _ := json.Marshal(entry{DType: string(t.DType), Shape: shape, DataOffsets: [2]int64{off, off + int64(len(t.Data))}})
		kb, _ := json.Marshal(n)
		hdr = append(append(append(hdr, kb...), ':'), e...)
		off += int64(len(t.Data))
	}
	hdr = append(hdr, '}')
	for len(hdr)%8 != 0 {
		hdr = append(hdr, ' ')
	}
	var n8 [8]byte
	binary.LittleEndian.PutUint64(n8[:], uint64(len(hdr)))
	if _, err := bw.Write(n8[:]); err != nil {
		return err
	}
	if _, err := bw.Write(hdr); err != nil {
		return err
	}
	for _, n := range names {
		if _, err := bw.Write(tensors[n].Data); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// File is a parsed safetensors file.
type File struct {
	Names    []string // in data order
	Tensors  map[string]*tensor.Tensor
	Metadata map[string]string
}

// ReadFile reads a whole safetensors file.
func ReadFile(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	sf, err := Read(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("safetensors: %s: %w", path, err)
	}
	return sf, nil
}

// Read parses a safetensors file of the given size, checking every offset against it.
func Read(r io.ReaderAt, size int64) (*File, error) {
	var n8 [8]byte
	if _, err := r.ReadAt(n8[:], 0); err != nil {
		return nil, fmt.Errorf("%w: no header length: %v", ErrFormat, err)
	}
	hl := binary.LittleEndian.Uint64(n8[:])
	if hl > maxHeader || int64(hl) > size-8 {
		return nil, fmt.Errorf("%w: header length %d does not fit in a %d-byte file", ErrFormat, hl, size)
	}
	hdr := make([]byte, hl)
	if _, err := r.ReadAt(hdr, 8); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrFormat, err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(hdr, &raw); err != nil {
		return nil, fmt.Errorf("%w: header JSON: %v", ErrFormat, err)
	}
	base := 8 + int64(hl)
	out := &File{Tensors: map[string]*tensor.Tensor{}, Metadata: map[string]string{}}
	type span struct {
		name       string
		start, end int64
	}
	var spans []span
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &out.Metadata); err != nil {
				return nil, fmt.Errorf("%w: __metadata__: %v", ErrFormat, err)
			}
			continue
		}
		var e entry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, fmt.Errorf("%w: entry %q: %v", ErrFormat, name, err)
		}
		dt := tensor.DType(e.DType)
		if dt.Size() == 0 {
			return nil, fmt.Errorf("%w: entry %q: unsupported dtype %q", ErrFormat, name, e.DType)
		}
		s, end := e.DataOffsets[0], e.DataOffsets[1]
		if s < 0 || end < s || base+end > size {
			return nil, fmt.Errorf("%w: entry %q: data offsets %v outside the %d data bytes", ErrFormat, name, e.DataOffsets, size-base)
		}
		numel := int64(1)
		for _, d := range e.Shape {
			if d < 0 || (d > 0 && numel > (end-s+1)/int64(d)+1) {
				return nil, fmt.Errorf("%w: entry %q: bad shape %v", ErrFormat, name, e.Shape)
			}
			numel *= int64(d)
		}
		if numel*int64(dt.Size()) != end-s {
			return nil, fmt.Errorf("%w: entry %q: shape %v %s needs %d bytes, offsets give %d", ErrFormat, name, e.Shape, dt, numel*int64(dt.Size()), end-s)
		}
		buf := make([]byte, end-s)
		if _, err := r.ReadAt(buf, base+s); err != nil {
			return nil, fmt.Errorf("%w: entry %q data: %v", ErrFormat, name, err)
		}
		out.Tensors[name] = &tensor.Tensor{DType: dt, Shape: e.Shape, Data: buf}
		spans = append(spans, span{name, s, end})
	}
	sort.Slice(spans, func(i, j int) bool {
		return spans[i].start < spans[j].start || (spans[i].start == spans[j].start && spans[i].name < spans[j].name)
	})
	for i, sp := range spans {
		if i > 0 && sp.start < spans[i-1].end {
			return nil, fmt.Errorf("%w: entries %q and %q overlap", ErrFormat, spans[i-1].name, sp.name)
		}
		out.Names = append(out.Names, sp.name)
	}
	return out, nil
}
