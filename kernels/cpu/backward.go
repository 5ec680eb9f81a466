package cpu

import (
	"fmt"
	"math"
	"sync"

	"github.com/xform-dev/xform/kernels"
)

var _ kernels.Trainer = (*Backend)(nil)

// LinearBackward implements kernels.Trainer with two Sgemm calls and a float64 column
// sum for the bias.
func (be *Backend) LinearBackward(dx, dw, db, dy, x, w kernels.Buffer, m, n, k int) {
	if m == 0 {
		return
	}
	if dx != nil {
		be.Gemm(false, false, m, k, n, 1, dy, n, w, k, 0, dx, k)
	}
	if dw != nil {
		be.Gemm(true, false, n, k, m, 1, dy, n, x, k, 1, dw, k)
	}
	if db != nil {
		dyd, bd := f(dy)[:m*n], f(db)[:n]
		acc := make([]float64, n)
		for r := 0; r < m; r++ {
			for j, v := range dyd[r*n : (r+1)*n] {
				acc[j] += float64(v)
			}
		}
		for j, v := range acc {
			bd[j] += float32(v)
		}
	}
}

// partials runs fn over row chunks, each with its own zeroed accumulator of size n, and
// adds the accumulators into dst in chunk order (deterministic whatever the schedule).
func (be *Backend) partials(rows, cost, n int, fn func(lo, hi int, acc []float64)) []float64 {
	w := max(1, min(be.workers, rows))
	if rows*cost < 1<<15 {
		w = 1
	}
	chunk := (rows + w - 1) / w
	nch := (rows + chunk - 1) / chunk
	accs := make([][]float64, nch)
	var wg sync.WaitGroup
	for c := 0; c < nch; c++ {
		accs[c] = make([]float64, n)
		lo, hi := c*chunk, min((c+1)*chunk, rows)
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi, accs[c])
		}()
	}
	wg.Wait()
	out := make([]float64, n)
	for _, a := range accs {
		for i, v := range a {
			out[i] += v
		}
	}
	return out
}

// LayerNormBackward implements kernels.Trainer, recomputing the row statistics in
// float64 as the forward does.
func (be *Backend) LayerNormBackward(dx, dgamma, dbeta, dy, x, gamma kernels.Buffer, rows, dim int, eps float32) {
	dxd, dyd, xd, g := f(dx), f(dy), f(x), f(gamma)
	acc := be.partials(rows, 12*dim, 2*dim, func(lo, hi int, acc []float64) {
		xhat := make([]float64, dim)
		for r := lo; r < hi; r++ {
			xr, dyr := xd[r*dim:(r+1)*dim], dyd[r*dim:(r+1)*dim]
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
			var a, b float64 // Σ dxhat, Σ dxhat·xhat
			for j, v := range xr {
				xh := (float64(v) - mean) * rstd
				xhat[j] = xh
				gy := float64(dyr[j]) * float64(g[j])
				a += gy
				b += gy * xh
				acc[j] += float64(dyr[j]) * xh
				acc[dim+j] += float64(dyr[j])
			}
			if dxd == nil {
				continue
			}
			a /= float64(dim)
			b /= float64(dim)
			dxr := dxd[r*dim : (r+1)*dim]
			for j := range dxr {
				gy := float64(dyr[j]) * float64(g[j])
				dxr[j] = float32(rstd * (gy - a - xhat[j]*b))
			}
		}
	})
	if dgamma != nil {
		for j, v := range f(dgamma)[:dim] {
			f(dgamma)[j] = v + float32(acc[j])
		}
	}
	if dbeta != nil {
		for j, v := range f(dbeta)[:dim] {
			f(dbeta)[j] = v + float32(acc[dim+j])
		}
	}
}

// ResidualBackward implements kernels.Trainer.
func (be *Backend) ResidualBackward(dx, domega, dy, x, omega kernels.Buffer, alpha float32, rows, dim int) {
	dxd, dyd, xd, om := f(dx), f(dy), f(x), f(omega)
	n := rows * dim
	if dxd != nil {
		if om == nil {
			for i, v := range dyd[:n] {
				dxd[i] += v * alpha
			}
		} else {
			for r := 0; r < rows; r++ {
				o := r * dim
				for j, w := range om[:dim] {
					dxd[o+j] += (dyd[o+j] * w) * alpha
				}
			}
		}
	}
	if domega != nil {
		acc := make([]float64, dim)
		for r := 0; r < rows; r++ {
			o := r * dim
			for j := range acc {
				acc[j] += float64(xd[o+j]) * float64(dyd[o+j])
			}
		}
		dom := f(domega)[:dim]
		for j, v := range acc {
			dom[j] += float32(v * float64(alpha))
		}
	}
}

// ActivateBackward implements kernels.Trainer; derivatives are evaluated in float64.
func (be *Backend) ActivateBackward(dx, dy, x kernels.Buffer, act kernels.Activation) {
	dxd, dyd, xd := f(dx), f(dy), f(x)
	var fn func(z float64) float64
	switch act {
	case kernels.ReLU:
		for i, v := range xd {
			if v > 0 {
				dxd[i] = dyd[i]
			} else {
				dxd[i] = 0
			}
		}
		return
	case kernels.Linear:
		if &dxd[0] != &dyd[0] {
			copy(dxd, dyd)
		}
		return
	case kernels.GELU:
		fn = func(z float64) float64 {
			return 0.5*(1+math.Erf(z/math.Sqrt2)) + z*math.Exp(-z*z/2)/math.Sqrt(2*math.Pi)
		}
	case kernels.GELUAccurate:
		c := math.Sqrt(2 / math.Pi)
		fn = func(z float64) float64 {
			t := math.Tanh(c * (z + 0.044715*z*z*z))
			return 0.5*(1+t) + 0.5*z*(1-t*t)*c*(1+3*0.044715*z*z)
		}
	case kernels.Tanh:
		fn = func(z float64) float64 { t := math.Tanh(z); return 1 - t*t }
	default:
		panic(fmt.Sprintf("cpu backend: unknown activation %q", act))
	}
	be.parallel(len(xd), 30, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			dxd[i] = float32(float64(dyd[i]) * fn(float64(xd[i])))
		}
	})
}

// EmbedBackward implements kernels.Trainer (serially: ids repeat).
func (*Backend) EmbedBackward(dtable, dy kernels.Buffer, ids []int32, dim int, scale float32, skip int32) {
	t, dyd := f(dtable), f(dy)
	for i, id := range ids {
		if id == skip {
			continue
		}
		row := t[int(id)*dim : (int(id)+1)*dim]
		for j, v := range dyd[i*dim : (i+1)*dim] {
			row[j] += scale * v
		}
	}
}

// Mul implements kernels.Trainer.
func (*Backend) Mul(y, x, m kernels.Buffer) {
	yd, xd, md := f(y), f(x), f(m)
	for i, v := range xd[:len(md)] {
		yd[i] = v * md[i]
	}
}

// AddTo implements kernels.Trainer.
func (*Backend) AddTo(y, x kernels.Buffer) {
	yd := f(y)
	for i, v := range f(x) {
		yd[i] += v
	}
}

// Fill implements kernels.Trainer.
func (*Backend) Fill(x kernels.Buffer, v float32) {
	d := f(x)
	for i := range d {
		d[i] = v
	}
}

// SumSquares implements kernels.Trainer.
func (*Backend) SumSquares(x kernels.Buffer) float64 {
	var s float64
	for _, v := range f(x) {
		s += float64(v) * float64(v)
	}
	return s
}

// Scale implements kernels.Trainer.
func (*Backend) Scale(x kernels.Buffer, a float32) {
	d := f(x)
	for i, v := range d {
		d[i] = v * a
	}
}

// LabelSmoothedLoss implements kernels.Trainer. The log_softmax is the forward's
// (float32 values, float64 sum); the sums accumulate in float64.
func (be *Backend) LabelSmoothedLoss(dlogits, logits kernels.Buffer, targets []int32, rows, V int, eps float32, ignore int32, scale float32) (loss, nll float64) {
	ld, dd := f(logits), f(dlogits)
	epsI := float64(eps) / float64(V)
	acc := be.partials(rows, 30*V, 2, func(lo, hi int, acc []float64) {
		lp := make([]float32, V)
		for r := lo; r < hi; r++ {
			t := targets[r]
			if t == ignore {
				if dd != nil {
					clear(dd[r*V : (r+1)*V])
				}
				continue
			}
			logSoftmaxRow(lp, ld[r*V:(r+1)*V])
			var smooth float64
			for _, v := range lp {
				smooth -= float64(v)
			}
			acc[0] += (1-float64(eps))*float64(-lp[t]) + epsI*smooth
			acc[1] += float64(-lp[t])
			if dd != nil {
				dr := dd[r*V : (r+1)*V]
				for j, v := range lp {
					g := math.Exp(float64(v)) - epsI
					if int32(j) == t {
						g -= 1 - float64(eps)
					}
					dr[j] = float32(g * float64(scale))
				}
			}
		}
	})
	return acc[0], acc[1]
}

// AdamStep implements kernels.Trainer in float32, in the reference's operation order.
func (be *Backend) AdamStep(p, g, m, v kernels.Buffer, s kernels.OptimStep) {
	pd, gd, md, vd := f(p), f(g), f(m), f(v)
	be.parallel(len(pd), 20, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			gi := gd[i]
			vd[i] = vd[i]*s.Beta2 + s.OneMinusBeta2*gi*gi
			md[i] = md[i]*s.Beta1 + s.OneMinusBeta1*gi
			x := pd[i]
			if s.Decay != 0 {
				x += s.Decay * x
			}
			if s.Update {
				den := float32(math.Sqrt(float64(vd[i]))) + s.Eps
				x += -s.StepSize * (md[i] / den)
			}
			pd[i] = x
		}
	})
}
