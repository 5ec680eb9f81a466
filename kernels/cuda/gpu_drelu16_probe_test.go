package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
)

// TestDReLU16Probe asks cuBLASLt what the FFN backward's fold (relu_fold.go) relies on,
// and what it would need to also fold fc1's bias gradient into fc2's dx product, and
// logs the answers; it fails where the fold's assumptions break:
//   - the layout of the ReLU mask that CUBLASLT_EPILOGUE_RELU_AUX_BIAS writes (so that
//     the dropout pass could write one): bit (row r, feature f) at bit r·ld + f of the
//     32-bit little-endian words, ld = ⌈F/128⌉·128, against the float32 output a > 0;
//   - whether DRELU_BGRAD and DRELU plan with a 16-bit D (bias gradient fp32 or 16-bit),
//     and how their outputs compare with the float32-D epilogue's, RN16 of it.
func TestDReLU16Probe(t *testing.T) {
	for _, ft := range formats {
		t.Run(ft.prec.String(), func(t *testing.T) {
			g := withPrecision(t, ft.prec)
			const m, d, F = 1000, 512, 2048
			r := rand.New(rand.NewPCG(77, uint64(ft.prec)))
			x, w1, b1 := g.Upload(randVec(r, m*d)), g.Upload(scaled(randVec(r, F*d), 1/math.Sqrt(d))), g.Upload(randVec(r, F))
			a := g.Alloc(m * F)
			aux, ok := g.LinearAct(a, x, w1, b1, m, F, d, kernels.ReLU)
			if !ok {
				t.Fatal("LinearAct with the ReLU epilogue declined")
			}
			ld, elems := actAux(kernels.ReLU, m, F)
			words := down(g, aux)
			av := down(g, a)
			if len(words) != elems {
				t.Fatalf("aux of %d words, want %d", len(words), elems)
			}
			bad, pos := 0, 0
			for row := 0; row < m; row++ {
				for f := 0; f < F; f++ {
					i := row*ld + f
					bit := math.Float32bits(words[i/32])>>(i%32)&1 == 1
					if av[row*F+f] > 0 {
						pos++
					}
					if bit != (av[row*F+f] > 0) {
						bad++
					}
				}
			}
			t.Logf("RELU_AUX mask as bit r·%d + f: %d of %d elements disagree with a > 0 (%d positive)", ld, bad, m*F, pos)
			if bad != 0 {
				t.Errorf("the ReLU mask is not laid out as relu_fold.go assumes")
				var s string
				for i := 0; i < 4; i++ {
					s += fmt.Sprintf(" %08x", math.Float32bits(words[i]))
				}
				var e string
				for i := 0; i < 4; i++ {
					var w uint32
					for b := 0; b < 32; b++ {
						if av[32*i+b] > 0 {
							w |= 1 << b
						}
					}
					e += fmt.Sprintf(" %08x", w)
				}
				t.Logf("first words of the mask:%s; a > 0 of row 0 packed:%s", s, e)
			}

			// dpre [m, F] = dy [m, d] · w2 [d, F], masked, db1 = Σ_rows dpre.
			dyv, w2v := randVec(r, m*d), scaled(randVec(r, d*F), 1/math.Sqrt(d))
			dy16, w216 := g.AllocHalf(m*d), g.AllocHalf(d*F)
			g.RoundAll([]kernels.Buffer{dy16, w216}, []kernels.Buffer{g.Upload(dyv), g.Upload(w2v)})
			ref, refGrad := g.Alloc(m*F), g.Upload(make([]float32, F))
			g.LinearActBackward(ref, nil, nil, refGrad, dy16, a, g.Upload(w2v), aux, m, d, F, kernels.ReLU)
			refv, refg := down(g, ref), down(g, refGrad)
			for _, c := range []struct {
				name      string
				epi       uint32
				bias16    bool
				wantGrads bool
			}{{"DRELU_BGRAD fp32 bias", ltEpiDReluBGrad, false, true}, {"DRELU_BGRAD 16-bit bias", ltEpiDReluBGrad, true, true}, {"DRELU", ltEpiDRelu, false, false}} {
				out := g.AllocHalf(m * F)
				var grad kernels.Buffer
				if c.wantGrads {
					if c.bias16 {
						grad = g.AllocHalf(F)
					} else {
						grad = g.Alloc(F)
					}
				}
				dt := g.dataType16()
				bt := uintptr(cudaR32F)
				func() {
					defer g.enter()()
					var gradPtr uint64
					if c.bias16 {
						gradPtr, bt = halfOf(grad).dptr(), dt
					} else if grad != nil {
						gradPtr = addr(grad)
					}
					p := g.ltPlanDB(false, false, m, F, d, d, F, F, halfOf(out).dptr(), c.epi, gradPtr, addr(aux), ld, dt, bt)
					if p == nil {
						t.Logf("%s with a 16-bit D: no plan (%v)", c.name, g.lt.first)
						return
					}
					if !g.ltRunAux(p, halfOf(dy16).dptr(), halfOf(w216).dptr(), 0, halfOf(out).dptr(), gradPtr, addr(aux)) {
						t.Logf("%s with a 16-bit D: refused at run time", c.name)
						return
					}
					t.Logf("%s with a 16-bit D: planned and ran", c.name)
				}()
				got := downHalf(t, g, out)
				diff, worst := 0, 0.0
				for i := range got {
					want := ft.round16(refv[i])
					if got[i] != want {
						diff++
						worst = max(worst, math.Abs(float64(got[i]-want))/max(math.Abs(float64(refv[i])), 1e-30))
					}
				}
				t.Logf("%s: %d of %d outputs differ from RN16 of the float32-D epilogue's (worst relative %.3g)", c.name, diff, len(got), worst)
				if c.epi == ltEpiDRelu && diff != 0 {
					t.Errorf("DRELU with a 16-bit D is not RN16 of its float32-D output (relu_fold.go relies on it)")
				}
				if grad != nil {
					var gv []float32
					if c.bias16 {
						gv = downHalf(t, g, grad)
					} else {
						gv = down(g, grad)
					}
					worstG := 0.0
					for i := range gv {
						worstG = max(worstG, math.Abs(float64(gv[i]-refg[i]))/max(math.Abs(float64(refg[i])), 1e-6))
					}
					t.Logf("%s: bias gradient worst relative difference from the float32-D epilogue's %.3g", c.name, worstG)
				}
			}
		})
	}
}

// TestDReLU16CandidatesTiming times, at the bench's fc2 input-gradient shape (7872×2048
// from 512, bf16), the plain product with a 16-bit D and each of the heuristic's first
// eight algorithms for the same product with CUBLASLT_EPILOGUE_DRELU (the ReLU fold's,
// relu_fold.go): the plan takes the first, which ran at 109 against 33.5 µs in the
// tenth session's profile, and the autotune skips plans with an auxiliary matrix. If a
// candidate runs near the plain product, the fold can pay off by choosing it. Logs only.
func TestDReLU16CandidatesTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	g := withPrecision(t, BF16)
	g.BeginScope()
	defer g.EndScope()
	const m, d, F = 7872, 512, 2048
	r := rand.New(rand.NewPCG(3, 4))
	dy, w2 := upload16(g, randVec(r, m*d)), upload16(g, randVec(r, d*F))
	out := g.AllocHalf(m * F)
	mask := g.Upload(make([]float32, m*F/32)) // every bit 0: the timing does not depend on it
	ld, _ := actAux(kernels.ReLU, m, F)
	var plain, drelu *ltPlan
	var res []ltHeuristicResult
	func() {
		defer g.enter()()
		if !g.ltReady() {
			t.Skip("no cuBLASLt")
		}
		dt := g.dataType16()
		plain = g.ltPlanD(false, false, m, F, d, d, F, F, halfOf(out).dptr(), ltEpiDefault, 0, 0, 0, dt)
		drelu = g.ltPlanD(false, false, m, F, d, d, F, F, halfOf(out).dptr(), ltEpiDRelu, 0, addr(mask), ld, dt)
		if plain == nil || drelu == nil {
			t.Fatalf("plans: plain %v, DRELU %v", plain != nil, drelu != nil)
		}
		var err error
		if res, err = g.ltHeuristicN(drelu, drelu.key, 8); err != nil {
			t.Fatal(err)
		}
	}()
	run := func(p *ltPlan, algo [8]uint64) func() {
		return func() {
			defer g.enter()()
			s := &g.lt
			alpha, beta := float32(1), float32(0)
			a, b, c := halfOf(dy).dptr(), halfOf(w2).dptr(), halfOf(out).dptr()
			if err := ltCheck("cublasLtMatmul", call(s.lib.matmul, s.handle, p.desc, uintptr(unsafe.Pointer(&alpha)),
				uintptr(b), p.a, uintptr(a), p.b, uintptr(unsafe.Pointer(&beta)), uintptr(c), p.c, uintptr(c), p.c,
				uintptr(unsafe.Pointer(&algo)), uintptr(s.ws), uintptr(s.wsSize), 0)); err != nil {
				t.Fatal(err)
			}
		}
	}
	line := fmt.Sprintf("%d×%d from %d, µs per call: plain (16-bit D) %.1f; DRELU candidates:", m, F, d, us(timeDevice(t, g, 20, run(plain, plain.algo))))
	for _, h := range res {
		line += fmt.Sprintf(" %.1f", us(timeDevice(t, g, 20, run(drelu, h.algo))))
	}
	t.Log(line)
}
