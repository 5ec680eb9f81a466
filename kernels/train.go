package kernels

import "math"

// Trainer is a Backend that can also train: the backward of every forward operation
// the Transformer uses, the fused label-smoothed loss, and the optimizer update. It is
// a separate interface so inference-only backends need not implement it.
//
// Conventions: a backward method takes the saved forward inputs and the output
// gradient dy. Gradients of parameters (dw, db, dgamma, domega, dtable) are always
// accumulated (+=), because a parameter may be used several times per step (tied
// embeddings, update-freq accumulation); input gradients are overwritten unless the
// method says otherwise. A nil gradient argument skips that gradient.
type Trainer interface {
	Backend

	// LinearBackward is the backward of Linear(y, x, w, bias, m, n, k):
	// dx = dy·w [m,k] (overwritten), dw += dyᵀ·x [n,k], db += Σ_rows dy [n].
	LinearBackward(dx, dw, db, dy, x, w Buffer, m, n, k int)
	// LayerNormBackward is the backward of LayerNorm(y, x, gamma, ·): dx is
	// overwritten, dgamma and dbeta accumulate.
	LayerNormBackward(dx, dgamma, dbeta, dy, x, gamma Buffer, rows, dim int, eps float32)
	// ResidualBackward is the backward of Residual(y, x, branch, omega, alpha) for the
	// x and ω inputs: dx += alpha·(omega⊙dy) (accumulated, because the residual input
	// also feeds the branch), domega += alpha·Σ_rows x⊙dy. The branch gradient is dy.
	ResidualBackward(dx, domega, dy, x, omega Buffer, alpha float32, rows, dim int)
	// ActivateBackward sets dx = dy·act'(x) where x is the activation's input (dx may
	// alias dy).
	ActivateBackward(dx, dy, x Buffer, act Activation)
	// EmbedBackward accumulates dtable[ids[i]] += scale·dy[i] for rows whose id is not
	// skip (torch's padding_idx: that row never receives a gradient).
	EmbedBackward(dtable, dy Buffer, ids []int32, dim int, scale float32, skip int32)

	// AttentionForward is Attention for training: it also saves the softmax
	// probabilities [Batch, Heads, TQ, TK] in probs, and when dropMask is not nil it
	// multiplies the probabilities by it (dropout with the 1/(1−p) scale folded into the
	// mask, same layout as probs) before they weight the values. KVIndex and Probs of a
	// are not used.
	AttentionForward(out, q, k, v View, a AttentionArgs, probs, dropMask Buffer)
	// AttentionBackward accumulates the gradients of q, k and v (+=) from dout, given
	// the forward inputs and the probs and dropMask AttentionForward saved.
	AttentionBackward(dq, dk, dv, dout, q, k, v View, a AttentionArgs, probs, dropMask Buffer)

	// DropoutMask fills mask with a dropout keep mask, the 1/(1−p) scale folded in:
	// element i is DropoutScale(p) when DropoutKeep(seed, i, DropoutThreshold(p)),
	// else 0. It depends on (seed, i, p) alone, not on the backend or the launch, so
	// the CPU and the GPU draw the same mask from the same seed. p must not be NaN.
	DropoutMask(mask Buffer, p float64, seed uint64)
	// Mul sets y = x⊙m elementwise (dropout with a precomputed mask; y may alias x).
	Mul(y, x, m Buffer)
	// AddTo sets y += x elementwise.
	AddTo(y, x Buffer)
	// Fill sets every element of x to v.
	Fill(x Buffer, v float32)

	// LabelSmoothedLoss takes logits [rows, V] and the target id of each row and
	// computes fairseq's label-smoothed cross entropy on the float32 log_softmax:
	// loss = Σ_rows (1−eps)·nll + eps/V·Σ_v −lprob_v and nll = Σ_rows −lprob_target,
	// rows whose target is ignore left out. When dlogits is not nil it receives
	// scale·∂loss/∂logits (zero on ignored rows).
	LabelSmoothedLoss(dlogits, logits Buffer, targets []int32, rows, V int, eps float32, ignore int32, scale float32) (loss, nll float64)

	// SumSquares returns Σ x², accumulated in float64.
	SumSquares(x Buffer) float64
	// Scale sets x = a·x.
	Scale(x Buffer, a float32)
	// AdamStep applies one Adam or RAdam update to the parameter p with gradient g and
	// moments m and v (all the same length), as OptimStep describes.
	AdamStep(p, g, m, v Buffer, s OptimStep)
}

// OptimStep holds the scalars of one Adam/RAdam update of one parameter. The
// optimizer computes them in float64 as the reference's Python does; the elementwise
// update then runs in float32 as torch's does:
//
//	v = Beta2·v + OneMinusBeta2·g²        m = Beta1·m + OneMinusBeta1·g
//	p = p + Decay·p                        (decoupled weight decay, Decay = −wd·lr; skipped when 0)
//	p = p − StepSize·m/(√v + Eps)          (skipped when Update is false: RAdam while ρ_t < 5)
type OptimStep struct {
	Beta1, Beta2                 float32
	OneMinusBeta1, OneMinusBeta2 float32
	Eps                          float32
	Decay                        float32
	StepSize                     float32
	Update                       bool
	// NormAfter (ClippedOptimizer only, with maxNorm 0): the caller stops the run when
	// the norm comes back NaN or ±Inf (no loss scaling to lower), so the update need
	// not wait for the norm to decide its skip, and a backend may form the norm from
	// the gradients as the update reads them (one pass over them instead of two). A
	// non-finite gradient then reaches the weights, which the stopped run discards, as
	// the pipelined trainer already applies an update before it reads a NaN loss.
	NormAfter bool
}

// MultiTensor is implemented by a Trainer that can reduce or scale many buffers in one
// operation. On a GPU every call is a launch and every returned value a host round trip,
// so the gradient norm of a model with hundreds of parameter tensors is one reduction
// and one read instead of one per tensor. Callers use it when a backend has it and fall
// back to SumSquares and Scale per buffer otherwise; the results are the same up to
// the order of the float64 sum.
type MultiTensor interface {
	// SumSquaresAll returns Σ over every buffer of Σ x², accumulated in float64.
	SumSquaresAll(xs []Buffer) float64
	// ScaleAll sets x = a·x for every buffer.
	ScaleAll(xs []Buffer, a float32)
	// AdamStepAll applies AdamStep(p[i], g[i], m[i], v[i], s) to every i, with the
	// same arithmetic (bit-identical results).
	AdamStepAll(p, g, m, v []Buffer, s OptimStep)
	// FillAll sets every element of every buffer to v.
	FillAll(xs []Buffer, v float32)
}

// ClippedOptimizer is implemented by a Trainer that folds fairseq's gradient
// bookkeeping into the optimizer update: the gradient multiply (1/sample size and
// 1/loss scale), the norm, the clipping and the skip of a non-finite update. On a GPU
// the separate operations read the ~58M gradients of a 6L-6L model four times per update
// and stop the host queue for the norm before the update can be queued; here they are
// read twice (norm, update) and the host reads the norm after the update is queued.
// Callers fall back to ScaleAll/SumSquaresAll/AdamStepAll (or the per-buffer Trainer
// methods) when a backend lacks it.
type ClippedOptimizer interface {
	// AdamStepClipped gives p, m and v the bits of this sequence (all lists the same
	// length, buffers at one index the same length):
	//
	//	g = g·pre                                 (float32 product, as Scale(g, pre))
	//	n = √Σ g²                                 (float64, as SumSquares)
	//	if maxNorm > 0 && n > maxNorm:
	//	    g = g·float32(maxNorm/(n + 1e-6))     (torch's clip_grad_norm_ coefficient)
	//	if n is finite: AdamStep(p[i], g[i], m[i], v[i], s) for every i
	//
	// with two differences: g itself is left as it was (the scaled values exist only
	// inside the update), and nothing at all changes when n is NaN or ±Inf (fairseq
	// skips such an update: fp16 overflow, or divergence; with s.NormAfter and maxNorm 0
	// the update may be applied anyway). The norm n is returned by the
	// function, which waits for it; call it after queueing the work that may overlap.
	// The sum's order is the backend's own, as SumSquaresAll's is.
	AdamStepClipped(p, g, m, v []Buffer, pre float32, maxNorm float64, s OptimStep) (norm func() float64)
}

// The dropout mask function of Trainer.DropoutMask. It is counter-based (element i is
// decided by a hash of (seed, i), no sequential state), so a GPU thread decides any
// element alone, and it uses only 64-bit integer operations, so every backend gets
// the same bits. Spec, all arithmetic mod 2^64:
//
//	z = seed + (i+1)·0x9E3779B97F4A7C15
//	z = (z ⊕ z>>30)·0xBF58476D1CE4E5B9
//	z = (z ⊕ z>>27)·0x94D049BB133111EB
//	z = z ⊕ z>>31
//	r = z>>40                                   (24 bits; u = r·2⁻²⁴ is uniform in [0, 1))
//	keep iff r ≥ T, T = DropoutThreshold(p) = min(max(⌈p·2²⁴⌉, 0), 2²⁴)
//	mask[i] = DropoutScale(p) when kept, else 0
//
// z is the i-th output (i from 0) of Steele, Lea and Flood's SplitMix64 started at
// state seed. r ≥ ⌈p·2²⁴⌉ is the same test as u ≥ p done exactly in float64 (p·2²⁴ and
// r·2⁻²⁴ are exact), so p is honoured to 2⁻²⁴. p ≤ 0 keeps everything (T = 0, scale 1),
// p ≥ 1 drops everything (T = 2²⁴ > any r).
const (
	dropoutGamma = 0x9E3779B97F4A7C15
	dropoutMul1  = 0xBF58476D1CE4E5B9
	dropoutMul2  = 0x94D049BB133111EB
	// DropoutBits is the width of r, the part of the hash compared with the threshold.
	DropoutBits = 24
)

// DropoutHash is z of the spec above for element i.
func DropoutHash(seed, i uint64) uint64 {
	z := seed + (i+1)*dropoutGamma
	z = (z ^ z>>30) * dropoutMul1
	z = (z ^ z>>27) * dropoutMul2
	return z ^ z>>31
}

// DropoutThreshold is T of the spec: the smallest r that is kept.
func DropoutThreshold(p float64) uint64 {
	if math.IsNaN(p) {
		panic("kernels: dropout probability is NaN")
	}
	switch {
	case p <= 0:
		return 0
	case p >= 1:
		return 1 << DropoutBits
	}
	return uint64(math.Ceil(p * (1 << DropoutBits)))
}

// DropoutScale is the value of a kept element: 1/(1−p) rounded to float32, computed
// in float64; 1 when p ≤ 0 (nothing dropped) and 0 when p ≥ 1 (nothing kept).
func DropoutScale(p float64) float32 {
	switch {
	case p <= 0:
		return 1
	case p >= 1:
		return 0
	}
	return float32(1 / (1 - p))
}

// DropoutKeep reports whether element i of the mask with seed and threshold t is kept.
func DropoutKeep(seed, i, t uint64) bool { return DropoutHash(seed, i)>>(64-DropoutBits) >= t }
