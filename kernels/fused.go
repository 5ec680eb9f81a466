package kernels

// ResidualNormer is implemented by a backend that can run the Post-LN / Admin residual
// and the LayerNorm after it as one operation, y = LN(alpha·(x⊙omega) + branch), and
// the matching backward. On a GPU every operation is at least one launch, and the
// residual, the LayerNorm, their backwards and their column sums cost about seven per
// sub-layer; fused they cost four. Callers use it when a backend has it and fall back
// to Residual + LayerNorm (and LayerNormBackward + ResidualBackward) otherwise.
//
// The results are the same bits as that unfused sequence on the same backend: the
// fused operations do the same arithmetic in the same order, they only read and write
// memory fewer times.
type ResidualNormer interface {
	// ResidualLayerNorm is Residual(z, x, branch, omega, alpha, rows, dim) followed by
	// LayerNorm(y, z, gamma, beta, rows, dim, eps). z, the residual sum, is what the
	// backward needs; it may be nil when only y is wanted (inference). y may alias x
	// or branch (inference normalises in place); z may alias x or branch, not y.
	ResidualLayerNorm(z, y, x, branch, omega Buffer, alpha float32, gamma, beta Buffer, rows, dim int, eps float32)

	// ResidualLayerNormBackward is the backward of ResidualLayerNorm except the x
	// gradient through the residual. It equals
	//
	//	LayerNormBackward(dz, dgamma, dbeta, dy, z, gamma, rows, dim, eps)
	//	ResidualBackward(nil, domega, dz, x, nil, alpha, rows, dim)
	//
	// that is, dz (the gradient of z, which is also the branch's output gradient) is
	// overwritten, and dgamma += Σ_rows dy⊙x̂, dbeta += Σ_rows dy, domega += alpha·Σ_rows
	// x⊙dz accumulate; a nil gradient is skipped (dz may be nil when only the
	// parameter gradients are wanted). dz may alias dy, not z or x. The caller adds
	// the residual's x gradient after the branch's backward has produced dx, with
	// ResidualBackward(dx, nil, dz, x, omega, alpha, rows, dim).
	ResidualLayerNormBackward(dz, dgamma, dbeta, domega, dy, z, x, gamma Buffer, alpha float32, rows, dim int, eps float32)
}

// DropoutApplier is implemented by a Trainer that can apply a dropout mask without
// storing it. ApplyDropout(y, x, p, seed) sets y = x⊙mask where mask is what
// DropoutMask(mask, p, seed) would hold, with the same bits as DropoutMask followed by
// Mul (y may alias x). The backward of dropout is the same call on the gradient with
// the same seed, so the mask is never kept: a training step saves one float32 per
// dropped element of memory and two passes over it.
type DropoutApplier interface {
	ApplyDropout(y, x Buffer, p float64, seed uint64)
}

// LinearActivator is implemented by a Trainer that can fuse the first Linear of a
// feed-forward block with its activation, y = act(x·wᵀ + bias), and, in the backward,
// the second Linear's input gradient with act' and the first Linear's bias gradient.
// On a GPU this puts the bias, the activation and their gradients into the GEMMs'
// epilogues: the pre-activation is never written or read again (ReLU keeps one bit
// per element instead), and the two elementwise passes of Activate and
// ActivateBackward and the column sum of the first bias gradient disappear.
//
// The results are not the bits of the unfused sequence: they differ by the GEMM's
// float32 accumulation (another kernel may be chosen) and the first bias gradient may
// be summed in float32. A backend offers it only where such differences are already
// accepted (the CUDA backend: its 16-bit precision modes; never its exact FP32 mode),
// and callers fall back to Linear + Activate when LinearAct returns false. Dropout
// between the activation and the second Linear has no place in the fused backward, so
// callers use it only when that dropout is off.
type LinearActivator interface {
	// LinearAct sets a[m,n] = act(x[m,k]·wᵀ + bias) (w stored [n,k] as Linear's, bias
	// [n] not nil) and returns aux, what LinearActBackward needs of the pre-activation,
	// in a layout of the backend's own: the caller keeps it until the backward and
	// reads nothing from it. ok is false when the backend cannot fuse act at this
	// precision and shape; nothing has been written then, and the caller runs Linear
	// and Activate instead.
	LinearAct(a, x, w, bias Buffer, m, n, k int, act Activation) (aux Buffer, ok bool)

	// LinearActBackward is the backward of the second Linear, y[m,n] = a[m,k]·w2ᵀ + b2
	// with a and aux from LinearAct(a, …, act), followed by the activation's backward
	// and the first Linear's bias gradient. It equals
	//
	//	LinearBackward(dpre, dw2, db2, dy, a, w2, m, n, k)
	//	ActivateBackward(dpre, dpre, pre, act)
	//	db1 += Σ_rows dpre
	//
	// where pre is the first Linear's output before act: dpre [m,k] is overwritten,
	// dw2 [n,k], db2 [n] and db1 [k] accumulate, and a nil dw2, db2 or db1 is skipped.
	// The caller then runs LinearBackward(dx, dw1, nil, dpre, x, w1, m, k, d). dpre
	// must not alias dy, a or aux. It cannot fail once LinearAct has succeeded.
	LinearActBackward(dpre, dw2, db2, db1, dy, a, w2, aux Buffer, m, n, k int, act Activation)
}

// FlashAttention is implemented by a Trainer that can run training attention without
// storing the [Batch, Heads, TQ, TK] probabilities: the forward keeps one float32 per
// query row (the log-sum-exp of its scaled, masked scores) and the backward recomputes
// the probabilities from it, and the dropout mask is drawn from its seed where it is
// used, never stored. At long sequences the probabilities and the mask are most of a
// training step's memory and traffic (T = 512, 12 sentences, 8 heads: 100 MB each per
// attention call).
//
// Semantics are those of AttentionForward and AttentionBackward with probs stored and
// dropMask holding what DropoutMask(dropMask, dropP, dropSeed) draws for a buffer of
// Batch·Heads·TQ·TK elements (element ((b·Heads+h)·TQ+i)·TK+j masks probability (b, h,
// i, j)), so a seed gives the same dropout on either path; dropP ≤ 0 is no dropout.
// Results equal that path up to the float rounding the backend documents (a different
// summation order), not bit for bit. A query row whose every key is masked gives a NaN
// output row and NaN gradients where the stored-probabilities path gives them.
//
// Both methods return false, having done nothing, when the backend does not take the
// call (precision, head dimension, device limits); the caller then takes the
// stored-probabilities path. The answer depends on the backend's configuration and on
// a's shape alone, and AttentionBackwardLSE accepts every call whose forward
// AttentionForwardLSE accepted. KVIndex and Probs of a are not used.
type FlashAttention interface {
	// AttentionForwardLSE writes out as AttentionForward does and lse, Batch·Heads·TQ
	// float32 laid out [Batch, Heads, TQ], the log-sum-exp of each row's scaled, masked
	// scores over the keys it sees (before dropout; NaN for a row that sees none).
	AttentionForwardLSE(out, q, k, v View, a AttentionArgs, lse Buffer, dropP float64, dropSeed uint64) bool
	// AttentionBackwardLSE accumulates the gradients of q, k and v (+=) from dout as
	// AttentionBackward does, given the forward's inputs, its output out and the lse it
	// wrote, with the same dropP and dropSeed. dq, dk and dv may be column views of one
	// buffer (disjoint elements).
	AttentionBackwardLSE(dq, dk, dv, dout, q, k, v, out View, a AttentionArgs, lse Buffer, dropP float64, dropSeed uint64) bool
}

// DropoutResidualNormer is implemented by a backend that can fold the residual dropout
// of a Post-LN / Admin sub-layer into its fused residual + LayerNorm: the forward
// drops elements of the branch output as it reads it, and the backward writes the
// branch's output gradient with the same mask applied, so neither direction spends a
// pass over memory on the dropout (ApplyDropout's forward pass reads and writes the
// branch output, its backward pass reads dz and writes the branch gradient).
//
// The mask is ApplyDropout's for the [rows, dim] branch buffer: element r·dim + j is
// kept, scaled by DropoutScale(p), when DropoutKeep(seed, r·dim + j,
// DropoutThreshold(p)), else zeroed. The results are the same bits as the unfused
// sequence on the same backend and precision, for any p (p ≤ 0 multiplies by 1 as
// ApplyDropout does).
type DropoutResidualNormer interface {
	// ResidualLayerNormDropout equals
	//
	//	ApplyDropout(d, branch, p, seed)
	//	ResidualLayerNorm(z, y, x, d, omega, alpha, gamma, beta, rows, dim, eps)
	//
	// for a scratch d: branch is only read. Aliasing as ResidualLayerNorm allows.
	ResidualLayerNormDropout(z, y, x, branch, omega Buffer, alpha float32, gamma, beta Buffer, rows, dim int, eps float32, p float64, seed uint64)

	// ResidualLayerNormBackwardDropout equals
	//
	//	ResidualLayerNormBackward(dz, dgamma, dbeta, domega, dy, z, x, gamma, alpha, rows, dim, eps)
	//	ApplyDropout(dbranch, dz, p, seed)
	//
	// so dz is the gradient of z (what the residual's ResidualBackward reads) and
	// dbranch, overwritten, is the gradient of the branch output before its dropout
	// (with HalfBuffers it may be a 16-bit buffer).
	// dz or dbranch may be nil when not wanted; they must be distinct buffers, either
	// may alias dy, neither z or x.
	ResidualLayerNormBackwardDropout(dz, dbranch, dgamma, dbeta, domega, dy, z, x, gamma Buffer, alpha float32, rows, dim int, eps float32, p float64, seed uint64)
}

// RoundedResidualNormer is implemented by a HalfBuffers backend whose fused residual +
// LayerNorm can also write its output y rounded to the 16-bit format. A sub-layer's y
// is the next sub-layer's input, and that sub-layer's first Linear (and, for the
// encoder's last one, every decoder layer's cross-attention K/V Linear) rounds it
// again; given the rounding here, LinearKeep takes it as it is and that pass over y
// (read float32, write 16-bit) is saved, while the kernel that writes y adds only the
// half-width store.
type RoundedResidualNormer interface {
	// ResidualLayerNormDropoutRounded is ResidualLayerNormDropout (same z and y bits,
	// same aliasing, p ≤ 0 no dropout) that also writes y16, a buffer of rows·dim
	// elements from AllocHalf: y16[i] = RN16(y[i]), the same bits as rounding the
	// float32 y. y16 must not be nil (AllocHalf returns nil where the backend rounds
	// nothing: call ResidualLayerNormDropout there).
	ResidualLayerNormDropoutRounded(z, y, y16, x, branch, omega Buffer, alpha float32, gamma, beta Buffer, rows, dim int, eps float32, p float64, seed uint64)
}

// ReLUDropoutBackwarder is implemented by a Trainer that can run the backward of the
// feed-forward block's a = Dropout(ReLU(pre)) in one pass from the saved output a
// alone: the pre-activation and the mask are not read, so the forward may keep a
// only (and may take LinearActivator's ReLU epilogue, which never writes pre), and the
// backward's two passes (ApplyDropout on the gradient, then ActivateBackward) are one.
//
// ReLUDropoutBackward(dpre, da, a, p) sets dpre[i] = da[i]·s where a[i] > 0, and +0
// elsewhere, with s = DropoutScale(p), where a is ApplyDropout(ReLU(pre), p, seed) (or
// ReLU(pre) times a DropoutMask of the same p). dpre may alias da or a.
//
// Against the unfused backward, ref = ActivateBackward(ApplyDropout(da, p, seed), pre,
// ReLU) on the same backend. Let r = ReLU(pre) (pre where pre > 0, else +0, NaN
// included) and m ∈ {0, s} the mask element, a = r·m; s ≥ 1 and finite for p < 1,
// s = 1 for p ≤ 0, s = 0 for p ≥ 1.
//   - kept (m = s): r > 0 gives a = RN(r·s) ≥ r > 0 (s ≥ 1; +Inf stays +Inf) and r = +0
//     gives a = +0, so a > 0 ⇔ pre > 0, and both take the same product da·s or +0:
//     the same bits, whatever da is (±0, ±Inf and NaN pass through the one product).
//   - dropped (m = 0): a = +0 (NaN for pre = +Inf), so dpre = +0. ref is +0 where
//     pre ≤ 0 or is NaN, but da·0 where pre > 0: −0 for negative da, NaN for non-finite
//     da. a cannot tell those elements apart (r·0 erases r), so there dpre is +0.
//
// So dpre equals ref bit for bit except where the mask dropped an element with pre > 0:
// there ref's −0 becomes +0 (equal as numbers) and ref's NaN (da = ±Inf or NaN) becomes
// +0. Neither reaches the gradients of a finite da: dpre only feeds sums (the first
// Linear's dx, dw and bias gradient), where x + (±0) = x for every x but −0, and a
// sum that starts at +0 never becomes −0 by adding ±0 terms or products, so those
// sums are the same bits. A non-finite da comes from an overflowed row (a GEMM output
// row): its kept elements with pre > 0 still carry the Inf or NaN into the sums, so an
// overflow check on the gradients still sees it. PyTorch's relu backward (from its
// output, result > 0) after dropout's grad·mask·scale has the same elements as ref.
type ReLUDropoutBackwarder interface {
	ReLUDropoutBackward(dpre, da, a Buffer, p float64)
}

// CrossKVBatcher is implemented by a backend on which the model computes every decoder
// layer's cross-attention keys and values with one product over the encoder output (the
// layers' k and v weights are one [L·2d, d] block), and their input gradient with one
// product whose inner dimension is L·2d, instead of L products of [2d, d] and their sum.
// The same values, summed in another order. BatchCrossKV() says whether to, asked when
// the net is made.
type CrossKVBatcher interface {
	BatchCrossKV() bool
}

// ReLUDropoutBiasBackwarder is implemented by a backend that can sum the first
// Linear's bias gradient while it writes the feed-forward block's ReLU and dropout
// backward. ReLUDropoutBackwardBias(dpre, da, a, db, rows, cols, p) is
// ReLUDropoutBackward(dpre, da, a, p) on [rows × cols] buffers (the same dpre) that
// also adds to db [cols] the column sums of dpre as stored (its 16-bit values widened,
// where it is 16-bit), in an order that depends on rows and cols alone; the Linear's
// backward then gets no db. false, nothing done, where the backend cannot for these
// buffers: the caller calls ReLUDropoutBackward and passes db to the Linear.
type ReLUDropoutBiasBackwarder interface {
	ReLUDropoutBackwardBias(dpre, da, a, db Buffer, rows, cols int, p float64) bool
}

// ReLUDropoutFolder is implemented by a HalfOutputs backend that can fold the
// feed-forward block's activation-dropout and ReLU backward (ReLUDropoutBackward) into
// the second Linear's input-gradient product, so that pass over the [rows × F] gradient
// is not made.
//
// ApplyDropoutMask is ApplyDropout(y, x, p, seed) for 16-bit x and y of rows×cols
// elements (the same y bits) that also returns mask, a record of where y > 0; nil, and
// nothing done, where the backend has no such record for the call (the caller then
// takes ApplyDropout). LinearBackwardKeptReLU(g, dw, db, dy, kept, m, n, k, a, mask, p)
// is LinearBackwardKept(g, dw, db, dy, kept, m, n, k) followed by
// ReLUDropoutBackward(g, g, a, p), with a 16-bit g [m, k], a the y and mask an
// ApplyDropoutMask of the same call: g = RN16(s·(dy·w)) where a > 0, else +0 (s the
// keep scale), dw and db as LinearBackwardKept's. That is one rounding of the scaled
// product where the two calls round twice (RN16(RN16(dy·w)·s)), so g changes, by at
// most one rounding of each element: more exact, not the same bits.
type ReLUDropoutFolder interface {
	ApplyDropoutMask(y, x Buffer, rows, cols int, p float64, seed uint64) (mask Buffer)
	LinearBackwardKeptReLU(g, dw, db, dy, kept Buffer, m, n, k int, a, mask Buffer, p float64)
}

// LinearKeeper is implemented by a backend whose Linear rounds its operands to a
// narrower type before the product (the CUDA backend in bf16/fp16). LinearKeep is
// Linear that keeps those rounded copies of x and w in the returned buffer (nil when
// the backend rounds nothing: the caller then uses LinearBackward), and
// LinearBackwardKept is LinearBackward(dx, dw, db, dy, x, w, m, n, k) that takes x and
// w from it, so the backward rounds only dy. The results are the same bits: the same
// products of the same rounded operands. x and w must not change in between (they
// are a training step's activation and weight).
//
// On a HalfRounder backend w may also be a 16-bit buffer holding RN16 of the float32
// weight (HalfRounder.RoundAll's output): the product takes it as it is, and kept
// refers to it instead of copying it, so it must hold the same values until the
// backward. The results are the bits of passing the float32 weight.
type LinearKeeper interface {
	LinearKeep(y, x, w, bias Buffer, m, n, k int) (kept Buffer)
	LinearBackwardKept(dx, dw, db, dy, kept Buffer, m, n, k int)
}

// HalfBuffers is implemented by a backend whose Linear multiplies 16-bit roundings of
// its operands (the CUDA backend in bf16/fp16, a LinearKeeper that keeps a copy). A
// buffer from AllocHalf holds n elements in that 16-bit format instead of float32
// (Len is n): the rounding, RN16(v), of the float32 values v some operation computes.
// Operations documented to write one store RN16(v) where they would have stored v, and
// operations documented to read one take it where they would have rounded a float32
// buffer holding v, so the results are the same bits as the float32 path, with a pass
// over memory (the cast) and half of a write saved. Every other operation rejects it
// (the CUDA backend panics), so it can only flow from such a writer to such a reader.
//
// Writers: HalfRounder's RoundAll, LabelSmoothedLossDeferred's dlogits, ReLUDropoutBackward's dpre,
// ApplyDropout's y, ResidualLayerNormBackwardDropout's dbranch, and the second outputs
// of ApplyDropoutRounded and ResidualLayerNormDropoutRounded; HalfAttention's outputs
// and gradients. Readers: HalfAttentionInputs' q, k, v and dout (the attention's
// operands, which it rounds anyway), LinearKeep's x, LinearBackwardKept's and LinearActBackward's
// dy (the products take them as they are), LinearActKeep's x, LinearKeep's and
// LinearActKeep's w (HalfRounder) and, with a 16-bit output, their bias (HalfBiases),
// and LabelSmoothedLoss's (and the Deferred form's) logits, which it widens to float32
// (a HalfOutputs backend's LinearKeep writes them).
//
// AllocHalf returns nil when the backend rounds nothing (its FP32 mode); callers then
// use a float32 buffer. Otherwise the buffer is uninitialised and scoped as Alloc's.
type HalfBuffers interface {
	AllocHalf(n int) Buffer
}

// HalfRounder is implemented by a HalfBuffers backend that rounds many float32 buffers
// into 16-bit ones in one operation. A training step's weights change only at the
// optimizer's update, yet every Linear rounded its weight (forward, and the backward
// again before LinearKeeper): a model keeps one 16-bit copy per Linear weight, made
// with AllocHalf before any step (outside a Scoper scope, so it lives as long as the
// model), refreshes them all with one RoundAll before a step (unless a
// RoundingOptimizer update wrote them with the weights), and passes the copies as
// LinearKeep's and LinearActKeep's w. Same bits as passing the float32 weights: each
// copy is the rounding the Linear would have made of the same values.
type HalfRounder interface {
	// RoundAll sets dst[i][j] = RN16(src[i][j]) for every pair; dst[i] is a buffer
	// from AllocHalf of src[i]'s length, src[i] float32 (a Slice is fine).
	RoundAll(dst, src []Buffer)
}

// HalfTarget is where a RoundingOptimizer update writes one parameter's 16-bit copy:
// elements [Off, Off+n) of Buf, a buffer from HalfBuffers.AllocHalf, n the parameter's
// length. A parameter may so map to a range of a larger copy (the q, k and v weights
// are slices of one fused [3d, d] weight whose copy is one buffer). Buf nil: the
// parameter has no copy (LayerNorm, ω, embeddings that no Linear multiplies, and the
// biases but those a HalfBiases backend adds in 16 bits).
type HalfTarget struct {
	Buf Buffer
	Off int
}

// RoundingOptimizer is implemented by a HalfRounder backend whose list updates can also
// write the updated weights' 16-bit copies in the same pass: the optimizer has each
// weight in registers as it stores it, so the copy costs a 2-byte store per element
// instead of RoundAll's extra read of every weight at the next step.
//
// Both methods are the ClippedOptimizer / MultiTensor update of the same name without
// "Rounded", with the same bits for p, m and v, and in addition, for every i whose
// half[i].Buf is not nil, elements [half[i].Off, half[i].Off+len(p[i])) of half[i].Buf
// hold RN16 of p[i] as it is after the call: the bits RoundAll(half, p) would write
// then. That holds whatever the copies held before, also when AdamStepClippedRounded
// skips the update (a non-finite norm): the copies are then rewritten from the
// unchanged weights. So a caller that keeps copies may treat the call as a RoundAll of
// every listed pair. half is nil or as long as p. RoundsUpdates says whether the
// methods may be called (false: keep to the plain update and RoundAll).
type RoundingOptimizer interface {
	RoundsUpdates() bool
	AdamStepClippedRounded(p, g, m, v []Buffer, half []HalfTarget, pre float32, maxNorm float64, s OptimStep) (norm func() float64)
	AdamStepAllRounded(p, g, m, v []Buffer, half []HalfTarget, s OptimStep)
}

// LinearActKeeper is LinearActivator.LinearAct that keeps its 16-bit operands, as
// LinearKeeper.LinearKeep does: the first Linear of a feed-forward block whose backward
// is not LinearActBackward (the activation dropout's path, ReLUDropoutBackwarder) runs
// LinearBackwardKept(dx, dw, db, dpre, kept, m, n, k) with kept, and rounds only dpre.
// ok false means nothing was written (as LinearAct); kept is nil when the backend
// rounds nothing. aux is LinearAct's. w may be a 16-bit copy as for LinearKeep.
type LinearActKeeper interface {
	LinearActKeep(a, x, w, bias Buffer, m, n, k int, act Activation) (aux, kept Buffer, ok bool)
}

// HalfOutputs is implemented by a HalfBuffers backend whose GEMMs can write their
// outputs in the 16-bit format, so that a value only 16-bit readers take is never
// written in float32: the feed-forward block as torch.autocast runs it, fc1's output,
// its activation dropout and fc2's input gradient all bf16/fp16. HalfOutputs() says
// whether the calls below are available (false: call them with float32 buffers only).
//
// Unlike the other HalfBuffers writers this changes results, on purpose: the value is
// rounded where the float32 path kept it exact, as PyTorch's autocast does.
//   - LinearKeep's y and LinearBackwardKept's dx may be 16-bit: RN16 of the float32
//     result (the bias added before the one rounding), up to the GEMM's float32
//     accumulation order.
//   - LinearActKeep with ReLU may write a 16-bit a = RN16(ReLU(x·wᵀ + bias)); aux is nil
//     then (the backward is ReLUDropoutBackward, which reads a > 0).
//   - ApplyDropout(y, x, p, seed) may take a 16-bit x with a 16-bit y (y may alias x):
//     y = RN16(x·m) with the same keep decisions and scale m as for a float32 x, a
//     second rounding of an already rounded value, as PyTorch's bf16 dropout.
//   - ReLUDropoutBackward(dpre, da, a, p) may take 16-bit da and a with a 16-bit dpre
//     (dpre may alias da): dpre = RN16(da·s) where a > 0, else 0. With a 16-bit a,
//     a > 0 is RN16(pre) > 0, which is what PyTorch's relu backward on its 16-bit
//     output tests; in fp16 a pre below 2⁻²⁵ counts as not passed.
type HalfOutputs interface {
	HalfOutputs() bool
}

// HalfBiases is implemented by a HalfOutputs backend whose LinearKeep and LinearActKeep
// with a 16-bit y (or a) also take a 16-bit bias: RN16 of the float32 bias, a copy the
// caller keeps fresh as it keeps the weights' (HalfRounder's RoundAll, RoundingOptimizer's
// targets). The epilogue adds it as it is. The CUDA backend adds a 16-bit bias to a
// 16-bit output anyway (cuBLASLt takes no float32 one there) and would otherwise round
// the bias at every call, so the results are the same bits. HalfBiases() says whether
// the calls take one now.
type HalfBiases interface {
	HalfBiases() bool
}

// HalfAttention is implemented by a HalfBuffers backend whose stored-probabilities
// training attention (AttentionForward, AttentionBackward) writes its output and its
// gradients in the 16-bit format for some calls. Attention16(a) says whether it does for
// calls of a's shape and masks, forward and backward alike; the answer depends on a
// and the backend's configuration only, and a backend that also implements
// FlashAttention declines those calls there (so they take the stored path).
//
// For such a call AttentionForward's out may be a view of a 16-bit buffer: it holds the
// rounding of the float32 output. AttentionBackward's dq, dk and dv may be views of
// 16-bit buffers (all three or none): they are then overwritten with the rounded
// gradients rather than accumulated into, the same values as accumulating into zeroed
// float32 buffers and rounding (up to the sign of a zero gradient), which is what the
// Linears that read them would have done. Offsets and strides of a 16-bit view count
// 16-bit elements.
type HalfAttention interface {
	Attention16(a AttentionArgs) bool
}

// HalfAttentionInputs is implemented by a HalfAttention backend whose training attention
// also reads 16-bit inputs, as torch.autocast's attention reads the bf16/fp16 q, k and v
// its Linear projections return and the bf16/fp16 gradient of its output. For calls
// where AttentionInputs16(a) is true (it implies Attention16(a); the answer depends on a
// and the backend's configuration only), AttentionForward and AttentionForwardSeeded
// may take q, k and v, and AttentionBackward and AttentionBackwardSeeded dout, q, k and
// v, as views of buffers from AllocHalf, each view 16-bit or float32 independently
// (offsets and strides of a 16-bit view count 16-bit elements). The results are the
// bits of float32 views holding the same (widened) values: the kernels round exactly
// those operands to 16 bits anyway, q after the float32 product q·scale (so a 16-bit
// q is scaled as a float32 q holding its value would be). Every other call rejects
// 16-bit inputs (the CUDA backend panics), so a caller allocates them 16-bit only for
// calls this accepts. The numerics a model sees change only through who rounds: a
// HalfOutputs GEMM writing q, k, v (or the out-projection's input gradient, dout)
// rounds its fp32 result once, where the float32 path kept it exact until the
// attention rounded it.
type HalfAttentionInputs interface {
	AttentionInputs16(a AttentionArgs) bool
}

// InputGradAccumulator is a LinearKeeper whose backward can add the input gradient to
// dx instead of writing it: LinearBackwardKeptAccum is LinearBackwardKept with
// dx += dy·w (dx float32, holding what earlier backwards wrote). A model whose input
// feeds several Linears (a Transformer decoder's cross-attention K/V projections all
// read the encoder output) sums their input gradients without a buffer and an AddTo
// per Linear: the product's epilogue adds in float32, which is AddTo's sum of the same
// two float32 values.
type InputGradAccumulator interface {
	LinearBackwardKeptAccum(dx, dw, db, dy, kept Buffer, m, n, k int)
}
