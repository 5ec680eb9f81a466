package preprocess

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/xform-dev/xform/train/data"
)

// counts is one worker's token counts: an index into n keeps the hot path to
// one map lookup without allocating a key for words already seen.
type counts struct {
	idx   map[string]int32
	words []string
	n     []int64
	lines int64
	cr    int // first line (in its chunk) that ends in \r or \r\n; 0: none
}

func newCounts() *counts { return &counts{idx: make(map[string]int32)} }

func (c *counts) add(tok []byte) {
	if i, ok := c.idx[string(tok)]; ok {
		c.n[i]++
		return
	}
	w := string(tok)
	c.idx[w] = int32(len(c.words))
	c.words = append(c.words, w)
	c.n = append(c.n, 1)
}

func (c *counts) merge(o *counts) {
	for i, w := range o.words {
		if j, ok := c.idx[w]; ok {
			c.n[j] += o.n[i]
			continue
		}
		c.idx[w] = int32(len(c.words))
		c.words = append(c.words, w)
		c.n = append(c.n, o.n[i])
	}
	c.lines += o.lines
}

// countFile adds the tokens of path (plus one </s> per line, as fairseq
// counts) to total. It returns the first line that ends in \r or \r\n (0:
// none), because fairseq 0.8 may stop counting there.
func countFile(ctx context.Context, path string, workers, size int, total *counts, prog *progress) (int, error) {
	prog.start(path)
	defer prog.done()
	work := func(ch *chunk) (*counts, int, error) {
		c := newCounts()
		lines := 0
		hasCR := bytes.IndexByte(ch.data, '\r') >= 0
		err := eachLine(ch.data, func(line []byte) error {
			lines++
			if hasCR && c.cr == 0 && lineEndsInCR(ch.data, line) {
				c.cr = lines
			}
			if err := data.CheckUTF8(line); err != nil {
				return &lineError{lines, err}
			}
			data.EachToken(line, c.add)
			return nil
		})
		c.lines = int64(lines)
		return c, lines, err
	}
	firstCR := 0
	err := pipeline(ctx, path, workers, size, work, func(c *counts, before int, n int) error {
		total.merge(c)
		if firstCR == 0 && c.cr > 0 {
			firstCR = before + c.cr
		}
		prog.add(n, int(c.lines))
		return nil
	})
	return firstCR, err
}

// lineEndsInCR reports whether the line (a subslice of chunk) is terminated
// by \r or \r\n.
func lineEndsInCR(chunk, line []byte) bool {
	end := cap(chunk) - cap(line) + len(line) // offset of the terminator in chunk
	return end < len(chunk) && chunk[end] == '\r'
}

// buildDictionary is fairseq's build_dictionary over the given train files.
func buildDictionary(ctx context.Context, files []string, workers, size, threshold, nwords, padding int, prog *progress, log io.Writer) (*data.Dictionary, error) {
	total := newCounts()
	for _, f := range files {
		cr, err := countFile(ctx, f, workers, size, total, prog)
		if err != nil {
			return nil, err
		}
		if cr > 0 {
			fmt.Fprintf(log, "| warning: %s: line %d ends in \\r; fairseq 0.8 may stop counting this file there "+
				"(its text-mode f.tell() check), xform counts every line, so the dictionary can differ from fairseq's\n", f, cr)
		}
	}
	// fairseq adds symbols in sorted order; Finalize re-sorts anyway, but the
	// specials' counts (</s> per line, literal "<unk>" tokens) go to them.
	order := make([]int, len(total.words))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return total.words[order[a]] < total.words[order[b]] })
	d := data.NewDictionary()
	d.Add(data.EOSWord, total.lines)
	for _, i := range order {
		d.Add(total.words[i], total.n[i])
	}
	d.Finalize(threshold, nwords, padding)
	return d, nil
}

// binStats is what fairseq's Binarizer reports.
type binStats struct {
	nseq, ntok, nunk int64
}

type encoded struct {
	ids   []int32
	sizes []int32
	st    binStats
}

// binarizeFile encodes path with dict into w, in file order whatever the
// number of workers.
func binarizeFile(ctx context.Context, path string, dict *data.Dictionary, w *data.Writer, workers, size int, prog *progress) (binStats, error) {
	prog.start(path)
	defer prog.done()
	var st binStats
	work := func(ch *chunk) (encoded, int, error) {
		var e encoded
		e.ids = make([]int32, 0, len(ch.data)/3)
		lines := 0
		err := eachLine(ch.data, func(line []byte) error {
			lines++
			if err := data.CheckUTF8(line); err != nil {
				return &lineError{lines, err}
			}
			n0 := len(e.ids)
			var unk int
			e.ids, unk = dict.AppendEncoded(e.ids, line, true)
			e.sizes = append(e.sizes, int32(len(e.ids)-n0))
			e.st.nunk += int64(unk)
			return nil
		})
		e.st.nseq = int64(len(e.sizes))
		e.st.ntok = int64(len(e.ids))
		return e, lines, err
	}
	err := pipeline(ctx, path, workers, size, work, func(e encoded, _ int, n int) error {
		if err := w.AddBatch(e.ids, e.sizes); err != nil {
			return err
		}
		st.nseq += e.st.nseq
		st.ntok += e.st.ntok
		st.nunk += e.st.nunk
		prog.add(n, int(e.st.nseq))
		return nil
	})
	return st, err
}
