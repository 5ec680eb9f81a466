package cpu

import (
	"math"

	"github.com/xform-dev/xform/kernels"
)

// Softmax implements kernels.Backend (float32 in and out, float64 sum).
func (be *Backend) Softmax(y, x kernels.Buffer, rows, dim int) {
	yd, xd := f(y), f(x)
	be.parallel(rows, 20*dim, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			softmaxRow(yd[r*dim:(r+1)*dim], xd[r*dim:(r+1)*dim])
		}
	})
}

// LogSoftmax implements kernels.Backend: x − max − log Σ exp(x − max), as torch's
// log_softmax in float32.
func (be *Backend) LogSoftmax(y, x kernels.Buffer, rows, dim int) {
	yd, xd := f(y), f(x)
	be.parallel(rows, 20*dim, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			logSoftmaxRow(yd[r*dim:(r+1)*dim], xd[r*dim:(r+1)*dim])
		}
	})
}

func rowMax(x []float32) float32 {
	m := float32(math.Inf(-1))
	for _, v := range x {
		if v > m || v != v {
			m = v
		}
	}
	return m
}

// softmaxRow normalises one row; an all −inf row yields NaN, as in torch.
func softmaxRow(y, x []float32) {
	m := float64(rowMax(x))
	var s float64
	for j, v := range x {
		e := math.Exp(float64(v) - m)
		y[j] = float32(e)
		s += e
	}
	inv := 1 / s
	for j, v := range x {
		y[j] = float32(math.Exp(float64(v)-m) * inv)
	}
}

func logSoftmaxRow(y, x []float32) {
	m := rowMaxFast(x)
	if math.IsInf(float64(m), 0) || m != m {
		logSoftmaxRowScalar(y, x)
		return
	}
	// A NaN that rowMaxFast dropped makes s, and so every output, NaN as below.
	c := m + float32(math.Log(expSum(x, m)))
	subConst(y, x, c)
}

// logSoftmaxRowScalar is the reference loop, also used for rows whose maximum is not
// finite (all −inf gives NaN, as in torch).
func logSoftmaxRowScalar(y, x []float32) {
	m := rowMax(x)
	var s float64
	for _, v := range x {
		s += math.Exp(float64(v - m))
	}
	// torch forms max + log Σ first and subtracts it once.
	c := m + float32(math.Log(s))
	for j, v := range x {
		y[j] = v - c
	}
}
