package data

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// Impl names a fairseq --dataset-impl.
type Impl string

// The dataset layouts fairseq 0.8 knows.
const (
	ImplMMap   Impl = "mmap"
	ImplCached Impl = "cached"
	ImplLazy   Impl = "lazy"
	ImplRaw    Impl = "raw"
)

// ParseImpl checks a --dataset-impl value.
func ParseImpl(s string) (Impl, error) {
	switch i := Impl(s); i {
	case ImplMMap, ImplCached, ImplLazy, ImplRaw:
		return i, nil
	}
	return "", fmt.Errorf("data: unknown dataset impl %q (want mmap, cached, lazy or raw)", s)
}

// Magic numbers at the start of the two binary index layouts.
var (
	mmapMagic = []byte("MMIDIDX\x00\x00")
	tntMagic  = []byte("TNTIDX\x00\x00")
)

// IndexedDataset is one side of one split: a sequence of token-id sentences.
type IndexedDataset interface {
	Len() int
	// Size is the number of tokens of sentence i, EOS included.
	Size(i int) int
	// Get returns sentence i as dictionary ids (EOS included).
	Get(i int) ([]int32, error)
	Close() error
}

// ErrIndex is wrapped when Get or Size is called with an index out of range.
var ErrIndex = errors.New("index out of range")

// ErrNoDataset is wrapped when no dataset files exist at a prefix.
var ErrNoDataset = errors.New("no dataset")

// OpenIndexedDataset opens the dataset at prefix (e.g. DIR/test.src-tgt.src),
// inferring the layout as fairseq does: raw text when the plain file exists
// (it needs dict), else from the magic of prefix.idx (MMIDIDX: mmap, TNTIDX:
// cached/lazy). When dict is not nil, Get also rejects ids outside it.
func OpenIndexedDataset(prefix string, dict *Dictionary) (IndexedDataset, error) {
	if st, err := os.Stat(prefix); err == nil && st.Mode().IsRegular() {
		if dict == nil {
			return nil, fmt.Errorf("data: %s: a raw text dataset needs a dictionary", prefix)
		}
		return OpenRaw(prefix, dict)
	}
	impl, err := InferImpl(prefix)
	if err != nil {
		return nil, err
	}
	var ds IndexedDataset
	switch impl {
	case ImplMMap:
		ds, err = OpenMMap(prefix)
	default:
		ds, err = OpenTNT(prefix)
	}
	if err != nil {
		return nil, err
	}
	if dict != nil {
		ds = &checkedDataset{IndexedDataset: ds, n: int32(dict.Len()), prefix: prefix}
	}
	return ds, nil
}

// InferImpl is fairseq's infer_dataset_impl for the binary layouts: it reads
// the magic of prefix.idx (and needs prefix.bin to exist).
func InferImpl(prefix string) (Impl, error) {
	if _, err := os.Stat(prefix + ".bin"); err != nil {
		return "", fmt.Errorf("data: %s: %w: %w", prefix, ErrNoDataset, err)
	}
	f, err := os.Open(prefix + ".idx")
	if err != nil {
		return "", fmt.Errorf("data: %s: %w: %w", prefix, ErrNoDataset, err)
	}
	defer f.Close()
	var head [9]byte
	n, _ := io.ReadFull(f, head[:])
	switch {
	case n >= 8 && bytes.Equal(head[:8], tntMagic):
		return ImplCached, nil
	case n >= 8 && bytes.Equal(head[:8], mmapMagic[:8]):
		return ImplMMap, nil
	}
	return "", fmt.Errorf("data: %s.idx: neither an MMIDIDX nor a TNTIDX index: %w", prefix, ErrFormat)
}

// checkedDataset rejects ids a dictionary cannot hold, so that a bad file
// surfaces here and not as an out-of-range embedding lookup later.
type checkedDataset struct {
	IndexedDataset
	n      int32
	prefix string
}

func (c *checkedDataset) Get(i int) ([]int32, error) {
	ids, err := c.IndexedDataset.Get(i)
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		if id < 0 || id >= c.n {
			return nil, fmt.Errorf("data: %s: sentence %d: id %d outside the dictionary (%d symbols): %w", c.prefix, i, id, c.n, ErrFormat)
		}
	}
	return ids, nil
}

// dtype codes shared by both index layouts.
const (
	dtUint8   = 1
	dtInt8    = 2
	dtInt16   = 3
	dtInt32   = 4
	dtInt64   = 5
	dtFloat   = 6
	dtFloat64 = 7
	dtUint16  = 8
)

func dtypeSize(code uint64) int {
	switch code {
	case dtUint8, dtInt8:
		return 1
	case dtInt16, dtUint16:
		return 2
	case dtInt32:
		return 4
	case dtInt64, dtFloat, dtFloat64:
		return 8
	}
	return 0
}

// decodeIDs converts n elements of dtype code from b (little-endian) to ids,
// subtracting sub (1 for the Lua-indexed TNTIDX payload).
func decodeIDs(code uint64, b []byte, n int, sub int64) ([]int32, error) {
	out := make([]int32, n)
	le := binary.LittleEndian
	for k := range out {
		var v int64
		switch code {
		case dtUint8:
			v = int64(b[k])
		case dtInt8:
			v = int64(int8(b[k]))
		case dtInt16:
			v = int64(int16(le.Uint16(b[2*k:])))
		case dtUint16:
			v = int64(le.Uint16(b[2*k:]))
		case dtInt32:
			v = int64(int32(le.Uint32(b[4*k:])))
		case dtInt64:
			v = int64(le.Uint64(b[8*k:]))
		default:
			return nil, fmt.Errorf("dtype code %d holds no token ids: %w", code, ErrFormat)
		}
		v -= sub
		if v < math.MinInt32 || v > math.MaxInt32 {
			return nil, fmt.Errorf("token id %d does not fit int32: %w", v, ErrFormat)
		}
		out[k] = int32(v)
	}
	return out, nil
}

// readAllLimited reads a whole index file; idx files hold O(sentences) bytes
// and are checked field by field afterwards.
func readFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	return b, nil
}
