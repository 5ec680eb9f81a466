package cuda

import (
	"runtime"
	"testing"
	"time"
)

// A scope hands its buffers back at EndScope, so a loop of scoped steps holds one
// step's memory, while buffers made before the scope keep their values.
func TestScopeFreesStepBuffers(t *testing.T) {
	be := gpu(t)
	keep := be.Upload([]float32{1, 2, 3})
	// Let the collector return earlier tests' dead buffers first, so that live moves
	// only with this test's buffers.
	for i := 0; i < 3; i++ {
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	before, _ := be.MemoryInUse()
	const n = 1 << 20
	for step := 0; step < 3; step++ {
		be.BeginScope()
		a := be.Alloc(n)
		_ = be.Upload(make([]float32, n))
		be.BeginScope()
		_ = be.Alloc(n) // inner scope
		be.EndScope()
		if live, _ := be.MemoryInUse(); live < before+2*4*n {
			t.Fatalf("step %d: live %d after the inner scope, want ≥ %d (outer buffers still held)", step, live, before+2*4*n)
		}
		be.Fill(a, 1)
		be.EndScope()
		if live, _ := be.MemoryInUse(); live != before {
			t.Fatalf("step %d: live %d after EndScope, want %d", step, live, before)
		}
	}
	if got := down(be, keep); got[0] != 1 || got[1] != 2 || got[2] != 3 {
		t.Fatalf("buffer made before the scopes changed: %v", got)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("EndScope without BeginScope did not panic")
		}
	}()
	be.EndScope()
}
