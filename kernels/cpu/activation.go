package cpu

import (
	"fmt"
	"math"

	"github.com/xform-dev/xform/kernels"
)

// Activate implements kernels.Backend. Transcendentals are evaluated in float64 and
// rounded once, which is at least as accurate as torch's float32 kernels.
func (be *Backend) Activate(y, x kernels.Buffer, act kernels.Activation) {
	yd, xd := f(y), f(x)
	var fn func(float32) float32
	switch act {
	case kernels.ReLU:
		be.parallel(len(xd), 2, func(lo, hi int) { relu(yd[lo:hi], xd[lo:hi]) })
		return
	case kernels.GELU:
		fn = func(v float32) float32 {
			z := float64(v)
			return float32(z * 0.5 * (1 + math.Erf(z/math.Sqrt2)))
		}
	case kernels.GELUAccurate:
		c := math.Sqrt(2 / math.Pi)
		fn = func(v float32) float32 {
			z := float64(v)
			return float32(0.5 * z * (1 + math.Tanh(c*(z+0.044715*z*z*z))))
		}
	case kernels.Tanh:
		fn = func(v float32) float32 { return float32(math.Tanh(float64(v))) }
	case kernels.Linear:
		if &yd[0] != &xd[0] {
			copy(yd, xd)
		}
		return
	default:
		panic(fmt.Sprintf("cpu backend: unknown activation %q", act))
	}
	be.parallel(len(xd), 20, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			yd[i] = fn(xd[i])
		}
	})
}
