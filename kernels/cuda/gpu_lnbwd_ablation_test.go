package cuda

import (
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// Where the residual+LayerNorm backward's time goes (written for the fourteenth
// session's first GPU call). The thirteenth session found that the step's backward
// (layernorm_fast_bwd_vp4: 39 µs at 8000 × 512, ~92 MB, ~2.35 TB/s) did not get faster
// when a third of its input bytes went (next/halfres), so bytes are not its limit. The
// kernels below rebuild it from nothing, one piece per stage, with the production
// kernel's launch shape (a row per warp, 8 warps a block, the blocks that fit on the
// SMs at once, the warps looping over rows), so that the timings say which piece costs
// what:
//
//	stage 0: load the row's z, dy, dz2 and x, store dz (no arithmetic but the sum)
//	stage 1: + dy's residual sum, the row's mean and rstd and the a, b reductions (shuffles)
//	stage 2: + the column sums in the warp's shared-memory slice and the block's partials
//	stage 3: + dbranch stored 16-bit (no mask)
//	stage 4: + the dropout mask per element (xf_dropout_keep, as lfv_drop4)
//
// and a grid-stride kernel with stage 0's traffic and no rows (the attainable
// bandwidth of this mix of streams). The stages compute no meaningful values: only
// their time is read.

const lnAblationSource = `#include "xform.cuh"
#define AB_DIM4 128
#define AB_NV 4
// ab_rowstats: the row's mean and 1/sqrt(var + eps), two-pass, from the lane's float4s.
__device__ __forceinline__ void ab_rowstats(const float4 (&v)[AB_NV], float& mean, float& rstd) {
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < AB_NV; c++) s += (v[c].x + v[c].y) + (v[c].z + v[c].w);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    mean = s / 512.f;
    float q2 = 0.f;
#pragma unroll
    for (int c = 0; c < AB_NV; c++) {
        const float4 t = make_float4(v[c].x - mean, v[c].y - mean, v[c].z - mean, v[c].w - mean);
        q2 += (t.x * t.x + t.y * t.y) + (t.z * t.z + t.w * t.w);
    }
    for (int o = 16; o > 0; o >>= 1) q2 += __shfl_xor_sync(0xffffffffu, q2, o);
    rstd = rsqrtf(q2 / 512.f + 1e-5f);
}
template <int STAGE>
__device__ __forceinline__ void ab_bwd(float* part, float* dz, unsigned short* dbr, const float* dy, const float* dz2,
                                       const float* om2, float alpha2, const float* z, const float* x,
                                       const float* gamma, int rows, unsigned long long seed,
                                       unsigned long long threshold, float keep) {
    extern __shared__ float4 ab_sh[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float4* acc = ab_sh + (long long)warp * 3 * AB_DIM4;
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    if (STAGE >= 2)
        for (int c = 0; c < AB_NV; c++) {
            const int q = lane + 32 * c;
            acc[q] = acc[AB_DIM4 + q] = acc[2 * AB_DIM4 + q] = zero;
        }
    const float4 *z4 = (const float4*)z, *d4 = (const float4*)dy, *e4 = (const float4*)dz2, *x4 = (const float4*)x;
    const float4 *w4 = (const float4*)om2, *g4 = (const float4*)gamma;
    const long long warps = (long long)gridDim.x * nw;
    for (long long r = (long long)blockIdx.x * nw + warp; r < rows; r += warps) {
        const long long o4 = r * AB_DIM4;
        float4 v[AB_NV], d[AB_NV], xv[AB_NV], e[AB_NV];
#pragma unroll
        for (int c = 0; c < AB_NV; c++) {
            const int q = lane + 32 * c;
            v[c] = z4[o4 + q];
            d[c] = d4[o4 + q];
            e[c] = e4[o4 + q];
            xv[c] = x4[o4 + q];
        }
        float mean = 0.f, rstd = 1.f, a = 0.f, b = 0.f;
        if (STAGE >= 1) {
#pragma unroll
            for (int c = 0; c < AB_NV; c++) {
                const float4 w = __ldg(w4 + lane + 32 * c);
                d[c].x = d[c].x + (e[c].x * w.x) * alpha2;
                d[c].y = d[c].y + (e[c].y * w.y) * alpha2;
                d[c].z = d[c].z + (e[c].z * w.z) * alpha2;
                d[c].w = d[c].w + (e[c].w * w.w) * alpha2;
            }
            ab_rowstats(v, mean, rstd);
#pragma unroll
            for (int c = 0; c < AB_NV; c++) {
                const float4 g = __ldg(g4 + lane + 32 * c);
                v[c].x = (v[c].x - mean) * rstd;
                v[c].y = (v[c].y - mean) * rstd;
                v[c].z = (v[c].z - mean) * rstd;
                v[c].w = (v[c].w - mean) * rstd;
                a += (d[c].x * g.x + d[c].y * g.y) + (d[c].z * g.z + d[c].w * g.w);
                b += (d[c].x * g.x * v[c].x + d[c].y * g.y * v[c].y) + (d[c].z * g.z * v[c].z + d[c].w * g.w * v[c].w);
            }
            for (int o = 16; o > 0; o >>= 1) {
                a += __shfl_xor_sync(0xffffffffu, a, o);
                b += __shfl_xor_sync(0xffffffffu, b, o);
            }
            a = a / 512.f;
            b = b / 512.f;
        }
#pragma unroll
        for (int c = 0; c < AB_NV; c++) {
            const int q = lane + 32 * c;
            float4 t;
            if (STAGE >= 1) {
                const float4 g = __ldg(g4 + q);
                t.x = rstd * (d[c].x * g.x - a - v[c].x * b);
                t.y = rstd * (d[c].y * g.y - a - v[c].y * b);
                t.z = rstd * (d[c].z * g.z - a - v[c].z * b);
                t.w = rstd * (d[c].w * g.w - a - v[c].w * b);
            } else {
                t = make_float4(v[c].x + d[c].x + e[c].x + xv[c].x, v[c].y + d[c].y + e[c].y + xv[c].y,
                                v[c].z + d[c].z + e[c].z + xv[c].z, v[c].w + d[c].w + e[c].w + xv[c].w);
            }
            if (STAGE >= 2) {
                float4 s0 = acc[q], s1 = acc[AB_DIM4 + q], s2 = acc[2 * AB_DIM4 + q];
                s0.x += d[c].x * v[c].x; s0.y += d[c].y * v[c].y; s0.z += d[c].z * v[c].z; s0.w += d[c].w * v[c].w;
                s1.x += d[c].x; s1.y += d[c].y; s1.z += d[c].z; s1.w += d[c].w;
                s2.x += xv[c].x * t.x; s2.y += xv[c].y * t.y; s2.z += xv[c].z * t.z; s2.w += xv[c].w * t.w;
                acc[q] = s0;
                acc[AB_DIM4 + q] = s1;
                acc[2 * AB_DIM4 + q] = s2;
            }
            reinterpret_cast<float4*>(dz)[o4 + q] = t;
            if (STAGE >= 3) {
                if (STAGE >= 4) {
                    const unsigned long long i = 4ull * (unsigned long long)(o4 + q);
                    t.x = t.x * (xf_dropout_keep(seed, i, threshold) ? keep : 0.f);
                    t.y = t.y * (xf_dropout_keep(seed, i + 1, threshold) ? keep : 0.f);
                    t.z = t.z * (xf_dropout_keep(seed, i + 2, threshold) ? keep : 0.f);
                    t.w = t.w * (xf_dropout_keep(seed, i + 3, threshold) ? keep : 0.f);
                }
                xf_store4(dbr, o4 + q, t, XF_OUT_BF16);
            }
        }
    }
    if (STAGE >= 2) {
        __syncthreads();
        const int n4 = 3 * AB_DIM4;
        float4* out = reinterpret_cast<float4*>(part) + (long long)blockIdx.x * n4;
        for (int i = threadIdx.x; i < n4; i += blockDim.x) {
            float4 s = ab_sh[i];
            for (int w = 1; w < nw; w++) {
                const float4 u = ab_sh[(long long)w * n4 + i];
                s.x += u.x; s.y += u.y; s.z += u.z; s.w += u.w;
            }
            out[i] = s;
        }
    }
}
#define AB_PARAMS float *part, float *dz, unsigned short *dbr, const float *dy, const float *dz2, const float *om2, \
    float alpha2, const float *z, const float *x, const float *gamma, int rows, unsigned long long seed,           \
    unsigned long long threshold, float keep
#define AB_ARGS part, dz, dbr, dy, dz2, om2, alpha2, z, x, gamma, rows, seed, threshold, keep
extern "C" __global__ void __launch_bounds__(256) ab_bwd0(AB_PARAMS) { ab_bwd<0>(AB_ARGS); }
extern "C" __global__ void __launch_bounds__(256) ab_bwd1(AB_PARAMS) { ab_bwd<1>(AB_ARGS); }
extern "C" __global__ void __launch_bounds__(256) ab_bwd2(AB_PARAMS) { ab_bwd<2>(AB_ARGS); }
extern "C" __global__ void __launch_bounds__(256) ab_bwd3(AB_PARAMS) { ab_bwd<3>(AB_ARGS); }
extern "C" __global__ void __launch_bounds__(256) ab_bwd4(AB_PARAMS) { ab_bwd<4>(AB_ARGS); }
// ab_fwd<STAGE>: the forward (layernorm_fast_fwd_p4's work, one row per warp as lfv_fwd, no
// prefetch): 0 loads x and the branch and stores y; 1 + the residual sum with ω and the
// row statistics; 2 + z and the 16-bit y16 stored; 3 + the mask per element on the branch.
template <int STAGE>
__device__ __forceinline__ void ab_fwd(float* z, float* y, unsigned short* y16, const float* x, const float* branch,
                                       const float* omega, const float* gamma, const float* beta, int rows,
                                       unsigned long long seed, unsigned long long threshold, float keep) {
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const float4 *x4 = (const float4*)x, *b4 = (const float4*)branch, *w4 = (const float4*)omega;
    const float4 *g4 = (const float4*)gamma, *e4 = (const float4*)beta;
    const long long warps = (long long)gridDim.x * nw;
    for (long long r = (long long)blockIdx.x * nw + (threadIdx.x >> 5); r < rows; r += warps) {
        const long long o4 = r * AB_DIM4;
        float4 v[AB_NV], u[AB_NV];
#pragma unroll
        for (int c = 0; c < AB_NV; c++) {
            v[c] = x4[o4 + lane + 32 * c];
            u[c] = b4[o4 + lane + 32 * c];
        }
        float mean = 0.f, rstd = 1.f;
#pragma unroll
        for (int c = 0; c < AB_NV; c++) {
            if (STAGE >= 3) {
                const unsigned long long i = 4ull * (unsigned long long)(o4 + lane + 32 * c);
                u[c].x = u[c].x * (xf_dropout_keep(seed, i, threshold) ? keep : 0.f);
                u[c].y = u[c].y * (xf_dropout_keep(seed, i + 1, threshold) ? keep : 0.f);
                u[c].z = u[c].z * (xf_dropout_keep(seed, i + 2, threshold) ? keep : 0.f);
                u[c].w = u[c].w * (xf_dropout_keep(seed, i + 3, threshold) ? keep : 0.f);
            }
            if (STAGE >= 1) {
                const float4 w = __ldg(w4 + lane + 32 * c);
                v[c] = make_float4(v[c].x * w.x + u[c].x, v[c].y * w.y + u[c].y, v[c].z * w.z + u[c].z, v[c].w * w.w + u[c].w);
            } else {
                v[c] = make_float4(v[c].x + u[c].x, v[c].y + u[c].y, v[c].z + u[c].z, v[c].w + u[c].w);
            }
        }
        if (STAGE >= 1) {
            ab_rowstats(v, mean, rstd);
        }
#pragma unroll
        for (int c = 0; c < AB_NV; c++) {
            const int q = lane + 32 * c;
            if (STAGE >= 2) reinterpret_cast<float4*>(z)[o4 + q] = v[c];
            float4 t = v[c];
            if (STAGE >= 1) {
                const float4 g = __ldg(g4 + q), e = __ldg(e4 + q);
                t = make_float4((t.x - mean) * rstd * g.x + e.x, (t.y - mean) * rstd * g.y + e.y,
                                (t.z - mean) * rstd * g.z + e.z, (t.w - mean) * rstd * g.w + e.w);
            }
            reinterpret_cast<float4*>(y)[o4 + q] = t;
            if (STAGE >= 2) xf_store4(y16, o4 + q, t, XF_OUT_BF16);
        }
    }
}
#define AF_PARAMS float *z, float *y, unsigned short *y16, const float *x, const float *branch, const float *omega, \
    const float *gamma, const float *beta, int rows, unsigned long long seed, unsigned long long threshold, float keep
#define AF_ARGS z, y, y16, x, branch, omega, gamma, beta, rows, seed, threshold, keep
extern "C" __global__ void __launch_bounds__(256) ab_fwd0(AF_PARAMS) { ab_fwd<0>(AF_ARGS); }
extern "C" __global__ void __launch_bounds__(256) ab_fwd1(AF_PARAMS) { ab_fwd<1>(AF_ARGS); }
extern "C" __global__ void __launch_bounds__(256) ab_fwd2(AF_PARAMS) { ab_fwd<2>(AF_ARGS); }
extern "C" __global__ void __launch_bounds__(256) ab_fwd3(AF_PARAMS) { ab_fwd<3>(AF_ARGS); }
// ab_stream: stage 0's traffic (four float4 streams in, one out) over n4 float4s, grid-stride.
extern "C" __global__ void ab_stream(float* dz, const float* dy, const float* dz2, const float* z, const float* x,
                                     long long n4) {
    const float4 *z4 = (const float4*)z, *d4 = (const float4*)dy, *e4 = (const float4*)dz2, *x4 = (const float4*)x;
    for (long long i = xf_tid(); i < n4; i += xf_stride()) {
        const float4 v = z4[i], d = d4[i], e = e4[i], w = x4[i];
        reinterpret_cast<float4*>(dz)[i] = make_float4(v.x + d.x + e.x + w.x, v.y + d.y + e.y + w.y,
                                                       v.z + d.z + e.z + w.z, v.w + d.w + e.w + w.w);
    }
}
`

// lnVariantSource instantiates the production kernels' bodies (layernorm_fast.cu) in
// forms the Go side does not launch, to time what each costs at the bench shape:
// vx_bwd_rt is layernorm_fast_bwd_vp4 before LFV_BY_DIM (the row length an argument);
// _512 has the row length 512 as a constant (the divisions by dim become exact
// multiplications, the guards and index arithmetic fold: the same bits; LFV_BY_DIM's
// form); _512r keeps the column sums in registers; _512w draws the mask from
// lfw_keep4's 32-bit words (the _w kernels' bits, without their finish); _512a is _512
// told that every pointer is set, the format bf16 and the dropout on (what the step's
// calls pass), so that the branches on them fold (LFV_STEP's form). vx_fwd_rt is
// layernorm_fast_fwd_p4 before LFV_BY_DIM, _512 the same with the constant (the
// production form), _512a that told what the step's calls pass (at most 128 registers:
// with the assumptions the forward no longer fits p4's 80 without spilling). The
// fourteenth session also timed rsqrtf for 1/sqrt (other bits): no gain.
const lnVariantSource = `#include "layernorm_fast.cu"
extern "C" __global__ void __launch_bounds__(LFV_THREADS) vx_bwd_512a(LFV_PAIR_PARAMS) {
    __builtin_assume(part != nullptr && dz != nullptr && dbranch != nullptr && dy != nullptr && dz2 != nullptr &&
                     omega2 != nullptr && z != nullptr && x != nullptr && gamma != nullptr);
    __builtin_assume(fmt == XF_OUT_BF16);
    __builtin_assume(threshold != 0ull);
    lfv_bwd<4, true, true, false>(part, dz, dbranch, fmt, dy, z, x, gamma, rows, 512, eps, seed, threshold, keep,
                                  lfv_extra{dz2, omega2, alpha2, nullptr, 1.f});
}
#define VX_PAIR_ARGS(D) part, dz, dbranch, fmt, dy, z, x, gamma, rows, D, eps, seed, threshold, keep, \
    lfv_extra{dz2, omega2, alpha2, nullptr, 1.f}
extern "C" __global__ void __launch_bounds__(LFV_THREADS) vx_bwd_rt(LFV_PAIR_PARAMS) {
    lfv_bwd<4, true, true, false>(VX_PAIR_ARGS(dim));
}
extern "C" __global__ void __launch_bounds__(LFV_THREADS) vx_bwd_512(LFV_PAIR_PARAMS) {
    lfv_bwd<4, true, true, false>(VX_PAIR_ARGS(512));
}
extern "C" __global__ void __launch_bounds__(LFV_THREADS) vx_bwd_512r(LFV_PAIR_PARAMS) {
    lfv_bwd<4, false, true, false>(VX_PAIR_ARGS(512));
}
extern "C" __global__ void __launch_bounds__(LFV_THREADS) vx_bwd_512w(LFV_PAIR_PARAMS) {
    lfv_bwd<4, true, true, false, true>(VX_PAIR_ARGS(512));
}
extern "C" __global__ void __launch_bounds__(LFV_THREADS, 3) vx_fwd_rt(LFV_FWD_PARAMS) {
    lfp_fwd<4, true>(z, y, x, branch, omega, alpha, gamma, beta, rows, dim, eps, drop, seed, threshold, keep, y16, fmt);
}
extern "C" __global__ void __launch_bounds__(LFV_THREADS, 2) vx_fwd_512a(LFV_FWD_PARAMS) {
    __builtin_assume(z != nullptr && y16 != nullptr && omega != nullptr && drop != 0);
    lfp_fwd<4, true>(z, y, x, branch, omega, alpha, gamma, beta, rows, 512, eps, drop, seed, threshold, keep, y16,
                     XF_OUT_BF16);
}
extern "C" __global__ void __launch_bounds__(LFV_THREADS, 3) vx_fwd_512(LFV_FWD_PARAMS) {
    lfp_fwd<4, true>(z, y, x, branch, omega, alpha, gamma, beta, rows, 512, eps, drop, seed, threshold, keep, y16, fmt);
}
`

// lnAblationKernels and lnVariantKernels are the two sources above, compiled and loaded
// by the first test that asks.
var (
	lnAblationKernels = &testKernelSet{file: "ln_ablation.cu", src: lnAblationSource,
		names: []string{"ab_bwd0", "ab_bwd1", "ab_bwd2", "ab_bwd3", "ab_bwd4", "ab_fwd0", "ab_fwd1", "ab_fwd2", "ab_fwd3", "ab_stream"}}
	lnVariantKernels = &testKernelSet{file: "ln_variants.cu", src: lnVariantSource,
		names: []string{"vx_bwd_rt", "vx_bwd_512", "vx_bwd_512r", "vx_bwd_512w", "vx_bwd_512a", "vx_fwd_rt", "vx_fwd_512", "vx_fwd_512a"}}
)

// TestLayerNormBackwardAblationTiming logs the device µs per call of the stages above
// (and of the forward's, ab_fwd) and of the production backward (ResidualLayerNormBackwardSum with a 16-bit dbranch,
// p 0.1) at the bench shape (8000 × 512, bf16), each stage on the production kernel's
// grid and also on twice as many blocks per SM where they fit (stage 0 and 1 have no
// shared memory), and the traffic each moves as GB/s. Checks nothing; -short skips it.
func TestLayerNormBackwardAblationTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	g := withPrecision(t, BF16)
	fns := lnAblationKernels.get(t, g)
	const rows, dim = 8000, 512
	n := rows * dim
	r := rand.New(rand.NewPCG(97, 1))
	up := func() kernels.Buffer { return g.Upload(randVec(r, n)) }
	z, dy, dz2, x := up(), up(), up(), up()
	om2, gm := g.Upload(randVec(r, dim)), g.Upload(randVec(r, dim))
	dz, dbr := g.Alloc(n), g.AllocHalf(n)
	const warps = 8
	shared := uint32(warps * 3 * dim * 4)
	part := g.Alloc(4 * g.info.SMs * 3 * dim) // up to 4 blocks per SM
	th := newResDrop(0.1, resdropSeed)
	us := func(f func()) float64 { return timeDevice(t, g, 30, f).Seconds() * 1e6 }
	stage := func(name string, perSM int, smem uint32) func() {
		return func() {
			defer g.enter()()
			nb := min((rows+warps-1)/warps, perSM*g.info.SMs)
			g.prm.reset().ptr(addr(part)).ptr(addr(dz)).ptr(halfOf(dbr).dptr()).ptr(addr(dy)).ptr(addr(dz2)).ptr(addr(om2)).f32(0.87).
				ptr(addr(z)).ptr(addr(x)).ptr(addr(gm)).i32(rows)
			th.args(g.prm)
			g.run(fns[name], [3]uint32{uint32(nb), 1, 1}, 32*warps, smem)
		}
	}
	mb := func(floats32, halves int) float64 { return float64(n*(4*floats32+2*halves)) / 1e6 }
	report := func(what string, t0 float64, megabytes float64) {
		t.Logf("%-58s %6.1f µs  %5.0f MB  %5.2f TB/s", what, t0, megabytes, megabytes/t0) // MB/µs = TB/s
	}
	stream := func() {
		defer g.enter()()
		g.prm.reset().ptr(addr(dz)).ptr(addr(dy)).ptr(addr(dz2)).ptr(addr(z)).ptr(addr(x)).i64(n / 4)
		g.elem(fns["ab_stream"], int64(n/4))
	}
	report("grid-stride stream (4 in, 1 out)", us(stream), mb(5, 0))
	for _, s := range []struct {
		name   string
		what   string
		f32, h int
		smem   bool
	}{
		{"ab_bwd0", "stage 0: loads, dz", 5, 0, false},
		{"ab_bwd1", "stage 1: + residual sum, stats, a/b reductions", 5, 0, false},
		{"ab_bwd2", "stage 2: + column sums in shared memory", 5, 0, true},
		{"ab_bwd3", "stage 3: + dbranch 16-bit", 5, 1, true},
		{"ab_bwd4", "stage 4: + the mask per element (64-bit hash)", 5, 1, true},
	} {
		smem := uint32(0)
		if s.smem {
			smem = shared
		}
		report(s.what+", 2 blocks/SM", us(stage(s.name, 2, smem)), mb(s.f32, s.h))
		if !s.smem {
			report(s.what+", 4 blocks/SM", us(stage(s.name, 4, smem)), mb(s.f32, s.h))
		}
	}
	// The forward's stages on a grid of a row per warp (one wave of ~1,000 blocks, as
	// lfv_fwd), then the production forward (the pipelined layernorm_fast_fwd_p4).
	y, y16 := g.Alloc(n), g.AllocHalf(n)
	fwd := func(name string) func() {
		return func() {
			defer g.enter()()
			g.prm.reset().ptr(addr(z)).ptr(addr(y)).ptr(halfOf(y16).dptr()).ptr(addr(x)).ptr(addr(dy)).ptr(addr(om2)).
				ptr(addr(gm)).ptr(addr(dz2)).i32(rows)
			th.args(g.prm)
			g.run(fns[name], [3]uint32{uint32((rows + warps - 1) / warps), 1, 1}, 32*warps, 0)
		}
	}
	for _, s := range []struct {
		name, what string
		f32, h     int
	}{
		{"ab_fwd0", "forward stage 0: x, branch in, y out", 3, 0},
		{"ab_fwd1", "forward stage 1: + residual sum with ω, row statistics", 3, 0},
		{"ab_fwd2", "forward stage 2: + z and y16 stored", 4, 1},
		{"ab_fwd3", "forward stage 3: + the mask per element (64-bit hash)", 4, 1},
	} {
		report(s.what, us(fwd(s.name)), mb(s.f32, s.h))
	}
	report("production ResidualLayerNormDropoutRounded (p4)", us(func() {
		g.ResidualLayerNormDropoutRounded(z, y, y16, x, dy, om2, 0.81, gm, dz2, rows, dim, reslnEps, 0.1, resdropSeed)
	}), mb(4, 1))

	sum := kernels.ResidualSum{D: dy, DZ: dz2, Omega: om2, Alpha: 0.87}
	dg, db, dom := g.Alloc(dim), g.Alloc(dim), g.Alloc(dim)
	prod := us(func() {
		g.BeginScope()
		defer g.EndScope()
		g.ResidualLayerNormBackwardSum(dz, dbr, dg, db, dom, sum, z, x, gm, 0.81, rows, dim, reslnEps, 0.1, resdropSeed)
	})
	report("production ResidualLayerNormBackwardSum (vp4 + finish)", prod, mb(5, 1))

	// The production bodies in other forms (lnVariantSource), on the production grids.
	vx := lnVariantKernels.get(t, g)
	for _, name := range []string{"vx_bwd_rt", "vx_bwd_512", "vx_bwd_512r", "vx_bwd_512w", "vx_bwd_512a"} {
		report(name, us(func() {
			defer g.enter()()
			nb := min((rows+warps-1)/warps, 2*g.info.SMs)
			g.prm.reset().ptr(addr(part)).ptr(addr(dz)).ptr(halfOf(dbr).dptr()).i32(xfOutBF16).ptr(addr(dy)).
				ptr(addr(dz2)).ptr(addr(om2)).f32(0.87).ptr(addr(z)).ptr(addr(x)).ptr(addr(gm)).i32(rows).i32(dim).
				f32(reslnEps)
			th.args(g.prm)
			g.run(vx[name], [3]uint32{uint32(nb), 1, 1}, 32*warps, shared)
		}), mb(5, 1))
	}
	perWarp := (rows + 3*g.info.SMs*warps - 1) / (3 * g.info.SMs * warps)
	for _, name := range []string{"vx_fwd_rt", "vx_fwd_512", "vx_fwd_512a"} {
		report(name, us(func() {
			defer g.enter()()
			g.prm.reset().ptr(addr(z)).ptr(addr(y)).ptr(addr(x)).ptr(addr(dy)).ptr(addr(om2)).f32(0.81).ptr(addr(gm)).
				ptr(addr(dz2)).i32(rows).i32(dim).f32(reslnEps).i32(1)
			th.args(g.prm)
			g.prm.ptr(halfOf(y16).dptr()).i32(xfOutBF16)
			g.run(vx[name], [3]uint32{uint32((rows + perWarp*warps - 1) / (perWarp * warps)), 1, 1}, 32*warps, 0)
		}), mb(4, 1))
	}
}
