package data

import (
	"fmt"
	"io"
	"os"
)

// RawDataset is fairseq's IndexedRawTextDataset: a text file encoded in
// memory at open (EOS appended), one sentence per line.
type RawDataset struct {
	path  string
	lines []string
	ids   [][]int32
}

// OpenRaw reads and encodes the text file at path with dict.
func OpenRaw(path string, dict *Dictionary) (*RawDataset, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	d := &RawDataset{path: path}
	lr := NewLineReader(f, 64<<10)
	for n := 1; ; n++ {
		line, err := lr.Next()
		if err == io.EOF {
			return d, nil
		}
		if err != nil {
			return nil, fmt.Errorf("data: %s: %w", path, err)
		}
		if err := validUTF8(line); err != nil {
			return nil, fmt.Errorf("data: %s: line %d: %w", path, n, err)
		}
		ids, _ := dict.AppendEncoded(nil, line, true)
		d.lines = append(d.lines, string(line))
		d.ids = append(d.ids, ids)
	}
}

// Len is the number of sentences.
func (d *RawDataset) Len() int { return len(d.ids) }

// Size is the token count of sentence i (0 when out of range).
func (d *RawDataset) Size(i int) int {
	if i < 0 || i >= len(d.ids) {
		return 0
	}
	return len(d.ids[i])
}

// Get returns a copy of sentence i.
func (d *RawDataset) Get(i int) ([]int32, error) {
	if i < 0 || i >= len(d.ids) {
		return nil, fmt.Errorf("data: %s: sentence %d of %d: %w", d.path, i, len(d.ids), ErrIndex)
	}
	return append([]int32(nil), d.ids[i]...), nil
}

// Line returns the original text of sentence i (fairseq's get_original_text).
func (d *RawDataset) Line(i int) string {
	if i < 0 || i >= len(d.lines) {
		return ""
	}
	return d.lines[i]
}

// Close does nothing; the data live in memory.
func (d *RawDataset) Close() error { return nil }
