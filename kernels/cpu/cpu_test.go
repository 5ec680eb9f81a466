package cpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

func randSlice(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

func maxAbsDiff(a []float32, b []float64) float64 {
	var m float64
	for i := range a {
		d := math.Abs(float64(a[i]) - b[i])
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		m = max(m, d)
	}
	return m
}

func TestLinear(t *testing.T) {
	for _, tc := range []struct {
		name    string
		m, n, k int
		bias    bool
		opts    []Option
	}{
		{"tiny", 1, 3, 2, true, nil}, {"nobias", 5, 7, 9, false, nil}, {"large", 70, 130, 64, true, nil},
		{"f32/tiny", 1, 3, 2, true, []Option{WithFloat32Linear()}}, {"f32/large", 70, 130, 64, true, []Option{WithFloat32Linear()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := New(0, tc.opts...)
			r := rand.New(rand.NewPCG(1, 2))
			x, w, bias := randSlice(r, tc.m*tc.k), randSlice(r, tc.n*tc.k), randSlice(r, tc.n)
			y := be.Alloc(tc.m * tc.n)
			var bb kernels.Buffer
			if tc.bias {
				bb = be.Upload(bias)
			}
			be.Linear(y, be.Upload(x), be.Upload(w), bb, tc.m, tc.n, tc.k)
			want := make([]float64, tc.m*tc.n)
			for i := 0; i < tc.m; i++ {
				for j := 0; j < tc.n; j++ {
					var s float64
					if tc.bias {
						s = float64(bias[j])
					}
					for l := 0; l < tc.k; l++ {
						s += float64(x[i*tc.k+l]) * float64(w[j*tc.k+l])
					}
					want[i*tc.n+j] = s
				}
			}
			if d := maxAbsDiff(Data(y), want); d > 1e-4 {
				t.Fatalf("max abs diff %g", d)
			}
		})
	}
}

func TestLayerNormSoftmax(t *testing.T) {
	be := New(0)
	r := rand.New(rand.NewPCG(3, 4))
	rows, dim := 9, 33
	x, g, b := randSlice(r, rows*dim), randSlice(r, dim), randSlice(r, dim)
	y := be.Alloc(rows * dim)
	be.LayerNorm(y, be.Upload(x), be.Upload(g), be.Upload(b), rows, dim, 1e-5)
	want := make([]float64, rows*dim)
	sm := make([]float64, rows*dim)
	lsm := make([]float64, rows*dim)
	for i := 0; i < rows; i++ {
		var mu, v, mx, z float64
		row := x[i*dim : (i+1)*dim]
		mx = math.Inf(-1)
		for _, e := range row {
			mu += float64(e)
			mx = max(mx, float64(e))
		}
		mu /= float64(dim)
		for _, e := range row {
			v += (float64(e) - mu) * (float64(e) - mu)
			z += math.Exp(float64(e) - mx)
		}
		v /= float64(dim)
		for j, e := range row {
			want[i*dim+j] = (float64(e)-mu)/math.Sqrt(v+1e-5)*float64(g[j]) + float64(b[j])
			sm[i*dim+j] = math.Exp(float64(e)-mx) / z
			lsm[i*dim+j] = float64(e) - mx - math.Log(z)
		}
	}
	if d := maxAbsDiff(Data(y), want); d > 1e-5 {
		t.Errorf("layernorm: max abs diff %g", d)
	}
	be.Softmax(y, be.Upload(x), rows, dim)
	if d := maxAbsDiff(Data(y), sm); d > 1e-6 {
		t.Errorf("softmax: max abs diff %g", d)
	}
	be.LogSoftmax(y, be.Upload(x), rows, dim)
	if d := maxAbsDiff(Data(y), lsm); d > 1e-5 {
		t.Errorf("log_softmax: max abs diff %g", d)
	}
}

func TestActivations(t *testing.T) {
	be := New(1)
	x := []float32{-3, -0.5, 0, 0.25, 2}
	for _, tc := range []struct {
		act kernels.Activation
		fn  func(float64) float64
	}{
		{kernels.ReLU, func(v float64) float64 { return max(v, 0) }},
		{kernels.GELU, func(v float64) float64 { return v * 0.5 * (1 + math.Erf(v/math.Sqrt2)) }},
		{kernels.GELUAccurate, func(v float64) float64 {
			return 0.5 * v * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v)))
		}},
		{kernels.Tanh, math.Tanh},
		{kernels.Linear, func(v float64) float64 { return v }},
	} {
		t.Run(string(tc.act), func(t *testing.T) {
			y := be.Alloc(len(x))
			be.Activate(y, be.Upload(x), tc.act)
			want := make([]float64, len(x))
			for i, v := range x {
				want[i] = tc.fn(float64(v))
			}
			if d := maxAbsDiff(Data(y), want); d > 1e-6 {
				t.Fatalf("max abs diff %g", d)
			}
		})
	}
}

func TestResidualEmbed(t *testing.T) {
	be := New(1)
	x := []float32{1, 2, 3, 4}
	br := []float32{10, 20, 30, 40}
	om := []float32{0.5, 2}
	for _, tc := range []struct {
		name  string
		omega []float32
		alpha float32
		want  []float64
	}{
		{"plain", nil, 1, []float64{11, 22, 33, 44}},
		{"admin", om, 1, []float64{10.5, 24, 31.5, 48}},
		{"deepnet", nil, 2, []float64{12, 24, 36, 48}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := be.Alloc(4)
			var ob kernels.Buffer
			if tc.omega != nil {
				ob = be.Upload(tc.omega)
			}
			be.Residual(y, be.Upload(x), be.Upload(br), ob, tc.alpha, 2, 2)
			if d := maxAbsDiff(Data(y), tc.want); d != 0 {
				t.Fatalf("got %v want %v", Data(y), tc.want)
			}
		})
	}
	tab := be.Upload([]float32{0, 0, 1, 2, 3, 4})
	y := be.Alloc(4)
	be.Embed(y, tab, []int32{2, 1}, 2, 2)
	be.AddRows(y, tab, []int32{1, 2}, 2)
	if d := maxAbsDiff(Data(y), []float64{7, 10, 5, 8}); d != 0 {
		t.Fatalf("embed: got %v", Data(y))
	}
}

// naiveAttention is the float64 reference: scores, masks, softmax, weighted sum.
func naiveAttention(q, k, v []float32, B, H, D, TQ, TK int, pad []bool, causal bool, off int) []float64 {
	C := H * D
	out := make([]float64, B*TQ*C)
	for b := 0; b < B; b++ {
		for h := 0; h < H; h++ {
			for i := 0; i < TQ; i++ {
				s := make([]float64, TK)
				mx := math.Inf(-1)
				for j := 0; j < TK; j++ {
					if (pad != nil && pad[b*TK+j]) || (causal && j > i+off) {
						s[j] = math.Inf(-1)
						continue
					}
					for d := 0; d < D; d++ {
						s[j] += float64(q[(b*TQ+i)*C+h*D+d]) * 0.5 * float64(k[(b*TK+j)*C+h*D+d])
					}
					mx = max(mx, s[j])
				}
				var z float64
				for j := range s {
					s[j] = math.Exp(s[j] - mx)
					z += s[j]
				}
				for j := range s {
					for d := 0; d < D; d++ {
						out[(b*TQ+i)*C+h*D+d] += s[j] / z * float64(v[(b*TK+j)*C+h*D+d])
					}
				}
			}
		}
	}
	return out
}

func TestAttention(t *testing.T) {
	for _, tc := range []struct {
		name         string
		B, H, D      int
		TQ, TK       int
		withPad      bool
		causal       bool
		off, workers int
	}{
		{"enc", 2, 2, 4, 5, 5, true, false, 0, 1},
		{"causal", 3, 4, 8, 6, 6, false, true, 0, 4},
		{"step", 2, 2, 4, 1, 7, true, true, 6, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := New(tc.workers)
			r := rand.New(rand.NewPCG(5, 6))
			C := tc.H * tc.D
			q, k, v := randSlice(r, tc.B*tc.TQ*C), randSlice(r, tc.B*tc.TK*C), randSlice(r, tc.B*tc.TK*C)
			var pad []bool
			if tc.withPad {
				pad = make([]bool, tc.B*tc.TK)
				pad[tc.TK-1] = true // batch 0: last key padded
				pad[tc.TK] = true   // batch 1: first key padded (left padding)
			}
			out := be.Alloc(tc.B * tc.TQ * C)
			view := func(buf kernels.Buffer, T int) kernels.View {
				return kernels.View{Buf: buf, BatchStride: T * C, RowStride: C}
			}
			probs := be.Alloc(tc.B * tc.TQ * tc.TK)
			be.Attention(view(out, tc.TQ), view(be.Upload(q), tc.TQ), view(be.Upload(k), tc.TK), view(be.Upload(v), tc.TK),
				kernels.AttentionArgs{Batch: tc.B, Heads: tc.H, HeadDim: tc.D, TQ: tc.TQ, TK: tc.TK, Scale: 0.5,
					KeyPadding: pad, KeyPadStride: tc.TK, Causal: tc.causal, QueryOffset: tc.off, Probs: probs})
			want := naiveAttention(q, k, v, tc.B, tc.H, tc.D, tc.TQ, tc.TK, pad, tc.causal, tc.off)
			if d := maxAbsDiff(Data(out), want); d > 1e-5 {
				t.Fatalf("max abs diff %g", d)
			}
			for row := 0; row < tc.B*tc.TQ; row++ {
				var s float64
				for _, p := range Data(probs)[row*tc.TK : (row+1)*tc.TK] {
					s += float64(p)
				}
				if math.Abs(s-1) > 1e-5 {
					t.Fatalf("mean probs row %d sums to %g", row, s)
				}
			}
		})
	}
}
