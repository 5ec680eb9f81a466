package kernels

// RoundedDropout is implemented by a HalfBuffers backend that can apply a dropout and
// write the 16-bit rounding of the result in the same pass, for a value that both a
// later elementwise backward reads in float32 (the feed-forward activation, read by
// ReLUDropoutBackward) and the next Linear multiplies.
//
// ApplyDropoutRounded(y, y16, x, p, seed) is ApplyDropout(y, x, p, seed) (y may alias
// x) that also sets y16, a HalfBuffers buffer of as many elements, to RN16(y): the same
// bits as rounding y afterwards, in one pass over memory where ApplyDropout and the
// Linear's cast took two.
type RoundedDropout interface {
	ApplyDropoutRounded(y, y16, x Buffer, p float64, seed uint64)
}
