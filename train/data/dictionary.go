// Package data reads and writes fairseq 0.8 data-bin directories: dictionaries
// (dict.<lang>.txt), indexed datasets in the mmap (MMIDIDX), cached/lazy (TNTIDX)
// and raw text layouts, and the whitespace line tokenizer that produced them.
//
// Every reader treats its input as untrusted: sizes are checked against the file
// length before anything is allocated, and malformed files give errors wrapping
// ErrFormat instead of panics.
package data

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// The four specials every fairseq translation dictionary starts with.
const (
	Bos int32 = 0
	Pad int32 = 1
	EOS int32 = 2
	Unk int32 = 3

	NSpecial = 4
)

// Special symbols as fairseq spells them.
const (
	BosWord = "<s>"
	PadWord = "<pad>"
	EOSWord = "</s>"
	UnkWord = "<unk>"
)

// ErrFormat is wrapped by every error about a file that does not have the
// layout it claims.
var ErrFormat = errors.New("malformed file")

// Dictionary maps symbols to consecutive ids. Ids 0..3 are the specials.
type Dictionary struct {
	symbols []string
	counts  []int64
	indices map[string]int32
}

// NewDictionary returns a dictionary holding only the four specials.
func NewDictionary() *Dictionary {
	d := &Dictionary{indices: make(map[string]int32)}
	for _, s := range [...]string{BosWord, PadWord, EOSWord, UnkWord} {
		d.Add(s, 1)
	}
	return d
}

// Len is the number of symbols, specials included.
func (d *Dictionary) Len() int { return len(d.symbols) }

// Index returns the id of sym, or Unk when it is absent.
func (d *Dictionary) Index(sym string) int32 {
	if i, ok := d.indices[sym]; ok {
		return i
	}
	return Unk
}

// indexBytes is Index without a string allocation on the hot path.
func (d *Dictionary) indexBytes(sym []byte) (int32, bool) {
	i, ok := d.indices[string(sym)]
	return i, ok
}

// Symbol returns the symbol of id i. Like fairseq, ids past the end give
// "<unk>" and negative ids count from the end (Python list indexing).
func (d *Dictionary) Symbol(i int32) string {
	n := int32(len(d.symbols))
	switch {
	case i >= 0 && i < n:
		return d.symbols[i]
	case i < 0 && -i <= n:
		return d.symbols[n+i]
	}
	return UnkWord
}

// Count returns the frequency stored with id i (0 when out of range).
func (d *Dictionary) Count(i int32) int64 {
	if i < 0 || int(i) >= len(d.counts) {
		return 0
	}
	return d.counts[i]
}

// Add adds n to the count of sym, appending it when new, and returns its id.
func (d *Dictionary) Add(sym string, n int64) int32 {
	if i, ok := d.indices[sym]; ok {
		d.counts[i] += n
		return i
	}
	i := int32(len(d.symbols))
	d.indices[sym] = i
	d.symbols = append(d.symbols, sym)
	d.counts = append(d.counts, n)
	return i
}

// Equal reports whether both dictionaries map the same symbols to the same ids
// (fairseq's Dictionary.__eq__; counts are ignored).
func (d *Dictionary) Equal(o *Dictionary) bool {
	if d == nil || o == nil {
		return d == o
	}
	if len(d.indices) != len(o.indices) {
		return false
	}
	for s, i := range d.indices {
		if j, ok := o.indices[s]; !ok || i != j {
			return false
		}
	}
	return true
}

// String is fairseq's Dictionary.string: eos and bos are dropped, the rest are
// joined with single spaces, unk is written "<unk>" (or "<<unk>>" when
// escapeUnk), then BPE is removed. bpe is the value fairseq's --remove-bpe
// holds ("@@ " when the flag is given bare; "" means no removal; "sentencepiece"
// removes spaces and turns U+2581 into spaces): the result is
// strings.TrimRight((s+" ") with every bpe removed).
func (d *Dictionary) String(ids []int32, bpe string, escapeUnk bool) string {
	var b strings.Builder
	first := true
	for _, id := range ids {
		if id == EOS || id == Bos {
			continue
		}
		if !first {
			b.WriteByte(' ')
		}
		first = false
		if id == Unk {
			if escapeUnk {
				b.WriteString("<" + UnkWord + ">")
			} else {
				b.WriteString(UnkWord)
			}
			continue
		}
		b.WriteString(d.Symbol(id))
	}
	return RemoveBPE(b.String(), bpe)
}

// RemoveBPE is fairseq 0.8's data_utils.process_bpe_symbol.
func RemoveBPE(s, bpe string) string {
	switch bpe {
	case "":
		return s
	case "sentencepiece":
		s = strings.ReplaceAll(s, " ", "")
		s = strings.ReplaceAll(s, "\u2581", " ")
		return strings.TrimFunc(s, IsPySpace)
	}
	return strings.TrimRightFunc(strings.ReplaceAll(s+" ", bpe, ""), IsPySpace)
}

// Encode splits line with fairseq's tokenize_line and maps each token to its
// id (Unk when absent), appending EOS when addEOS. nUnk counts tokens that
// became Unk without being the literal "<unk>" (fairseq's "replaced" count).
func (d *Dictionary) Encode(line string, addEOS bool) (ids []int32, nUnk int) {
	return d.AppendEncoded(nil, []byte(line), addEOS)
}

// AppendEncoded is Encode appending to dst, for callers that reuse buffers.
func (d *Dictionary) AppendEncoded(dst []int32, line []byte, addEOS bool) ([]int32, int) {
	nUnk := 0
	EachToken(line, func(tok []byte) {
		id, ok := d.indexBytes(tok)
		if !ok {
			id = Unk
			if string(tok) != UnkWord {
				nUnk++
			}
		}
		dst = append(dst, id)
	})
	if addEOS {
		dst = append(dst, EOS)
	}
	return dst, nUnk
}

// LoadDictionary reads a fairseq dict.<lang>.txt.
func LoadDictionary(path string) (*Dictionary, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: dictionary: %w", err)
	}
	defer f.Close()
	d, err := ReadDictionary(f)
	if err != nil {
		return nil, fmt.Errorf("data: %s: %w", path, err)
	}
	return d, nil
}

// ReadDictionary parses the fairseq dictionary format: one "<symbol> <count>"
// line per non-special symbol, split at the last space, ids from 4 in file
// order. Lines end in \n, \r\n or \r (Python's universal newlines). As in
// fairseq, a symbol listed twice keeps both slots and the later id wins.
func ReadDictionary(r io.Reader) (*Dictionary, error) {
	d := NewDictionary()
	lr := NewLineReader(r, 64<<10)
	for n := 1; ; n++ {
		line, err := lr.Next()
		if err == io.EOF {
			return d, nil
		}
		if err != nil {
			return nil, err
		}
		if err := validUTF8(line); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		sp := bytes.LastIndexByte(line, ' ')
		if sp < 0 {
			return nil, fmt.Errorf("line %d: %q: want \"<symbol> <count>\": %w", n, truncate(line), ErrFormat)
		}
		cnt, ok := parsePyInt(line[sp+1:])
		if !ok {
			return nil, fmt.Errorf("line %d: count %q is not an integer: %w", n, truncate(line[sp+1:]), ErrFormat)
		}
		sym := string(line[:sp])
		d.indices[sym] = int32(len(d.symbols))
		d.symbols = append(d.symbols, sym)
		d.counts = append(d.counts, cnt)
		if len(d.symbols) > 1<<31-1 {
			return nil, fmt.Errorf("line %d: too many symbols: %w", n, ErrFormat)
		}
	}
}

func truncate(b []byte) []byte {
	if len(b) > 60 {
		return b[:60]
	}
	return b
}

// parsePyInt accepts what Python's int() accepts for ASCII input: surrounding
// whitespace, a sign, digits with single underscores between them.
func parsePyInt(b []byte) (int64, bool) {
	s := strings.TrimFunc(string(b), IsPySpace)
	if s == "" {
		return 0, false
	}
	body := s
	if body[0] == '+' || body[0] == '-' {
		body = body[1:]
	}
	if body == "" || body[0] == '_' || body[len(body)-1] == '_' || strings.Contains(body, "__") {
		return 0, false
	}
	s = strings.ReplaceAll(s, "_", "")
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil
}

// WriteTo writes the non-special symbols as "<symbol> <count>\n" lines.
func (d *Dictionary) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	var n int64
	var num [20]byte
	for i := NSpecial; i < len(d.symbols); i++ {
		k, err := bw.WriteString(d.symbols[i])
		n += int64(k)
		if err != nil {
			return n, err
		}
		line := append(append(num[:0], ' '), strconv.AppendInt(nil, d.counts[i], 10)...)
		line = append(line, '\n')
		k, err = bw.Write(line)
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
	return n, bw.Flush()
}

// Save writes the dictionary to path (fsynced, via a temporary file in the same
// directory so that a crash never leaves half a dictionary).
func (d *Dictionary) Save(path string) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".dict-*.tmp")
	if err != nil {
		return fmt.Errorf("data: save dictionary %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = d.WriteTo(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("data: save dictionary %s: %w", path, err)
	}
	return nil
}

// Finalize is fairseq 0.8's Dictionary.finalize: the non-special symbols are
// ordered by count descending, ties by symbol (byte order of UTF-8 equals
// Python's code point order); symbols below threshold are dropped, at most
// nwords symbols (specials included; <= 0: no limit) are kept, and
// madeupwordNNNN fillers pad Len() to a multiple of paddingFactor (when > 1).
func (d *Dictionary) Finalize(threshold, nwords, paddingFactor int) {
	if nwords <= 0 {
		nwords = len(d.symbols)
	}
	type entry struct {
		sym   string
		count int64
	}
	rest := make([]entry, 0, len(d.symbols)-NSpecial)
	for i := NSpecial; i < len(d.symbols); i++ {
		rest = append(rest, entry{d.symbols[i], d.counts[i]})
	}
	// Python builds the Counter from sorted (symbol, count) pairs, so a symbol
	// listed twice keeps its largest count; most_common is a stable sort.
	sort.Slice(rest, func(a, b int) bool {
		if rest[a].sym != rest[b].sym {
			return rest[a].sym < rest[b].sym
		}
		return rest[a].count < rest[b].count
	})
	uniq := rest[:0]
	for _, e := range rest {
		if len(uniq) > 0 && uniq[len(uniq)-1].sym == e.sym {
			uniq[len(uniq)-1] = e
			continue
		}
		uniq = append(uniq, e)
	}
	sort.SliceStable(uniq, func(a, b int) bool { return uniq[a].count > uniq[b].count })
	if keep := nwords - NSpecial; keep < len(uniq) {
		uniq = uniq[:max(keep, 0)]
	}

	nd := &Dictionary{
		symbols: append([]string(nil), d.symbols[:NSpecial]...),
		counts:  append([]int64(nil), d.counts[:NSpecial]...),
		indices: make(map[string]int32, len(uniq)+NSpecial+8),
	}
	for i, s := range nd.symbols {
		nd.indices[s] = int32(i)
	}
	for _, e := range uniq {
		if e.count < int64(threshold) {
			break
		}
		nd.indices[e.sym] = int32(len(nd.symbols))
		nd.symbols = append(nd.symbols, e.sym)
		nd.counts = append(nd.counts, e.count)
	}
	if paddingFactor > 1 {
		for i := 0; len(nd.symbols)%paddingFactor != 0; i++ {
			sym := fmt.Sprintf("madeupword%04d", i)
			nd.indices[sym] = int32(len(nd.symbols))
			nd.symbols = append(nd.symbols, sym)
			nd.counts = append(nd.counts, 0)
		}
	}
	*d = *nd
}
