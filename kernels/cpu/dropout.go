package cpu

import "github.com/xform-dev/xform/kernels"

// DropoutMask implements kernels.Trainer with the spec's hash per element. Each
// element depends on its index alone, so the chunks of parallel need no coordination
// and any split gives the same mask.
func (be *Backend) DropoutMask(mask kernels.Buffer, p float64, seed uint64) {
	d := f(mask)
	t, keep := kernels.DropoutThreshold(p), kernels.DropoutScale(p)
	be.parallel(len(d), 10, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if kernels.DropoutKeep(seed, uint64(i), t) {
				d[i] = keep
			} else {
				d[i] = 0
			}
		}
	})
}

// ApplyDropout implements kernels.DropoutApplier: the mask element is chosen as
// DropoutMask chooses it and multiplied as Mul multiplies, so the bits are theirs.
func (be *Backend) ApplyDropout(y, x kernels.Buffer, p float64, seed uint64) {
	dy, dx := f(y), f(x)
	if len(dy) != len(dx) {
		panic("cpu backend: ApplyDropout of buffers of different lengths")
	}
	t, keep := kernels.DropoutThreshold(p), kernels.DropoutScale(p)
	be.parallel(len(dy), 10, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			m := float32(0)
			if kernels.DropoutKeep(seed, uint64(i), t) {
				m = keep
			}
			dy[i] = dx[i] * m
		}
	})
}

var _ kernels.DropoutApplier = (*Backend)(nil)
