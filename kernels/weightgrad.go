package kernels

// WeightGradDeferrer is a Trainer that can hold back the weight and bias gradients of
// LinearBackward (and LinearBackwardKept) until FlushWeightGrads, so that products of
// the same shape run together (the CUDA backend batches them: a weight gradient of a
// base model's Linear alone leaves most of a large GPU idle). The input gradients dx
// are computed when called, as always; only dw and db, which nothing reads before the
// optimizer, wait.
//
// DeferWeightGrads reports whether the backend defers (it may be switched off, or not
// able to) and, if so, starts holding back. FlushWeightGrads runs what was held back
// and stops; it must be called before the gradients are read and before the buffers
// given to the held-back calls are freed (the end of the step's scope). A Linear whose
// weight gradient other operations also add to (a weight tied to an embedding) should
// run its backward before DeferWeightGrads: the order of the additions decides the
// rounding.
type WeightGradDeferrer interface {
	DeferWeightGrads() bool
	FlushWeightGrads()
}
