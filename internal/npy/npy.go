// Package npy reads and writes NumPy .npy files (format versions 1–3, C order, little
// endian): enough to exchange tensors with the Python reference tools and to read the
// fixtures' dumps.
package npy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// ErrFormat reports a file that is not a .npy this package understands.
var ErrFormat = errors.New("npy: unsupported or malformed file")

// Array is a decoded array: its NumPy dtype descriptor ("<f4", "<i8", "|b1", ...), its
// shape and the raw little-endian element bytes.
type Array struct {
	Descr string
	Shape []int
	Data  []byte
}

var magic = []byte("\x93NUMPY")

// Read decodes a .npy file.
func Read(path string) (*Array, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	a, err := Decode(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return a, nil
}

var (
	reDescr = regexp.MustCompile(`'descr':\s*'([^']*)'`)
	reOrder = regexp.MustCompile(`'fortran_order':\s*(True|False)`)
	reShape = regexp.MustCompile(`'shape':\s*\(([^)]*)\)`)
)

// Decode reads one array from r.
func Decode(r io.Reader) (*Array, error) {
	var pre [8]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if !bytes.Equal(pre[:6], magic) {
		return nil, fmt.Errorf("%w: bad magic", ErrFormat)
	}
	var hlen int
	switch pre[6] {
	case 1:
		var n uint16
		if err := binary.Read(r, binary.LittleEndian, &n); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrFormat, err)
		}
		hlen = int(n)
	case 2, 3:
		var n uint32
		if err := binary.Read(r, binary.LittleEndian, &n); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrFormat, err)
		}
		hlen = int(n)
	default:
		return nil, fmt.Errorf("%w: version %d", ErrFormat, pre[6])
	}
	if hlen > 1<<20 {
		return nil, fmt.Errorf("%w: header of %d bytes", ErrFormat, hlen)
	}
	h := make([]byte, hlen)
	if _, err := io.ReadFull(r, h); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	hs := string(h)
	md, mo, ms := reDescr.FindStringSubmatch(hs), reOrder.FindStringSubmatch(hs), reShape.FindStringSubmatch(hs)
	if md == nil || mo == nil || ms == nil {
		return nil, fmt.Errorf("%w: header %q", ErrFormat, hs)
	}
	if mo[1] == "True" {
		return nil, fmt.Errorf("%w: fortran order", ErrFormat)
	}
	a := &Array{Descr: md[1], Shape: []int{}}
	for _, p := range strings.Split(ms[1], ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%w: shape %q", ErrFormat, ms[1])
		}
		a.Shape = append(a.Shape, n)
	}
	es := elemSize(a.Descr)
	if es == 0 {
		return nil, fmt.Errorf("%w: dtype %q", ErrFormat, a.Descr)
	}
	n := es
	for _, s := range a.Shape {
		n *= s
		if n > 1<<34 {
			return nil, fmt.Errorf("%w: array too large", ErrFormat)
		}
	}
	a.Data = make([]byte, n)
	if _, err := io.ReadFull(r, a.Data); err != nil {
		return nil, fmt.Errorf("%w: data: %v", ErrFormat, err)
	}
	return a, nil
}

func elemSize(descr string) int {
	switch descr {
	case "<f8", "<i8", "<u8":
		return 8
	case "<f4", "<i4", "<u4":
		return 4
	case "<f2", "<i2", "<u2":
		return 2
	case "|b1", "|u1", "|i1":
		return 1
	}
	return 0
}

// Numel returns the element count.
func (a *Array) Numel() int {
	n := 1
	for _, s := range a.Shape {
		n *= s
	}
	return n
}

// F32 returns float elements as float32 (f2, f4 and f8 are accepted).
func (a *Array) F32() ([]float32, error) {
	out := make([]float32, a.Numel())
	switch a.Descr {
	case "<f4":
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(a.Data[4*i:]))
		}
	case "<f8":
		for i := range out {
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(a.Data[8*i:])))
		}
	default:
		return nil, fmt.Errorf("npy: F32 of %s", a.Descr)
	}
	return out, nil
}

// Int returns integer or bool elements as int64.
func (a *Array) Int() ([]int64, error) {
	out := make([]int64, a.Numel())
	switch a.Descr {
	case "<i8":
		for i := range out {
			out[i] = int64(binary.LittleEndian.Uint64(a.Data[8*i:]))
		}
	case "<i4":
		for i := range out {
			out[i] = int64(int32(binary.LittleEndian.Uint32(a.Data[4*i:])))
		}
	case "|b1", "|u1":
		for i := range out {
			out[i] = int64(a.Data[i])
		}
	default:
		return nil, fmt.Errorf("npy: Int of %s", a.Descr)
	}
	return out, nil
}

// WriteF32 writes a float32 array.
func WriteF32(path string, shape []int, v []float32) error {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return Write(path, &Array{Descr: "<f4", Shape: shape, Data: b})
}

// WriteI64 writes an int64 array.
func WriteI64(path string, shape []int, v []int64) error {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(x))
	}
	return Write(path, &Array{Descr: "<i8", Shape: shape, Data: b})
}

// Write encodes a as a version 1.0 .npy file.
func Write(path string, a *Array) error {
	var buf bytes.Buffer
	if err := Encode(&buf, a); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// Encode writes a as version 1.0 with the header padded to a multiple of 64 bytes, as
// numpy does.
func Encode(w io.Writer, a *Array) error {
	if es := elemSize(a.Descr); es == 0 || es*a.Numel() != len(a.Data) {
		return fmt.Errorf("npy: %s array of shape %v with %d bytes", a.Descr, a.Shape, len(a.Data))
	}
	dims := make([]string, len(a.Shape))
	for i, s := range a.Shape {
		dims[i] = strconv.Itoa(s)
	}
	shape := strings.Join(dims, ", ")
	if len(a.Shape) == 1 {
		shape += ","
	}
	h := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", a.Descr, shape)
	total := len(magic) + 2 + 2 + len(h) + 1
	h += strings.Repeat(" ", (64-total%64)%64) + "\n"
	if len(h) > math.MaxUint16 {
		return fmt.Errorf("npy: header too long")
	}
	var pre [10]byte
	copy(pre[:], magic)
	pre[6], pre[7] = 1, 0
	binary.LittleEndian.PutUint16(pre[8:], uint16(len(h)))
	if _, err := w.Write(pre[:]); err != nil {
		return err
	}
	if _, err := io.WriteString(w, h); err != nil {
		return err
	}
	_, err := w.Write(a.Data)
	return err
}
