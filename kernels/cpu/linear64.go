package cpu

import "github.com/xform-dev/xform/kernels"

// linear64Tiles is the float64 reference Linear: every output is one dot product of a
// row of x and a row of w, accumulated in float64 and rounded once (then the bias
// added in float64 too), i.e. the exactly rounded value. Outputs are computed in 4×4
// tiles so each loaded element is used four times.
func (be *Backend) linear64Tiles(y, x, w, bias kernels.Buffer, m, n, k int) {
	yd, xd, wd, bd := f(y), f(x), f(w), f(bias)
	rowBlocks := (m + 3) / 4
	colBlocks := (n + 3) / 4
	be.parallel(rowBlocks*colBlocks, 32*k, func(lo, hi int) {
		for blk := lo; blk < hi; blk++ {
			// Column blocks vary fastest so consecutive work items share x rows.
			i0, j0 := (blk/colBlocks)*4, (blk%colBlocks)*4
			if i0+4 <= m && j0+4 <= n {
				tile4x4(yd, xd, wd, bd, i0, j0, n, k)
				continue
			}
			for i := i0; i < min(i0+4, m); i++ {
				xr := xd[i*k : (i+1)*k]
				for j := j0; j < min(j0+4, n); j++ {
					wr := wd[j*k : (j+1)*k]
					var s float64
					for l, v := range xr {
						s += float64(v) * float64(wr[l])
					}
					if bd != nil {
						s += float64(bd[j])
					}
					yd[i*n+j] = float32(s)
				}
			}
		}
	})
}

func tile4x4(y, x, w, bias []float32, i0, j0, n, k int) {
	x0, x1, x2, x3 := x[i0*k:][:k], x[(i0+1)*k:][:k], x[(i0+2)*k:][:k], x[(i0+3)*k:][:k]
	w0, w1, w2, w3 := w[j0*k:][:k], w[(j0+1)*k:][:k], w[(j0+2)*k:][:k], w[(j0+3)*k:][:k]
	var s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33 float64
	for l := 0; l < k; l++ {
		a0, a1, a2, a3 := float64(x0[l]), float64(x1[l]), float64(x2[l]), float64(x3[l])
		b0, b1, b2, b3 := float64(w0[l]), float64(w1[l]), float64(w2[l]), float64(w3[l])
		s00 += a0 * b0
		s01 += a0 * b1
		s02 += a0 * b2
		s03 += a0 * b3
		s10 += a1 * b0
		s11 += a1 * b1
		s12 += a1 * b2
		s13 += a1 * b3
		s20 += a2 * b0
		s21 += a2 * b1
		s22 += a2 * b2
		s23 += a2 * b3
		s30 += a3 * b0
		s31 += a3 * b1
		s32 += a3 * b2
		s33 += a3 * b3
	}
	var c0, c1, c2, c3 float64
	if bias != nil {
		c0, c1, c2, c3 = float64(bias[j0]), float64(bias[j0+1]), float64(bias[j0+2]), float64(bias[j0+3])
	}
	put := func(i int, a, b, c, d float64) {
		r := y[(i0+i)*n+j0:][:4]
		r[0], r[1], r[2], r[3] = float32(a+c0), float32(b+c1), float32(c+c2), float32(d+c3)
	}
	put(0, s00, s01, s02, s03)
	put(1, s10, s11, s12, s13)
	put(2, s20, s21, s22, s23)
	put(3, s30, s31, s32, s33)
}
