package cuda

import (
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"
	"time"
)

// opProfile attributes time to Backend methods, off by default (costs nothing then).
//
// XFORM_CUDA_PROFILE=1 synchronises the device when each method returns and charges
// the wall time. That removes the overlap of host and device, so the total is larger
// than an unprofiled run, and each short method carries a synchronisation's latency.
//
// XFORM_CUDA_PROFILE=gpu records an event before and after each kernel launch, cuBLAS
// call and memset instead, without synchronising, and charges the device time between
// them to the kernel's name (GEMMs: their shape): what each costs the GPU when the queue
// is full (when the GPU waits for the host, the wait is charged to the operation it
// waited for).
type opProfile struct {
	names map[uintptr]string
	stats map[string]*opStat
	start time.Time
	name  string
	// Event mode.
	drv     *driver
	gpu     bool
	free    []uintptr
	pending []pendingOp
	began   uintptr
	// reset: ResetProfile dropped what came before (the bench's warm-up).
	reset bool
}

type pendingOp struct {
	name       string
	start, end uintptr
}

type opStat struct {
	calls int
	total time.Duration
}

func newOpProfile() *opProfile {
	return &opProfile{names: map[uintptr]string{}, stats: map[string]*opStat{}}
}

// event returns an event from the pool (a new one when it is empty).
func (p *opProfile) event() uintptr {
	if n := len(p.free); n > 0 {
		e := p.free[n-1]
		p.free = p.free[:n-1]
		return e
	}
	e, err := p.drv.newEvent()
	must(err)
	return e
}

// opBegin records an operation's start event on the legacy stream.
func (p *opProfile) opBegin(name string) {
	p.name = name
	p.began = p.event()
	must(p.drv.record(p.began))
}

// opEnd records the end event; every 1024 operations the device is synchronised and the
// elapsed times are charged (not per operation: that would be XFORM_CUDA_PROFILE=1).
func (p *opProfile) opEnd() {
	e := p.event()
	must(p.drv.record(e))
	p.pending = append(p.pending, pendingOp{name: p.name, start: p.began, end: e})
	if len(p.pending) >= 1024 {
		p.flush()
	}
}

// flush charges the pending methods' device times (waits for the last of them).
func (p *opProfile) flush() {
	for _, o := range p.pending {
		ms, err := p.drv.elapsed(o.start, o.end)
		must(err)
		s := p.stats[o.name]
		if s == nil {
			s = &opStat{}
			p.stats[o.name] = s
		}
		s.calls++
		s.total += time.Duration(float64(ms) * 1e6)
		p.free = append(p.free, o.start, o.end)
	}
	p.pending = p.pending[:0]
}

// begin records the calling Backend method (skip frames above enter) and the time.
func (p *opProfile) begin(skip int) {
	pc, _, _, ok := runtime.Caller(skip)
	name := "?"
	if ok {
		if n, seen := p.names[pc]; seen {
			name = n
		} else {
			if f := runtime.FuncForPC(pc); f != nil {
				name = f.Name()
				if i := strings.LastIndex(name, "."); i >= 0 {
					name = name[i+1:]
				}
			}
			p.names[pc] = name
		}
	}
	p.name = name
	p.start = time.Now()
}

// end is called with the device synchronised.
func (p *opProfile) end() {
	s := p.stats[p.name]
	if s == nil {
		s = &opStat{}
		p.stats[p.name] = s
	}
	s.calls++
	s.total += time.Since(p.start)
}

// write prints one line per method, largest total first.
func (p *opProfile) write(w io.Writer) {
	type row struct {
		name string
		s    *opStat
	}
	var rows []row
	var total time.Duration
	for n, s := range p.stats {
		rows = append(rows, row{n, s})
		total += s.total
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].s.total > rows[j].s.total })
	how := "synchronised after every call"
	if p.gpu {
		how = "device time between events around every call"
	}
	if p.reset {
		how += ", from the timed updates on"
	}
	fmt.Fprintf(w, "cuda profile (%s): %.3f s in %d kinds\n", how, total.Seconds(), len(rows))
	for _, r := range rows {
		fmt.Fprintf(w, "  %-28s %8d calls %10.3f ms %6.1f%% %9.1f µs/call\n", r.name, r.s.calls,
			r.s.total.Seconds()*1e3, 100*r.s.total.Seconds()/total.Seconds(), r.s.total.Seconds()*1e6/float64(r.s.calls))
	}
}

// ResetProfile drops what XFORM_CUDA_PROFILE has counted so far (nothing without it):
// xform bench calls it when its timed updates start, so that the warm-up's first-use
// costs (plans, captures, cuBLAS loading a kernel at its first launch) stay out of the
// averages. With the event profile it waits for the device.
func (be *Backend) ResetProfile() {
	defer be.enter()()
	p := be.profile
	if p == nil {
		return
	}
	if p.gpu {
		p.flush()
	}
	p.stats = map[string]*opStat{}
	p.reset = true
}

// kernelName names a kernel for the profile (the caller holds the Backend).
func (be *Backend) kernelName(fn uintptr) string {
	if be.kernelNames == nil {
		be.kernelNames = map[uintptr]string{}
		for name, p := range be.fn.table() {
			be.kernelNames[*p] = name
		}
	}
	if n, ok := be.kernelNames[fn]; ok {
		return n
	}
	return fmt.Sprintf("kernel %#x", fn)
}
