package cuda

import (
	"unsafe"
)

// Reads of a step's results (the loss sums, the gradient norm) that do not stall the
// queue. Eagerly, readLater used to copy with the synchronous cuMemcpyDtoH when its
// function was called; that waits for everything queued until then, so a trainer that
// queued the next update before reading this one's loss (train.Stepper's pipelining)
// would wait for the next update too. Here the copy is queued at once, in stream order,
// into page-locked memory, and an event marks its end: the reader waits for that event
// alone. The buffer may then be freed or reused by later work (the copy is behind it in
// the stream), which a step scope does as soon as the step ends.

// asyncRead is one page-locked slot and the event after its copy.
type asyncRead struct {
	host  unsafe.Pointer
	event uintptr
}

// asyncReadBytes is a slot's size: the reads are a few float64 sums.
const asyncReadBytes = 64

// readAsync queues a copy of the first bytes of b to page-locked memory and returns a
// function that waits for that copy and returns the bytes. ok is false where the driver
// lacks the entry points (graphSetup failed; DeferredReads says false then): the caller
// then reads when its function is called. Called with the Backend held, outside graph
// capture and replay.
func (be *Backend) readAsync(b *buffer, bytes int) (read func() []byte, ok bool) {
	if be.graphSetup() != nil {
		return nil, false
	}
	g := &be.graph
	// Where no slot fits or can be made (page-locked memory or an event refused), read
	// now: slower (it waits for the queue) but right, since the caller was told reads
	// may come after the buffer is reused.
	readNow := func() (func() []byte, bool) {
		out := make([]byte, bytes)
		must(be.drv.dtoh(unsafe.Pointer(&out[0]), b.dptr(), uint64(bytes)))
		return func() []byte { return out }, true
	}
	if bytes > asyncReadBytes {
		return readNow()
	}
	var r *asyncRead
	if n := len(be.reads); n > 0 {
		r, be.reads = be.reads[n-1], be.reads[:n-1]
	} else {
		r = &asyncRead{}
		if err := be.drv.check("cuMemHostAlloc", call(g.api.hostAlloc, uintptr(unsafe.Pointer(&r.host)), asyncReadBytes, 0)); err != nil {
			return readNow()
		}
		ev, err := be.drv.newEventNoTiming()
		if err != nil {
			call(g.api.hostFree, uintptr(r.host))
			return readNow()
		}
		r.event = ev
		be.readsMade = append(be.readsMade, r)
	}
	// Stream 0, the legacy stream all eager work is queued on.
	must(be.drv.check("cuMemcpyDtoHAsync", call(g.api.dtohAsync, uintptr(r.host), uintptr(b.dptr()), uintptr(bytes), 0)))
	must(be.drv.record(r.event))
	done := false
	return func() []byte {
		defer be.enter()()
		if done {
			panic("cuda backend: a deferred read read twice")
		}
		done = true
		must(be.drv.eventSync(r.event))
		out := append([]byte(nil), unsafe.Slice((*byte)(r.host), bytes)...)
		be.reads = append(be.reads, r)
		return out
	}, true
}

// closeReads frees the slots (Close, after the final synchronisation).
func (be *Backend) closeReads() {
	for _, r := range be.readsMade {
		be.drv.destroyEvent(r.event)
		if be.graph.api != nil {
			call(be.graph.api.hostFree, uintptr(r.host))
		}
	}
	be.reads, be.readsMade = nil, nil
}

// DeferredReads implements kernels.DeferredReader: a result's reader may be called after
// more work was queued, and waits only for the work before it. Graphed steps too: their
// read-backs are copied out of the shared pinned area before the next launch can
// overwrite them, and a replay writes its uploads there only once the previous launch
// is done (graph_reads.go). False where the driver lacks the asynchronous copies and
// events (graphSetup failed): reads are then synchronous and wait for everything queued.
func (be *Backend) DeferredReads() bool {
	defer be.enter()()
	return be.graphSetup() == nil
}
