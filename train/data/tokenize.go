package data

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// ErrNotUTF8 is wrapped when text input is not valid UTF-8 (Python's strict
// decoder, which fairseq uses, would stop there too).
var ErrNotUTF8 = errors.New("not valid UTF-8")

// asciiSpace marks the bytes below 0x80 that Python's str.isspace accepts;
// note \x1c-\x1f, which Go's unicode.IsSpace does not.
var asciiSpace = [128]bool{
	'\t': true, '\n': true, '\v': true, '\f': true, '\r': true,
	0x1c: true, 0x1d: true, 0x1e: true, 0x1f: true, ' ': true,
}

// IsPySpace reports whether Python's str.isspace (and so the \s of fairseq's
// tokenizer regex, str.strip and str.split) treats r as whitespace.
func IsPySpace(r rune) bool {
	if r < 0x80 {
		return asciiSpace[r]
	}
	switch {
	case r == 0x85, r == 0xa0, r == 0x1680, r >= 0x2000 && r <= 0x200a,
		r == 0x2028, r == 0x2029, r == 0x202f, r == 0x205f, r == 0x3000:
		return true
	}
	return false
}

// EachToken calls fn for every token of fairseq's tokenize_line: the line is
// split on runs of Python whitespace, leading and trailing whitespace ignored.
// line must be valid UTF-8; tok is only valid during the call.
func EachToken(line []byte, fn func(tok []byte)) {
	start := -1
	for i := 0; i < len(line); {
		c := line[i]
		size := 1
		space := false
		if c < utf8.RuneSelf {
			space = asciiSpace[c]
		} else {
			var r rune
			r, size = utf8.DecodeRune(line[i:])
			space = IsPySpace(r)
		}
		if space {
			if start >= 0 {
				fn(line[start:i])
				start = -1
			}
		} else if start < 0 {
			start = i
		}
		i += size
	}
	if start >= 0 {
		fn(line[start:])
	}
}

// Tokenize returns the tokens of line as strings (see EachToken).
func Tokenize(line string) []string {
	var out []string
	EachToken([]byte(line), func(tok []byte) { out = append(out, string(tok)) })
	return out
}

func validUTF8(line []byte) error {
	if utf8.Valid(line) {
		return nil
	}
	for i := 0; i < len(line); {
		r, size := utf8.DecodeRune(line[i:])
		if r == utf8.RuneError && size == 1 {
			return fmt.Errorf("byte %d (0x%02x): %w", i+1, line[i], ErrNotUTF8)
		}
		i += size
	}
	return ErrNotUTF8
}

// CheckUTF8 returns an error wrapping ErrNotUTF8 naming the first bad byte
// (1-based within line) when line is not valid UTF-8.
func CheckUTF8(line []byte) error { return validUTF8(line) }

// SplitLine finds the first line of buf with Python's universal newlines
// (\n, \r\n and a lone \r all end a line). It returns the line without its
// terminator and how many bytes it spans. ok is false when buf holds no
// complete line yet: a trailing \r may still be followed by \n, so it only
// ends a line at EOF or when more bytes follow.
func SplitLine(buf []byte, atEOF bool) (line []byte, advance int, ok bool) {
	nl := bytes.IndexByte(buf, '\n')
	seg := buf
	if nl >= 0 {
		seg = buf[:nl]
	}
	if cr := bytes.IndexByte(seg, '\r'); cr >= 0 {
		switch {
		case cr+1 < len(buf) && buf[cr+1] == '\n':
			return buf[:cr], cr + 2, true
		case cr+1 < len(buf) || atEOF:
			return buf[:cr], cr + 1, true
		}
		return nil, 0, false
	}
	if nl >= 0 {
		return buf[:nl], nl + 1, true
	}
	if atEOF && len(buf) > 0 {
		return buf, len(buf), true
	}
	return nil, 0, false
}

// LineReader yields the lines of a text stream with universal newlines.
type LineReader struct {
	r       io.Reader
	buf     []byte
	start   int
	end     int
	eof     bool
	readErr error
}

// NewLineReader reads r with an initial buffer of size bytes; the buffer grows
// to hold the longest line.
func NewLineReader(r io.Reader, size int) *LineReader {
	return &LineReader{r: r, buf: make([]byte, max(size, 16))}
}

// Next returns the next line without its terminator; the slice is valid until
// the next call. It returns io.EOF after the last line.
func (lr *LineReader) Next() ([]byte, error) {
	for {
		line, adv, ok := SplitLine(lr.buf[lr.start:lr.end], lr.eof)
		if ok {
			lr.start += adv
			return line, nil
		}
		if lr.eof {
			if lr.readErr != nil {
				return nil, lr.readErr
			}
			return nil, io.EOF
		}
		if lr.start > 0 {
			lr.end = copy(lr.buf, lr.buf[lr.start:lr.end])
			lr.start = 0
		}
		if lr.end == len(lr.buf) {
			nb := make([]byte, 2*len(lr.buf))
			copy(nb, lr.buf[:lr.end])
			lr.buf = nb
		}
		n, err := lr.r.Read(lr.buf[lr.end:])
		lr.end += n
		if err != nil {
			lr.eof = true
			if err != io.EOF {
				lr.readErr = err
			}
		}
	}
}
