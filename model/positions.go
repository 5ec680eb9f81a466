package model

import (
	"fmt"
	"math"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/tensor"
)

// positions is a positional-embedding table indexed by fairseq position ids: a
// non-pad token at 1-based rank n among the non-pad tokens of its row gets id Pad+n,
// a pad token gets Pad (a zero row).
type positions struct {
	table kernels.Buffer
	rows  int
}

func newPositions(be kernels.Backend, learned bool, w *tensor.Tensor, d, maxPos int) (*positions, error) {
	rows := maxPos + Pad + 1
	if learned {
		if w == nil {
			return nil, fmt.Errorf("learned positions without a weight")
		}
		v, err := w.F32()
		if err != nil {
			return nil, err
		}
		return &positions{table: be.Upload(v), rows: w.Shape[0]}, nil
	}
	return &positions{table: be.Upload(Sinusoids(rows, d)), rows: rows}, nil
}

// Sinusoids builds fairseq's sinusoidal table [rows, d]: with half = d/2 and
// f_i = exp(−i·ln(10000)/(half−1)), row p is [sin(p·f_0..f_{half−1}) | cos(...)]
// (concatenated, not interleaved), a zero last column when d is odd, and the pad row
// zero. The frequencies and the products p·f_i are rounded to float32 as torch forms
// them, so the arguments of sin and cos are the reference's bit for bit.
func Sinusoids(rows, d int) []float32 {
	half := d / 2
	c := math.Log(10000) / float64(half-1)
	freq := make([]float32, half)
	for i := range freq {
		freq[i] = float32(math.Exp(float64(float32(i) * float32(-c))))
	}
	out := make([]float32, rows*d)
	for p := 0; p < rows; p++ {
		if p == Pad {
			continue
		}
		row := out[p*d : (p+1)*d]
		for i, fr := range freq {
			arg := float64(float32(p) * fr)
			row[i] = float32(math.Sin(arg))
			row[half+i] = float32(math.Cos(arg))
		}
	}
	return out
}

// positionIDs returns fairseq's make_positions for a padded [B, T] batch.
func positionIDs(tokens []int32, B, T int) []int32 {
	ids := make([]int32, len(tokens))
	for b := 0; b < B; b++ {
		n := int32(0)
		for t := 0; t < T; t++ {
			if tokens[b*T+t] == Pad {
				ids[b*T+t] = Pad
				continue
			}
			n++
			ids[b*T+t] = Pad + n
		}
	}
	return ids
}
