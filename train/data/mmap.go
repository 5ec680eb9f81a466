package data

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// mmapHeader is magic(9) + version(8) + dtype(1) + N(8).
const mmapHeader = 26

// MMapDataset reads fairseq's MMIDIDX layout: prefix.idx holds the sentence
// sizes and byte offsets, prefix.bin the raw ids.
type MMapDataset struct {
	path     string
	code     uint64
	itemSize int
	sizes    []int32
	ptrs     []int64
	bin      *fileBytes
}

// OpenMMap opens prefix.idx and prefix.bin written with --dataset-impl mmap.
func OpenMMap(prefix string) (*MMapDataset, error) {
	idxPath := prefix + ".idx"
	idx, err := readFile(idxPath)
	if err != nil {
		return nil, err
	}
	code, sizes, err := parseMMapIndex(idx)
	if err != nil {
		return nil, fmt.Errorf("data: %s: %w", idxPath, err)
	}
	bin, err := openFileBytes(prefix + ".bin")
	if err != nil {
		return nil, err
	}
	d := &MMapDataset{path: prefix, code: code, itemSize: dtypeSize(code), sizes: sizes, bin: bin}
	d.ptrs = make([]int64, len(sizes))
	off := mmapHeader + 4*len(sizes)
	for i := range d.ptrs {
		p := int64(binary.LittleEndian.Uint64(idx[off+8*i:]))
		end := p + int64(sizes[i])*int64(d.itemSize)
		if p < 0 || end > bin.size || end < p {
			bin.Close()
			return nil, fmt.Errorf("data: %s: sentence %d: %d tokens at byte %d run past the %d-byte %s.bin: %w",
				idxPath, i, sizes[i], p, bin.size, prefix, ErrFormat)
		}
		d.ptrs[i] = p
	}
	return d, nil
}

// parseMMapIndex checks an MMIDIDX index and returns its dtype code and sizes.
func parseMMapIndex(idx []byte) (uint64, []int32, error) {
	if len(idx) < mmapHeader || !bytes.Equal(idx[:9], mmapMagic) {
		return 0, nil, fmt.Errorf("not an MMIDIDX index (bad magic or shorter than %d bytes): %w", mmapHeader, ErrFormat)
	}
	le := binary.LittleEndian
	if v := le.Uint64(idx[9:]); v != 1 {
		return 0, nil, fmt.Errorf("MMIDIDX version %d, want 1: %w", v, ErrFormat)
	}
	code := uint64(idx[17])
	switch code {
	case dtUint8, dtInt8, dtInt16, dtInt32, dtInt64, dtUint16:
	default:
		return 0, nil, fmt.Errorf("dtype code %d holds no token ids: %w", code, ErrFormat)
	}
	n := le.Uint64(idx[18:])
	if n > uint64(len(idx)-mmapHeader)/12 {
		return 0, nil, fmt.Errorf("claims %d sentences but holds %d bytes: %w", n, len(idx), ErrFormat)
	}
	sizes := make([]int32, n)
	for i := range sizes {
		s := int32(le.Uint32(idx[mmapHeader+4*i:]))
		if s < 0 {
			return 0, nil, fmt.Errorf("sentence %d: negative size %d: %w", i, s, ErrFormat)
		}
		sizes[i] = s
	}
	return code, sizes, nil
}

// Len is the number of sentences.
func (d *MMapDataset) Len() int { return len(d.sizes) }

// Size is the token count of sentence i (0 when out of range).
func (d *MMapDataset) Size(i int) int {
	if i < 0 || i >= len(d.sizes) {
		return 0
	}
	return int(d.sizes[i])
}

// Sizes returns all sentence lengths (shared; do not modify).
func (d *MMapDataset) Sizes() []int32 { return d.sizes }

// Get returns sentence i.
func (d *MMapDataset) Get(i int) ([]int32, error) {
	if i < 0 || i >= len(d.sizes) {
		return nil, fmt.Errorf("data: %s: sentence %d of %d: %w", d.path, i, len(d.sizes), ErrIndex)
	}
	n := int(d.sizes[i])
	b, err := d.bin.slice(d.ptrs[i], n*d.itemSize)
	if err != nil {
		return nil, fmt.Errorf("data: %s.bin: %w", d.path, err)
	}
	ids, err := decodeIDs(d.code, b, n, 0)
	if err != nil {
		return nil, fmt.Errorf("data: %s.bin: sentence %d: %w", d.path, i, err)
	}
	return ids, nil
}

// Close releases the mapping.
func (d *MMapDataset) Close() error { return d.bin.Close() }
