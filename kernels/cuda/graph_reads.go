package cuda

import (
	"fmt"
	"unsafe"
)

// Read-backs and uploads of graphed steps, kept apart from the pinned memory until it is
// safe to touch, so that the host can prepare step n+1 (the replay's dry run) while the
// GPU still runs step n's graph.
//
// All graphs share one pinned host area (the arena restarts at every graphed step), and
// a graph's copies use fixed addresses in it: its uploads read them, its read-backs
// write them. The next launch of any graph may therefore overwrite a read-back, and a
// replay's new upload data must not land there while the previous launch may still read
// it. So a replay stages its uploads in Go memory and, right before its launch, waits
// for the previous launch, copies that launch's read-backs out ("harvest"), then writes
// the staged uploads into the pinned area. A read-back's reader thus finds its bytes
// harvested, or, when no launch came after its own, waits for the latest launch (its
// own) and harvests.

// graphRead is one read-back of a graphed step: the graph copies bytes to host.
type graphRead struct {
	host  unsafe.Pointer
	bytes int
	seq   uint64 // the launch that writes host; 0 until that launch is queued
	data  []byte // the bytes, once harvested
	done  bool
}

// graphReads tracks the read-backs of the step being recorded or replayed (staged) and
// those of the latest launch that are not harvested yet (pending). Harvesting before
// every launch keeps pending to one launch's reads.
type graphReads struct {
	staged, pending []*graphRead
}

// add registers a read-back of the step being captured or replayed.
func (r *graphReads) add(host unsafe.Pointer, bytes int) *graphRead {
	rd := &graphRead{host: host, bytes: bytes}
	r.staged = append(r.staged, rd)
	return rd
}

// launched says the step's graph was queued as launch seq: its reads now wait for it.
// The previous launch's reads must have been harvested.
func (r *graphReads) launched(seq uint64) {
	if len(r.pending) != 0 {
		panic(fmt.Sprintf("cuda: graph launch %d queued with %d read-backs of launch %d not harvested", seq, len(r.pending), r.pending[0].seq))
	}
	for _, rd := range r.staged {
		rd.seq = seq
	}
	r.pending = append(r.pending, r.staged...)
	r.discard()
}

// discard forgets the staged reads: after their launch (they are pending now), or for
// a step that will not be launched (a divergence, an error or a panic inside it), whose
// readers the caller never gets (the step runs again eagerly) or gets with its error.
func (r *graphReads) discard() {
	clear(r.staged)
	r.staged = r.staged[:0]
}

// harvest copies the reads of launch latest out of the pinned memory (the caller has
// waited for that launch) and marks them done.
func (r *graphReads) harvest(latest uint64) {
	for _, rd := range r.pending {
		if rd.seq != latest {
			panic(fmt.Sprintf("cuda: read-back of graph launch %d pending at launch %d", rd.seq, latest))
		}
		rd.data = append([]byte(nil), unsafe.Slice((*byte)(rd.host), rd.bytes)...)
		rd.done = true
	}
	clear(r.pending)
	r.pending = r.pending[:0]
}

// stageUpload keeps a replay's upload data in Go memory (op.cap bytes, reused by later
// replays) until flushUploads, right before the launch.
func (op *graphOp) stageUpload(src unsafe.Pointer, bytes int) {
	if op.stage == nil {
		op.stage = make([]byte, op.cap)
	}
	op.staged = copy(op.stage, unsafe.Slice((*byte)(src), bytes))
}

// flushUploads writes the staged uploads into the pinned memory the graph's copies read
// (the caller has waited for the previous launch). Only the bytes this step uploaded are
// written, as the dry run wrote them before staging: a capacity's rest is stale either way.
func (sg *stepGraph) flushUploads() {
	for i := range sg.ops {
		op := &sg.ops[i]
		if op.kind == opUpload && op.staged > 0 {
			copy(unsafe.Slice((*byte)(op.host), op.staged), op.stage[:op.staged])
		}
	}
}
