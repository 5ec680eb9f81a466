package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// 16-bit GEMM outputs and the 16-bit feed-forward block (kernels.HalfOutputs,
// half_out.go). These change results on purpose (a value rounded where the float32 path
// kept it), so the references are independent: the exact product of the same 16-bit
// operands in float64, and the float32 kernels on the same (widened) values.
//
// Bound for a 16-bit GEMM output element (checkHalfProduct): the GPU accumulates L
// products of 16-bit values (exact in fp32) in fp32 and adds the fp32 bias, so its fp32
// value v is within δ = (L+2)·2⁻²⁴·(Σ|x̂ŵ| + |b|) of the exact e (the γ bound of a
// length-L sum plus the bias add, unit roundoff 2⁻²⁴, with a margin of one term); ReLU
// is monotone and 1-Lipschitz, so relu(v) is within δ of relu(e); the store rounds
// once: |RN16(r) − r| ≤ u·|r| + η (u = 2⁻⁸ bf16, 2⁻¹¹ fp16, η half the subnormal
// spacing). So |got − ref| ≤ u·|ref| + (1+u)·δ + η with ref = e or relu(e). Where
// cuBLASLt takes a 16-bit D only with a 16-bit bias, the bias is rounded first (as
// torch.autocast does), which moves e by at most u·|b| + η more: that is added.

// halfRows is which rows of an m-row output the references are computed for: all of a
// small one, the first, last and 30 random ones of a training-sized one (the CPU side
// of 8000×2048×512 in float64 takes too long otherwise).
func halfRows(r *rand.Rand, m int) []int {
	if m <= 64 {
		rows := make([]int, m)
		for i := range rows {
			rows[i] = i
		}
		return rows
	}
	rows := []int{0, m - 1}
	for range 30 {
		rows = append(rows, r.IntN(m))
	}
	return rows
}

// refProduct is row i of op(A)·Bᵀ + bias (A [m,L] row-major, B [n,L], bias may be nil)
// in float64 from the float32 values given (already rounded to 16 bits), with Σ|a·b| +
// |bias| per element.
func refProduct(a, b, bias []float32, i, n, L int) (ref, mag []float64) {
	ref, mag = make([]float64, n), make([]float64, n)
	for j := 0; j < n; j++ {
		var s, g float64
		for c := 0; c < L; c++ {
			p := float64(a[i*L+c]) * float64(b[j*L+c])
			s += p
			g += math.Abs(p)
		}
		if bias != nil {
			s += float64(bias[j])
			g += math.Abs(float64(bias[j]))
		}
		ref[j], mag[j] = s, g
	}
	return ref, mag
}

// transpose returns the [cols, rows] transpose of the row-major v [rows, cols].
func transpose(v []float32, rows, cols int) []float32 {
	out := make([]float32, len(v))
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			out[j*rows+i] = v[i*cols+j]
		}
	}
	return out
}

// checkHalfProduct checks got (a row of a 16-bit output, widened) against ref within
// the bound above; relu applies ReLU to ref first. It returns the worst ratio of error
// to bound.
func checkHalfProduct(t *testing.T, ft format16, what string, got []float32, ref, mag []float64, bias []float32, L int, relu bool) float64 {
	t.Helper()
	worst := 0.0
	for j, e := range ref {
		if relu {
			e = max(e, 0)
		}
		delta := float64(L+2) * math.Ldexp(1, -24) * mag[j]
		bound := ft.u*math.Abs(e) + (1+ft.u)*delta + ft.eta
		if bias != nil {
			// The bias rounded to 16 bits (where cuBLASLt refuses an fp32 bias with a
			// 16-bit D), and the accumulator rounded to D's type before the bias is
			// added: cuBLASLt's 16-bit-bias epilogue does that at some shapes (seen on
			// the H200 at 37×203×72: 0.78 of a bf16 ulp), as in torch.autocast's Linear.
			acc := ref[j] - float64(bias[j])
			bound += ft.u*math.Abs(float64(bias[j])) + ft.eta + ft.u*math.Abs(acc) + ft.eta
		}
		d := math.Abs(float64(got[j]) - e)
		if !(d <= bound) {
			t.Fatalf("%s[%d] = %v, exact %v: |Δ| %.3g > bound %.3g", what, j, got[j], e, d, bound)
		}
		worst = max(worst, d/bound)
	}
	return worst
}

// TestHalfOutLinear: LinearKeep into a 16-bit y, LinearActKeep (ReLU) into a 16-bit a
// and LinearBackwardKept into a 16-bit dx, against the exact products of the rounded
// operands (bound above), at fc1's and fc2's training shapes and small ones (203
// columns: rows of 406 bytes, which cuBLASLt's 16-bit D may refuse, so the fp32
// scratch fallback runs), and with cuBLASLt off (every product through the fallback).
// dw and db do not depend on how dx is written: the same bits as with a float32 dx.
// Logged: how many elements differ from RN16 of the float32 output (the heuristic
// may pick another algorithm for a 16-bit D: another fp32 summation order).
func TestHalfOutLinear(t *testing.T) {
	for _, ft := range formats {
		for _, c := range []struct {
			m, n, k int
			ltOff   bool
		}{{37, 200, 72, false}, {37, 203, 72, false}, {64, 512, 256, true}, {8000, 2048, 512, false}, {8000, 512, 2048, false}} {
			t.Run(fmt.Sprintf("%v/%dx%dx%d/ltOff=%v", ft.prec, c.m, c.n, c.k, c.ltOff), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				if c.ltOff {
					g.lt.off = true
					defer func() { g.lt.off = false }()
				}
				m, n, k := c.m, c.n, c.k
				r := rand.New(rand.NewPCG(uint64(m*n), uint64(k)))
				xv, wv := randVec(r, m*k), scaled(randVec(r, n*k), 1/math.Sqrt(float64(k)))
				bv, dyv := randVec(r, n), randVec(r, m*n)
				x, w, b, dy := g.Upload(xv), g.Upload(wv), g.Upload(bv), g.Upload(dyv)
				xr, wr, dyr := roundAll(ft, xv), roundAll(ft, wv), roundAll(ft, dyv)
				wt := transpose(wr, n, k) // [k, n]: dx = dy·w as rows of dy against rows of wᵀ
				rows := halfRows(r, m)

				before, falls := g.lt.halfOuts, g.lt.halfFallbacks
				y16, y32 := g.AllocHalf(m*n), g.Alloc(m*n)
				kept := g.LinearKeep(y16, x, w, b, m, n, k)
				g.LinearKeep(y32, x, w, b, m, n, k)
				a16 := g.AllocHalf(m * n)
				aux, kept2, ok := g.LinearActKeep(a16, x, w, b, m, n, k, kernels.ReLU)
				if !ok || aux != nil || kept2 == nil {
					t.Fatalf("LinearActKeep into a 16-bit a: ok %v, aux %v, kept %v", ok, aux, kept2)
				}
				if g.lt.halfOuts != before+2 {
					t.Fatalf("%d 16-bit forward products counted, want 2", g.lt.halfOuts-before)
				}
				// The same two products with the bias given as its 16-bit copy
				// (kernels.HalfBiases): the same bits wherever cuBLASLt planned them
				// (it then adds a 16-bit bias either way); the fp32-scratch fallback
				// adds the exact float32 bias to the one and the copy to the other.
				b16 := g.AllocHalf(n)
				g.RoundAll([]kernels.Buffer{b16}, []kernels.Buffer{b})
				before16, fallsPlain := g.lt.halfBias16, g.lt.halfFallbacks
				y16b, a16b := g.AllocHalf(m*n), g.AllocHalf(m*n)
				g.LinearKeep(y16b, x, w, b16, m, n, k)
				if _, _, ok := g.LinearActKeep(a16b, x, w, b16, m, n, k, kernels.ReLU); !ok {
					t.Fatal("LinearActKeep with a 16-bit bias declined")
				}
				if g.lt.halfBias16 != before16+2 {
					t.Fatalf("%d products took the 16-bit bias, want 2", g.lt.halfBias16-before16)
				}
				if fallsPlain == falls && g.lt.halfFallbacks == fallsPlain {
					checkExact(t, "y (16-bit bias copy vs float32 bias)", downHalf(t, g, y16b), downHalf(t, g, y16))
					checkExact(t, "relu a (16-bit bias copy vs float32 bias)", downHalf(t, g, a16b), downHalf(t, g, a16))
				} else if c.m == 8000 {
					t.Fatal("a training shape took the fp32-scratch fallback")
				}
				dx16, dx32 := g.AllocHalf(m*k), g.Alloc(m*k)
				dw0, db0 := randVec(r, n*k), randVec(r, n)
				dw1, db1, dw2, db2 := g.Upload(dw0), g.Upload(db0), g.Upload(dw0), g.Upload(db0)
				g.LinearBackwardKept(dx16, dw1, db1, dy, kept, m, n, k)
				g.LinearBackwardKept(dx32, dw2, db2, dy, kept, m, n, k)
				checkExact(t, "dw (16-bit dx vs float32 dx)", down(g, dw1), down(g, dw2))
				checkExact(t, "db (16-bit dx vs float32 dx)", down(g, db1), down(g, db2))

				yh, ah, dxh := downHalf(t, g, y16), downHalf(t, g, a16), downHalf(t, g, dx16)
				y32v, dx32v := down(g, y32), down(g, dx32)
				var wy, wa, wd float64
				for _, i := range rows {
					ref, mag := refProduct(xr, wr, bv, i, n, k)
					wy = max(wy, checkHalfProduct(t, ft, fmt.Sprintf("y row %d", i), yh[i*n:(i+1)*n], ref, mag, bv, k, false))
					wa = max(wa, checkHalfProduct(t, ft, fmt.Sprintf("a row %d", i), ah[i*n:(i+1)*n], ref, mag, bv, k, true))
					ref, mag = refProduct(dyr, wt, nil, i, k, n)
					wd = max(wd, checkHalfProduct(t, ft, fmt.Sprintf("dx row %d", i), dxh[i*k:(i+1)*k], ref, mag, nil, n, false))
				}
				differ := func(h, f []float32) int {
					c := 0
					for i := range h {
						if h[i] != ft.round16(f[i]) {
							c++
						}
					}
					return c
				}
				t.Logf("worst error/bound: y %.3f, relu a %.3f, dx %.3f; elements ≠ RN16(float32 output): y %d, dx %d of %d, %d; %d of 3 products through the fp32 scratch",
					wy, wa, wd, differ(yh, y32v), differ(dxh, dx32v), m*n, m*k, g.lt.halfFallbacks-falls)
				logHalfPlans(t, g, m)
			})
		}
	}
}

// logHalfPlans logs the cuBLASLt plans with a 16-bit D for m rows: which epilogue and
// bias type cuBLASLt took, and which keys it refused.
func logHalfPlans(t *testing.T, g *Backend, m int) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	for key, p := range g.lt.plans {
		if key.dtypeD != cudaR32F && (key.m == m || key.n == m) {
			t.Logf("16-bit D plan %d×%d×%d epilogue %d bias type %d: refused %v", key.m, key.n, key.k, key.epilogue, key.biasType, p.none)
		}
	}
	if g.lt.first != nil {
		t.Logf("first cuBLASLt fallback: %v", g.lt.first)
	}
}

// TestHalfOutElementwise: ApplyDropout from a 16-bit x into a 16-bit y (in place too)
// and ReLUDropoutBackward on 16-bit da and a into a 16-bit dpre (in place on da too)
// are RN16 of the float32 kernels on the same (widened) values, bit for bit, on the
// 8-byte path and the scalar tail.
func TestHalfOutElementwise(t *testing.T) {
	for _, ft := range formats {
		t.Run(ft.prec.String(), func(t *testing.T) {
			g := withPrecision(t, ft.prec)
			r := rand.New(rand.NewPCG(8, 9))
			// pair returns a 16-bit buffer and a float32 one holding the same values.
			pair := func(n int) (h, f kernels.Buffer) {
				v := randVec(r, n)
				h = g.AllocHalf(n)
				g.ApplyDropout(h, g.Upload(v), 0, 1)
				return h, g.Upload(roundAll(ft, v))
			}
			for _, n := range []int{1, 7, 4099, 8000 * 2048} {
				t.Run(fmt.Sprint(n), func(t *testing.T) {
					x16, x32 := pair(n)
					y16, y32 := g.AllocHalf(n), g.Alloc(n)
					g.ApplyDropout(y32, x32, 0.1, 77)
					g.ApplyDropout(y16, x16, 0.1, 77)
					want := down(g, y32)
					checkRounded(t, ft, "dropout y", downHalf(t, g, y16), want)
					g.ApplyDropout(x16, x16, 0.1, 77)
					checkRounded(t, ft, "dropout in place", downHalf(t, g, x16), want)

					da16, da32 := pair(n)
					a16, a32 := pair(n)
					d16, d32 := g.AllocHalf(n), g.Alloc(n)
					g.ReLUDropoutBackward(d32, da32, a32, 0.25)
					g.ReLUDropoutBackward(d16, da16, a16, 0.25)
					want = down(g, d32)
					checkRounded(t, ft, "dpre", downHalf(t, g, d16), want)
					g.ReLUDropoutBackward(da16, da16, a16, 0.25)
					checkRounded(t, ft, "dpre in place", downHalf(t, g, da16), want)
				})
			}
		})
	}
}

// TestHalfFFNTraining trains the fixture model 10 updates with the 16-bit feed-forward
// block (model.ffn16: a, its dropout and fc2's input gradient 16-bit) and checks it
// against references within TestTrainBF16's bounds (loss and nll 1e-2 relative, gradient
// norm 5e-2; the derivation is there: bf16 operands already move every product by ≈2⁻⁸,
// and rounding a and dpre adds one more rounding of the same size to two of the
// twelve GEMM inputs of a layer): bf16 against the CPU in fp32, and bf16 and fp16 against
// the same GPU precision with the float32 feed-forward (out16Off; fp16 keeps its loss
// scaling in both). Dropout 0 and 0.1 (the CPU draws the same masks from the seeds).
// It fails when the model does not take the 16-bit block (no 16-bit products counted).
func TestHalfFFNTraining(t *testing.T) {
	gpu(t)
	m, batches := fixtureTraining(t, 10)
	for _, rc := range sameBitsCases {
		var cpuRun *trainResult
		for _, prec := range []Precision{BF16, FP16} {
			t.Run(prec.String()+"/"+rc.name, func(t *testing.T) {
				half := newGraphTestBackend(t, prec, false)
				got, _ := runTrain(t, m, half, rc, batches)
				if half.lt.halfOuts == 0 {
					t.Fatal("the model wrote no 16-bit GEMM outputs: model.TrainNet.ffn16 was not taken")
				}
				plain := newGraphTestBackend(t, prec, false)
				plain.lt.out16Off = true
				ref, _ := runTrain(t, m, plain, rc, batches)
				checkTrainClose(t, "16-bit FFN", got, fmt.Sprintf("%v with float32 FFN", prec), ref)
				if prec == BF16 {
					if cpuRun == nil {
						c, _ := runTrain(t, m, cpu.New(0), rc, batches)
						cpuRun = &c
					}
					checkTrainClose(t, "16-bit FFN", got, "fp32 CPU", *cpuRun)
				}
				if sameWeights(got, ref) {
					t.Error("the 16-bit FFN gave the float32 FFN's weights bit for bit: it was not used")
				}
			})
		}
	}
}

// TestHalfFFNTiming logs device time per call at the bench shape (8000 rows, FFN 2048,
// d 512, bf16, activation dropout 0.1): fc1 alone (ReLU_AUX_BIAS into float32 —
// today's epi134 — against RELU_BIAS into 16 bits), and the whole block forward and
// backward as the model ran it (float32 a with the mask, dropout_apply2, fc2 on the
// 16-bit copy; float32 dpre, relu_dropout_bwd16) against the 16-bit block (ffn16).
// Weights come as 16-bit copies on both sides. Only measures; skipped with -short.
func TestHalfFFNTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	g := withPrecision(t, BF16)
	const m, F, d, p, seed = 8000, 2048, 512, 0.1, 7
	r := rand.New(rand.NewPCG(3, 4))
	us := func(f func()) float64 { return timeDevice(t, g, 20, f).Seconds() * 1e6 }
	h16 := g.AllocHalf(m * d)
	g.ApplyDropout(h16, g.Upload(randVec(r, m*d)), 0, 1)
	w1, w2 := g.AllocHalf(F*d), g.AllocHalf(d*F)
	g.RoundAll([]kernels.Buffer{w1, w2}, []kernels.Buffer{g.Upload(scaled(randVec(r, F*d), 0.05)), g.Upload(scaled(randVec(r, d*F), 0.02))})
	b1, b2 := g.Upload(randVec(r, F)), g.Upload(randVec(r, d))
	dout, out, dh := g.Upload(randVec(r, m*d)), g.Alloc(m*d), g.Alloc(m*d)
	dw1, db1, dw2, db2 := g.Alloc(F*d), g.Alloc(F), g.Alloc(d*F), g.Alloc(d)

	a32, a16 := g.Alloc(m*F), g.AllocHalf(m*F)
	fc1Old := us(func() {
		if _, _, ok := g.LinearActKeep(a32, h16, w1, b1, m, F, d, kernels.ReLU); !ok {
			t.Fatal("LinearActKeep declined")
		}
	})
	fc1New := us(func() { g.LinearActKeep(a16, h16, w1, b1, m, F, d, kernels.ReLU) })
	fc1Plain := us(func() { g.LinearKeep(a32, h16, w1, b1, m, F, d) })
	t.Logf("fc1 %d×%d×%d: ReLU_AUX_BIAS fp32 (epi134) %.1f µs, RELU_BIAS 16-bit %.1f µs, BIAS fp32 %.1f µs",
		m, F, d, fc1Old, fc1New, fc1Plain)
	logHalfPlans(t, g, m)

	var kept1, kept2 kernels.Buffer
	oldFwd := us(func() {
		_, kept1, _ = g.LinearActKeep(a32, h16, w1, b1, m, F, d, kernels.ReLU)
		g.ApplyDropoutRounded(a32, a16, a32, p, seed)
		kept2 = g.LinearKeep(out, a16, w2, b2, m, d, F)
	})
	dpre32, g16 := g.Alloc(m*F), g.AllocHalf(m*F)
	oldBwd := us(func() {
		g.LinearBackwardKept(dpre32, dw2, db2, dout, kept2, m, d, F)
		g.ReLUDropoutBackward(g16, dpre32, a32, p)
		g.LinearBackwardKept(dh, dw1, db1, g16, kept1, m, F, d)
	})
	newFwd := us(func() {
		_, kept1, _ = g.LinearActKeep(a16, h16, w1, b1, m, F, d, kernels.ReLU)
		g.ApplyDropout(a16, a16, p, seed)
		kept2 = g.LinearKeep(out, a16, w2, b2, m, d, F)
	})
	newBwd := us(func() {
		g.LinearBackwardKept(g16, dw2, db2, dout, kept2, m, d, F)
		g.ReLUDropoutBackward(g16, g16, a16, p)
		g.LinearBackwardKept(dh, dw1, db1, g16, kept1, m, F, d)
	})
	t.Logf("FFN block %d×%d×%d: forward float32 a %.1f µs, 16-bit a %.1f µs; backward float32 dpre %.1f µs, 16-bit dpre %.1f µs",
		m, F, d, oldFwd, newFwd, oldBwd, newBwd)
	dropOld := us(func() { g.ApplyDropoutRounded(a32, a16, a32, p, seed) })
	dropNew := us(func() { g.ApplyDropout(a16, a16, p, seed) })
	rdOld := us(func() { g.ReLUDropoutBackward(g16, dpre32, a32, p) })
	rdNew := us(func() { g.ReLUDropoutBackward(g16, g16, a16, p) })
	dxOld := us(func() { g.LinearBackwardKept(dpre32, nil, nil, dout, kept2, m, d, F) })
	dxNew := us(func() { g.LinearBackwardKept(g16, nil, nil, dout, kept2, m, d, F) })
	t.Logf("dropout_apply2 %.1f µs vs dropout_apply_hh8 %.1f µs; relu_dropout_bwd16 %.1f µs vs relu_dropout_bwd_hh8 %.1f µs; fc2 dx fp32 %.1f µs vs 16-bit %.1f µs (TestHH8Timing: the 16-bit kernels' previous generation)",
		dropOld, dropNew, rdOld, rdNew, dxOld, dxNew)
}
