package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
	"github.com/xform-dev/xform/train"
)

// Tests of the loss (loss.cu) and of the list kernels of the gradient norm and the
// optimizer (reduce.cu, optim.cu) against the CPU backend, and their timings at the
// 6L-6L bf16 benchmark's shapes against the kernels they replaced (v0Source, compiled
// here by NVRTC into a module of its own).
//
// Tolerances:
//   - FP32 loss: as TestLabelSmoothedLoss (loss and nll sums 1e-12 relative: double sums
//     in another order; dlogits 1e-6: the same double arithmetic, float results equal
//     but at rare rounding ties of c).
//   - BF16/FP16 loss (float kernel): expf is within 2 ulp and the row's Σ exp is formed
//     in float over groups of four, so c = m + (float)log Σ may round to a neighbour of
//     the CPU's on a few % of rows, moving every lp of such a row by ~ulp(c) ≈ 2e-6.
//     Bounds: loss and nll sums 1e-6 relative, dlogits 1e-6 norm-wise (the existing
//     bound) and every element within 1e-5·|scale|. A Go emulation of the kernel's
//     arithmetic on these cases, expf perturbed by up to ±2 ulp, measured ≤ 1.6e-8 on
//     the sums, ≤ 2.7e-7 norm-wise and ≤ 1.8e-6 per element (peaked rows the worst).
//     ls_pipe_* forms p as exp(x − m_t)·exp(m_t − c) (m_t a thread's maximum) instead of
//     exp(x − c): the roundings of x − m_t and m_t − c replace that of x − c, each
//     ≤ |arg|·2⁻²⁴ relative in p, ~1e-6 at |lp| ≈ 16, so the same bounds hold (a Go
//     emulation of ls_pipe's arithmetic: see gpu_loss16_test.go).
//   - list kernels: Adam, scaling and filling bit for bit (the same float operations per
//     element); Σx² 1e-12 relative (double sums in another order) and the same bits
//     run to run and whatever the buffers' alignment.

// v0Source holds the kernels as they were before the loss and list kernels were
// rewritten: one block per row reading the logits four times; list kernels in which
// every block walks every buffer with one grid stride (renamed *_v0).
const v0Source = `#include "xform.cuh"

extern "C" __global__ void ls_loss_v0(float* dlogits, double* rowOut, const float* logits, const int* targets,
                                   int rows, int V, float eps, int ignore, float scale) {
    __shared__ double dscratch[32];
    __shared__ float fscratch[32];
    const double epsI = (double)eps / (double)V;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* x = logits + r * V;
        float* g = dlogits ? dlogits + r * V : nullptr;
        const int t = targets[r];
        if (t == ignore) {
            if (threadIdx.x == 0) {
                rowOut[2 * r] = 0;
                rowOut[2 * r + 1] = 0;
            }
            if (g)
                for (int j = threadIdx.x; j < V; j += blockDim.x) g[j] = 0.0f;
            continue;
        }
        const float xt = x[t];  // read before any thread may overwrite it (aliasing)
        float m = -XF_INF;
        for (int j = threadIdx.x; j < V; j += blockDim.x) m = xf_max_nan(m, x[j]);
        m = xf_block_max<true>(m, fscratch);
        double s = 0;
        for (int j = threadIdx.x; j < V; j += blockDim.x) s += exp((double)(x[j] - m));
        const float c = m + (float)log(xf_block_sum(s, dscratch));
        double sl = 0;
        for (int j = threadIdx.x; j < V; j += blockDim.x) sl += (double)(x[j] - c);
        const double smooth = -xf_block_sum(sl, dscratch);
        const float lpt = xt - c;
        if (threadIdx.x == 0) {
            rowOut[2 * r] = (1 - (double)eps) * (double)(-lpt) + epsI * smooth;
            rowOut[2 * r + 1] = (double)(-lpt);
        }
        if (g) {
            for (int j = threadIdx.x; j < V; j += blockDim.x) {
                double gv = exp((double)(x[j] - c)) - epsI;
                if (j == t) gv -= 1 - (double)eps;
                g[j] = (float)(gv * (double)scale);
            }
        }
    }
}

// sumsq_partial: block blockIdx.x's share of Σ x² over nbuf buffers described by desc
// (desc[0..nbuf) device addresses, desc[nbuf..2·nbuf) element counts). Every block
// walks every buffer with the same grid stride, so the element → thread assignment is
// fixed by the grid alone. part[blockIdx.x] receives the block's double sum.
extern "C" __global__ void sumsq_partial_v0(double* part, const unsigned long long* desc, int nbuf) {
    __shared__ double scratch[32];
    double s = 0;
    for (int k = 0; k < nbuf; k++) {
        const float* p = (const float*)desc[k];
        long long n = (long long)desc[nbuf + k];
        for (long long i = xf_tid(); i < n; i += xf_stride()) {
            double v = (double)p[i];
            s += v * v;
        }
    }
    s = xf_block_sum(s, scratch);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// scale_list sets x = a·x (float product) over every buffer of desc (layout as above):
// gradient clipping and normalisation in one launch.
extern "C" __global__ void scale_list_v0(const unsigned long long* desc, int nbuf, float a) {
    for (int k = 0; k < nbuf; k++) {
        float* p = (float*)desc[k];
        long long n = (long long)desc[nbuf + k];
        for (long long i = xf_tid(); i < n; i += xf_stride()) p[i] = p[i] * a;
    }
}


// adam_elem updates element i (one kernel body for the per-parameter and the list kernel,
// so both give the same bits).
__device__ __forceinline__ void adam_elem(float* p, const float* g, float* m, float* v, long long i, float beta1,
                                          float beta2, float omb1, float omb2, float eps, float decay, float step,
                                          int update) {
    float gi = g[i];
    float vi = v[i] * beta2 + omb2 * gi * gi;
    float mi = m[i] * beta1 + omb1 * gi;
    v[i] = vi;
    m[i] = mi;
    float x = p[i];
    if (decay != 0.0f) x = x + decay * x;
    if (update) {
        float den = (float)sqrt((double)vi) + eps;
        x = x + -step * (mi / den);
    }
    p[i] = x;
}

// adam_list is adam_step over many parameters in one launch: desc holds the device
// addresses of every p, then every g, m, v, then the lengths (nbuf each). Each element
// gets adam_step's arithmetic exactly, so the result is bit-identical to one launch per
// parameter.
extern "C" __global__ void adam_list_v0(const unsigned long long* desc, int nbuf, float beta1, float beta2,
                                     float omb1, float omb2, float eps, float decay, float step, int update) {
    for (int k = 0; k < nbuf; k++) {
        float* p = (float*)desc[k];
        const float* g = (const float*)desc[nbuf + k];
        float* m = (float*)desc[2 * nbuf + k];
        float* v = (float*)desc[3 * nbuf + k];
        long long n = (long long)desc[4 * nbuf + k];
        for (long long i = xf_tid(); i < n; i += xf_stride()) {
            adam_elem(p, g, m, v, i, beta1, beta2, omb1, omb2, eps, decay, step, update);
        }
    }
}

// fill_list sets every element of every buffer of desc (addresses, then lengths) to
// value: zeroing all gradients in one launch.
extern "C" __global__ void fill_list_v0(const unsigned long long* desc, int nbuf, float value) {
    for (int k = 0; k < nbuf; k++) {
        float* p = (float*)desc[k];
        long long n = (long long)desc[nbuf + k];
        for (long long i = xf_tid(); i < n; i += xf_stride()) p[i] = value;
    }
}
`

// v0Kernels is v0Source, compiled and loaded by the first test that asks.
var v0Kernels = &testKernelSet{file: "v0_loss_optim.cu", src: v0Source,
	names: []string{"ls_loss_v0", "sumsq_partial_v0", "scale_list_v0", "adam_list_v0", "fill_list_v0"}}

// loadTestKernels compiles a test's CUDA source for be's GPU, loads it and returns the
// named kernels (TestCompileTestSources compiles every such source without a GPU).
// The source may include xform.cuh and any of the embedded .cu files (testHeaders).
func loadTestKernels(be *Backend, file, src string, names ...string) (map[string]uintptr, error) {
	headers, err := testHeaders()
	if err != nil {
		return nil, err
	}
	cubin, err := be.libs.nvrtc.compileCUBIN(file, src, headers, nvrtcOptions(be.arch))
	if err != nil {
		return nil, fmt.Errorf("compiling %s: %w", file, err)
	}
	defer be.enter()()
	mod, err := be.drv.loadModule(cubin)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", file, err)
	}
	fns := map[string]uintptr{}
	for _, name := range names {
		f, err := be.drv.function(mod, name)
		if err != nil {
			return nil, err
		}
		fns[name] = f
	}
	return fns, nil
}

// testKernelSet is a test's CUDA source, compiled and loaded once per test binary by
// the first test that asks for its kernels; a failure fails every test that asks.
// TestCompileTestSources compiles every set it lists without a GPU.
type testKernelSet struct {
	file, src string
	names     []string
	once      sync.Once
	fns       map[string]uintptr
	err       error
}

// get returns the set's kernels by name, loaded for be's GPU.
func (s *testKernelSet) get(t *testing.T, be *Backend) map[string]uintptr {
	t.Helper()
	s.once.Do(func() { s.fns, s.err = loadTestKernels(be, s.file, s.src, s.names...) })
	if s.err != nil {
		t.Fatal(s.err)
	}
	return s.fns
}

// testHeaders maps every embedded CUDA file (xform.cuh and the .cu sources) to its
// text, so that a test's source can instantiate a production kernel's body in other
// forms.
func testHeaders() (map[string]string, error) {
	entries, err := sources.ReadDir(".")
	if err != nil {
		return nil, err
	}
	h := map[string]string{}
	for _, e := range entries {
		b, err := sources.ReadFile(e.Name())
		if err != nil {
			return nil, err
		}
		h[e.Name()] = string(b)
	}
	return h, nil
}

// offsetUp uploads v behind off leading zeros to both backends and returns the slices
// holding v (off 1: a start that is not 16-byte aligned).
func (p *pair) offsetUp(v []float32, off int) both {
	w := append(make([]float32, off), v...)
	g, c := p.up(w)
	return both{p.g.Slice(g, off, len(v)), p.c.Slice(c, off, len(v))}
}

// TestLabelSmoothedLossPaths runs every launch variant of ls_loss and ls_pipe_f32 (the
// float-arithmetic rows of whole float4 groups up to 32,768, aligned) against the CPU:
// exact (FP32) and float (BF16, FP16) arithmetic, the row staged in shared memory or read from
// global memory (V beyond the opt-in bound), float4 or scalar accesses (V % 4 ≠ 0,
// arrays starting off 16 bytes), with and without dlogits, in place, peaked rows,
// ignored rows; and checks that a second call gives the same bits.
func TestLabelSmoothedLossPaths(t *testing.T) {
	be := gpu(t)
	var st *lossState
	func() { defer be.enter()(); st = be.lossSetup() }()
	seen, seenPipe := map[int]bool{}, false
	for _, prec := range []Precision{FP32, BF16, FP16} {
		for _, tc := range []struct {
			rows, V       int
			off           int // the logits (and a separate dlogits) start off floats into their buffers
			eps, scale    float32
			grad, inPlace bool
			peaked        bool // the target logit raised by 12: p_t near 1
		}{
			{5, 7, 0, 0.1, 1, true, false, false},
			{300, 128, 0, 0.1, 1, true, true, false},
			{200, 27472, 0, 0.1, 1, true, false, false},
			{200, 27472, 0, 0.1, 0.25, true, true, false},
			{120, 27472, 0, 0.1, 1, true, false, true},
			{60, 27472, 1, 0.1, 1, true, false, false},
			{60, 27473, 0, 0.1, 1, true, false, false},
			{50, 27472, 0, 0.2, 1, false, false, false},
			{50, 1000, 0, 0, 1, true, false, false},
			{40, 40000, 0, 0.1, 1, true, false, false}, // staged float4 beyond the pipe kernels' rows
			{24, 70000, 0, 0.1, 1, true, false, false},
			{24, 70001, 0, 0.1, 1, true, true, false},
			{24, 70000, 2, 0.1, 1, true, false, false},
		} {
			name := fmt.Sprintf("%v/%dx%d_off=%d_eps=%v_scale=%v_grad=%v_inplace=%v_peaked=%v", prec, tc.rows, tc.V, tc.off, tc.eps, tc.scale, tc.grad, tc.inPlace, tc.peaked)
			t.Run(name, func(t *testing.T) {
				withPrecision(t, prec)
				p := newPair(t, 81)
				logits := randVec(p.r, tc.rows*tc.V)
				for i := range logits {
					logits[i] *= 4
				}
				targets := make([]int32, tc.rows)
				for i := range targets {
					targets[i] = int32(p.r.IntN(tc.V))
					if i%7 == 3 {
						targets[i] = 1 // ignored (pad)
					}
					if tc.peaked && targets[i] != 1 {
						logits[i*tc.V+int(targets[i])] += 12
					}
				}
				lg := p.offsetUp(logits, tc.off)
				var d both
				switch {
				case tc.inPlace:
					d = lg
				case tc.grad:
					d = p.offsetUp(randVec(p.r, tc.rows*tc.V), tc.off) // garbage: ignored rows must be zeroed
				}
				_, _, mode := lsLaunch(tc.V, st.maxStaged, addr(lg.g), addr(d.g), prec != FP32)
				pp, pipe := func() (lsPipe, bool) {
					defer p.g.enter()()
					return p.g.lsPipeFor(st, tc.rows, tc.V, xfOutF32, addr(lg.g), addr(d.g), xfOutF32)
				}()
				if pipe {
					seenPipe = true
					t.Logf("ls_pipe_f32: grid %d, block %d, %d stages", pp.grid, pp.block, pp.stages)
				} else {
					seen[mode] = true
				}
				gl, gn := p.g.LabelSmoothedLoss(d.g, lg.g, targets, tc.rows, tc.V, tc.eps, 1, tc.scale)
				var want []float32
				if tc.inPlace {
					want = make([]float32, tc.rows*tc.V)
					cd := cpu.Wrap(want)
					cl, cn := p.c.LabelSmoothedLoss(cd, lg.c, targets, tc.rows, tc.V, tc.eps, 1, tc.scale)
					checkLoss(t, prec, gl, gn, cl, cn)
				} else {
					cl, cn := p.c.LabelSmoothedLoss(d.c, lg.c, targets, tc.rows, tc.V, tc.eps, 1, tc.scale)
					checkLoss(t, prec, gl, gn, cl, cn)
					if tc.grad {
						want = cpu.Data(d.c)
					}
				}
				if !pipe {
					t.Logf("ls_loss mode %d (staged %v, float4 %v, float %v)", mode, mode&lsStaged != 0, mode&lsVec != 0, mode&lsFast != 0)
				}
				if want == nil {
					return
				}
				got := down(p.g, d.g)
				checkClose(t, "dlogits", got, want, 1e-6)
				if prec != FP32 {
					var worst float64
					for i := range got {
						worst = max(worst, math.Abs(float64(got[i])-float64(want[i])))
					}
					if !(worst <= 1e-5*math.Abs(float64(tc.scale))) {
						t.Errorf("dlogits: max |Δ| %.3g > 1e-5·|scale|", worst)
					}
				}
				if tc.inPlace {
					return // the logits are gone
				}
				// The same bits on a second call.
				gl2, gn2 := p.g.LabelSmoothedLoss(d.g, lg.g, targets, tc.rows, tc.V, tc.eps, 1, tc.scale)
				if gl2 != gl || gn2 != gn {
					t.Errorf("second call: loss %.17g nll %.17g, first %.17g %.17g", gl2, gn2, gl, gn)
				}
				checkExact(t, "dlogits, second call", down(p.g, d.g), got)
			})
		}
	}
	for _, m := range []int{lsStaged | lsVec, lsStaged, lsVec, 0} {
		for _, f := range []int{0, lsFast} {
			if !seen[m|f] {
				t.Errorf("launch mode %d never taken: the cases no longer cover it on this device (maxStaged %d)", m|f, st.maxStaged)
			}
		}
	}
	if p := gpu(t); p.info.Major >= 8 && !seenPipe {
		t.Errorf("ls_pipe_f32 never taken on sm_%d%d", p.info.Major, p.info.Minor)
	}
}

func checkLoss(t *testing.T, prec Precision, gl, gn, cl, cn float64) {
	t.Helper()
	rl, rn := math.Abs(gl-cl)/math.Abs(cl), math.Abs(gn-cn)/math.Abs(cn)
	limit := 1e-12
	if prec != FP32 {
		limit = 1e-6
	}
	t.Logf("loss %.12g (cpu %.12g, rel %.3g), nll %.12g (cpu %.12g, rel %.3g)", gl, cl, rl, gn, cn, rn)
	if !(rl <= limit && rn <= limit) {
		t.Errorf("loss/nll relative error %.3g/%.3g > %g", rl, rn, limit)
	}
}

// TestLabelSmoothedLossTiming logs the device time of one loss call (kernel and row sum)
// at the bf16 benchmark's shape, logits [8000 × 27472] (dlogits in place, as the model
// calls it, and in a separate buffer), for the previous kernel, the FP32 (exact) kernel
// and the BF16 (float) one, with the bandwidth of one read and one write. It only
// measures; skipped with -short.
func TestLabelSmoothedLossTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	be := gpu(t)
	v0 := v0Kernels.get(t, be)
	old := be.precision
	defer func() { be.precision = old }()
	const rows, V = 8000, 27472
	r := rand.New(rand.NewPCG(3, 4))
	host, targets := timingLogits(r, rows, V, func(x float32) float32 { return x })
	logits, dl := be.Upload(host), be.AllocUninit(rows*V)
	callV0 := func(d kernels.Buffer) func() {
		return func() {
			defer be.enter()()
			tp := be.stageInts(slotTargets, targets)
			perRow := be.newDoubles(2 * rows)
			be.prm.reset().ptr(addr(d)).ptr(perRow.dptr()).ptr(addr(logits)).ptr(tp).
				i32(rows).i32(V).f32(0.1).i32(1).f32(1)
			be.run(v0["ls_loss_v0"], be.rowsGrid(rows), 1024, 0)
			sums := be.newDoubles(2)
			be.prm.reset().ptr(sums.dptr()).ptr(perRow.dptr()).i64(rows).i32(2).i32(2)
			be.run(be.fn.train.sumStrided, [3]uint32{1, 1, 1}, blockElem, 0)
		}
	}
	callNew := func(p Precision, d kernels.Buffer) func() {
		return func() {
			be.precision = p
			be.LabelSmoothedLossDeferred(d, logits, targets, rows, V, 0.1, 1, 1)
		}
	}
	us := func(f func()) float64 { return timeDevice(t, be, 10, f).Seconds() * 1e6 }
	gbs := func(x float64) float64 { return 2 * 4 * rows * V / x / 1e3 }
	for _, c := range []struct {
		name string
		d    kernels.Buffer
	}{{"in place", logits}, {"separate dlogits", dl}} {
		// In place the logits are overwritten by the first call; later calls read
		// gradients, which costs the same.
		a, b, f := us(callV0(c.d)), us(callNew(FP32, c.d)), us(callNew(BF16, c.d))
		t.Logf("ls_loss %d×%d %s: previous %.1f µs (%.0f GB/s), FP32 exact %.1f µs (%.0f GB/s), BF16 float %.1f µs (%.0f GB/s)",
			rows, V, c.name, a, gbs(a), b, gbs(b), f, gbs(f))
	}
}

// sixLayerNet places a random 6L-6L transformer_wmt_en_de (shared 27,472-word
// vocabulary, Admin) on be: the parameter list of the bf16 benchmark, 58M floats.
func sixLayerNet(t *testing.T, be kernels.Trainer) *model.TrainNet {
	t.Helper()
	c := model.Config{Init: model.InitAdaptive, ShareAllEmbeddings: true, SrcVocab: 27472, TgtVocab: 27472}
	if _, _, _, err := train.ArchDefaults("transformer_wmt_en_de", &c); err != nil {
		t.Fatal(err)
	}
	m := &model.Model{Config: c, Params: map[string]*tensor.Tensor{}}
	r := rand.New(rand.NewPCG(61, 62))
	for _, p := range c.Expected() {
		v := randVec(r, tensor.Numel(p.Shape))
		for i := range v {
			v[i] *= 0.05
		}
		m.Params[p.Name] = tensor.FromF32(p.Shape, v)
	}
	net, err := model.NewTrainNet(m, be)
	if err != nil {
		t.Fatal(err)
	}
	return net
}

// listCase is a parameter list on both backends: weights, gradients and moments.
type listCase struct {
	p, g, m, v []both
}

func (p *pair) listCase(lens []int, offs []int) listCase {
	var lc listCase
	for i, n := range lens {
		off := 0
		if offs != nil {
			off = offs[i]
		}
		vv := randVec(p.r, n)
		for j := range vv {
			vv[j] *= vv[j] * 1e-3 // second moments are ≥ 0
		}
		lc.p = append(lc.p, p.offsetUp(randVec(p.r, n), off))
		lc.g = append(lc.g, p.offsetUp(randVec(p.r, n), off))
		lc.m = append(lc.m, p.offsetUp(randVec(p.r, n), off))
		lc.v = append(lc.v, p.offsetUp(vv, off))
	}
	return lc
}

func gpuSide(bs []both) []kernels.Buffer {
	out := make([]kernels.Buffer, len(bs))
	for i, b := range bs {
		out[i] = b.g
	}
	return out
}

// checkLists runs SumSquaresAll, ScaleAll, AdamStepAll and FillAll on the GPU and the
// per-buffer CPU operations on lc.
func checkLists(t *testing.T, p *pair, lc listCase) {
	t.Helper()
	gs := gpuSide(lc.g)
	got := p.g.SumSquaresAll(gs)
	var want float64
	for _, b := range lc.g {
		want += p.c.SumSquares(b.c)
	}
	if rel := math.Abs(got-want) / want; !(rel <= 1e-12) {
		t.Errorf("SumSquaresAll = %.17g, CPU %.17g (relative %.3g > 1e-12)", got, want, rel)
	} else {
		t.Logf("SumSquaresAll %.17g, CPU %.17g, relative %.3g", got, want, rel)
	}
	if again := p.g.SumSquaresAll(gs); again != got {
		t.Errorf("SumSquaresAll not reproducible: %.17g then %.17g", got, again)
	}
	p.g.ScaleAll(gs, 0.37)
	for _, b := range lc.g {
		p.c.Scale(b.c, 0.37)
	}
	for i, b := range lc.g {
		p.check(t, fmt.Sprintf("ScaleAll[%d]", i), b, 0)
	}
	for _, s := range []kernels.OptimStep{
		{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, StepSize: 1e-3, Update: true},
		{Beta1: 0.9, Beta2: 0.999, OneMinusBeta1: 0.1, OneMinusBeta2: 0.001, Eps: 1e-8, Decay: -1e-5, StepSize: 5e-4, Update: true},
		{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8}, // RAdam before ρ_t ≥ 5
	} {
		p.g.AdamStepAll(gpuSide(lc.p), gs, gpuSide(lc.m), gpuSide(lc.v), s)
		for i := range lc.p {
			p.c.AdamStep(lc.p[i].c, lc.g[i].c, lc.m[i].c, lc.v[i].c, s)
		}
		for i := range lc.p {
			p.check(t, fmt.Sprintf("Adam p[%d]", i), lc.p[i], 0)
			p.check(t, fmt.Sprintf("Adam m[%d]", i), lc.m[i], 0)
			p.check(t, fmt.Sprintf("Adam v[%d]", i), lc.v[i], 0)
		}
	}
	p.g.FillAll(gs, -0.5)
	for _, b := range lc.g {
		p.c.Fill(b.c, -0.5)
	}
	for i, b := range lc.g {
		p.check(t, fmt.Sprintf("FillAll[%d]", i), b, 0)
	}
}

// TestListKernelsChunks: lengths around the chunk size (8192) and the float4 width,
// buffers that start off 16 bytes (the scalar path), an empty buffer.
func TestListKernelsChunks(t *testing.T) {
	p := newPair(t, 83)
	lens := []int{1, 3, 4, 5, 0, 8191, 8192, 8193, 3*8192 + 3, 65536 + 7, 512, 1536}
	offs := []int{0, 1, 0, 2, 0, 0, 1, 0, 3, 0, 4, 1}
	checkLists(t, p, p.listCase(lens, offs))
}

// Σx² does not depend on where the buffers start: the float4 and the scalar path add
// in the same order.
func TestSumSquaresAllAlignment(t *testing.T) {
	p := newPair(t, 84)
	lens := []int{7, 8192 + 5, 30001, 512}
	var aligned, shifted []kernels.Buffer
	for _, n := range lens {
		v := randVec(p.r, n)
		aligned = append(aligned, p.g.Upload(v))
		shifted = append(shifted, p.offsetUp(v, 1).g)
	}
	a, s := p.g.SumSquaresAll(aligned), p.g.SumSquaresAll(shifted)
	if math.Float64bits(a) != math.Float64bits(s) {
		t.Errorf("Σx² %.17g aligned, %.17g from buffers starting at an odd float", a, s)
	}
}

// TestListKernels6L6L checks the list kernels on the benchmark's own parameter list (the
// fused q/k/v storage sliced per parameter, as model.TrainNet lays it out) against the
// CPU: the gradient norm, clipping, Adam and zeroing of a step.
func TestListKernels6L6L(t *testing.T) {
	p := newPair(t, 85)
	net := sixLayerNet(t, p.g)
	var lc listCase
	total := 0
	for _, np := range net.Params() {
		n := np.P.Len()
		total += n
		g, c := p.up(randVec(p.r, n))
		lc.p = append(lc.p, both{np.P, p.c.Upload(down(p.g, np.P))})
		// The net's gradient buffers, given random values (0 + x is x).
		p.g.AddTo(np.G, g)
		lc.g = append(lc.g, both{np.G, c})
		m, mc := p.up(randVec(p.r, n))
		vv := randVec(p.r, n)
		for j := range vv {
			vv[j] *= vv[j] * 1e-3
		}
		v, vc := p.up(vv)
		lc.m = append(lc.m, both{m, mc})
		lc.v = append(lc.v, both{v, vc})
	}
	t.Logf("%d parameters, %d floats", len(lc.p), total)
	checkLists(t, p, lc)
}

// TestListKernelsTiming logs the device time of the gradient norm (Σx² and its sum),
// ScaleAll, AdamStepAll and FillAll over the 6L-6L parameter list, previous kernels
// against the chunked ones, with the bandwidth each reaches. It only measures; skipped
// with -short.
func TestListKernelsTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	be := gpu(t)
	v0 := v0Kernels.get(t, be)
	net := sixLayerNet(t, be)
	var ps, gs, ms, vs []kernels.Buffer
	total := 0
	r := rand.New(rand.NewPCG(9, 9))
	for _, np := range net.Params() {
		n := np.P.Len()
		total += n
		ps, gs = append(ps, np.P), append(gs, np.G)
		ms, vs = append(ms, be.Upload(randVec(r, n))), append(vs, be.Alloc(n))
	}
	maxLen := int64(0)
	for _, x := range ps {
		maxLen = max(maxLen, int64(x.Len()))
	}
	v0List := func(fn string, lists [][]kernels.Buffer, args func(*params)) func() {
		return func() {
			defer be.enter()()
			words, n := listDescriptor(lists...)
			desc := be.stageInts(slotList, words)
			be.prm.reset().ptr(desc).i32(n)
			args(be.prm)
			be.elem(v0[fn], maxLen)
		}
	}
	v0Sumsq := func() {
		defer be.enter()()
		words, n := listDescriptor(gs)
		desc := be.stageInts(slotList, words)
		part := be.newDoubles(256)
		be.prm.reset().ptr(part.dptr()).ptr(desc).i32(n)
		be.run(v0["sumsq_partial_v0"], [3]uint32{256, 1, 1}, blockElem, 0)
		sum := be.newDoubles(1)
		be.prm.reset().ptr(sum.dptr()).ptr(part.dptr()).i64(256).i32(1).i32(1)
		be.run(be.fn.train.sumStrided, [3]uint32{1, 1, 1}, blockElem, 0)
	}
	// SumSquaresAll without its read-back, which would leave the device idle between
	// calls inside the timed interval.
	newSumsq := func() { defer be.enter()(); be.sumSquares(gs) }
	s := kernels.OptimStep{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, StepSize: 1e-7, Update: true}
	adamArgs := func(p *params) {
		p.f32(s.Beta1).f32(s.Beta2).f32(s.OneMinusBeta1).f32(s.OneMinusBeta2).f32(s.Eps).f32(s.Decay).f32(s.StepSize).i32(1)
	}
	us := func(f func()) float64 { return timeDevice(t, be, 20, f).Seconds() * 1e6 }
	mb := float64(4*total) / 1e6
	for _, c := range []struct {
		name     string
		old, new func()
		passes   float64 // arrays read or written, each 4·total bytes
	}{
		{"sumsq (gradient norm)", v0Sumsq, newSumsq, 1},
		{"scale_list", v0List("scale_list_v0", [][]kernels.Buffer{gs}, func(p *params) { p.f32(1) }), func() { be.ScaleAll(gs, 1) }, 2},
		{"adam_list", v0List("adam_list_v0", [][]kernels.Buffer{ps, gs, ms, vs}, adamArgs), func() { be.AdamStepAll(ps, gs, ms, vs, s) }, 7},
		{"fill_list", v0List("fill_list_v0", [][]kernels.Buffer{gs}, func(p *params) { p.f32(0) }), func() { be.FillAll(gs, 0) }, 1},
	} {
		a, b := us(c.old), us(c.new)
		t.Logf("%-22s %d tensors, %.1f MB each pass: previous %.1f µs (%.0f GB/s), chunked %.1f µs (%.0f GB/s)",
			c.name, len(gs), mb, a, c.passes*mb/a*1e3, b, c.passes*mb/b*1e3)
	}
}

// timingLogits makes the loss timings' inputs: rows × V logits, 64 distinct random rows
// (×4, then round) repeated, since the time does not depend on the values, and random
// targets with every eighth row padding (~12 %).
func timingLogits(r *rand.Rand, rows, V int, round func(float32) float32) ([]float32, []int32) {
	tile := randVec(r, 64*V)
	for i := range tile {
		tile[i] = round(tile[i] * 4)
	}
	host := make([]float32, rows*V)
	for i := 0; i < rows; i += 64 {
		copy(host[i*V:], tile)
	}
	targets := make([]int32, rows)
	for i := range targets {
		targets[i] = int32(r.IntN(V))
		if i%8 == 5 {
			targets[i] = 1
		}
	}
	return host, targets
}
