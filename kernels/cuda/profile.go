package cuda

import (
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"
	"time"
)

// opProfile attributes wall time to Backend methods by synchronising the device when
// each method returns (XFORM_CUDA_PROFILE=1). Synchronising removes the overlap of host
// and device, so the total is larger than an unprofiled run; what it shows is where the
// device (or, for cheap ops, the host) spends each step, which is what decides the next
// kernel to fuse. It is off by default and costs nothing then.
type opProfile struct {
	names map[uintptr]string
	stats map[string]*opStat
	start time.Time
	name  string
}

type opStat struct {
	calls int
	total time.Duration
}

func newOpProfile() *opProfile {
	return &opProfile{names: map[uintptr]string{}, stats: map[string]*opStat{}}
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
	fmt.Fprintf(w, "cuda profile (synchronised after every call): %.3f s in %d methods\n", total.Seconds(), len(rows))
	for _, r := range rows {
		fmt.Fprintf(w, "  %-28s %8d calls %10.3f ms %6.1f%% %9.1f µs/call\n", r.name, r.s.calls,
			r.s.total.Seconds()*1e3, 100*r.s.total.Seconds()/total.Seconds(), r.s.total.Seconds()*1e6/float64(r.s.calls))
	}
}
