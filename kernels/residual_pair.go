package kernels

// ResidualSum is the gradient of a Post-LN / Admin sub-layer's input x left as two
// parts: D, what the branch's backward wrote (the gradient through the branch), and
// the residual's share, (DZ⊙ω)·Alpha with ω per column (Omega nil: all ones). The
// whole gradient is what
//
//	ResidualBackward(D, nil, DZ, nil, Omega, Alpha, rows, dim)
//
// leaves in D: D + ((DZ·ω)·Alpha), each product rounded to float32. A backward that
// hands the sum on unformed saves that pass over memory (read D and DZ, write D) when
// the next consumer can read the two parts itself (ResidualSumNormer). A nil DZ means
// the gradient is D alone.
type ResidualSum struct {
	D, DZ, Omega Buffer
	Alpha        float32
}

// ResidualSumNormer is implemented by a backend whose fused residual + LayerNorm
// backward (DropoutResidualNormer) can take its dy as a ResidualSum, and whose residual
// dropout can be applied to one. In a stack of Post-LN sub-layers the gradient that
// sub-layer k's backward produces for its input is sub-layer k−1's dy: passing it on as
// a ResidualSum removes ResidualBackward's pass from every sub-layer but the first of
// the stack, whose consumer (the embedding's dropout) takes the sum too.
//
// Every method has the bits of the sequence it is defined as, on the same backend and
// precision. After a call, dy.D holds either what it held or the formed sum (a backend
// may form the sum in place where it cannot read the two parts): callers must not read
// it again.
type ResidualSumNormer interface {
	// ResidualLayerNormBackwardSum equals
	//
	//	ResidualBackward(dy.D, nil, dy.DZ, nil, dy.Omega, dy.Alpha, rows, dim)
	//	ResidualLayerNormBackwardDropout(dz, dbranch, dgamma, dbeta, domega, dy.D, z, x, gamma, alpha, rows, dim, eps, p, seed)
	//
	// (the first line skipped when dy.DZ is nil). With dbranch nil it is therefore the
	// same ResidualLayerNormBackward of the formed sum (p and seed unused). dz and
	// dbranch must not alias any buffer of dy, z or x.
	ResidualLayerNormBackwardSum(dz, dbranch, dgamma, dbeta, domega Buffer, dy ResidualSum, z, x, gamma Buffer, alpha float32, rows, dim int, eps float32, p float64, seed uint64)

	// ApplyDropoutSum equals
	//
	//	ResidualBackward(s.D, nil, s.DZ, nil, s.Omega, s.Alpha, rows, dim)
	//	ApplyDropout(y, s.D, p, seed)
	//
	// y (float32, rows·dim elements) may alias s.D, not s.DZ.
	ApplyDropoutSum(y Buffer, s ResidualSum, rows, dim int, p float64, seed uint64)
}

// ResidualRecomputer is a ResidualSumNormer whose fused backward can recompute the
// residual sum z of ResidualLayerNormDropout (and its Rounded form) from x and the
// branch output instead of reading a stored z: the backward reads x anyway (for dω)
// and the branch instead of z, the same number of bytes, and the forward need not
// write z (a quarter of its traffic at the training shape, and the z buffers' memory).
type ResidualRecomputer interface {
	// RecomputesResidual says whether ResidualLayerNormBackwardRecompute runs without
	// z at rows of dim elements (the answer depends on dim and the backend's
	// configuration only). Where it is false the method still works, but it computes
	// z again with a forward pass first; the caller should then keep z as before.
	RecomputesResidual(dim int) bool

	// ResidualLayerNormBackwardRecompute equals ResidualLayerNormBackwardSum with z
	// the residual sum ResidualLayerNormDropout(z, y, x, branch, omega, alpha, gamma,
	// beta, rows, dim, eps, p, seed) wrote (the same p and seed: its dropout mask).
	// x, branch and omega must hold what that forward read. dz and dbranch must not
	// alias any of the inputs.
	ResidualLayerNormBackwardRecompute(dz, dbranch, dgamma, dbeta, domega Buffer, dy ResidualSum, x, branch, omega Buffer, alpha float32, gamma Buffer, rows, dim int, eps float32, p float64, seed uint64)
}

// KeptMaskNormer is a RoundedResidualNormer and ResidualRecomputer whose rounded
// forward can also store the keep bits of the residual dropout's mask, for the Sum
// backward to read instead of drawing the mask again from its seed: the same mask, so
// the same bits as the calls without them.
type KeptMaskNormer interface {
	// KeptMaskWords is the length of the buffer (from Alloc) that holds the keep bits
	// of a rows × dim call with the dropout on; 0 where the backend does not keep them
	// at that shape or in its configuration.
	KeptMaskWords(rows, dim int) int

	// ResidualLayerNormDropoutRoundedKept is ResidualLayerNormDropoutRounded (the same
	// outputs, bit for bit) that may also fill kept (KeptMaskWords(rows, dim) long) with
	// the mask's keep bits. It reports whether it did; only then may kept be given to
	// ResidualLayerNormBackwardSumKept.
	ResidualLayerNormDropoutRoundedKept(z, y, y16, kept, x, branch, omega Buffer, alpha float32, gamma, beta Buffer, rows, dim int, eps float32, p float64, seed uint64) bool

	// ResidualLayerNormBackwardSumKept is ResidualLayerNormBackwardSum (the same
	// outputs, bit for bit) with kept the keep bits that
	// ResidualLayerNormDropoutRoundedKept stored for the same rows, dim, p and seed.
	ResidualLayerNormBackwardSumKept(dz, dbranch, dgamma, dbeta, domega Buffer, dy ResidualSum, z, x, gamma, kept Buffer, alpha float32, rows, dim int, eps float32, p float64, seed uint64)

	// ResidualLayerNormBackwardRecomputeKept is ResidualRecomputer's
	// ResidualLayerNormBackwardRecompute (the same outputs, bit for bit) with kept as
	// above: the forward (z nil where RecomputesResidual) stored them.
	ResidualLayerNormBackwardRecomputeKept(dz, dbranch, dgamma, dbeta, domega Buffer, dy ResidualSum, x, branch, omega Buffer, alpha float32, gamma, kept Buffer, rows, dim int, eps float32, p float64, seed uint64)
}
