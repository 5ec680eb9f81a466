package cuda

import (
	"errors"
	"math/bits"
	"runtime"
	"slices"
	"sync"
	"time"
	"unsafe"
)

// The kernels.Backend interface has no Free: buffers die with their last Go
// reference, as CPU slices do. Each allocation therefore carries a cleanup that hands
// its block back to a cache of free blocks, and Alloc reuses cached blocks of the same
// size class. That reuse is safe without synchronisation because every operation of a
// Backend is issued on the one default stream: whatever the GPU still has queued on an
// old block runs before anything enqueued after its reuse (the property PyTorch's
// caching allocator relies on too).

// allocation is the root of one cuMemAlloc block; slices point at it so it lives as
// long as any view of it.
type allocation struct {
	ptr     uint64
	bytes   uint64
	cleanup runtime.Cleanup
	arena   bool // part of the graph arena (graphs.go), not a pool block
}

// buffer is the kernels.Buffer of this backend: n float32 elements from element off of
// an allocation.
type buffer struct {
	a   *allocation
	off int
	n   int
}

func (b *buffer) Len() int { return b.n }

// dptr is the device address of the buffer's first element.
func (b *buffer) dptr() uint64 { return b.a.ptr + uint64(b.off)*4 }

// pool caches freed blocks by size class. Cleanups run on the runtime's cleanup
// goroutine and only touch the cache under its own lock; CUDA calls happen on the
// Backend's locked thread.
type pool struct {
	mu   sync.Mutex
	free map[uint64][]uint64 // size class → device pointers
	// classes are the size classes whose lists in free are not empty, sorted: take
	// searches them for a larger block instead of scanning free, which keeps an
	// entry for every class ever freed (fairseq's batching makes new sizes every
	// update, so that scan grew with the run).
	classes []uint64
	cached  uint64 // bytes held in free
	live    uint64 // bytes handed out
	limit   uint64 // most bytes kept cached before blocks go back to the driver
	// peakLive and peakHeld are the most bytes ever handed out, and handed out plus
	// cached, since New or the last ResetPeakMemory (for xform bench).
	peakLive, peakHeld uint64
	// allocs and allocBytes count the blocks the driver was asked for (cuMemAlloc,
	// which synchronises the device: a miss of the cache), for HostStats.
	allocs     int
	allocBytes uint64
}

// grow records class more bytes handed out (the caller holds p.mu).
func (p *pool) grow(class uint64) {
	p.live += class
	p.peakLive = max(p.peakLive, p.live)
	p.peakHeld = max(p.peakHeld, p.live+p.cached)
}

// sizeClass rounds a request up so that nearby sizes share cached blocks: 512-byte
// steps up to 1 MiB, then eight steps per power of two (at most 12.5 % waste).
func sizeClass(n uint64) uint64 {
	if n == 0 {
		n = 1
	}
	if n <= 1<<20 {
		return (n + 511) &^ 511
	}
	step := uint64(1) << (bits.Len64(n-1) - 4)
	return (n + step - 1) / step * step
}

// take returns a cached block for a request of size class class and the block's own
// class: one of that class, else the smallest cached one up to 1.5 times larger.
// Training batches change shape from step to step, so exact classes alone missed often
// and every miss meant cuMemAlloc (and cuMemFree when the cache was full), which
// synchronise the device.
func (p *pool) take(class uint64) (uint64, uint64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	got := class
	if len(p.free[class]) == 0 {
		i, _ := slices.BinarySearch(p.classes, class+1)
		if i == len(p.classes) || 2*p.classes[i] > 3*class {
			return 0, 0, false
		}
		got = p.classes[i]
	}
	l := p.free[got]
	ptr := l[len(l)-1]
	p.free[got] = l[:len(l)-1]
	if len(l) == 1 {
		p.dropClass(got)
	}
	p.cached -= got
	p.grow(got)
	return ptr, got, true
}

func (p *pool) put(ptr, class uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free[class]) == 0 {
		i, _ := slices.BinarySearch(p.classes, class)
		p.classes = slices.Insert(p.classes, i, class)
	}
	p.free[class] = append(p.free[class], ptr)
	p.cached += class
	p.live -= class
}

// dropClass removes class from classes (its list has become empty; p.mu held).
func (p *pool) dropClass(class uint64) {
	if i, ok := slices.BinarySearch(p.classes, class); ok {
		p.classes = slices.Delete(p.classes, i, i+1)
	}
}

// drain removes cached blocks until at most keep bytes stay cached and returns them
// for cuMemFree.
func (p *pool) drain(keep uint64) []uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []uint64
	for class, l := range p.free {
		had := len(l) > 0
		for len(l) > 0 && p.cached > keep {
			out = append(out, l[len(l)-1])
			l = l[:len(l)-1]
			p.cached -= class
		}
		p.free[class] = l
		if had && len(l) == 0 {
			p.dropClass(class)
		}
		if p.cached <= keep {
			break
		}
	}
	return out
}

// alloc returns a block of at least bytes (the caller holds the Backend's lock and
// thread). On out-of-memory it frees the cache, lets the collector return dead
// buffers, and tries once more before reporting the size asked and the memory free.
func (be *Backend) alloc(bytes uint64) (*allocation, error) {
	if be.graph.mode != graphOff {
		return be.arenaAlloc(bytes), nil
	}
	class := sizeClass(bytes)
	if ptr, got, ok := be.pool.take(class); ok {
		return be.track(ptr, got), nil
	}
	be.freeBlocks(be.pool.drain(be.pool.limit))
	ptr, err := be.drv.memAlloc(class)
	if errors.Is(err, ErrOutOfMemory) {
		be.freeBlocks(be.pool.drain(0))
		runtime.GC()
		// Cleanups run on their own goroutine after the collection; give them a moment.
		for i := 0; i < 20; i++ {
			runtime.Gosched()
			time.Sleep(time.Millisecond)
		}
		be.freeBlocks(be.pool.drain(0))
		ptr, err = be.drv.memAlloc(class)
	}
	if err != nil {
		if errors.Is(err, ErrOutOfMemory) {
			free, total, _ := be.drv.memInfo()
			return nil, &OOMError{Bytes: bytes, Free: free, Total: total, Err: err}
		}
		return nil, err
	}
	be.pool.mu.Lock()
	be.pool.grow(class)
	be.pool.allocs++
	be.pool.allocBytes += class
	be.pool.mu.Unlock()
	return be.track(ptr, class), nil
}

// track wraps a block in an allocation whose cleanup returns it to the pool.
func (be *Backend) track(ptr, class uint64) *allocation {
	a := &allocation{ptr: ptr, bytes: class}
	p := be.pool
	a.cleanup = runtime.AddCleanup(a, func(b [2]uint64) { p.put(b[0], b[1]) }, [2]uint64{ptr, class})
	return a
}

// BeginScope implements kernels.Scoper.
func (be *Backend) BeginScope() {
	defer be.enter()()
	be.scopes = append(be.scopes, nil)
}

// EndScope implements kernels.Scoper: the scope's blocks go back to the cache now
// rather than when the collector finds them. Reuse needs no synchronisation for the
// reason the cache's does (one stream). The pointer is cleared so that a buffer used
// after its scope faults on the device instead of reading someone else's data.
func (be *Backend) EndScope() {
	defer be.enter()()
	if len(be.scopes) == 0 {
		panic("cuda backend: EndScope without BeginScope")
	}
	if len(be.dwDefer.jobs) > 0 {
		// A step that returned without its flush (an error): the queued products'
		// operands are about to be freed, so run them now.
		be.flushDW()
	}
	top := be.scopes[len(be.scopes)-1]
	be.scopes = be.scopes[:len(be.scopes)-1]
	for _, a := range top {
		if a.ptr == 0 {
			continue
		}
		if a.arena {
			a.ptr = 0
			continue
		}
		a.cleanup.Stop()
		be.pool.put(a.ptr, a.bytes)
		a.ptr = 0
	}
}

// scoped records a buffer made by Alloc or Upload in the innermost scope.
func (be *Backend) scoped(b *buffer) *buffer {
	be.scopeAlloc(b.a)
	return b
}

// scopeAlloc records an allocation (a float32 or 16-bit buffer's) in the innermost
// scope, if one is open.
func (be *Backend) scopeAlloc(a *allocation) {
	if n := len(be.scopes); n > 0 {
		be.scopes[n-1] = append(be.scopes[n-1], a)
	}
}

func (be *Backend) freeBlocks(ptrs []uint64) {
	for _, p := range ptrs {
		_ = be.drv.memFree(p)
	}
}

func (d *driver) memAlloc(bytes uint64) (uint64, error) {
	var p uint64
	err := d.check("cuMemAlloc_v2", call(d.cuMemAlloc, uintptr(unsafe.Pointer(&p)), uintptr(bytes)))
	return p, err
}

func (d *driver) memFree(p uint64) error {
	return d.check("cuMemFree_v2", call(d.cuMemFree, uintptr(p)))
}

func (d *driver) memsetD32(p uint64, v uint32, n uint64) error {
	return d.check("cuMemsetD32_v2", call(d.cuMemsetD32, uintptr(p), uintptr(v), uintptr(n)))
}

// htodQueued copies pageable host memory to the device in stream order without
// waiting for the stream: the driver copies the source into its own staging memory
// before returning (CUDA's documented behaviour for asynchronous copies from pageable
// memory), so the caller may reuse it at once. The synchronous cuMemcpyHtoD would first
// wait for every queued kernel, stalling the host at each upload of ids or masks.
func (d *driver) htodQueued(dst uint64, src unsafe.Pointer, bytes uint64) error {
	return d.check("cuMemcpyHtoDAsync_v2", call(d.cuMemcpyHtoDAsync, uintptr(dst), uintptr(src), uintptr(bytes), 0))
}

func (d *driver) dtoh(dst unsafe.Pointer, src uint64, bytes uint64) error {
	defer d.wait(time.Now())
	return d.check("cuMemcpyDtoH_v2", call(d.cuMemcpyDtoH, uintptr(dst), uintptr(src), uintptr(bytes)))
}

func (d *driver) dtod(dst, src uint64, bytes uint64) error {
	return d.check("cuMemcpyDtoD_v2", call(d.cuMemcpyDtoD, uintptr(dst), uintptr(src), uintptr(bytes)))
}
