// Package cpu is the pure-Go kernels.Backend: a blocked GEMM (an AVX2+FMA assembly
// kernel on amd64 CPUs that have it, a portable Go one elsewhere) for the matrix
// products and plain loops, split over goroutines where a call has enough work, for
// everything else. Reductions (LayerNorm statistics, softmax sums) accumulate in
// float64 so results stay within a few float32 ulps of the exact value whatever the
// summation order of the reference was.
package cpu

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/xform-dev/xform/kernels"
)

// Backend runs operations on host memory. The zero value is not usable; call New.
type Backend struct {
	workers  int
	linear64 bool       // Linear through the float64 reference loops
	kernel   tileKernel // GEMM tile kernel, defaultKernel unless a test overrides it
}

// Option adjusts a Backend.
type Option func(*Backend)

// WithFloat32Linear selects the float32 GEMM for Linear. It is the default now (the
// GEMM keeps parity by widening its float32 chunk sums to float64), so this option
// only undoes WithFloat64Linear; it remains for --fast-linear.
func WithFloat32Linear() Option { return func(b *Backend) { b.linear64 = false } }

// WithFloat64Linear makes Linear accumulate every dot product in float64 with the
// scalar loops the backend used before it had a vectorised GEMM: the exactly rounded
// result, several times slower. It is kept as a reference to compare against.
func WithFloat64Linear() Option { return func(b *Backend) { b.linear64 = true } }

// withKernel forces a GEMM tile kernel (tests compare the portable one on amd64).
func withKernel(k tileKernel) Option { return func(b *Backend) { b.kernel = k } }

// New returns a CPU backend using up to workers goroutines per operation (≤0 means
// GOMAXPROCS).
func New(workers int, opts ...Option) *Backend {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	b := &Backend{workers: workers, kernel: defaultKernel}
	for _, o := range opts {
		o(b)
	}
	return b
}

var _ kernels.Backend = (*Backend)(nil)

// buf is the CPU buffer: a slice of host memory.
type buf struct{ d []float32 }

func (b *buf) Len() int { return len(b.d) }

// Data returns the host slice behind a buffer made by this package, for callers (tests,
// the model's host-side steps) that want to read it without a copy.
func Data(b kernels.Buffer) []float32 { return f(b) }

// f unwraps a buffer; a nil interface yields nil (optional arguments).
func f(b kernels.Buffer) []float32 {
	if b == nil {
		return nil
	}
	x, ok := b.(*buf)
	if !ok {
		panic(fmt.Sprintf("cpu backend: foreign buffer %T", b))
	}
	if x == nil {
		return nil
	}
	return x.d
}

// Name implements kernels.Backend.
func (*Backend) Name() string { return "cpu" }

// Alloc implements kernels.Backend.
func (*Backend) Alloc(n int) kernels.Buffer { return &buf{make([]float32, n)} }

// Upload implements kernels.Backend.
func (*Backend) Upload(v []float32) kernels.Buffer {
	return &buf{append([]float32(nil), v...)}
}

// Wrap makes a buffer that uses v as its storage (no copy).
func Wrap(v []float32) kernels.Buffer { return &buf{v} }

// Download implements kernels.Backend.
func (*Backend) Download(dst []float32, b kernels.Buffer) {
	s := f(b)
	if len(dst) != len(s) {
		panic(fmt.Sprintf("cpu backend: download of %d elements into %d", len(s), len(dst)))
	}
	copy(dst, s)
}

// Slice implements kernels.Backend.
func (*Backend) Slice(b kernels.Buffer, off, n int) kernels.Buffer {
	return &buf{f(b)[off : off+n : off+n]}
}

// parallel runs fn over [0,n) in contiguous chunks on up to be.workers goroutines when
// the total work (n·cost, in rough flops) is large enough to pay for them.
func (be *Backend) parallel(n, cost int, fn func(lo, hi int)) {
	const minWork = 1 << 15
	w := be.workers
	if w > n {
		w = n
	}
	if w <= 1 || n*cost < minWork {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	chunk := (n + w - 1) / w
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}
