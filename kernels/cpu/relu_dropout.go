package cpu

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"
)

// ReLUDropoutBackward implements kernels.ReLUDropoutBackwarder: the product is the one
// ApplyDropout forms (x · mask element) and the test is ActivateBackward's (> 0), taken
// on a instead of pre; the interface says why that is the same except at dropped
// elements with pre > 0.
func (be *Backend) ReLUDropoutBackward(dpre, da, a kernels.Buffer, p float64) {
	out, g, x := f(dpre), f(da), f(a)
	if len(g) != len(out) || len(x) != len(out) {
		panic(fmt.Sprintf("cpu backend: ReLUDropoutBackward of %d and %d elements into %d", len(g), len(x), len(out)))
	}
	s := kernels.DropoutScale(p)
	be.parallel(len(out), 2, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if x[i] > 0 {
				out[i] = g[i] * s
			} else {
				out[i] = 0
			}
		}
	})
}

var _ kernels.ReLUDropoutBackwarder = (*Backend)(nil)
