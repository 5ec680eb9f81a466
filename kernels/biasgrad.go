package kernels

// FreshBiasGrad is implemented by a LinearKeeper that can write a bias gradient instead
// of adding it. LinearBackwardKeptFresh is LinearBackwardKept for a db that holds zeros
// to which nothing else adds before this call (a training step's first contribution to
// a bias gradient just cleared): the backend may store Σ_rows dy into db rather than
// add it, which gives the same values up to the sign of a zero (+0 + (−0) is +0, a
// stored −0 stays −0) and spares the CUDA backend a scratch vector and a launch per
// Linear. Everything else is LinearBackwardKept's.
type FreshBiasGrad interface {
	LinearBackwardKeptFresh(dx, dw, db, dy, kept Buffer, m, n, k int)
}

// FreshWeightGrad is FreshBiasGrad for the weight gradient: LinearBackwardKeptFreshW is
// LinearBackwardKept for a dw whose contents do not matter, because this call is the
// first contribution to it since the gradients were last cleared: the backend stores
// dyᵀ·x into dw rather than adding it (beta 0), so the clearing may skip dw. The same
// values as clearing and adding, up to the sign of a zero. dbFresh asks the same of db
// (LinearBackwardKeptFresh); dw and db may otherwise be what LinearBackwardKept takes.
// FreshWeightGrads says whether the backend takes such calls now (a training step's
// Linears then keep their operands).
type FreshWeightGrad interface {
	FreshWeightGrads() bool
	LinearBackwardKeptFreshW(dx, dw, db, dy, kept Buffer, m, n, k int, dbFresh bool)
}
