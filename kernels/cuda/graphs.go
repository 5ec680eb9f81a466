package cuda

// CUDA graphs for the training step (kernels.StepGrapher).
//
// A training step of the 6L-6L base model is about a thousand operations, most of them
// small: the GPU finishes each in a few microseconds, about as long as the host takes
// to launch it. Graphed records a step's work once per key (the batch shape) into a
// CUDA graph and afterwards launches the whole recording with one call.
//
// The model code is not split into "record" and "replay" halves. On a replay it runs
// as usual, dry: every Backend method does its host work (shapes, argument packing,
// uploads of ids and masks) but, instead of launching, checks that it is the same
// operation on the same buffers as at capture and remembers what changed. Kernel
// arguments may change (dropout seeds differ every step): the graph's kernel node is
// updated before the launch. Uploads stage their new data in Go memory, written into
// the pinned host memory the recorded copy reads from right before the launch
// (graph_reads.go). Anything else that differs (another cuBLAS call, another memset) is
// a divergence: the graph is dropped and the step runs eagerly.
//
// Buffers allocated during a graphed step come from an arena that restarts at every
// graphed step, so the same sequence of allocations gets the same addresses; all
// graphs share it, because one graph's buffers are dead before the next graph runs
// (the step's results are host values and gradients accumulated into buffers made
// outside it). Host reads (the loss) are recorded copies into pinned memory, copied out
// before the next launch can overwrite them.
//
// A replay does not wait for the previous launch until its own launch: the dry run
// touches neither the device nor the pinned memory, so the host prepares step n+1 while
// the GPU runs step n (train.Stepper.Queue pipelines graphed steps too).

import (
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/xform-dev/xform/kernels"
)

var _ kernels.StepGrapher = (*Backend)(nil)

// graphAPI holds the driver entry points graphs need, bound on first use so that a
// driver without one turns graphs off instead of failing New.
type graphAPI struct {
	streamCreate, streamDestroy, streamSync                      uintptr
	beginCapture, endCapture, captureInfo                        uintptr
	captureInfoV3                                                bool
	instantiate, launch, graphDestroy, execDestroy, nodeSetParam uintptr
	memsetAsync, dtodAsync, dtohAsync, hostAlloc, hostFree       uintptr
}

func bindGraphAPI(h uintptr) (*graphAPI, error) {
	g := &graphAPI{}
	syms := []symbol{
		{"cuStreamCreate", &g.streamCreate}, {"cuStreamDestroy_v2", &g.streamDestroy},
		{"cuStreamSynchronize", &g.streamSync},
		{"cuStreamBeginCapture_v2", &g.beginCapture}, {"cuStreamEndCapture", &g.endCapture},
		{"cuGraphInstantiateWithFlags", &g.instantiate}, {"cuGraphLaunch", &g.launch},
		{"cuGraphDestroy", &g.graphDestroy}, {"cuGraphExecDestroy", &g.execDestroy},
		{"cuGraphExecKernelNodeSetParams_v2", &g.nodeSetParam},
		{"cuMemsetD32Async", &g.memsetAsync}, {"cuMemcpyDtoDAsync_v2", &g.dtodAsync},
		{"cuMemcpyDtoHAsync_v2", &g.dtohAsync},
		{"cuMemHostAlloc", &g.hostAlloc}, {"cuMemFreeHost", &g.hostFree},
	}
	if err := bind(h, "libcuda", syms); err != nil {
		return nil, err
	}
	// The capture-info entry point gained an edge-data argument in CUDA 12.3 (_v3);
	// the older form is enough here.
	if a, err := purego.Dlsym(h, "cuStreamGetCaptureInfo_v2"); err == nil && a != 0 {
		g.captureInfo = a
	} else if a, err := purego.Dlsym(h, "cuStreamGetCaptureInfo_v3"); err == nil && a != 0 {
		g.captureInfo, g.captureInfoV3 = a, true
	} else {
		return nil, errors.New("libcuda lacks cuStreamGetCaptureInfo_v2/_v3")
	}
	return g, nil
}

// Capture modes (CUstreamCaptureMode). Relaxed: the Backend's calls come from
// whichever OS thread holds its lock, and cuMemAlloc (arena growth) must stay allowed.
const captureModeRelaxed = 2

// kernelNodeParams is CUDA_KERNEL_NODE_PARAMS_v2.
type kernelNodeParams struct {
	fn                     uintptr
	gx, gy, gz, bx, by, bz uint32
	shared                 uint32
	_                      uint32
	params                 uintptr // void**
	extra                  uintptr
	kern                   uintptr
	ctx                    uintptr
}

// arena hands out device (or pinned host) memory in order from a list of chunks and
// starts over at reset, so the same sequence of requests gets the same addresses.
type arena struct {
	chunks []arenaChunk
	i      int    // current chunk
	off    uint64 // bytes used in it
	held   uint64
}

type arenaChunk struct {
	ptr, bytes uint64
	host       unsafe.Pointer // pinned chunks
}

const (
	arenaAlign      = 256
	arenaChunkBytes = 256 << 20
	hostChunkBytes  = 16 << 20
)

func (a *arena) reset() { a.i, a.off = 0, 0 }

// take returns chunk index and offset of bytes, growing by newChunk when no chunk from
// the current one on has room.
func (a *arena) take(bytes uint64, newChunk func(uint64) (arenaChunk, error)) (int, uint64, error) {
	bytes = (max(bytes, 1) + arenaAlign - 1) / arenaAlign * arenaAlign
	for ; a.i < len(a.chunks); a.i, a.off = a.i+1, 0 {
		if a.off+bytes <= a.chunks[a.i].bytes {
			off := a.off
			a.off += bytes
			return a.i, off, nil
		}
	}
	c, err := newChunk(bytes)
	if err != nil {
		return 0, 0, err
	}
	a.chunks = append(a.chunks, c)
	a.held += c.bytes
	a.i, a.off = len(a.chunks)-1, bytes
	return a.i, 0, nil
}

// opKind is what a recorded operation is.
type opKind uint8

const (
	opKernel opKind = iota + 1
	opBlas
	opMemset
	opCopy
	opUpload
	opRead
)

func (k opKind) String() string {
	return [...]string{"?", "kernel", "cuBLAS call", "memset", "device copy", "upload", "read-back"}[k]
}

// graphOp is one recorded operation: for kernels what the node was launched with (and
// the node, to update it), for the rest a signature that must repeat exactly.
type graphOp struct {
	kind    opKind
	node    uintptr
	fn      uintptr
	grid    [3]uint32
	block   [3]uint32
	shared  uint32
	n       int
	vals    [maxParams]uint64
	changed bool
	sig     [16]uint64
	host    unsafe.Pointer // uploads and reads: the pinned bytes the copy uses
	cap     int
	stage   []byte // uploads: a replay's data until its launch (flushUploads)
	staged  int
}

type stepGraph struct {
	key         string
	graph, exec uintptr
	ops         []graphOp
}

type graphMode uint8

const (
	graphOff graphMode = iota
	graphCapture
	graphReplay
)

// graphState is the Backend's graph bookkeeping (all under the Backend's lock).
type graphState struct {
	enabled bool
	api     *graphAPI
	apiErr  error
	stream  uintptr
	done    uintptr // event after the last graph launch
	// launches counts the graph launches; reads holds the read-backs not yet copied
	// out of the pinned memory (graph_reads.go).
	launches uint64
	reads    graphReads
	mode     graphMode
	cur      *stepGraph
	pos      int
	seen     map[string]int
	graphs   map[string]*stepGraph
	dev      arena
	host     arena
	patch    *params
	stats    GraphStats
	warned   bool
}

// GraphStats counts what Graphed did (xform bench prints them).
type GraphStats struct {
	Eager, Captures, Replays, Divergences int
	NodeUpdates                           int
	ArenaBytes, PinnedBytes               uint64
	// ReplayHost is the host time of the replays: the dry run of the step, the node
	// updates, the copy of the staged uploads and the launch call (what the host spends
	// per step instead of launching), not counting ReplayWait.
	ReplayHost time.Duration
	// ReplayWait is the host time the replays spent waiting, after their dry run, for the
	// previous graph launch to finish before writing their uploads into the pinned
	// memory and launching. Pipelined, the dry run overlaps the previous step's GPU work
	// and the wait is what is left of it; step by step the previous launch is done by
	// then and the wait is near 0.
	ReplayWait time.Duration
}

// GraphStats reports the counts so far.
func (be *Backend) GraphStats() GraphStats {
	defer be.enter()()
	s := be.graph.stats
	s.ArenaBytes, s.PinnedBytes = be.graph.dev.held, be.graph.host.held
	return s
}

// GraphsEnabled reports whether Graphed records graphs (Options.Graphs or
// XFORM_CUDA_GRAPHS=1, and neither the profile nor the sync check on).
func (be *Backend) GraphsEnabled() bool { return be.graph.enabled }

func (be *Backend) initGraphs(want bool) {
	want = envSwitch(want, os.Getenv("XFORM_CUDA_GRAPHS"))
	// Both synchronise after every operation, which a capture forbids.
	be.graph.enabled = want && be.profile == nil && !be.syncCheck
	be.graph.seen = map[string]int{}
	be.graph.graphs = map[string]*stepGraph{}
	be.graph.patch = newParams()
}

// graphSetup binds the API and creates the capture stream and the event (caller holds
// the Backend). An error turns graphs off for good.
func (be *Backend) graphSetup() error {
	g := &be.graph
	if g.api != nil || g.apiErr != nil {
		return g.apiErr
	}
	api, err := bindGraphAPI(be.drv.handle)
	if err == nil {
		// Blocking (flags 0): the legacy default stream, which eager work uses, waits
		// for it and it for the legacy stream, so eager and graphed work stay in order.
		err = be.drv.check("cuStreamCreate", call(api.streamCreate, uintptr(unsafe.Pointer(&g.stream)), 0))
	}
	if err == nil {
		g.done, err = be.drv.newEvent()
	}
	if err != nil {
		g.apiErr = fmt.Errorf("cuda: graphs unavailable: %w", err)
		return g.apiErr
	}
	g.api = api
	return nil
}

// Graphed implements kernels.StepGrapher. The first step of a key runs eagerly (it
// also warms the cuBLASLt plans and kernel lookups); the second is captured; later
// ones replay.
func (be *Backend) Graphed(key string, f func() error) error {
	unlock := be.enter()
	g := &be.graph
	if !g.enabled || g.mode != graphOff {
		unlock()
		return f()
	}
	if err := be.graphSetup(); err != nil {
		if !g.warned {
			g.warned = true
			fmt.Fprintf(os.Stderr, "%v; running eagerly\n", err)
		}
		g.enabled = false
		unlock()
		return f()
	}
	g.seen[key]++
	sg := g.graphs[key]
	if sg == nil && g.seen[key] < 2 {
		g.stats.Eager++
		unlock()
		return f()
	}
	if sg == nil {
		// A capture writes its uploads into the pinned memory as it records them, and its
		// read-backs get addresses there that earlier graphs' read-backs used: the previous
		// launch must be done and its reads copied out first. Captures are once per key.
		be.settleLaunch()
	}
	// Neither reset touches memory, so a replay makes them with the previous launch
	// still running. The device arena's addresses are used by this step's launch alone,
	// queued on g.stream behind the previous launch (and behind eager work queued since,
	// see launchGraph); the dry run queues nothing. The pinned arena is written only by
	// captures (after the wait above) and by flushUploads (after the replay's wait).
	g.dev.reset()
	g.host.reset()
	g.pos = 0
	// Left over only by a step that failed between its dry run and its launch (a fault
	// reported by the wait): its reads must not be taken for this step's.
	g.reads.discard()
	if sg == nil {
		return be.capture(key, f, unlock)
	}
	return be.replay(sg, f, unlock)
}

// settleLaunch waits for the latest graph launch and copies its read-backs out of the
// pinned memory, which whatever comes next may overwrite; it returns the time waited.
// The caller holds the Backend.
func (be *Backend) settleLaunch() time.Duration {
	g := &be.graph
	t0 := time.Now()
	must(be.drv.eventSync(g.done))
	waited := time.Since(t0)
	g.reads.harvest(g.launches)
	return waited
}

// capture records f's work into a new graph, instantiates it and launches it (a
// capture runs nothing by itself). Called holding the Backend (unlock releases it).
func (be *Backend) capture(key string, f func() error, unlock func()) error {
	g := &be.graph
	api := g.api
	must(be.drv.check("cuStreamBeginCapture", call(api.beginCapture, g.stream, captureModeRelaxed)))
	be.blasStreams(g.stream)
	g.mode, g.cur = graphCapture, &stepGraph{key: key}
	unlock()
	ferr, fpanic := callCatching(f)
	defer be.enter()()
	// End the capture whatever happened, so the stream works again.
	var graph uintptr
	endErr := be.drv.check("cuStreamEndCapture", call(api.endCapture, g.stream, uintptr(unsafe.Pointer(&graph))))
	sg := g.cur
	be.blasStreams(0)
	g.mode, g.cur = graphOff, nil
	if fpanic != nil || endErr != nil || ferr != nil {
		g.reads.discard()
		if graph != 0 {
			call(api.graphDestroy, graph)
		}
		if fpanic != nil {
			panic(fpanic)
		}
		if ferr != nil {
			return ferr
		}
		return endErr
	}
	sg.graph = graph
	if e := be.drv.check("cuGraphInstantiateWithFlags", call(api.instantiate, uintptr(unsafe.Pointer(&sg.exec)), graph, 0)); e != nil {
		g.reads.discard()
		call(api.graphDestroy, graph)
		panic(e)
	}
	g.graphs[key] = sg
	g.stats.Captures++
	be.launchGraph(sg)
	return nil
}

// callCatching calls f and returns its error, or the value it panicked with.
func callCatching(f func() error) (err error, panicked any) {
	defer func() {
		if r := recover(); r != nil {
			panicked = r
		}
	}()
	return f(), nil
}

// replay runs f dry against sg's recording, updates the kernel nodes whose arguments
// changed, waits for the previous launch, writes the staged uploads and launches the
// graph. On a divergence the graph is dropped and f runs again eagerly (nothing of the
// dry run reached the GPU or the pinned memory; its staged uploads and reads are
// dropped).
func (be *Backend) replay(sg *stepGraph, f func() error, unlock func()) error {
	g := &be.graph
	start := time.Now()
	g.mode, g.cur = graphReplay, sg
	unlock()
	ferr, fpanic := callCatching(f)
	if fpanic != nil {
		d, ok := fpanic.(*divergence)
		if !ok {
			relock := be.enter()
			g.mode, g.cur = graphOff, nil
			g.reads.discard()
			relock()
			panic(fpanic)
		}
		ferr = d
	}
	relock := be.enter()
	g.mode, g.cur = graphOff, nil
	if ferr != nil || g.pos != len(sg.ops) {
		g.reads.discard()
	}
	var d *divergence
	if errors.As(ferr, &d) || ferr == nil && g.pos != len(sg.ops) {
		if d == nil {
			d = &divergence{key: sg.key, at: g.pos, what: fmt.Sprintf("the step queued %d operations, the capture %d", g.pos, len(sg.ops))}
		}
		g.stats.Divergences++
		be.dropGraph(sg)
		if !g.warned {
			g.warned = true
			fmt.Fprintf(os.Stderr, "%v; running it eagerly and capturing again\n", d)
		}
		relock()
		return f()
	}
	if ferr != nil {
		relock()
		return ferr
	}
	defer relock()
	for i := range sg.ops {
		op := &sg.ops[i]
		if op.kind != opKernel || !op.changed {
			continue
		}
		op.changed = false
		p := g.patch.reset()
		for j := 0; j < op.n; j++ {
			p.u64(op.vals[j])
		}
		kp := kernelNodeParams{fn: op.fn, gx: op.grid[0], gy: op.grid[1], gz: op.grid[2],
			bx: op.block[0], by: op.block[1], bz: op.block[2], shared: op.shared,
			params: uintptr(unsafe.Pointer(&p.ptrs[0]))}
		// Before the wait: an update affects later launches only, not one of this graph
		// still running (cuGraphExecKernelNodeSetParams).
		must(be.drv.check("cuGraphExecKernelNodeSetParams", call(g.api.nodeSetParam, sg.exec, op.node, uintptr(unsafe.Pointer(&kp)))))
		g.stats.NodeUpdates++
	}
	wait := be.settleLaunch()
	sg.flushUploads()
	g.stats.Replays++
	be.launchGraph(sg)
	g.stats.ReplayWait += wait
	g.stats.ReplayHost += time.Since(start) - wait
	return nil
}

// launchGraph launches sg on the capture stream and marks its end with g.done; the
// step's read-backs now wait for it.
//
// The eager work around it stays in order on the device although the host does not
// wait: g.stream is a blocking stream (graphSetup), so work on the legacy stream 0 queued
// after this launch (the optimizer's AdamStepClipped and its norm read, the next
// ZeroGrad) waits for the graph, and the next launch waits for that work: each update's
// optimizer runs after its graph and before the next graph reads the weights, and a
// pool block freed after the step is reused only behind it.
func (be *Backend) launchGraph(sg *stepGraph) {
	g := &be.graph
	must(be.drv.check("cuGraphLaunch", call(g.api.launch, sg.exec, g.stream)))
	must(be.drv.check("cuEventRecord", call(be.drv.cuEventRecord, g.done, g.stream)))
	g.launches++
	g.reads.launched(g.launches)
}

// dropGraph destroys sg after the latest launch (which may be sg's) is done.
func (be *Backend) dropGraph(sg *stepGraph) {
	g := &be.graph
	be.settleLaunch()
	call(g.api.execDestroy, sg.exec)
	call(g.api.graphDestroy, sg.graph)
	delete(g.graphs, sg.key)
	g.seen[sg.key] = 1
}

// closeGraphs frees the graphs, arenas, stream and event (Close; caller holds the
// Backend after synchronising).
func (be *Backend) closeGraphs() {
	g := &be.graph
	if g.api == nil {
		return
	}
	for _, sg := range g.graphs {
		call(g.api.execDestroy, sg.exec)
		call(g.api.graphDestroy, sg.graph)
	}
	g.graphs = map[string]*stepGraph{}
	// Close synchronised: the read-backs of the last launch are in the pinned memory
	// about to be freed.
	g.reads.harvest(g.launches)
	g.reads.discard()
	for _, c := range g.dev.chunks {
		_ = be.drv.memFree(c.ptr)
	}
	for _, c := range g.host.chunks {
		call(g.api.hostFree, uintptr(c.host))
	}
	g.dev, g.host = arena{}, arena{}
	be.drv.destroyEvent(g.done)
	call(g.api.streamDestroy, g.stream)
	g.api = nil
}

// divergence is a replayed step asking for something its capture did not do.
type divergence struct {
	key  string
	at   int
	what string
}

func (d *divergence) Error() string {
	return fmt.Sprintf("cuda: graph %q: operation %d differs from its capture: %s", d.key, d.at, d.what)
}

// next returns the recorded operation a replay is at, which must be of kind k.
func (be *Backend) next(k opKind) *graphOp {
	g := &be.graph
	if g.pos >= len(g.cur.ops) {
		panic(&divergence{key: g.cur.key, at: g.pos, what: fmt.Sprintf("a %v past the %d recorded operations", k, len(g.cur.ops))})
	}
	op := &g.cur.ops[g.pos]
	if op.kind != k {
		panic(&divergence{key: g.cur.key, at: g.pos, what: fmt.Sprintf("a %v where the capture has a %v", k, op.kind)})
	}
	g.pos++
	return op
}

// lastNode is the node the capture just added (the stream's one dependency).
func (be *Backend) lastNode() uintptr {
	g := &be.graph
	var status uint32
	var id uint64
	var graph uintptr
	var deps *uintptr
	var n uintptr
	var r int32
	if g.api.captureInfoV3 {
		var edges uintptr
		r = call(g.api.captureInfo, g.stream, uintptr(unsafe.Pointer(&status)), uintptr(unsafe.Pointer(&id)),
			uintptr(unsafe.Pointer(&graph)), uintptr(unsafe.Pointer(&deps)), uintptr(unsafe.Pointer(&edges)), uintptr(unsafe.Pointer(&n)))
	} else {
		r = call(g.api.captureInfo, g.stream, uintptr(unsafe.Pointer(&status)), uintptr(unsafe.Pointer(&id)),
			uintptr(unsafe.Pointer(&graph)), uintptr(unsafe.Pointer(&deps)), uintptr(unsafe.Pointer(&n)))
	}
	must(be.drv.check("cuStreamGetCaptureInfo", r))
	if n != 1 || deps == nil {
		panic(fmt.Errorf("cuda: capture has %d tail nodes after a launch (want 1)", n))
	}
	return *deps
}

// launchKernel launches fn with be.prm, records it, or checks it against the
// recording, as the graph mode says.
func (be *Backend) launchKernel(fn uintptr, grid, block [3]uint32, shared uint32) {
	g := &be.graph
	switch g.mode {
	case graphOff:
		if pr := be.profile; pr != nil && pr.gpu {
			pr.opBegin(be.kernelName(fn))
			defer pr.opEnd()
		}
		if be.pdl != nil && be.pdlFns[fn] {
			must(be.drv.launchPDL(be.pdl, fn, grid, block, shared, be.prm, 0))
			be.pdlLaunches++
		} else {
			must(be.drv.launch(fn, grid, block, shared, be.prm, 0))
		}
		if be.syncCheck {
			must(be.drv.synchronize())
		}
	case graphCapture:
		must(be.drv.launch(fn, grid, block, shared, be.prm, g.stream))
		op := graphOp{kind: opKernel, node: be.lastNode(), fn: fn, grid: grid, block: block, shared: shared, n: be.prm.n}
		copy(op.vals[:], be.prm.vals[:be.prm.n])
		g.cur.ops = append(g.cur.ops, op)
	case graphReplay:
		op := be.next(opKernel)
		if op.fn != fn || op.n != be.prm.n {
			panic(&divergence{key: g.cur.key, at: g.pos - 1, what: "another kernel"})
		}
		if op.grid != grid || op.block != block || op.shared != shared || op.vals != be.prm.vals && !sameVals(op.vals[:op.n], be.prm.vals[:op.n]) {
			op.grid, op.block, op.shared = grid, block, shared
			copy(op.vals[:], be.prm.vals[:op.n])
			op.changed = true
		}
	}
}

func sameVals(a, b []uint64) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// recorded runs do (an operation other than a kernel launch) eagerly or while
// capturing, and records its signature; a replay checks the signature instead.
func (be *Backend) recorded(k opKind, sig []uint64, do func(stream uintptr) error) {
	g := &be.graph
	switch g.mode {
	case graphOff:
		must(do(0))
	case graphCapture:
		must(do(g.stream))
		op := graphOp{kind: k}
		copy(op.sig[:], sig)
		g.cur.ops = append(g.cur.ops, op)
	case graphReplay:
		op := be.next(k)
		var s [16]uint64
		copy(s[:], sig)
		if s != op.sig {
			panic(&divergence{key: g.cur.key, at: g.pos - 1, what: fmt.Sprintf("a %v with other arguments %v (capture %v)", k, sig, op.sig[:len(sig)])})
		}
	}
}

// memset32 sets n 32-bit words at p to v, in stream order.
func (be *Backend) memset32(p uint64, v uint32, n uint64) {
	if pr := be.profile; pr != nil && pr.gpu {
		pr.opBegin("memset")
		defer pr.opEnd()
	}
	if be.graph.mode == graphOff {
		must(be.drv.memsetD32(p, v, n))
		return
	}
	be.recorded(opMemset, []uint64{p, uint64(v), n}, func(s uintptr) error {
		return be.drv.check("cuMemsetD32Async", call(be.graph.api.memsetAsync, uintptr(p), uintptr(v), uintptr(n), s))
	})
}

// copyDtoD copies bytes between device buffers in stream order.
func (be *Backend) copyDtoD(dst, src, bytes uint64) {
	if be.graph.mode == graphOff {
		must(be.drv.dtod(dst, src, bytes))
		return
	}
	be.recorded(opCopy, []uint64{dst, src, bytes}, func(s uintptr) error {
		return be.drv.check("cuMemcpyDtoDAsync", call(be.graph.api.dtodAsync, uintptr(dst), uintptr(src), uintptr(bytes), s))
	})
}

// blasCall runs a cuBLAS or cuBLASLt call (do gets the stream: cuBLASLt takes it as an
// argument, the cuBLAS handles are pointed at it by blasStreams) as recorded does; sig
// is what must repeat on a replay, name what the GPU profile calls it.
func (be *Backend) blasCall(name string, sig []uint64, do func(stream uintptr) error) {
	if pr := be.profile; pr != nil && pr.gpu {
		pr.opBegin(name)
		defer pr.opEnd()
	}
	be.recorded(opBlas, sig, do)
}

// upload copies bytes of host memory at src to the device at dst in stream order. In
// a graphed step the copy reads pinned memory reserved for it, capacity bytes long
// (at least bytes), so that later steps of the key may upload up to that much.
func (be *Backend) upload(dst uint64, src unsafe.Pointer, bytes, capacity int) {
	g := &be.graph
	switch g.mode {
	case graphOff:
		must(be.drv.htodQueued(dst, src, uint64(bytes)))
	case graphCapture:
		capacity = max(capacity, bytes)
		host := be.pinned(capacity)
		copy(unsafe.Slice((*byte)(host), bytes), unsafe.Slice((*byte)(src), bytes))
		must(be.drv.check("cuMemcpyHtoDAsync", call(be.drv.cuMemcpyHtoDAsync, uintptr(dst), uintptr(host), uintptr(capacity), g.stream)))
		op := graphOp{kind: opUpload, host: host, cap: capacity}
		op.sig[0] = dst
		g.cur.ops = append(g.cur.ops, op)
	case graphReplay:
		op := be.next(opUpload)
		if op.sig[0] != dst || bytes > op.cap {
			panic(&divergence{key: g.cur.key, at: g.pos - 1, what: fmt.Sprintf("an upload of %d bytes to %#x (capture: at most %d to %#x)", bytes, dst, op.cap, op.sig[0])})
		}
		// The previous launch may still read op.host (the pinned area is shared).
		op.stageUpload(src, bytes)
	}
}

// readLater returns a function that waits for the work queued so far to write the first
// bytes of b and returns them. Eagerly the function reads b when called (the host
// queues more work meanwhile); in a graphed step a copy into pinned memory is part of
// the graph, and its bytes are copied out after the launch, by the function or before
// the next launch, whichever comes first.
func (be *Backend) readLater(b *buffer, bytes int) func() []byte {
	g := &be.graph
	src := b.dptr()
	switch g.mode {
	case graphCapture:
		host := be.pinned(bytes)
		must(be.drv.check("cuMemcpyDtoHAsync", call(g.api.dtohAsync, uintptr(host), uintptr(src), uintptr(bytes), g.stream)))
		op := graphOp{kind: opRead, host: host, cap: bytes}
		op.sig[0] = src
		g.cur.ops = append(g.cur.ops, op)
		return be.graphReader(g.reads.add(host, bytes))
	case graphReplay:
		op := be.next(opRead)
		if op.sig[0] != src || op.cap != bytes {
			panic(&divergence{key: g.cur.key, at: g.pos - 1, what: "a read-back of another buffer"})
		}
		return be.graphReader(g.reads.add(op.host, bytes))
	}
	if read, ok := be.readAsync(b, bytes); ok {
		return read
	}
	return func() []byte {
		defer be.enter()()
		out := make([]byte, bytes)
		must(be.drv.dtoh(unsafe.Pointer(&out[0]), b.dptr(), uint64(bytes)))
		return out
	}
}

// graphReader returns rd's bytes: harvested already if a launch came after rd's, else
// rd is pending and its launch is the latest (every launch harvests first), so waiting
// for g.done waits for rd's launch alone.
func (be *Backend) graphReader(rd *graphRead) func() []byte {
	return func() []byte {
		defer be.enter()()
		if !rd.done {
			if rd.seq == 0 {
				panic("cuda: read-back of a graphed step that was not launched (it failed or diverged)")
			}
			be.settleLaunch()
		}
		return rd.data
	}
}

// notGraphed panics when a host read or synchronisation is attempted inside a graphed
// step (a capture cannot contain one, and a replay would read stale data).
func (be *Backend) notGraphed(op string) {
	if be.graph.mode != graphOff {
		panic(&GraphError{Op: op})
	}
}

// GraphError is an operation a graphed step cannot contain.
type GraphError struct{ Op string }

func (e *GraphError) Error() string {
	return fmt.Sprintf("cuda: %s inside a graphed step (kernels.StepGrapher: results come back through deferred reads)", e.Op)
}

// arenaAlloc is the allocation of a graphed step: the next bytes of the device arena.
func (be *Backend) arenaAlloc(bytes uint64) *allocation {
	g := &be.graph
	i, off, err := g.dev.take(bytes, func(n uint64) (arenaChunk, error) {
		n = max(n, arenaChunkBytes)
		p, err := be.drv.memAlloc(n)
		if err != nil {
			if errors.Is(err, ErrOutOfMemory) {
				free, total, _ := be.drv.memInfo()
				return arenaChunk{}, &OOMError{Bytes: n, Free: free, Total: total, Err: err}
			}
			return arenaChunk{}, err
		}
		return arenaChunk{ptr: p, bytes: n}, nil
	})
	if err != nil {
		panic(err)
	}
	return &allocation{ptr: g.dev.chunks[i].ptr + off, bytes: bytes, arena: true}
}

// pinned returns bytes of the pinned host arena.
func (be *Backend) pinned(bytes int) unsafe.Pointer {
	g := &be.graph
	i, off, err := g.host.take(uint64(bytes), func(n uint64) (arenaChunk, error) {
		n = max(n, hostChunkBytes)
		var p unsafe.Pointer
		if err := be.drv.check("cuMemHostAlloc", call(g.api.hostAlloc, uintptr(unsafe.Pointer(&p)), uintptr(n), 0)); err != nil {
			return arenaChunk{}, err
		}
		return arenaChunk{host: p, bytes: n}, nil
	})
	if err != nil {
		panic(err)
	}
	return unsafe.Add(g.host.chunks[i].host, off)
}

// blasStreams points both cuBLAS handles at stream s (the capture stream, or 0) and
// gives them their own workspace again, which cublasSetStream resets.
func (be *Backend) blasStreams(s uintptr) {
	b := be.libs.blas
	for _, h := range []uintptr{be.blasH, be.blasFast} {
		if h == 0 {
			continue
		}
		must(b.check("cublasSetStream", call(b.setStream, h, s)))
		if b.setWorkspace != 0 && s != 0 {
			must(b.check("cublasSetWorkspace", call(b.setWorkspace, h, uintptr(be.blasWorkspace()), uintptr(blasWorkspaceBytes))))
		}
	}
}

// blasWorkspaceBytes is the workspace given to each cuBLAS handle while capturing
// (cuBLAS asks for 4 MiB on Hopper; more does not hurt).
const blasWorkspaceBytes = 32 << 20

func (be *Backend) blasWorkspace() uint64 {
	if be.blasWS == 0 {
		p, err := be.drv.memAlloc(blasWorkspaceBytes)
		must(err)
		be.blasWS = p
	}
	return be.blasWS
}
