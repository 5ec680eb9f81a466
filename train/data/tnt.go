package data

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
)

// tntHeader is magic(8) + version, dtype, element size, N, s (u64 each).
const tntHeader = 48

// TNTDataset reads fairseq's TNTIDX layout (--dataset-impl cached or lazy):
// the payload holds ids+1 (Lua indexing), which Get undoes as fairseq's
// loader does with fix_lua_indexing. Data are read on demand.
type TNTDataset struct {
	path     string
	code     uint64
	itemSize int
	sizes    []int32
	offs     []int64 // element offset of each sentence in .bin
	bin      *fileBytes
}

// OpenTNT opens prefix.idx and prefix.bin written with --dataset-impl cached or lazy.
func OpenTNT(prefix string) (*TNTDataset, error) {
	idxPath := prefix + ".idx"
	idx, err := readFile(idxPath)
	if err != nil {
		return nil, err
	}
	code, sizes, offs, err := parseTNTIndex(idx)
	if err != nil {
		return nil, fmt.Errorf("data: %s: %w", idxPath, err)
	}
	bin, err := openFileBytes(prefix + ".bin")
	if err != nil {
		return nil, err
	}
	d := &TNTDataset{path: prefix, code: code, itemSize: dtypeSize(code), sizes: sizes, offs: offs, bin: bin}
	elems := bin.size / int64(d.itemSize)
	for i, o := range offs {
		if o+int64(sizes[i]) > elems {
			bin.Close()
			return nil, fmt.Errorf("data: %s: sentence %d: %d tokens at element %d run past the %d-byte %s.bin: %w",
				idxPath, i, sizes[i], o, bin.size, prefix, ErrFormat)
		}
	}
	return d, nil
}

// parseTNTIndex checks a TNTIDX index of 1-D items and returns the dtype code,
// the sizes and the element offsets.
func parseTNTIndex(idx []byte) (uint64, []int32, []int64, error) {
	if len(idx) < tntHeader || !bytes.Equal(idx[:8], tntMagic) {
		return 0, nil, nil, fmt.Errorf("not a TNTIDX index (bad magic or shorter than %d bytes): %w", tntHeader, ErrFormat)
	}
	le := binary.LittleEndian
	if v := le.Uint64(idx[8:]); v != 1 {
		return 0, nil, nil, fmt.Errorf("TNTIDX version %d, want 1: %w", v, ErrFormat)
	}
	code, elem := le.Uint64(idx[16:]), le.Uint64(idx[24:])
	switch code {
	case dtUint8, dtInt8, dtInt16, dtInt32, dtInt64, dtUint16:
	default:
		return 0, nil, nil, fmt.Errorf("dtype code %d holds no token ids: %w", code, ErrFormat)
	}
	if elem != uint64(dtypeSize(code)) {
		return 0, nil, nil, fmt.Errorf("element size %d does not match dtype code %d: %w", elem, code, ErrFormat)
	}
	n, s := le.Uint64(idx[32:]), le.Uint64(idx[40:])
	words := uint64(len(idx)-tntHeader) / 8
	if n >= words/2 || s > words-2*(n+1) {
		return 0, nil, nil, fmt.Errorf("claims %d sentences and %d sizes but holds %d bytes: %w", n, s, len(idx), ErrFormat)
	}
	at := func(k uint64) int64 { return int64(le.Uint64(idx[tntHeader+8*k:])) }
	dimBase, dataBase, sizeBase := uint64(0), n+1, 2*(n+1)
	sizes := make([]int32, n)
	offs := make([]int64, n)
	for i := uint64(0); i < n; i++ {
		d0, d1 := at(dimBase+i), at(dimBase+i+1)
		if d0 < 0 || d1 != d0+1 || uint64(d1) > s {
			return 0, nil, nil, fmt.Errorf("sentence %d: dim offsets %d..%d: want one dimension per item within %d sizes: %w", i, d0, d1, s, ErrFormat)
		}
		sz := at(sizeBase + uint64(d0))
		if sz < 0 || sz > math.MaxInt32 {
			return 0, nil, nil, fmt.Errorf("sentence %d: size %d: %w", i, sz, ErrFormat)
		}
		o := at(dataBase + i)
		if o < 0 || o > math.MaxInt64-sz {
			return 0, nil, nil, fmt.Errorf("sentence %d: data offset %d: %w", i, o, ErrFormat)
		}
		sizes[i], offs[i] = int32(sz), o
	}
	return code, sizes, offs, nil
}

// Len is the number of sentences.
func (d *TNTDataset) Len() int { return len(d.sizes) }

// Size is the token count of sentence i (0 when out of range).
func (d *TNTDataset) Size(i int) int {
	if i < 0 || i >= len(d.sizes) {
		return 0
	}
	return int(d.sizes[i])
}

// Sizes returns all sentence lengths (shared; do not modify).
func (d *TNTDataset) Sizes() []int32 { return d.sizes }

// Get returns sentence i with the Lua +1 removed.
func (d *TNTDataset) Get(i int) ([]int32, error) {
	if i < 0 || i >= len(d.sizes) {
		return nil, fmt.Errorf("data: %s: sentence %d of %d: %w", d.path, i, len(d.sizes), ErrIndex)
	}
	n := int(d.sizes[i])
	b, err := d.bin.slice(d.offs[i]*int64(d.itemSize), n*d.itemSize)
	if err != nil {
		return nil, fmt.Errorf("data: %s.bin: %w", d.path, err)
	}
	ids, err := decodeIDs(d.code, b, n, 1)
	if err != nil {
		return nil, fmt.Errorf("data: %s.bin: sentence %d: %w", d.path, i, err)
	}
	return ids, nil
}

// Close releases the data file.
func (d *TNTDataset) Close() error { return d.bin.Close() }
