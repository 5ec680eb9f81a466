package cuda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// The GPU tests compare every operation with the CPU backend, the oracle. They need a
// GPU; without one they skip with the probe's reason, unless XFORM_CUDA_REQUIRE=1 (set
// on the GPU machine) makes that a failure, so a broken library search cannot pass as
// "skipped" there.
//
// Tolerance: the kernels do the CPU backend's arithmetic step for step (double sums,
// no FMA), so most ops agree to the last bit or within a few ulps from the order of a
// parallel sum. The exception is the fp32 GEMM: cuBLAS accumulates k products in fp32
// in its own order, the CPU's Linear in float64, so they differ by about √k·2⁻²⁴
// relative to the row norm (≈1.4e-6 for k = 512). 1e-5 of ‖ref‖ covers that with a
// margin, and is far below any real indexing or masking bug (which gives O(1) errors).
const tol = 1e-5

// testGPU is the Backend shared by the tests of this binary (one context, one
// compilation); nil when no GPU is usable. Test-only state.
var (
	testGPU    *Backend
	testGPUErr error
)

func TestMain(m *testing.M) {
	start := time.Now()
	// PoisonUninit: every test that trains through model.TrainNet also checks that each
	// buffer it takes uncleared is written whole before it is read.
	testGPU, testGPUErr = New(context.Background(), Options{SyncCheck: true, PoisonUninit: true, CacheDir: os.Getenv("XFORM_CUDA_TEST_CACHE")})
	if testGPU != nil {
		fmt.Fprintf(os.Stderr, "cuda tests: %s (%s, %s), %d programs compiled, New took %v\n",
			testGPU.info.Name, testGPU.arch, "nvrtc "+testGPU.nvrtcVer, testGPU.compiled, time.Since(start).Round(time.Millisecond))
	} else {
		fmt.Fprintf(os.Stderr, "cuda tests: no GPU: %v\n", testGPUErr)
	}
	code := m.Run()
	if testGPU != nil {
		if err := testGPU.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "close:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func gpu(t testing.TB) *Backend {
	t.Helper()
	if testGPU == nil {
		if os.Getenv("XFORM_CUDA_REQUIRE") == "1" {
			t.Fatalf("XFORM_CUDA_REQUIRE=1 but no GPU backend: %v", testGPUErr)
		}
		t.Skipf("no usable GPU: %v", testGPUErr)
	}
	return testGPU
}

func randVec(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

func down(be kernels.Backend, b kernels.Buffer) []float32 {
	v := make([]float32, b.Len())
	be.Download(v, b)
	return v
}

// relErr is ‖got − want‖ / ‖want‖; NaNs must sit at the same places (else +Inf).
func relErr(got, want []float32) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range got {
		g, w := float64(got[i]), float64(want[i])
		if math.IsNaN(g) || math.IsNaN(w) {
			if math.IsNaN(g) != math.IsNaN(w) {
				return math.Inf(1)
			}
			continue
		}
		if math.IsInf(w, 0) || math.IsInf(g, 0) {
			if g != w {
				return math.Inf(1)
			}
			continue
		}
		num += (g - w) * (g - w)
		den += w * w
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func checkClose(t *testing.T, what string, got, want []float32, limit float64) {
	t.Helper()
	e := relErr(got, want)
	if !(e <= limit) {
		t.Errorf("%s: relative error %.3g > %.1g", what, e, limit)
		return
	}
	t.Logf("%s: relative error %.3g", what, e)
}

func checkExact(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) && !(got[i] != got[i] && want[i] != want[i]) {
			t.Errorf("%s: element %d = %v, want %v", what, i, got[i], want[i])
			return
		}
	}
}

// pair runs the same setup on both backends.
type pair struct {
	g  *Backend
	c  *cpu.Backend
	r  *rand.Rand
	gb []kernels.Buffer
}

func newPair(t *testing.T, seed uint64) *pair {
	return &pair{g: gpu(t), c: cpu.New(0), r: rand.New(rand.NewPCG(seed, 7))}
}

// up uploads v to both backends.
func (p *pair) up(v []float32) (kernels.Buffer, kernels.Buffer) {
	return p.g.Upload(v), p.c.Upload(v)
}

func TestMemory(t *testing.T) {
	be := gpu(t)
	z := down(be, be.Alloc(1000))
	for i, v := range z {
		if v != 0 {
			t.Fatalf("Alloc not zeroed at %d: %v", i, v)
		}
	}
	r := rand.New(rand.NewPCG(1, 1))
	v := randVec(r, 777)
	b := be.Upload(v)
	checkExact(t, "upload/download", down(be, b), v)
	checkExact(t, "slice", down(be, be.Slice(b, 100, 50)), v[100:150])
	// Freed blocks come back zeroed by Alloc even when reused from the cache.
	for i := 0; i < 50; i++ {
		_ = be.Upload(v)
	}
	for i := 0; i < 5; i++ {
		z := down(be, be.Alloc(777))
		for j, x := range z {
			if x != 0 {
				t.Fatalf("reused block not zeroed at %d", j)
			}
		}
	}
	if _, err := func() (_ kernels.Buffer, err error) {
		defer Guard(&err)
		return be.Alloc(1 << 40), nil // 4 TiB
	}(); err == nil || !errors.Is(err, ErrOutOfMemory) || !strings.Contains(err.Error(), "asked for 4096.00 GiB") {
		t.Errorf("huge Alloc: %v", err)
	} else {
		t.Logf("huge Alloc: %v", err)
	}
	if err := be.Synchronize(); err != nil {
		t.Fatal(err)
	}
}

func TestCopies(t *testing.T) {
	p := newPair(t, 2)
	src := randVec(p.r, 40*30)
	gs, cs := p.up(src)
	gd, cd := p.g.Alloc(50*40), p.c.Alloc(50*40)
	p.g.Copy2D(gd, 7, 40, gs, 3, 30, 20, 25)
	p.c.Copy2D(cd, 7, 40, cs, 3, 30, 20, 25)
	checkExact(t, "Copy2D", down(p.g, gd), cpu.Data(cd))
	idx := []int32{3, 0, 3, 39, 12}
	gg, cg := p.g.Alloc(5*32), p.c.Alloc(5*32)
	p.g.GatherRows(gg, 32, gs, 30, idx, 30)
	p.c.GatherRows(cg, 32, cs, 30, idx, 30)
	checkExact(t, "GatherRows", down(p.g, gg), cpu.Data(cg))
}

func TestGemm(t *testing.T) {
	for _, tc := range []struct {
		ta, tb      bool
		m, n, k     int
		alpha, beta float32
	}{
		{false, false, 17, 33, 65, 1, 0}, {true, false, 17, 33, 65, 0.5, 1}, {false, true, 64, 64, 512, 1, 0},
		{true, true, 3, 5, 7, -2, 0.25}, {false, false, 1, 1000, 512, 1, 0},
	} {
		t.Run(fmt.Sprintf("%v%v_%dx%dx%d", tc.ta, tc.tb, tc.m, tc.n, tc.k), func(t *testing.T) {
			p := newPair(t, 3)
			// Padded leading dimensions test the stride handling too.
			ar, ac := tc.m, tc.k
			if tc.ta {
				ar, ac = tc.k, tc.m
			}
			br, bc := tc.k, tc.n
			if tc.tb {
				br, bc = tc.n, tc.k
			}
			lda, ldb, ldc := ac+3, bc+1, tc.n+2
			ga, ca := p.up(randVec(p.r, ar*lda))
			gb, cb := p.up(randVec(p.r, br*ldb))
			gc, cc := p.up(randVec(p.r, tc.m*ldc))
			p.g.Gemm(tc.ta, tc.tb, tc.m, tc.n, tc.k, tc.alpha, ga, lda, gb, ldb, tc.beta, gc, ldc)
			p.c.Gemm(tc.ta, tc.tb, tc.m, tc.n, tc.k, tc.alpha, ca, lda, cb, ldb, tc.beta, cc, ldc)
			checkClose(t, "Gemm", down(p.g, gc), cpu.Data(cc), tol)
		})
	}
}

func TestLinear(t *testing.T) {
	for _, tc := range []struct {
		m, n, k int
		bias    bool
	}{{1, 3, 2, true}, {5, 7, 9, false}, {70, 130, 64, true}, {300, 1536, 512, true}, {8, 9000, 512, false}} {
		t.Run(fmt.Sprintf("%dx%dx%d_%v", tc.m, tc.n, tc.k, tc.bias), func(t *testing.T) {
			p := newPair(t, 4)
			gx, cx := p.up(randVec(p.r, tc.m*tc.k))
			gw, cw := p.up(randVec(p.r, tc.n*tc.k))
			var gbias, cbias kernels.Buffer
			if tc.bias {
				gbias, cbias = p.up(randVec(p.r, tc.n))
			}
			gy, cy := p.g.Alloc(tc.m*tc.n), p.c.Alloc(tc.m*tc.n)
			p.g.Linear(gy, gx, gw, gbias, tc.m, tc.n, tc.k)
			p.c.Linear(cy, cx, cw, cbias, tc.m, tc.n, tc.k)
			checkClose(t, "Linear", down(p.g, gy), cpu.Data(cy), tol)
		})
	}
}

func TestLayerNorm(t *testing.T) {
	for _, tc := range []struct{ rows, dim int }{{1, 7}, {37, 512}, {5, 4096}, {3000, 256}} {
		t.Run(fmt.Sprintf("%dx%d", tc.rows, tc.dim), func(t *testing.T) {
			p := newPair(t, 5)
			x := randVec(p.r, tc.rows*tc.dim)
			for i := range x {
				x[i] = x[i]*3 + 1.5 // a non-zero mean exercises the two-pass variance
			}
			gx, cx := p.up(x)
			gg, cg := p.up(randVec(p.r, tc.dim))
			gb, cb := p.up(randVec(p.r, tc.dim))
			// In place, as the model calls it.
			p.g.LayerNorm(gx, gx, gg, gb, tc.rows, tc.dim, 1e-5)
			p.c.LayerNorm(cx, cx, cg, cb, tc.rows, tc.dim, 1e-5)
			checkClose(t, "LayerNorm", down(p.g, gx), cpu.Data(cx), 1e-6)
		})
	}
}

func TestSoftmax(t *testing.T) {
	for _, tc := range []struct {
		rows, dim int
		masked    bool
	}{{3, 7, false}, {64, 1000, true}, {4, 40000, false}, {2, 5, true}} {
		t.Run(fmt.Sprintf("%dx%d_%v", tc.rows, tc.dim, tc.masked), func(t *testing.T) {
			p := newPair(t, 6)
			x := randVec(p.r, tc.rows*tc.dim)
			if tc.masked {
				for i := range x {
					if i%3 == 0 {
						x[i] = float32(math.Inf(-1))
					}
				}
				for j := 0; j < tc.dim; j++ { // one fully masked row: NaN, as torch
					x[j] = float32(math.Inf(-1))
				}
			}
			gx, cx := p.up(x)
			for _, op := range []string{"Softmax", "LogSoftmax"} {
				gy, cy := p.g.Alloc(len(x)), p.c.Alloc(len(x))
				if op == "Softmax" {
					p.g.Softmax(gy, gx, tc.rows, tc.dim)
					p.c.Softmax(cy, cx, tc.rows, tc.dim)
				} else {
					p.g.LogSoftmax(gy, gx, tc.rows, tc.dim)
					p.c.LogSoftmax(cy, cx, tc.rows, tc.dim)
				}
				checkClose(t, op, down(p.g, gy), cpu.Data(cy), 1e-6)
			}
		})
	}
}

func TestActivate(t *testing.T) {
	for _, act := range []kernels.Activation{kernels.ReLU, kernels.GELU, kernels.GELUAccurate, kernels.Tanh, kernels.Linear} {
		t.Run(string(act), func(t *testing.T) {
			p := newPair(t, 7)
			x := randVec(p.r, 10001)
			x[0] = float32(math.NaN())
			gx, cx := p.up(x)
			gy, cy := p.g.Alloc(len(x)), p.c.Alloc(len(x))
			p.g.Activate(gy, gx, act)
			p.c.Activate(cy, cx, act)
			checkClose(t, "Activate", down(p.g, gy), cpu.Data(cy), 1e-7)
			p.g.Activate(gx, gx, act) // in place
			checkClose(t, "Activate in place", down(p.g, gx), cpu.Data(cy), 1e-7)
		})
	}
}

func TestEmbedResidual(t *testing.T) {
	p := newPair(t, 8)
	const V, d = 50, 64
	gt, ct := p.up(randVec(p.r, V*d))
	ids := []int32{4, 0, 49, 4, 17}
	gy, cy := p.g.Alloc(len(ids)*d), p.c.Alloc(len(ids)*d)
	p.g.Embed(gy, gt, ids, d, 8)
	p.c.Embed(cy, ct, ids, d, 8)
	checkExact(t, "Embed", down(p.g, gy), cpu.Data(cy))
	p.g.AddRows(gy, gt, []int32{2, 3, 4, 5, 6}, d)
	p.c.AddRows(cy, ct, []int32{2, 3, 4, 5, 6}, d)
	checkExact(t, "AddRows", down(p.g, gy), cpu.Data(cy))

	for _, tc := range []struct {
		omega bool
		alpha float32
	}{{false, 1}, {true, 1}, {true, 0.8}, {false, 2.5}} {
		gx, cx := p.up(randVec(p.r, 7*d))
		gb, cb := p.up(randVec(p.r, 7*d))
		var gw, cw kernels.Buffer
		if tc.omega {
			gw, cw = p.up(randVec(p.r, d))
		}
		p.g.Residual(gx, gx, gb, gw, tc.alpha, 7, d)
		p.c.Residual(cx, cx, cb, cw, tc.alpha, 7, d)
		checkExact(t, fmt.Sprintf("Residual ω=%v α=%v", tc.omega, tc.alpha), down(p.g, gx), cpu.Data(cx))
	}
}

func TestAttention(t *testing.T) {
	type tcase struct {
		name                   string
		B, H, D, TQ, TK, KVB   int
		causal, pad, kv, probs bool
		qOff                   int
	}
	for _, tc := range []tcase{
		{name: "self", B: 3, H: 4, D: 16, TQ: 9, TK: 9, KVB: 3},
		{name: "self padded with probs", B: 3, H: 4, D: 16, TQ: 9, TK: 9, KVB: 3, pad: true, probs: true},
		{name: "causal", B: 2, H: 8, D: 64, TQ: 21, TK: 21, KVB: 2, causal: true},
		{name: "decode step", B: 8, H: 8, D: 64, TQ: 1, TK: 13, KVB: 8, causal: true, qOff: 12},
		{name: "beams on shared encoder", B: 8, H: 4, D: 32, TQ: 1, TK: 17, KVB: 2, pad: true, kv: true, probs: true},
		{name: "long keys", B: 1, H: 2, D: 64, TQ: 3, TK: 3000, KVB: 1, pad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, 9)
			d := tc.H * tc.D
			// q, k, v live inside fused rows of 3d as the model's projections do.
			qkv := randVec(p.r, max(tc.B, tc.KVB)*max(tc.TQ, tc.TK)*3*d)
			gq, cq := p.up(qkv)
			T := max(tc.TQ, tc.TK)
			view := func(b kernels.Buffer, off int) kernels.View {
				return kernels.View{Buf: b, Off: off, BatchStride: T * 3 * d, RowStride: 3 * d}
			}
			args := kernels.AttentionArgs{Batch: tc.B, Heads: tc.H, HeadDim: tc.D, TQ: tc.TQ, TK: tc.TK,
				Scale: float32(1 / math.Sqrt(float64(tc.D))), Causal: tc.causal, QueryOffset: tc.qOff}
			if tc.kv {
				for b := 0; b < tc.B; b++ {
					args.KVIndex = append(args.KVIndex, int32(b*tc.KVB/tc.B))
				}
			}
			if tc.pad {
				args.KeyPadStride = tc.TK + 2
				args.KeyPadding = make([]bool, tc.KVB*args.KeyPadStride)
				for kb := 0; kb < tc.KVB; kb++ {
					for j := 0; j < kb+1 && j < tc.TK-1; j++ {
						args.KeyPadding[kb*args.KeyPadStride+j] = true // left padding
					}
				}
			}
			gout, cout := p.g.Alloc(tc.B*tc.TQ*d), p.c.Alloc(tc.B*tc.TQ*d)
			outView := func(b kernels.Buffer) kernels.View {
				return kernels.View{Buf: b, BatchStride: tc.TQ * d, RowStride: d}
			}
			ga, ca := args, args
			if tc.probs {
				ga.Probs, ca.Probs = p.g.Alloc(tc.B*tc.TQ*tc.TK), p.c.Alloc(tc.B*tc.TQ*tc.TK)
			}
			p.g.Attention(outView(gout), view(gq, 0), view(gq, d), view(gq, 2*d), ga)
			p.c.Attention(outView(cout), view(cq, 0), view(cq, d), view(cq, 2*d), ca)
			checkClose(t, "Attention", down(p.g, gout), cpu.Data(cout), 1e-6)
			if tc.probs {
				checkClose(t, "Attention probs", down(p.g, ga.Probs), cpu.Data(ca.Probs), 1e-6)
			}
		})
	}
}

// BenchmarkLaunch measures the host cost of one small operation (enqueue only) and
// of a synchronised round trip.
func BenchmarkLaunch(b *testing.B) {
	be := gpu(b)
	x := be.Alloc(1024)
	be.syncCheck = false
	defer func() { be.syncCheck = true }()
	b.Run("residual-enqueue", func(b *testing.B) {
		for b.Loop() {
			be.Residual(x, x, x, nil, 1, 1, 1024)
		}
		_ = be.Synchronize()
	})
	b.Run("linear-512-enqueue", func(b *testing.B) {
		w, y := be.Alloc(512*512), be.Alloc(64*512)
		in := be.Alloc(64 * 512)
		for b.Loop() {
			be.Linear(y, in, w, nil, 64, 512, 512)
		}
		_ = be.Synchronize()
	})
}

// bf16Round is the reference float32 → bfloat16 rounding (nearest even).
func bf16Round(f float32) float32 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return math.Float32frombits((u | 0x400000) &^ 0xffff)
	}
	u = (u + 0x7fff + (u>>16)&1) &^ 0xffff
	return math.Float32frombits(u)
}

func TestBF16(t *testing.T) {
	be := gpu(t)
	r := rand.New(rand.NewPCG(11, 12))
	v := randVec(r, 1001)
	v[0], v[1], v[2] = float32(math.Inf(1)), 3.0000002, -1.0078125 // ties and an infinity
	x := be.Upload(v)
	y := be.Alloc(len(v))
	func() {
		defer be.enter()()
		h := be.newBuffer((len(v) + 1) / 2)
		be.prm.reset().ptr(h.dptr()).ptr(addr(x)).i64(len(v))
		be.elem(be.fn.f32ToBF16, int64(len(v)))
		be.prm.reset().ptr(addr(y)).ptr(h.dptr()).i64(len(v))
		be.elem(be.fn.bf16ToF32, int64(len(v)))
	}()
	got := down(be, y)
	want := make([]float32, len(v))
	for i, f := range v {
		want[i] = bf16Round(f)
	}
	checkExact(t, "bf16 round trip", got, want)
	for _, bf := range []bool{false, true} {
		res, err := be.BenchGemm(t.Context(), 256, 512, 128, bf, 5)
		if err != nil || !(res.TFLOPS > 0) {
			t.Fatalf("BenchGemm bf16=%v: %v %+v", bf, err, res)
		}
		t.Log(res)
	}
}
