package cpu

import "github.com/xform-dev/xform/kernels"

// Copy2D implements kernels.Backend.
func (*Backend) Copy2D(dst kernels.Buffer, dOff, dStride int, src kernels.Buffer, sOff, sStride int, rows, cols int) {
	d, s := f(dst), f(src)
	for r := 0; r < rows; r++ {
		copy(d[dOff+r*dStride:dOff+r*dStride+cols], s[sOff+r*sStride:sOff+r*sStride+cols])
	}
}

// GatherRows implements kernels.Backend.
func (*Backend) GatherRows(dst kernels.Buffer, dStride int, src kernels.Buffer, sStride int, idx []int32, n int) {
	d, s := f(dst), f(src)
	for i, j := range idx {
		copy(d[i*dStride:i*dStride+n], s[int(j)*sStride:int(j)*sStride+n])
	}
}
