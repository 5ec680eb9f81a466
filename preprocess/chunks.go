package preprocess

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/xform-dev/xform/train/data"
)

// chunkSize is the unit of work handed to a worker: large enough that the
// per-chunk overhead vanishes, small enough that workers+2 of them in flight
// keep memory far below any corpus worth parallelising.
const chunkSize = 2 << 20

// chunk is a run of complete lines of one file.
type chunk struct {
	seq  int
	data []byte
	buf  *[]byte // returned to the pool when done
}

// chunkReader cuts a file into chunks that end on a line boundary (Python's
// universal newlines, so a \r\n pair is never split).
type chunkReader struct {
	f       *os.File
	path    string
	pool    sync.Pool
	carry   []byte
	eof     bool
	seq     int
	maxSize int
}

func newChunkReader(path string, size int) (*chunkReader, error) {
	if size <= 0 {
		size = chunkSize
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	cr := &chunkReader{f: f, path: path, maxSize: size}
	cr.pool.New = func() any { b := make([]byte, 0, size+size/4); return &b }
	return cr, nil
}

func (cr *chunkReader) Close() error { return cr.f.Close() }

// next returns the next chunk, or io.EOF.
func (cr *chunkReader) next() (*chunk, error) {
	if cr.eof && len(cr.carry) == 0 {
		return nil, io.EOF
	}
	bp := cr.pool.Get().(*[]byte)
	buf := append((*bp)[:0], cr.carry...)
	cr.carry = cr.carry[:0]
	// Read until the chunk is full and holds a complete line (a line longer
	// than a chunk makes the chunk grow), or the file ends.
	for !cr.eof && (len(buf) < cr.maxSize || lineCut(buf, false) < 0) {
		if cap(buf)-len(buf) < 64<<10 {
			nb := make([]byte, len(buf), 2*cap(buf)+cr.maxSize)
			copy(nb, buf)
			buf = nb
		}
		n, err := cr.f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			cr.eof = true
		} else if err != nil {
			cr.pool.Put(bp)
			return nil, fmt.Errorf("%s: %w", cr.path, err)
		}
	}
	cut := lineCut(buf, cr.eof)
	cr.carry = append(cr.carry, buf[cut:]...)
	*bp = buf
	c := &chunk{seq: cr.seq, data: buf[:cut], buf: bp}
	cr.seq++
	return c, nil
}

func (cr *chunkReader) release(c *chunk) { cr.pool.Put(c.buf) }

// lineCut returns the length of the longest prefix of buf made of complete
// lines, or -1 when there is none. A \r at the very end is only a line end at
// EOF, because a \n may follow it.
func lineCut(buf []byte, atEOF bool) int {
	if atEOF {
		return len(buf)
	}
	if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
		return i + 1
	}
	if i := bytes.LastIndexByte(buf, '\r'); i >= 0 && i+1 < len(buf) {
		return i + 1
	}
	return -1
}

// eachLine calls fn with every line of a chunk (terminators removed).
func eachLine(b []byte, fn func(line []byte) error) error {
	for len(b) > 0 {
		line, adv, _ := data.SplitLine(b, true)
		if err := fn(line); err != nil {
			return err
		}
		b = b[adv:]
	}
	return nil
}

// lineError is a worker's error at a line counted from its chunk's start;
// the ordered consumer turns it into a file line number.
type lineError struct {
	line int // 1-based within the chunk
	err  error
}

func (e *lineError) Error() string { return e.err.Error() }
func (e *lineError) Unwrap() error { return e.err }

// pipeline runs work over the chunks of path with n workers and hands the
// results to consume in file order. consume gets the number of lines seen
// before each result, so it can place errors.
func pipeline[R any](ctx context.Context, path string, n, size int,
	work func(c *chunk) (R, int, error),
	consume func(r R, linesBefore int, bytes int) error) error {
	cr, err := newChunkReader(path, size)
	if err != nil {
		return err
	}
	defer cr.Close()
	ctx, cancel := context.WithCancel(ctx)
	readerDone := make(chan struct{})
	// The reader must be gone before the file closes and readErr is read.
	defer func() { cancel(); <-readerDone }()

	type result struct {
		seq   int
		r     R
		lines int
		bytes int
		err   error
	}
	jobs := make(chan *chunk, n)
	results := make(chan result, n)
	var readErr error
	go func() {
		defer close(readerDone)
		defer close(jobs)
		for {
			c, err := cr.next()
			if err == io.EOF {
				return
			}
			if err != nil {
				readErr = err
				return
			}
			select {
			case jobs <- c:
			case <-ctx.Done():
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range jobs {
				r, lines, err := work(c)
				size := len(c.data)
				cr.release(c)
				select {
				case results <- result{c.seq, r, lines, size, err}:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); close(results) }()

	pending := map[int]result{}
	nextSeq, linesBefore := 0, 0
	var firstErr error
	for res := range results {
		if firstErr != nil {
			continue
		}
		pending[res.seq] = res
		for {
			r, ok := pending[nextSeq]
			if !ok {
				break
			}
			delete(pending, nextSeq)
			nextSeq++
			if r.err != nil {
				var le *lineError
				if errors.As(r.err, &le) {
					firstErr = fmt.Errorf("%s: line %d: %w", path, linesBefore+le.line, le.err)
				} else {
					firstErr = fmt.Errorf("%s: %w", path, r.err)
				}
				cancel()
				break
			}
			if err := consume(r.r, linesBefore, r.bytes); err != nil {
				firstErr = err
				cancel()
				break
			}
			linesBefore += r.lines
		}
	}
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	<-readerDone
	return readErr
}
