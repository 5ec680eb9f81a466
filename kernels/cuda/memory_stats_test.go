package cuda

import "testing"

// The pool's peaks follow the bytes handed out and held, whichever way blocks arrive
// (new from the driver or taken from the cache), and ResetPeakMemory restarts them.
func TestPoolPeaks(t *testing.T) {
	p := &pool{free: map[uint64][]uint64{}}
	type want struct{ live, cached, peakLive, peakHeld uint64 }
	steps := []struct {
		name string
		do   func()
		want want
	}{
		{"alloc 1024", func() { p.mu.Lock(); p.grow(1024); p.mu.Unlock() }, want{1024, 0, 1024, 1024}},
		{"alloc 512", func() { p.mu.Lock(); p.grow(512); p.mu.Unlock() }, want{1536, 0, 1536, 1536}},
		{"free 1024", func() { p.put(1, 1024) }, want{512, 1024, 1536, 1536}},
		{"reuse 1024", func() {
			if _, ok := p.take(1024); !ok {
				t.Fatal("cached block not reused")
			}
		}, want{1536, 0, 1536, 1536}},
		{"free all", func() { p.put(1, 1024); p.put(2, 512) }, want{0, 1536, 1536, 1536}},
		{"drain", func() { p.drain(0) }, want{0, 0, 1536, 1536}},
		{"reset", func() { (&Backend{pool: p}).ResetPeakMemory() }, want{0, 0, 0, 0}},
		{"alloc 2048", func() { p.mu.Lock(); p.grow(2048); p.mu.Unlock() }, want{2048, 0, 2048, 2048}},
	}
	for _, s := range steps {
		s.do()
		got := want{p.live, p.cached, p.peakLive, p.peakHeld}
		if got != s.want {
			t.Fatalf("%s: live/cached/peakLive/peakHeld = %v, want %v", s.name, got, s.want)
		}
	}
}
