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
			if _, _, ok := p.take(1024); !ok {
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

// A request takes a cached block of its own class, else the smallest cached block up to
// 1.5 times its class, never a smaller or a much larger one.
func TestPoolTakeLarger(t *testing.T) {
	p := &pool{free: map[uint64][]uint64{}}
	p.put(1, 4096)
	p.put(2, 6144)
	p.put(3, 8192)
	for _, c := range []struct {
		class, ptr, got uint64
		ok              bool
	}{
		{1024, 0, 0, false},   // 4096 is 4x larger
		{4096, 1, 4096, true}, // own class
		{4096, 2, 6144, true}, // 1.5x
		{4096, 0, 0, false},   // 8192 is 2x
		{8192, 3, 8192, true},
	} {
		ptr, got, ok := p.take(c.class)
		if ptr != c.ptr || got != c.got || ok != c.ok {
			t.Fatalf("take(%d) = %d, %d, %v; want %d, %d, %v", c.class, ptr, got, ok, c.ptr, c.got, c.ok)
		}
	}
	if p.cached != 0 || len(p.free[4096])+len(p.free[6144])+len(p.free[8192]) != 0 {
		t.Fatalf("cached %d bytes, lists %v after taking every block", p.cached, p.free)
	}
}
