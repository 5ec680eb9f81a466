package preprocess

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// progress draws a one-line bar for the file being read. It stays silent for
// files that take under a second, so small corpora print only fairseq's log
// lines. A nil *progress does nothing.
type progress struct {
	w     io.Writer
	now   func() time.Time
	name  string
	total int64
	bytes int64
	lines int64
	begin time.Time
	last  time.Time
	shown bool
}

// newProgress returns a bar drawing to w, or nil when w is nil.
func newProgress(w io.Writer) *progress {
	if w == nil {
		return nil
	}
	return &progress{w: w, now: time.Now}
}

func (p *progress) start(path string) {
	if p == nil {
		return
	}
	p.name = filepath.Base(path)
	p.total, p.bytes, p.lines, p.shown = 0, 0, 0, false
	if st, err := os.Stat(path); err == nil {
		p.total = st.Size()
	}
	p.begin = p.now()
	p.last = p.begin
}

func (p *progress) add(bytes, lines int) {
	if p == nil {
		return
	}
	p.bytes += int64(bytes)
	p.lines += int64(lines)
	t := p.now()
	if t.Sub(p.begin) < time.Second || t.Sub(p.last) < 200*time.Millisecond {
		return
	}
	p.last = t
	p.shown = true
	p.draw(t)
}

func (p *progress) draw(t time.Time) {
	const width = 30
	frac := 1.0
	if p.total > 0 {
		frac = min(float64(p.bytes)/float64(p.total), 1)
	}
	fill := int(frac * width)
	bar := make([]byte, width)
	for i := range bar {
		if i < fill {
			bar[i] = '#'
		} else {
			bar[i] = '.'
		}
	}
	secs := t.Sub(p.begin).Seconds()
	fmt.Fprintf(p.w, "\r\033[K%s [%s] %3.0f%% %s/%s  %d lines  %.0f MB/s",
		p.name, bar, 100*frac, mb(p.bytes), mb(p.total), p.lines, float64(p.bytes)/1e6/secs)
}

func (p *progress) done() {
	if p == nil || !p.shown {
		return
	}
	fmt.Fprint(p.w, "\r\033[K")
}

func mb(n int64) string { return fmt.Sprintf("%.0f MB", float64(n)/1e6) }
