package onnxio

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
)

// MaxProtoBytes is the largest message protobuf implementations accept (2 GB - 1).
const MaxProtoBytes = 1<<31 - 1

// extAlign is the offset alignment of external tensors, so readers can mmap them.
const extAlign = 4096

// SaveOptions controls where tensor bytes go.
type SaveOptions struct {
	// ExternalAbove moves tensor data to a side file when the total tensor bytes exceed it.
	// Zero means "when the model would not fit in one protobuf message".
	ExternalAbove int64
	// MinExternalBytes keeps tensors smaller than this inline (shape constants etc.);
	// zero means 1024, the threshold onnx's own converter uses.
	MinExternalBytes int
}

// forEachTensor visits every TensorProto of a graph, including If/Loop subgraphs and
// tensor-valued attributes, because external data may sit in any of them.
func forEachTensor(g *GraphProto, f func(*TensorProto)) {
	if g == nil {
		return
	}
	for _, t := range g.Initializer {
		f(t)
	}
	for _, n := range g.Node {
		for _, a := range n.Attribute {
			if a.T != nil {
				f(a.T)
			}
			for _, t := range a.Tensors {
				f(t)
			}
			forEachTensor(a.G, f)
			for _, sg := range a.Graphs {
				forEachTensor(sg, f)
			}
		}
	}
}

// Save writes m to path. If the tensors are too large for one message, their bytes go to
// path+"_data" (the side-file name optimum uses) at 4096-aligned offsets. m is left as it
// was on return.
func Save(path string, m *ModelProto, opt SaveOptions) (err error) {
	var total int64
	forEachTensor(m.Graph, func(t *TensorProto) { total += int64(len(t.RawData)) })
	limit := opt.ExternalAbove
	if limit <= 0 {
		limit = MaxProtoBytes - 64<<20 // headroom for nodes and names
	}
	if total > limit {
		restore, err := writeExternal(path, m, opt)
		if err != nil {
			return err
		}
		defer restore()
	} else if err := os.Remove(path + "_data"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("onnxio: remove stale %s_data: %w", path, err)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("onnxio: marshal %s: %w", path, err)
	}
	if len(b) > MaxProtoBytes {
		return fmt.Errorf("onnxio: %s would be %d bytes, over the 2 GB protobuf limit", path, len(b))
	}
	return writeFileSync(path, func(w io.Writer) error { _, err := w.Write(b); return err })
}

// writeExternal moves large raw_data into the side file and returns a func undoing that.
func writeExternal(path string, m *ModelProto, opt SaveOptions) (func(), error) {
	minBytes := opt.MinExternalBytes
	if minBytes <= 0 {
		minBytes = 1024
	}
	var moved []*TensorProto
	var raws [][]byte
	forEachTensor(m.Graph, func(t *TensorProto) {
		if len(t.RawData) >= minBytes {
			moved = append(moved, t)
		}
	})
	loc := filepath.Base(path) + "_data"
	offs := make([]int64, len(moved))
	err := writeFileSync(path+"_data", func(w io.Writer) error {
		var off int64
		var zero [extAlign]byte
		for i, t := range moved {
			if pad := (extAlign - off%extAlign) % extAlign; pad != 0 {
				if _, err := w.Write(zero[:pad]); err != nil {
					return err
				}
				off += pad
			}
			if _, err := w.Write(t.RawData); err != nil {
				return err
			}
			offs[i] = off
			off += int64(len(t.RawData))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i, t := range moved {
		raws = append(raws, t.RawData)
		t.RawData = nil
		t.DataLocation = TensorProto_EXTERNAL.Enum()
		t.ExternalData = []*StringStringEntryProto{
			{Key: proto.String("location"), Value: proto.String(loc)},
			{Key: proto.String("offset"), Value: proto.String(strconv.FormatInt(offs[i], 10))},
			{Key: proto.String("length"), Value: proto.String(strconv.Itoa(len(raws[i])))},
		}
	}
	return func() {
		for i, t := range moved {
			t.RawData = raws[i]
			t.DataLocation = nil
			t.ExternalData = nil
		}
	}, nil
}

// writeFileSync creates path, lets fill write it, and fsyncs before closing, so a later
// rename of the containing directory publishes complete files only.
func writeFileSync(path string, fill func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("onnxio: %w", err)
	}
	if err := fill(f); err != nil {
		f.Close()
		return fmt.Errorf("onnxio: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("onnxio: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("onnxio: close %s: %w", path, err)
	}
	return nil
}

// Load reads a model and brings any external tensor data back into raw_data.
func Load(path string) (*ModelProto, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("onnxio: %w", err)
	}
	m, err := Unmarshal(b)
	if err != nil {
		return nil, fmt.Errorf("onnxio: %s: %w", path, err)
	}
	var loadErr error
	forEachTensor(m.Graph, func(t *TensorProto) {
		if loadErr == nil && t.GetDataLocation() == TensorProto_EXTERNAL {
			loadErr = loadExternal(filepath.Dir(path), t)
		}
	})
	if loadErr != nil {
		return nil, fmt.Errorf("onnxio: %s: %w", path, loadErr)
	}
	return m, nil
}

// Unmarshal decodes a serialized ModelProto (external data is left unresolved).
func Unmarshal(b []byte) (*ModelProto, error) {
	m := &ModelProto{}
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("decode ModelProto: %w", err)
	}
	return m, nil
}

func loadExternal(dir string, t *TensorProto) error {
	kv := map[string]string{}
	for _, e := range t.ExternalData {
		kv[e.GetKey()] = e.GetValue()
	}
	loc := kv["location"]
	// The location comes from the file: refuse paths that leave the model's directory.
	if loc == "" || filepath.IsAbs(loc) || strings.HasPrefix(filepath.Clean(loc), "..") {
		return fmt.Errorf("tensor %s: bad external location %q", t.GetName(), loc)
	}
	off, err := parseNonNeg(kv["offset"], 0)
	if err != nil {
		return fmt.Errorf("tensor %s: offset: %w", t.GetName(), err)
	}
	n := int64(ElemSize(TensorProto_DataType(t.GetDataType())))
	for _, d := range t.Dims {
		n *= d
	}
	length, err := parseNonNeg(kv["length"], n)
	if err != nil {
		return fmt.Errorf("tensor %s: length: %w", t.GetName(), err)
	}
	f, err := os.Open(filepath.Join(dir, loc))
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, length)
	if _, err := f.ReadAt(buf, off); err != nil {
		return fmt.Errorf("tensor %s: read %d bytes at %d of %s: %w", t.GetName(), length, off, loc, err)
	}
	t.RawData = buf
	t.DataLocation = nil
	t.ExternalData = nil
	return nil
}

func parseNonNeg(s string, def int64) (int64, error) {
	if s == "" {
		return def, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad value %q", s)
	}
	return v, nil
}
