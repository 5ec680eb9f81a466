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
