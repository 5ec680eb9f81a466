package cpu

import (
	"math"

	"github.com/xform-dev/xform/kernels"
)

// LayerNorm implements kernels.Backend. Mean and variance are accumulated in float64
// (two passes, population variance) and the normalised value is rounded to float32
// before gamma and beta are applied, as torch does.
func (be *Backend) LayerNorm(y, x, gamma, beta kernels.Buffer, rows, dim int, eps float32) {
	yd, xd, g, b := f(y), f(x), f(gamma), f(beta)
	be.parallel(rows, 8*dim, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			xr := xd[r*dim : (r+1)*dim]
			yr := yd[r*dim : (r+1)*dim]
			var s float64
			for _, v := range xr {
				s += float64(v)
			}
			mean := s / float64(dim)
			var ss float64
			for _, v := range xr {
				d := float64(v) - mean
				ss += d * d
			}
			rstd := 1 / math.Sqrt(ss/float64(dim)+float64(eps))
			for j, v := range xr {
				n := float32((float64(v) - mean) * rstd)
				yr[j] = n*g[j] + b[j]
			}
		}
	})
}
