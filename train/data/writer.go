package data

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// MMapDtypeLimit is fairseq's cut-off: dictionaries smaller than this store
// ids as uint16 in mmap datasets, larger ones as int32.
const MMapDtypeLimit = 65500

// Writer builds one indexed dataset (prefix.bin + prefix.idx) in the mmap or
// the TNTIDX (cached/lazy) layout, byte for byte as fairseq 0.8 writes it.
// Sentence sizes are spilled to a side file so that memory stays bounded for
// any corpus; the index is assembled from it by Close.
type Writer struct {
	prefix string
	tnt    bool
	code   uint64
	item   int

	bin    *os.File
	binBuf *bufio.Writer
	side   *os.File
	sideW  *bufio.Writer
	n      int64
	elems  int64
	scr    []byte
	closed bool
}

// NewWriter creates prefix.bin (and a temporary side file). vocabSize picks
// the mmap dtype (uint16 below MMapDtypeLimit, else int32); TNTIDX is always
// int32. Raw datasets are plain text copies and have no Writer.
func NewWriter(prefix string, impl Impl, vocabSize int) (*Writer, error) {
	w := &Writer{prefix: prefix}
	switch impl {
	case ImplMMap:
		w.code, w.item = dtInt32, 4
		if vocabSize < MMapDtypeLimit {
			w.code, w.item = dtUint16, 2
		}
	case ImplCached, ImplLazy:
		w.tnt, w.code, w.item = true, dtInt32, 4
	default:
		return nil, fmt.Errorf("data: %s: no binary writer for dataset impl %q", prefix, impl)
	}
	var err error
	if w.bin, err = os.Create(prefix + ".bin"); err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	if w.side, err = os.Create(prefix + ".sizes.tmp"); err != nil {
		w.bin.Close()
		os.Remove(prefix + ".bin")
		return nil, fmt.Errorf("data: %w", err)
	}
	w.binBuf = bufio.NewWriterSize(w.bin, 1<<20)
	w.sideW = bufio.NewWriterSize(w.side, 256<<10)
	return w, nil
}

// Add appends one sentence.
func (w *Writer) Add(ids []int32) error {
	return w.AddBatch(ids, []int32{int32(len(ids))})
}

// AddBatch appends len(sizes) sentences whose ids are concatenated in ids.
func (w *Writer) AddBatch(ids, sizes []int32) error {
	if w.closed {
		return fmt.Errorf("data: %s: %w", w.prefix, ErrClosed)
	}
	total := 0
	for _, s := range sizes {
		if s < 0 {
			return fmt.Errorf("data: %s: negative sentence size %d", w.prefix, s)
		}
		total += int(s)
	}
	if total != len(ids) {
		return fmt.Errorf("data: %s: sizes sum to %d but %d ids given", w.prefix, total, len(ids))
	}
	need := len(ids) * w.item
	if cap(w.scr) < need {
		w.scr = make([]byte, need)
	}
	b := w.scr[:need]
	le := binary.LittleEndian
	switch {
	case w.tnt:
		for k, id := range ids {
			le.PutUint32(b[4*k:], uint32(id+1))
		}
	case w.code == dtUint16:
		for k, id := range ids {
			if uint32(id) > math.MaxUint16 {
				return fmt.Errorf("data: %s: id %d does not fit uint16", w.prefix, id)
			}
			le.PutUint16(b[2*k:], uint16(id))
		}
	default:
		for k, id := range ids {
			le.PutUint32(b[4*k:], uint32(id))
		}
	}
	if _, err := w.binBuf.Write(b); err != nil {
		return fmt.Errorf("data: %s.bin: %w", w.prefix, err)
	}
	var sb [4]byte
	for _, s := range sizes {
		le.PutUint32(sb[:], uint32(s))
		if _, err := w.sideW.Write(sb[:]); err != nil {
			return fmt.Errorf("data: %s: %w", w.side.Name(), err)
		}
	}
	w.n += int64(len(sizes))
	w.elems += int64(len(ids))
	return nil
}

// Len is the number of sentences written so far.
func (w *Writer) Len() int64 { return w.n }

// Close flushes and fsyncs prefix.bin, writes and fsyncs prefix.idx and
// removes the side file. On error the outputs are removed.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	err := w.finish()
	w.side.Close()
	os.Remove(w.side.Name())
	if err != nil {
		os.Remove(w.prefix + ".bin")
		os.Remove(w.prefix + ".idx")
		return err
	}
	return nil
}

// Abort closes and removes everything the writer created.
func (w *Writer) Abort() {
	if !w.closed {
		w.closed = true
		w.bin.Close()
		w.side.Close()
	}
	os.Remove(w.side.Name())
	os.Remove(w.prefix + ".bin")
	os.Remove(w.prefix + ".idx")
}

func (w *Writer) finish() error {
	err := w.binBuf.Flush()
	if err == nil {
		err = w.bin.Sync()
	}
	if cerr := w.bin.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("data: %s.bin: %w", w.prefix, err)
	}
	if err := w.sideW.Flush(); err != nil {
		return fmt.Errorf("data: %s: %w", w.side.Name(), err)
	}
	idxPath := w.prefix + ".idx"
	f, err := os.Create(idxPath)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	if w.tnt {
		err = w.writeTNTIndex(bw)
	} else {
		err = w.writeMMapIndex(bw)
	}
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("data: %s: %w", idxPath, err)
	}
	return nil
}

// eachSize streams the spilled sizes back.
func (w *Writer) eachSize(fn func(s int32) error) error {
	if _, err := w.side.Seek(0, io.SeekStart); err != nil {
		return err
	}
	r := bufio.NewReaderSize(w.side, 256<<10)
	var b [4]byte
	for i := int64(0); i < w.n; i++ {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return fmt.Errorf("reading back sizes: %w", err)
		}
		if err := fn(int32(binary.LittleEndian.Uint32(b[:]))); err != nil {
			return err
		}
	}
	return nil
}

func (w *Writer) writeMMapIndex(bw *bufio.Writer) error {
	le := binary.LittleEndian
	hdr := make([]byte, 0, mmapHeader)
	hdr = append(hdr, mmapMagic...)
	hdr = le.AppendUint64(hdr, 1)
	hdr = append(hdr, byte(w.code))
	hdr = le.AppendUint64(hdr, uint64(w.n))
	if _, err := bw.Write(hdr); err != nil {
		return err
	}
	var b [8]byte
	if err := w.eachSize(func(s int32) error {
		le.PutUint32(b[:4], uint32(s))
		_, err := bw.Write(b[:4])
		return err
	}); err != nil {
		return err
	}
	var ptr int64
	return w.eachSize(func(s int32) error {
		le.PutUint64(b[:], uint64(ptr))
		ptr += int64(s) * int64(w.item)
		_, err := bw.Write(b[:])
		return err
	})
}

func (w *Writer) writeTNTIndex(bw *bufio.Writer) error {
	le := binary.LittleEndian
	hdr := make([]byte, 0, tntHeader)
	hdr = append(hdr, tntMagic...)
	for _, v := range [...]uint64{1, w.code, uint64(w.item), uint64(w.n), uint64(w.n)} {
		hdr = le.AppendUint64(hdr, v)
	}
	if _, err := bw.Write(hdr); err != nil {
		return err
	}
	var b [8]byte
	put := func(v int64) error {
		le.PutUint64(b[:], uint64(v))
		_, err := bw.Write(b[:])
		return err
	}
	// 1-D items: one dimension each.
	for i := int64(0); i <= w.n; i++ {
		if err := put(i); err != nil {
			return err
		}
	}
	var off int64
	if err := put(0); err != nil {
		return err
	}
	if err := w.eachSize(func(s int32) error {
		off += int64(s)
		return put(off)
	}); err != nil {
		return err
	}
	return w.eachSize(func(s int32) error { return put(int64(s)) })
}

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("writer closed")
