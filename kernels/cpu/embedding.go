package cpu

import "github.com/xform-dev/xform/kernels"

// Embed implements kernels.Backend.
func (*Backend) Embed(y, table kernels.Buffer, ids []int32, dim int, scale float32) {
	yd, t := f(y), f(table)
	for i, id := range ids {
		row := t[int(id)*dim : (int(id)+1)*dim]
		out := yd[i*dim : (i+1)*dim]
		for j, v := range row {
			out[j] = scale * v
		}
	}
}

// AddRows implements kernels.Backend.
func (*Backend) AddRows(y, table kernels.Buffer, rows []int32, dim int) {
	yd, t := f(y), f(table)
	for i, r := range rows {
		row := t[int(r)*dim : (int(r)+1)*dim]
		out := yd[i*dim : (i+1)*dim]
		for j, v := range row {
			out[j] += v
		}
	}
}
