// Package bench measures xform's training and generation throughput (xform bench):
// target tokens per second, updates per second, milliseconds per update, model FLOP
// utilisation and peak memory, on a data-bin or on a seeded synthetic corpus that
// tools/bench/torch_competitor.py reproduces token for token.
package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/train/data"
)

// SynthConfig describes a synthetic parallel corpus. The generator is defined by
// arithmetic only, so that tools/bench/torch_competitor.py (numpy) produces the same
// sentences; both sides document it the same way:
//
//   - mix(seed, n) is SplitMix64's output function applied to seed + n·0x9E3779B97F4A7C15
//     (uint64 arithmetic modulo 2⁶⁴): z = (z ⊕ z>>30)·0xBF58476D1CE4E5B9,
//     z = (z ⊕ z>>27)·0x94D049BB133111EB, result z ⊕ z>>31.
//   - Pair p (0-based over the whole corpus; a validation split continues the numbering
//     after the training pairs) has source length MinLen + mix(Seed, 2p+1) mod
//     (MaxLen−MinLen+1) words and target length MinLen + mix(Seed, 2p+2) mod (…).
//   - Words come from one stream seeded with Seed ⊕ 0x6A09E667F3BCC909, consumed in
//     order: the source words of pair 0, its target words, then pair 1, and so on; draw
//     n (1-based) is x = mix(Seed ⊕ 0x6A09E667F3BCC909, n). With u = (x>>11)·2⁻⁵³ and
//     cdf[k] = Σ_{j≤k} 1/(j+1) summed in float64 in increasing j (Zipf, exponent 1, as
//     fixtures/clinic/scripts/make_big.py), the word rank is the first k with
//     cdf[k] > u·cdf[Vocab−1] (at most Vocab−1). The word is "w%05d" of its rank.
//   - Every sentence ends with </s>. The in-memory dictionary is the one
//     `xform preprocess --joined-dictionary` builds from the training text (counts over
//     both sides, most frequent first, ties alphabetical, padded to a multiple of 8), so
//     Synthetic equals preprocessing WriteText's output.
type SynthConfig struct {
	Pairs  int    // sentence pairs in the split
	First  int    // global index of the split's first pair (0 for train)
	Seed   uint64 // generator seed
	Vocab  int    // word types (32000 in the Clinic throughput corpus)
	MinLen int    // fewest words in a sentence (20), </s> not counted
	MaxLen int    // most words in a sentence (40)
}

// DefaultSynth is the Clinic throughput corpus's distribution (make_big.py): lengths
// uniform 20..40 on both sides independently, 32,000 Zipf(1) word types.
func DefaultSynth(pairs int, seed uint64) SynthConfig {
	return SynthConfig{Pairs: pairs, Seed: seed, Vocab: 32000, MinLen: 20, MaxLen: 40}
}

const (
	golden    = 0x9E3779B97F4A7C15
	wordsSalt = 0x6A09E667F3BCC909
)

// mix is SplitMix64's n-th output for seed (n ≥ 1 is the first draw).
func mix(seed, n uint64) uint64 {
	z := seed + n*golden
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

func (c SynthConfig) validate() error {
	if c.Pairs < 1 || c.First < 0 || c.Vocab < 1 || c.MinLen < 1 || c.MaxLen < c.MinLen {
		return fmt.Errorf("synthetic corpus: need pairs ≥ 1, first ≥ 0, vocab ≥ 1 and 1 ≤ min length ≤ max length (got %d, %d, %d, %d..%d)",
			c.Pairs, c.First, c.Vocab, c.MinLen, c.MaxLen)
	}
	return nil
}

// lengths returns the source and target lengths (words) of pair p.
func (c SynthConfig) lengths(p int) (src, tgt int) {
	span := uint64(c.MaxLen - c.MinLen + 1)
	return c.MinLen + int(mix(c.Seed, uint64(2*p+1))%span), c.MinLen + int(mix(c.Seed, uint64(2*p+2))%span)
}

// ranks calls fn with every pair's source and target word ranks, in pair order.
// The slices are reused between calls.
func (c SynthConfig) ranks(ctx context.Context, fn func(src, tgt []int)) error {
	if err := c.validate(); err != nil {
		return err
	}
	cdf := make([]float64, c.Vocab)
	s := 0.0
	for k := range cdf {
		s += 1 / float64(k+1)
		cdf[k] = s
	}
	total := cdf[c.Vocab-1]
	var n uint64 // words drawn so far
	for p := 0; p < c.First; p++ {
		a, b := c.lengths(p)
		n += uint64(a + b)
	}
	seed := c.Seed ^ wordsSalt
	draw := func(dst []int) {
		for i := range dst {
			n++
			u := float64(mix(seed, n)>>11) * 0x1p-53
			t := u * total
			k := sort.Search(c.Vocab, func(j int) bool { return cdf[j] > t })
			dst[i] = min(k, c.Vocab-1)
		}
	}
	src, tgt := make([]int, c.MaxLen), make([]int, c.MaxLen)
	for p := c.First; p < c.First+c.Pairs; p++ {
		if p%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		a, b := c.lengths(p)
		draw(src[:a])
		draw(tgt[:b])
		fn(src[:a], tgt[:b])
	}
	return nil
}

// Word is the synthetic word of rank k.
func Word(k int) string { return fmt.Sprintf("w%05d", k) }

// Synthetic builds the corpus as a training split with the joined dictionary
// xform preprocess would build from its text (languages "src" and "tgt").
func Synthetic(ctx context.Context, c SynthConfig) (*generate.Split, error) {
	counts := make([]int64, c.Vocab)
	var src, tgt [][]int32
	err := c.ranks(ctx, func(s, t []int) {
		a, b := make([]int32, len(s)+1), make([]int32, len(t)+1)
		for i, k := range s {
			a[i] = int32(k)
			counts[k]++
		}
		for i, k := range t {
			b[i] = int32(k)
			counts[k]++
		}
		src, tgt = append(src, a), append(tgt, b)
	})
	if err != nil {
		return nil, err
	}
	d := data.NewDictionary()
	d.Add(data.EOSWord, int64(2*c.Pairs))
	for k, n := range counts { // "w%05d" sorts as the ranks do
		if n > 0 {
			d.Add(Word(k), n)
		}
	}
	d.Finalize(0, -1, 8)
	id := make([]int32, c.Vocab)
	for k := range id {
		id[k] = d.Index(Word(k))
	}
	for _, side := range [][][]int32{src, tgt} {
		for _, sent := range side {
			last := len(sent) - 1
			for i := 0; i < last; i++ {
				sent[i] = id[sent[i]]
			}
			sent[last] = data.EOS
		}
	}
	return &generate.Split{SrcLang: "src", TgtLang: "tgt", SrcDict: d, TgtDict: d, Src: src, Tgt: tgt}, nil
}

// WriteText writes the corpus as prefix.src and prefix.tgt, one sentence of
// space-separated words per line (the input of xform preprocess).
func WriteText(ctx context.Context, c SynthConfig, prefix string) (err error) {
	if err := os.MkdirAll(filepath.Dir(prefix), 0o755); err != nil {
		return fmt.Errorf("synthetic corpus: %w", err)
	}
	var files [2]*os.File
	var ws [2]*bufio.Writer
	for i, lang := range []string{"src", "tgt"} {
		f, err := os.Create(prefix + "." + lang)
		if err != nil {
			return fmt.Errorf("synthetic corpus: %w", err)
		}
		defer func() {
			if cerr := f.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("synthetic corpus: %w", cerr)
			}
		}()
		files[i], ws[i] = f, bufio.NewWriterSize(f, 1<<20)
	}
	line := func(w *bufio.Writer, ks []int) {
		var buf [6]byte
		for i, k := range ks {
			if i > 0 {
				w.WriteByte(' ')
			}
			b := append(buf[:0], 'w')
			s := strconv.Itoa(k)
			for j := len(s); j < 5; j++ {
				b = append(b, '0')
			}
			w.Write(append(b, s...))
		}
		w.WriteByte('\n')
	}
	if err := c.ranks(ctx, func(s, t []int) { line(ws[0], s); line(ws[1], t) }); err != nil {
		return err
	}
	for i, w := range ws {
		if err := w.Flush(); err != nil {
			return fmt.Errorf("synthetic corpus: write %s: %w", files[i].Name(), err)
		}
	}
	return nil
}
