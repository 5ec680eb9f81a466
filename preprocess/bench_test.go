package preprocess

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// genCorpus writes a parallel corpus like the throughput anchor's (Zipf(1.0)
// words from 32,000 types, 20..40 words a line) of about mb megabytes per
// side and returns the prefix and the line count.
func genCorpus(tb testing.TB, dir string, mb int) (string, int) {
	tb.Helper()
	const types = 32000
	cum := make([]float64, types)
	s := 0.0
	for i := range cum {
		s += 1 / float64(i+1)
		cum[i] = s
	}
	words := make([]string, types)
	for i := range words {
		words[i] = "w" + strconv.Itoa(i)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func() string {
		x := rng.Float64() * s
		lo, hi := 0, types-1
		for lo < hi {
			m := (lo + hi) / 2
			if cum[m] < x {
				lo = m + 1
			} else {
				hi = m
			}
		}
		return words[lo]
	}
	prefix := filepath.Join(dir, "train")
	lines := 0
	for _, lang := range []string{"src", "tgt"} {
		f, err := os.Create(prefix + "." + lang)
		if err != nil {
			tb.Fatal(err)
		}
		w := bufio.NewWriterSize(f, 1<<20)
		n, l := 0, 0
		for n < mb<<20 && (lang == "src" || l < lines) || lang == "tgt" && l < lines {
			k := 20 + rng.IntN(21)
			for j := 0; j < k; j++ {
				if j > 0 {
					w.WriteByte(' ')
					n++
				}
				word := pick()
				w.WriteString(word)
				n += len(word)
			}
			w.WriteByte('\n')
			n++
			l++
		}
		if lang == "src" {
			lines = l
		}
		if err := w.Flush(); err != nil {
			tb.Fatal(err)
		}
		f.Close()
	}
	return prefix, lines
}

// BenchmarkPreprocess runs the whole pipeline (dictionary from both sides,
// binarizing both) on a generated corpus. XFORM_BENCH_MB sets the size of
// each side (default 150, so ~300 MB in all).
func BenchmarkPreprocess(b *testing.B) {
	mb := 150
	if v, err := strconv.Atoi(os.Getenv("XFORM_BENCH_MB")); err == nil && v > 0 {
		mb = v
	}
	dir := b.TempDir()
	prefix, lines := genCorpus(b, dir, mb)
	var total int64
	for _, lang := range []string{"src", "tgt"} {
		st, err := os.Stat(prefix + "." + lang)
		if err != nil {
			b.Fatal(err)
		}
		total += st.Size()
	}
	for _, workers := range []int{1, 2, 4, 8} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				o := Defaults()
				o.SourceLang, o.TargetLang = "src", "tgt"
				o.TrainPref = prefix
				o.JoinedDictionary = true
				o.DestDir = filepath.Join(dir, fmt.Sprintf("out%d_%d", workers, i))
				o.Workers = workers
				if err := Run(context.Background(), o); err != nil {
					b.Fatal(err)
				}
				os.RemoveAll(o.DestDir)
			}
			sec := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(float64(2*lines)/sec, "lines/s")
			b.ReportMetric(float64(total)/1e6/sec, "MB/s")
			b.ReportMetric(math.Round(float64(total)/1e6), "corpusMB")
		})
	}
}
