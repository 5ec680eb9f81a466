package cuda

import (
	"bytes"
	"strings"
	"testing"
	"unsafe"
)

// The read-backs of graphed steps, host side (Go memory stands in for the pinned area):
// a read made by a step keeps the bytes its launch wrote although the next launch
// overwrites the same address; reads of a step that is not launched are dropped; the
// lists stay bounded by one launch's reads.
func TestGraphReadsHarvest(t *testing.T) {
	pinned := make([]byte, 16)
	host := unsafe.Pointer(&pinned[0])
	var r graphReads
	var seq uint64
	launch := func() {
		seq++
		r.launched(seq)
	}

	// Step 1 (a capture): one read-back, launched.
	a := r.add(host, 8)
	launch()
	if a.seq != 1 || a.done || len(r.pending) != 1 || len(r.staged) != 0 {
		t.Fatalf("after launch 1: read %+v, %d pending, %d staged", a, len(r.pending), len(r.staged))
	}
	copy(pinned, "launch-1") // the graph's copy lands
	r.harvest(seq)           // the next step's wait, before its launch
	copy(pinned, "launch-2") // the next launch writes the same address
	b := r.add(host, 8)      // made by the replay's dry run
	if !a.done || string(a.data) != "launch-1" || len(r.pending) != 0 {
		t.Fatalf("read 1 after the harvest: done %v data %q, %d pending", a.done, a.data, len(r.pending))
	}
	launch()
	if b.seq != 2 || b.done {
		t.Fatalf("read 2: %+v", b)
	}

	// A replay that diverges: its read is dropped, read 2 stays pending and is harvested
	// by the next wait.
	c := r.add(unsafe.Pointer(&pinned[8]), 8)
	r.discard()
	if len(r.staged) != 0 || c.seq != 0 || len(r.pending) != 1 {
		t.Fatalf("after discard: %d staged, read %+v, %d pending", len(r.staged), c, len(r.pending))
	}
	r.harvest(seq)
	if !b.done || string(b.data) != "launch-2" {
		t.Fatalf("read 2: %+v", b)
	}
	copy(pinned, "launch-3")
	if string(a.data) != "launch-1" || string(b.data) != "launch-2" {
		t.Fatalf("harvested data changed with the pinned bytes: %q %q", a.data, b.data)
	}

	// A launch with reads of an earlier launch still pending is a bug in the caller.
	r.add(host, 4)
	launch()
	mustPanic(t, "not harvested", func() { r.add(host, 4); launch() })
	r.discard()
	// So is a harvest that names another launch than the pending reads'.
	mustPanic(t, "pending at launch", func() { r.harvest(seq + 1) })
}

// A replay's upload data stays in Go memory until flushUploads, which writes only the
// bytes the step uploaded into the op's pinned bytes.
func TestGraphUploadStaging(t *testing.T) {
	pinned := bytes.Repeat([]byte{0xee}, 12)
	sg := &stepGraph{ops: []graphOp{
		{kind: opKernel},
		{kind: opUpload, host: unsafe.Pointer(&pinned[0]), cap: 8},
		{kind: opUpload, host: unsafe.Pointer(&pinned[8]), cap: 4},
	}}
	src := []byte{1, 2, 3, 4, 5, 6}
	sg.ops[1].stageUpload(unsafe.Pointer(&src[0]), 6)
	src2 := []byte{9, 8, 7, 6}
	sg.ops[2].stageUpload(unsafe.Pointer(&src2[0]), 4)
	src[0], src2[0] = 100, 100 // the caller's memory is free again once upload returns
	if !bytes.Equal(pinned, bytes.Repeat([]byte{0xee}, 12)) {
		t.Fatalf("staging wrote the pinned bytes: %v", pinned)
	}
	sg.flushUploads()
	want := []byte{1, 2, 3, 4, 5, 6, 0xee, 0xee, 9, 8, 7, 6}
	if !bytes.Equal(pinned, want) {
		t.Fatalf("after the flush: %v, want %v", pinned, want)
	}
	// The next replay reuses the staging memory and uploads fewer bytes.
	stage := &sg.ops[1].stage[0]
	sg.ops[1].stageUpload(unsafe.Pointer(&src2[1]), 2)
	sg.flushUploads()
	if &sg.ops[1].stage[0] != stage || len(sg.ops[1].stage) != 8 {
		t.Error("the staging memory was not reused")
	}
	want = []byte{8, 7, 3, 4, 5, 6, 0xee, 0xee, 9, 8, 7, 6}
	if !bytes.Equal(pinned, want) {
		t.Fatalf("after the second flush: %v, want %v", pinned, want)
	}
}

func mustPanic(t *testing.T, want string, f func()) {
	t.Helper()
	defer func() {
		t.Helper()
		r := recover()
		if r == nil {
			t.Fatalf("no panic; want one mentioning %q", want)
		}
		if s, _ := r.(string); !strings.Contains(s, want) {
			t.Fatalf("panic %v; want one mentioning %q", r, want)
		}
	}()
	f()
}
