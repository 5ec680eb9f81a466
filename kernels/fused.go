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
