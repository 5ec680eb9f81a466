package cuda

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"regexp"
	"slices"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// The Trainer methods against the CPU backend. Tolerances, per op:
//   - exact (bit for bit): elementwise float ops done in the CPU's order (Mul, AddTo,
//     Scale, Fill, residual dx, embedding scatter-add, Adam).
//   - 1e-7 relative: activation derivatives (double erf/exp/tanh of CUDA vs Go's math,
//     both within an ulp of double, so the float results differ at most by rare ulps).
//   - 1e-6 relative: reductions in double in another order (LayerNorm, column sums,
//     attention, loss, sums of squares): the double sums agree to ~1e-16 and the float
//     results to an ulp at rounding ties.
//   - 1e-5 relative: cuBLAS fp32 GEMMs (LinearBackward's dx, dw) against gonum's fp32
//     Sgemm, as the forward tests explain (√k·2⁻²⁴).

func TestKernelNamesInSources(t *testing.T) {
	names, err := sourceNames()
	if err != nil {
		t.Fatal(err)
	}
	var all string
	for _, n := range names {
		b, err := sources.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		all += string(b)
	}
	var f functions
	for name := range f.table() {
		if !regexp.MustCompile(`extern "C" __global__ void (__launch_bounds__\([^)]*\)\s+)?` + name + `\(`).MatchString(all) {
			t.Errorf("kernel %s is looked up but defined in no .cu file", name)
		}
	}
}

func TestEmbedCSR(t *testing.T) {
	for _, tc := range []struct {
		ids  []int32
		skip int32
		want []int32
		nu   int
	}{
		{[]int32{5, 1, 5, 1, 1}, -1, []int32{0, 3, 5, 1, 5, 1, 3, 4, 0, 2}, 2},
		{[]int32{1, 1, 3}, 1, []int32{0, 1, 3, 2}, 1},
		{[]int32{1, 1}, 1, []int32{0}, 0},
		{[]int32{7}, 1, []int32{0, 1, 7, 0}, 1},
		{[]int32{-3, 2, -3, 1 << 30}, 2, []int32{0, 2, 3, -3, 1 << 30, 0, 2, 3}, 2},
		{nil, 1, []int32{0}, 0},
	} {
		for name, f := range map[string]func([]int32, int32) ([]int32, int){"counting": embedCSR, "sorted": embedCSRSorted} {
			got, nu := f(tc.ids, tc.skip)
			if nu != tc.nu || !slices.Equal(got, tc.want) {
				t.Errorf("%s embedCSR(%v, %d) = %v, %d; want %v, %d", name, tc.ids, tc.skip, got, nu, tc.want, tc.nu)
			}
		}
	}
	// Batches of a 27k vocabulary with padding: the counting sort against a grouping by
	// map (ids in increasing order, each id's rows in increasing order).
	r := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		ids := make([]int32, 1+r.IntN(20000))
		for i := range ids {
			ids[i] = int32(r.IntN(27472))
			if r.IntN(8) == 0 {
				ids[i] = 1 // fairseq's pad
			}
		}
		rows := map[int32][]int32{}
		for i, id := range ids {
			if id != 1 {
				rows[id] = append(rows[id], int32(i))
			}
		}
		uniq := slices.Sorted(maps.Keys(rows))
		want := []int32{}
		off := int32(0)
		for _, id := range uniq {
			want = append(want, off)
			off += int32(len(rows[id]))
		}
		want = append(want, off)
		want = append(want, uniq...)
		for _, id := range uniq {
			want = append(want, rows[id]...)
		}
		got, nu := embedCSR(ids, 1)
		if nu != len(uniq) || !slices.Equal(got, want) {
			t.Fatalf("%d ids: embedCSR differs from the grouping by map (%d vs %d distinct)", len(ids), nu, len(uniq))
		}
	}
}

func BenchmarkEmbedCSR(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	ids := make([]int32, 16000)
	for i := range ids {
		ids[i] = int32(r.IntN(27472))
	}
	for _, f := range []struct {
		name string
		fn   func([]int32, int32) ([]int32, int)
	}{{"counting", embedCSR}, {"sorted", embedCSRSorted}} {
		b.Run(f.name, func(b *testing.B) {
			for b.Loop() {
				f.fn(ids, 1)
			}
		})
	}
}

func TestColChunks(t *testing.T) {
	for _, rows := range []int{1, 63, 64, 65, 1000, 8192, 8193, 100000} {
		c, per := colChunks(rows)
		if c < 1 || c > colMaxChunks || c*per < rows || (c-1)*per >= rows {
			t.Errorf("colChunks(%d) = %d chunks of %d", rows, c, per)
		}
	}
}

// both holds a value uploaded to the GPU and the CPU backends.
type both struct{ g, c kernels.Buffer }

func (p *pair) rnd(n int) both {
	g, c := p.up(randVec(p.r, n))
	return both{g, c}
}

func (p *pair) zeros(n int) both { return both{p.g.Alloc(n), p.c.Alloc(n)} }

func (p *pair) check(t *testing.T, what string, b both, limit float64) {
	t.Helper()
	if limit == 0 {
		checkExact(t, what, down(p.g, b.g), cpu.Data(b.c))
		return
	}
	checkClose(t, what, down(p.g, b.g), cpu.Data(b.c), limit)
}

func TestLinearBackward(t *testing.T) {
	for _, tc := range []struct{ m, n, k int }{{1, 3, 2}, {70, 130, 64}, {300, 96, 32}, {2000, 128, 32}} {
		t.Run(fmt.Sprintf("%dx%dx%d", tc.m, tc.n, tc.k), func(t *testing.T) {
			p := newPair(t, 21)
			x, w, dy := p.rnd(tc.m*tc.k), p.rnd(tc.n*tc.k), p.rnd(tc.m*tc.n)
			dx, dw, db := p.zeros(tc.m*tc.k), p.rnd(tc.n*tc.k), p.rnd(tc.n) // dw, db accumulate onto values
			p.g.LinearBackward(dx.g, dw.g, db.g, dy.g, x.g, w.g, tc.m, tc.n, tc.k)
			p.c.LinearBackward(dx.c, dw.c, db.c, dy.c, x.c, w.c, tc.m, tc.n, tc.k)
			p.check(t, "dx", dx, tol)
			p.check(t, "dw", dw, tol)
			p.check(t, "db", db, 1e-6)
			// nil gradients are skipped.
			p.g.LinearBackward(nil, nil, db.g, dy.g, x.g, w.g, tc.m, tc.n, tc.k)
			p.c.LinearBackward(nil, nil, db.c, dy.c, x.c, w.c, tc.m, tc.n, tc.k)
			p.check(t, "db only", db, 1e-6)
		})
	}
}

func TestLayerNormBackward(t *testing.T) {
	for _, tc := range []struct {
		rows, dim  int
		alias, dxN bool
	}{{1, 7, false, false}, {37, 32, false, false}, {300, 512, true, false}, {5, 4096, false, false}, {129, 64, false, true}} {
		t.Run(fmt.Sprintf("%dx%d_alias=%v_nodx=%v", tc.rows, tc.dim, tc.alias, tc.dxN), func(t *testing.T) {
			p := newPair(t, 22)
			x := randVec(p.r, tc.rows*tc.dim)
			for i := range x {
				x[i] = x[i]*2 + 0.7
			}
			var xb both
			xb.g, xb.c = p.up(x)
			gamma, dy := p.rnd(tc.dim), p.rnd(tc.rows*tc.dim)
			dg, dbeta := p.rnd(tc.dim), p.rnd(tc.dim)
			dx := p.zeros(tc.rows * tc.dim)
			if tc.alias {
				dx = dy
			}
			var gdx, cdx kernels.Buffer = dx.g, dx.c
			if tc.dxN {
				gdx, cdx = nil, nil
			}
			p.g.LayerNormBackward(gdx, dg.g, dbeta.g, dy.g, xb.g, gamma.g, tc.rows, tc.dim, 1e-5)
			p.c.LayerNormBackward(cdx, dg.c, dbeta.c, dy.c, xb.c, gamma.c, tc.rows, tc.dim, 1e-5)
			if !tc.dxN {
				p.check(t, "dx", dx, 1e-6)
			}
			p.check(t, "dgamma", dg, 1e-6)
			p.check(t, "dbeta", dbeta, 1e-6)
		})
	}
}

func TestResidualBackward(t *testing.T) {
	for _, tc := range []struct {
		omega bool
		alpha float32
		rows  int
	}{{false, 1, 7}, {true, 1, 300}, {true, 0.81, 1000}, {false, 2.5, 3}} {
		t.Run(fmt.Sprintf("omega=%v_alpha=%v_rows=%d", tc.omega, tc.alpha, tc.rows), func(t *testing.T) {
			p := newPair(t, 23)
			const d = 96
			x, dy, dx := p.rnd(tc.rows*d), p.rnd(tc.rows*d), p.rnd(tc.rows*d)
			var om, dom both
			if tc.omega {
				om, dom = p.rnd(d), p.rnd(d)
			}
			p.g.ResidualBackward(dx.g, dom.g, dy.g, x.g, om.g, tc.alpha, tc.rows, d)
			p.c.ResidualBackward(dx.c, dom.c, dy.c, x.c, om.c, tc.alpha, tc.rows, d)
			p.check(t, "dx", dx, 0)
			if tc.omega {
				p.check(t, "domega", dom, 1e-6)
			}
		})
	}
}

func TestActivateBackward(t *testing.T) {
	for _, act := range []kernels.Activation{kernels.ReLU, kernels.GELU, kernels.GELUAccurate, kernels.Tanh, kernels.Linear} {
		t.Run(string(act), func(t *testing.T) {
			p := newPair(t, 24)
			x, dy := p.rnd(10001), p.rnd(10001)
			dx := p.zeros(10001)
			p.g.ActivateBackward(dx.g, dy.g, x.g, act)
			p.c.ActivateBackward(dx.c, dy.c, x.c, act)
			p.check(t, "dx", dx, 1e-7)
			p.g.ActivateBackward(dy.g, dy.g, x.g, act) // in place, as the model calls it
			p.c.ActivateBackward(dy.c, dy.c, x.c, act)
			p.check(t, "dx in place", dy, 1e-7)
		})
	}
}

func TestEmbedBackward(t *testing.T) {
	p := newPair(t, 25)
	const V, d = 60, 40
	ids := make([]int32, 700)
	for i := range ids {
		ids[i] = int32(p.r.IntN(V)) // many repeats
	}
	ids[3], ids[10] = 1, 1 // the pad id
	for _, tc := range []struct {
		skip  int32
		scale float32
	}{{1, 5.656854}, {-1, 1}} {
		table, dy := p.rnd(V*d), p.rnd(len(ids)*d)
		p.g.EmbedBackward(table.g, dy.g, ids, d, tc.scale, tc.skip)
		p.c.EmbedBackward(table.c, dy.c, ids, d, tc.scale, tc.skip)
		p.check(t, fmt.Sprintf("dtable skip=%d", tc.skip), table, 0)
	}
}

func TestElementwiseTrain(t *testing.T) {
	p := newPair(t, 26)
	const n = 5003
	x, y, m := p.rnd(n), p.rnd(n), p.rnd(n-3)
	p.g.Mul(y.g, x.g, m.g)
	p.c.Mul(y.c, x.c, m.c)
	p.check(t, "Mul", y, 0)
	p.g.Mul(x.g, x.g, m.g)
	p.c.Mul(x.c, x.c, m.c)
	p.check(t, "Mul in place", x, 0)
	p.g.AddTo(y.g, x.g)
	p.c.AddTo(y.c, x.c)
	p.check(t, "AddTo", y, 0)
	p.g.Scale(y.g, 0.37)
	p.c.Scale(y.c, 0.37)
	p.check(t, "Scale", y, 0)
	p.g.Fill(p.g.Slice(y.g, 10, 100), -2.5)
	p.c.Fill(p.c.Slice(y.c, 10, 100), -2.5)
	p.check(t, "Fill slice", y, 0)
}

func TestSumSquares(t *testing.T) {
	p := newPair(t, 27)
	var gs, cs []kernels.Buffer
	var want float64
	for _, n := range []int{1, 1000, 0, 33, 300000, 7} {
		b := p.rnd(n)
		gs, cs = append(gs, b.g), append(cs, b.c)
		want += p.c.SumSquares(b.c)
		if got, w := p.g.SumSquares(b.g), p.c.SumSquares(b.c); math.Abs(got-w) > 1e-12*max(w, 1) {
			t.Errorf("SumSquares(%d elements) = %.17g, want %.17g", n, got, w)
		}
	}
	got := p.g.SumSquaresAll(gs)
	if math.Abs(got-want) > 1e-12*want {
		t.Errorf("SumSquaresAll = %.17g, want %.17g", got, want)
	}
	if again := p.g.SumSquaresAll(gs); again != got {
		t.Errorf("SumSquaresAll not reproducible: %.17g then %.17g", got, again)
	}
	t.Logf("SumSquaresAll %.17g, CPU %.17g, relative %.3g", got, want, math.Abs(got-want)/want)
	p.g.ScaleAll(gs, 0.25)
	for i, c := range cs {
		p.c.Scale(c, 0.25)
		p.check(t, fmt.Sprintf("ScaleAll[%d]", i), both{gs[i], c}, 0)
	}
}

func TestLabelSmoothedLoss(t *testing.T) {
	for _, tc := range []struct {
		rows, V    int
		eps, scale float32
		grad       bool
	}{{5, 7, 0.1, 1, true}, {300, 128, 0.1, 1, true}, {64, 40000, 0.1, 0.5, true}, {50, 1000, 0, 1, true}, {50, 1000, 0.2, 1, false}} {
		t.Run(fmt.Sprintf("%dx%d_eps=%v_grad=%v", tc.rows, tc.V, tc.eps, tc.grad), func(t *testing.T) {
			p := newPair(t, 28)
			logits := randVec(p.r, tc.rows*tc.V)
			for i := range logits {
				logits[i] *= 4
			}
			var lg both
			lg.g, lg.c = p.up(logits)
			targets := make([]int32, tc.rows)
			for i := range targets {
				targets[i] = int32(p.r.IntN(tc.V))
				if i%7 == 3 {
					targets[i] = 1 // ignored (pad)
				}
			}
			var d both
			if tc.grad {
				d = p.rnd(tc.rows * tc.V) // garbage: ignored rows must be zeroed
			}
			gl, gn := p.g.LabelSmoothedLoss(d.g, lg.g, targets, tc.rows, tc.V, tc.eps, 1, tc.scale)
			cl, cn := p.c.LabelSmoothedLoss(d.c, lg.c, targets, tc.rows, tc.V, tc.eps, 1, tc.scale)
			rl, rn := math.Abs(gl-cl)/math.Abs(cl), math.Abs(gn-cn)/math.Abs(cn)
			t.Logf("loss %.12g (cpu %.12g, rel %.3g), nll %.12g (cpu %.12g, rel %.3g)", gl, cl, rl, gn, cn, rn)
			if !(rl <= 1e-12 && rn <= 1e-12) {
				t.Errorf("loss/nll relative error %.3g/%.3g > 1e-12", rl, rn)
			}
			if tc.grad {
				p.check(t, "dlogits", d, 1e-6)
			}
			// In place: the gradient overwrites the logits.
			if tc.grad {
				p.g.LabelSmoothedLoss(lg.g, lg.g, targets, tc.rows, tc.V, tc.eps, 1, tc.scale)
				checkClose(t, "dlogits in place", down(p.g, lg.g), cpu.Data(d.c), 1e-6)
			}
		})
	}
}

func TestAdamStep(t *testing.T) {
	for _, s := range []kernels.OptimStep{
		{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8}, // RAdam, ρ < 5
		{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, StepSize: 3e-4, Update: true},
		{Beta1: 0.9, Beta2: 0.999, OneMinusBeta1: 0.1, OneMinusBeta2: 0.001, Eps: 1e-8, Decay: -1e-6, StepSize: 1e-3, Update: true},
	} {
		t.Run(fmt.Sprintf("update=%v_decay=%v", s.Update, s.Decay), func(t *testing.T) {
			p := newPair(t, 29)
			const n = 7777
			w, g, m := p.rnd(n), p.rnd(n), p.rnd(n)
			vv := randVec(p.r, n)
			for i := range vv {
				vv[i] = vv[i] * vv[i] * 1e-4 // second moments are ≥ 0
			}
			var v both
			v.g, v.c = p.up(vv)
			for range 3 {
				p.g.AdamStep(w.g, g.g, m.g, v.g, s)
				p.c.AdamStep(w.c, g.c, m.c, v.c, s)
			}
			p.check(t, "p", w, 0)
			p.check(t, "m", m, 0)
			p.check(t, "v", v, 0)
		})
	}
}

func TestAttentionTrain(t *testing.T) {
	type tcase struct {
		name                  string
		B, H, D, TQ, TK       int
		causal, pad, drop, kv bool
	}
	for _, tc := range []tcase{
		{name: "self", B: 3, H: 4, D: 8, TQ: 9, TK: 9},
		{name: "self padded", B: 3, H: 4, D: 8, TQ: 9, TK: 9, pad: true},
		{name: "causal with dropout", B: 2, H: 8, D: 64, TQ: 21, TK: 21, causal: true, drop: true},
		{name: "cross padded with dropout", B: 4, H: 4, D: 32, TQ: 13, TK: 17, pad: true, drop: true, kv: true},
		{name: "long", B: 1, H: 2, D: 64, TQ: 40, TK: 700, pad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, 30)
			d := tc.H * tc.D
			T := max(tc.TQ, tc.TK)
			// Self-attention reads q, k, v from a fused [rows, 3d] projection; cross
			// attention q from [rows, d] and k, v from a fused [rows, 2d] one.
			qkv := p.rnd(tc.B * T * 3 * d)
			view := func(b kernels.Buffer, off, width, rows int) kernels.View {
				return kernels.View{Buf: b, Off: off, BatchStride: rows * width, RowStride: width}
			}
			qv := func(b kernels.Buffer) kernels.View { return view(b, 0, 3*d, T) }
			kv := func(b kernels.Buffer, off int) kernels.View { return view(b, off, 3*d, T) }
			if tc.kv {
				// Keys and values in the other order inside the row: views at any offset.
				kv = func(b kernels.Buffer, off int) kernels.View { return view(b, 3*d-off, 3*d, T) }
			}
			args := kernels.AttentionArgs{Batch: tc.B, Heads: tc.H, HeadDim: tc.D, TQ: tc.TQ, TK: tc.TK,
				Scale: float32(1 / math.Sqrt(float64(tc.D))), Causal: tc.causal}
			if tc.pad {
				args.KeyPadStride = tc.TK
				args.KeyPadding = make([]bool, tc.B*tc.TK)
				for b := 0; b < tc.B; b++ {
					for j := 0; j < b && j < tc.TK-1; j++ {
						args.KeyPadding[b*tc.TK+j] = true
					}
				}
			}
			np := tc.B * tc.H * tc.TQ * tc.TK
			probs := p.zeros(np)
			var mask both
			if tc.drop {
				mv := make([]float32, np)
				for i := range mv {
					if p.r.Float64() >= 0.2 {
						mv[i] = 1.25
					}
				}
				mask.g, mask.c = p.up(mv)
			}
			out := p.zeros(tc.B * tc.TQ * d)
			ov := func(b kernels.Buffer) kernels.View { return view(b, 0, d, tc.TQ) }
			p.g.AttentionForward(ov(out.g), qv(qkv.g), kv(qkv.g, d), kv(qkv.g, 2*d), args, probs.g, mask.g)
			p.c.AttentionForward(ov(out.c), qv(qkv.c), kv(qkv.c, d), kv(qkv.c, 2*d), args, probs.c, mask.c)
			p.check(t, "out", out, 1e-6)
			p.check(t, "probs", probs, 1e-6)

			dout := p.rnd(tc.B * tc.TQ * d)
			dqkv := p.rnd(tc.B * T * 3 * d) // gradients accumulate onto what is there
			p.g.AttentionBackward(qv(dqkv.g), kv(dqkv.g, d), kv(dqkv.g, 2*d), ov(dout.g), qv(qkv.g), kv(qkv.g, d), kv(qkv.g, 2*d), args, probs.g, mask.g)
			p.c.AttentionBackward(qv(dqkv.c), kv(dqkv.c, d), kv(dqkv.c, 2*d), ov(dout.c), qv(qkv.c), kv(qkv.c, d), kv(qkv.c, 2*d), args, probs.c, mask.c)
			p.check(t, "dq, dk, dv", dqkv, 1e-6)
		})
	}
}
