package cpu

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// BenchmarkLinearGemm times y[m,n] = x[m,k]·wᵀ (w [n,k], the Linear layout) on the
// shapes of a transformer_wmt_en_de decoder step and encoder pass, for every path in
// one run so the GFLOP/s are comparable: the default kernel, the portable kernel, the
// float64 reference Linear and gonum's Sgemm (the old --fast-linear).
func BenchmarkLinearGemm(b *testing.B) {
	paths := []struct {
		name string
		run  func(be *Backend, y, x, w []float32, m, n, k int)
		opts []Option
	}{
		{"kernel=" + defaultKernel.name, linearRun, nil},
		{"kernel=generic", linearRun, []Option{withKernel(genericKernel)}},
		{"float64", linearRun, []Option{WithFloat64Linear()}},
		{"gonum-sgemm", func(_ *Backend, y, x, w []float32, m, n, k int) {
			gonum.Implementation{}.Sgemm(blas.NoTrans, blas.Trans, m, n, k, 1, x, k, w, k, 0, y, n)
		}, nil},
	}
	for _, s := range []struct{ m, n, k int }{{32, 512, 512}, {128, 512, 2048}, {128, 32008, 512}, {1024, 512, 512}} {
		r := rand.New(rand.NewPCG(1, 1))
		x, w, y := randSlice(r, s.m*s.k), randSlice(r, s.n*s.k), make([]float32, s.m*s.n)
		for _, p := range paths {
			if p.name == "kernel=generic" && defaultKernel.name == "generic" {
				continue
			}
			b.Run(fmt.Sprintf("%dx%dx%d/%s", s.m, s.n, s.k, p.name), func(b *testing.B) {
				be := New(0, p.opts...)
				for b.Loop() {
					p.run(be, y, x, w, s.m, s.n, s.k)
				}
				b.ReportMetric(2*float64(s.m)*float64(s.n)*float64(s.k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}

func linearRun(be *Backend, y, x, w []float32, m, n, k int) {
	be.Linear(Wrap(y), Wrap(x), Wrap(w), nil, m, n, k)
}

// BenchmarkTileKernel times the tile kernel alone on operands that stay in L1: the
// ceiling that the blocking in gemmNT is measured against.
func BenchmarkTileKernel(b *testing.B) {
	const k = kcChunk
	r := rand.New(rand.NewPCG(1, 1))
	x, w := randSlice(r, tileM*k), randSlice(r, tileN*k)
	var xs [tileM]*float32
	var ws [tileN]*float32
	for t := range xs {
		xs[t] = &x[t*k]
	}
	for t := range ws {
		ws[t] = &w[t*k]
	}
	var acc [tileM * tileN]float64
	for b.Loop() {
		defaultKernel.fn(&xs, &ws, k, &acc)
	}
	b.ReportMetric(2*tileM*tileN*k*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}
