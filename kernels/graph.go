package kernels

// StepGrapher is implemented by a backend that can record the work a function queues
// and replay the recording later with one launch (CUDA graphs). A training step of a
// Transformer is about a thousand small operations; on a GPU each costs the host a few
// microseconds to launch, about as much as the GPU takes to run it, so replaying a
// recording instead is what lets the GPU run at its own speed.
//
// Graphed(key, f) runs f. f must queue the same operations on buffers of the same
// sizes every time it is called with the same key (the key names the shapes); what
// may change between calls is the data f uploads and the scalar arguments of its
// operations (dropout seeds, the loss scale). Inside f nothing may be read back to
// the host or synchronised: results come back through deferred reads
// (DeferredLosser), valid after Graphed returns. Buffers f allocates are dead after
// it; it may accumulate into buffers made outside it (gradients).
//
// The results are the same bits as calling f directly: the recording replays the
// same operations with the same arguments.
type StepGrapher interface {
	Graphed(key string, f func() error) error
}

// DeferredLosser is LabelSmoothedLoss whose sums are read by the returned function,
// after the work is queued (and, inside StepGrapher.Graphed, after Graphed returns).
// Reading later lets the host queue the backward while the GPU computes the loss.
type DeferredLosser interface {
	LabelSmoothedLossDeferred(dlogits, logits Buffer, targets []int32, rows, V int, eps float32, ignore int32, scale float32) func() (loss, nll float64)
}

// DeferredReader is a backend whose deferred results (DeferredLosser's sums,
// ClippedOptimizer's norm) may be read after more work was queued: a reader then waits
// for the work queued before it alone, not for everything queued since. A trainer can
// then queue update n+1 before reading update n's loss, so the device never waits for
// the host between updates. This holds for reads made inside StepGrapher.Graphed as
// well. DeferredReads may answer false (e.g. where the device lacks asynchronous
// copies to the host): readers then wait for everything queued before they return.
type DeferredReader interface {
	DeferredReads() bool
}
