// Package kernels declares the compute backend interface that the Transformer code in
// package model is written against. A backend owns float32 storage (host memory for
// the CPU backend, device memory for an accelerator) and runs whole operations on it;
// the model never touches elements one at a time, so one interface call is made per
// operation, never per element.
//
// Only forward operations exist so far. Backward operations belong beside them (one
// method per op, taking the saved forward inputs and the output gradient) and are
// added by the training code; nothing here keeps state between calls, so a backend
// value may be shared by goroutines that use distinct buffers.
package kernels

import "fmt"

// Buffer is a run of float32 elements owned by a backend. Only the backend that made
// a buffer may read or write it.
type Buffer interface {
	// Len returns the number of float32 elements.
	Len() int
}

// Activation names an elementwise nonlinearity, spelled as fairseq's activation_fn.
type Activation string

// The activations fairseq 0.8 offers (utils.get_activation_fn).
const (
	ReLU         Activation = "relu"
	GELU         Activation = "gelu"          // exact erf form
	GELUAccurate Activation = "gelu_accurate" // tanh approximation (gelu_fast is the same)
	Tanh         Activation = "tanh"
	Linear       Activation = "linear"
)

// ParseActivation maps a fairseq activation_fn string to an Activation.
func ParseActivation(s string) (Activation, error) {
	switch s {
	case "relu":
		return ReLU, nil
	case "gelu":
		return GELU, nil
	case "gelu_accurate", "gelu_fast":
		return GELUAccurate, nil
	case "tanh":
		return Tanh, nil
	case "linear":
		return Linear, nil
	}
	return "", fmt.Errorf("kernels: unknown activation %q", s)
}

// View addresses a batch of row-major matrices inside a buffer: element (b, i, j) of
// the view sits at Off + b*BatchStride + i*RowStride + j. Attention reads heads as
// column ranges of such a view, so a fused q|k|v projection or a preallocated KV cache
// can be used in place without copies.
type View struct {
	Buf         Buffer
	Off         int
	BatchStride int
	RowStride   int
}

// AttentionArgs describes one multi-head scaled dot-product attention call.
//
// Query batch b, head h, row i reads Q at columns [h*HeadDim, (h+1)*HeadDim) of row i;
// it attends over keys 0..TK-1 of key batch KVIndex[b] (b itself when KVIndex is nil).
// Scores are (Scale·q)·k as fairseq computes them (q is scaled after its bias), masked
// with −inf where KeyPadding marks a pad key or where Causal forbids a later key,
// normalised with a float32 softmax and applied to V. The output row gets the heads
// side by side, ready for the output projection.
type AttentionArgs struct {
	Batch, Heads, HeadDim int
	TQ, TK                int
	Scale                 float32

	// KVIndex maps each query batch to the key/value batch it reads (beam search keeps
	// one encoder K/V per sentence and points every beam of it there).
	KVIndex []int32
	// KeyPadding marks pad keys, true = masked; element (kb, j) at kb*KeyPadStride+j
	// where kb is the key/value batch. Nil means no padding.
	KeyPadding   []bool
	KeyPadStride int
	// Causal masks key j for query i when j > i+QueryOffset (QueryOffset is the
	// position of query row 0 among the keys: 0 for a full causal pass).
	Causal      bool
	QueryOffset int

	// Probs, when not nil, receives the probabilities averaged over heads, laid out
	// [Batch, TQ, TK] (what fairseq returns as the decoder's attention).
	Probs Buffer
}

// Scoper is implemented by a backend whose buffers hold memory the Go collector does
// not see (a GPU's). Such a backend frees a buffer only when the collector finds it
// dead, and the collector runs by the host heap's growth, which device buffers hardly
// move: a training loop would hold every step's activations until the device is full.
// A scope frees them as soon as the step is over.
type Scoper interface {
	// BeginScope starts a scope; scopes nest. Scopes belong to the backend, not to a
	// goroutine: buffers another goroutine allocates meanwhile join the open scope.
	BeginScope()
	// EndScope frees every buffer that Alloc or Upload returned since the matching
	// BeginScope (slices of them included). Such buffers must not be used afterwards;
	// buffers made before the scope are untouched.
	EndScope()
}

// UninitAllocator is implemented by a backend that can hand out a buffer without
// clearing it first. On a GPU, clearing is a pass over the memory, and most buffers of a
// training step are overwritten whole by the operation that follows their allocation.
type UninitAllocator interface {
	// AllocUninit returns a buffer of n elements with unspecified contents; the caller
	// writes every element before reading any. It joins an open Scoper scope as Alloc's
	// buffers do.
	AllocUninit(n int) Buffer
}

// Backend is the set of operations the Transformer needs. Shapes are given explicitly;
// every matrix is row-major. Methods panic only on programming errors (shape or length
// mismatches that the caller has already validated); data errors are the caller's to
// check before the call.
type Backend interface {
	// Name identifies the backend ("cpu", "cuda:0").
	Name() string

	// Alloc returns a zeroed buffer of n elements.
	Alloc(n int) Buffer
	// Upload copies host values into a new buffer.
	Upload(v []float32) Buffer
	// Download copies the buffer into dst (len(dst) == b.Len()).
	Download(dst []float32, b Buffer)
	// Slice returns the elements [off, off+n) of b, sharing storage.
	Slice(b Buffer, off, n int) Buffer

	// Copy2D copies rows×cols elements: dst[dOff+r*dStride+c] = src[sOff+r*sStride+c].
	Copy2D(dst Buffer, dOff, dStride int, src Buffer, sOff, sStride int, rows, cols int)
	// GatherRows copies n elements per row: dst[i*dStride:][:n] = src[idx[i]*sStride:][:n].
	GatherRows(dst Buffer, dStride int, src Buffer, sStride int, idx []int32, n int)

	// Gemm computes c = alpha·op(a)·op(b) + beta·c with op(a) [m,k] and op(b) [k,n].
	Gemm(transA, transB bool, m, n, k int, alpha float32, a Buffer, lda int, b Buffer, ldb int, beta float32, c Buffer, ldc int)
	// Linear computes y[m,n] = x[m,k]·wᵀ + bias with w stored [n,k] as torch.nn.Linear
	// does; bias may be nil.
	Linear(y, x, w, bias Buffer, m, n, k int)

	// LayerNorm normalises each of rows rows of dim elements (population variance, eps
	// inside the square root) and applies gamma and beta.
	LayerNorm(y, x, gamma, beta Buffer, rows, dim int, eps float32)
	// Softmax and LogSoftmax normalise each row of dim elements in float32.
	Softmax(y, x Buffer, rows, dim int)
	LogSoftmax(y, x Buffer, rows, dim int)
	// Activate applies act elementwise (y may be x).
	Activate(y, x Buffer, act Activation)

	// Embed writes y[i] = scale·table[ids[i]] for rows of dim elements. Ids must be in
	// range (the caller validates them against the vocabulary).
	Embed(y, table Buffer, ids []int32, dim int, scale float32)
	// AddRows adds table rows: y[i] += table[rows[i]] (positional embeddings).
	AddRows(y, table Buffer, rows []int32, dim int)
	// Residual computes y = alpha·(x⊙omega) + branch over rows of dim elements, the
	// residual of every sub-layer: omega is Admin's per-channel ω (nil means all ones),
	// alpha is DeepNet's scale (1 otherwise). y may alias x or branch.
	Residual(y, x, branch, omega Buffer, alpha float32, rows, dim int)

	// Attention runs multi-head attention as described by AttentionArgs and writes the
	// concatenated heads into out.
	Attention(out, q, k, v View, a AttentionArgs)
}
