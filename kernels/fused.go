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
