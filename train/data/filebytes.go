package data

import (
	"fmt"
	"io"
	"os"
)

// fileBytes gives read access to a data file, through a read-only mapping
// where the platform has one and ReadAt otherwise.
type fileBytes struct {
	f    *os.File
	data []byte // the mapping, nil when reading through f
	size int64
}

func openFileBytes(path string) (*fileBytes, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("data: %w", err)
	}
	fb := &fileBytes{f: f, size: st.Size()}
	if m, ok := mapFile(f, fb.size); ok {
		fb.data = m
	}
	return fb, nil
}

// slice returns n bytes at off; the caller has already checked the range.
func (fb *fileBytes) slice(off int64, n int) ([]byte, error) {
	if off < 0 || n < 0 || off+int64(n) > fb.size {
		return nil, fmt.Errorf("range %d+%d past end %d: %w", off, n, fb.size, ErrFormat)
	}
	if fb.data != nil {
		return fb.data[off : off+int64(n)], nil
	}
	b := make([]byte, n)
	if _, err := fb.f.ReadAt(b, off); err != nil && !(err == io.EOF && n == 0) {
		return nil, err
	}
	return b, nil
}

func (fb *fileBytes) Close() error {
	var err error
	if fb.data != nil {
		err = unmapFile(fb.data)
		fb.data = nil
	}
	if fb.f != nil {
		if cerr := fb.f.Close(); err == nil {
			err = cerr
		}
		fb.f = nil
	}
	return err
}
