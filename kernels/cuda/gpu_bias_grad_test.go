package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/tensor"
)

// biasGradIn is one biasGradBatch member: its 16-bit dy (bits) and its db before.
type biasGradIn struct {
	dy []uint16
	db []float32
}

// newBiasGradIns draws members random dy of the format (finite, mixed signs and
// magnitudes) and db.
func newBiasGradIns(r *rand.Rand, prec Precision, members, rows, cols int) []biasGradIn {
	ins := make([]biasGradIn, members)
	for i := range ins {
		dy := make([]uint16, rows*cols)
		for j := range dy {
			v := float32(r.NormFloat64() * math.Exp2(float64(r.IntN(9)-4)))
			if prec == FP16 {
				dy[j] = tensor.FloatToHalf(v)
			} else {
				dy[j] = tensor.FloatToBF16(v)
			}
		}
		ins[i] = biasGradIn{dy: dy, db: randVec(r, cols)}
	}
	return ins
}

// biasGradWant is db after biasGradBatch in bias_grad.cu's documented order, in float32
// on the host: each chunk of per rows (biasGradChunks) summed in row order from 0, the
// chunks' sums added in chunk order from 0, that total added to db. Float32 additions
// round to nearest on both sides, so the bits must agree.
func biasGradWant(prec Precision, in biasGradIn, rows, cols int) []float32 {
	widen := func(h uint16) float32 {
		if prec == FP16 {
			return tensor.HalfToFloat(h)
		}
		return math.Float32frombits(uint32(h) << 16)
	}
	chunks, per := biasGradChunks(rows)
	want := append([]float32(nil), in.db...)
	for c := range cols {
		var total float32
		for ch := range chunks {
			var s float32
			for r := ch * per; r < min(rows, (ch+1)*per); r++ {
				s += widen(in.dy[r*cols+c])
			}
			total += s
		}
		want[c] += total
	}
	return want
}

// uploadHalfBits puts 16-bit values (cols even) on the device as the float32 words that
// hold them in pairs, low half first; the buffer's address is the 16-bit array's.
func uploadHalfBits(g *Backend, h []uint16) kernels.Buffer {
	w := make([]float32, (len(h)+1)/2)
	for i := range w {
		lo, hi := uint32(h[2*i]), uint32(0)
		if 2*i+1 < len(h) {
			hi = uint32(h[2*i+1])
		}
		w[i] = math.Float32frombits(lo | hi<<16)
	}
	return g.Upload(w)
}

// TestBiasGradBatchSameBits runs biasGradBatch (bias_grad16_partial + bias_grad_finish)
// on batches of bf16 and fp16 dy against the host's float32 sums in the kernels'
// documented order: the same bits, for chunks that end inside and outside the loop's
// unrolled groups of 8 (rows 1, 15, 16, 17, 255–257, a bench-sized 6,888 and 8,191) and for
// column counts from 6 (one short warp) to 2,048.
func TestBiasGradBatchSameBits(t *testing.T) {
	gpu(t)
	for _, prec := range []Precision{BF16, FP16} {
		g := withPrecision(t, prec)
		for _, tc := range []struct{ members, rows, cols int }{
			{3, 6888, 512}, {2, 8191, 512}, {2, 257, 2048}, {4, 1, 512}, {2, 15, 512}, {2, 16, 512},
			{2, 17, 512}, {1, 255, 6}, {3, 256, 1536}, {1, 300, 130},
		} {
			t.Run(fmt.Sprintf("%v/%dx%dx%d", prec, tc.members, tc.rows, tc.cols), func(t *testing.T) {
				r := rand.New(rand.NewPCG(uint64(tc.rows), uint64(tc.cols)))
				ins := newBiasGradIns(r, prec, tc.members, tc.rows, tc.cols)
				dys, dbs := make([]kernels.Buffer, len(ins)), make([]kernels.Buffer, len(ins))
				jobs := make([]dwJob, len(ins))
				for i, in := range ins {
					dys[i], dbs[i] = uploadHalfBits(g, in.dy), g.Upload(in.db)
					jobs[i] = dwJob{dy: addr(dys[i]), db: addr(dbs[i]), m: tc.rows, n: tc.cols}
				}
				func() {
					g.BeginScope()
					defer g.EndScope()
					defer g.enter()()
					g.biasGradBatch(jobs, 0, 0)
				}()
				for i, in := range ins {
					got, want := down(g, dbs[i]), biasGradWant(prec, in, tc.rows, tc.cols)
					bad := 0
					for c := range want {
						if math.Float32bits(got[c]) != math.Float32bits(want[c]) {
							if bad < 3 {
								t.Errorf("member %d column %d: got %v (%#08x), want %v (%#08x)", i, c, got[c],
									math.Float32bits(got[c]), want[c], math.Float32bits(want[c]))
							}
							bad++
						}
					}
					if bad > 0 {
						t.Errorf("member %d: %d of %d columns differ", i, bad, len(want))
					}
				}
			})
		}
	}
}
