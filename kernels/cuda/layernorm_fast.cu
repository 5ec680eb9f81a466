// layernorm_fast.cu — the fused residual + LayerNorm (kernels.ResidualNormer) in float
// arithmetic for the mixed-precision modes (Options.Precision BF16/FP16), where the
// GEMMs already differ from the CPU by ~1e-3 and the exact kernels' double sums
// (residual_layernorm.cu, 3 launches and a column pass over chunks) cost 2–4× the
// memory traffic's time. FP32 keeps residual_layernorm.cu.
//
// Same contract as residual_layernorm.cu, different arithmetic:
//  * one warp per row, the row in registers: lane l holds columns l + 32·c, c < NC
//    (NC a power of two, NC·32 ≥ dim, a template argument so the arrays stay in
//    registers), so each tensor is read once and loads stay coalesced;
//  * mean and variance are float warp-shuffle sums, two-pass (mean first, then
//    Σ(v − mean)²), so a large mean does not cancel the variance;
//  * the residual sum z is residual.cu's ((x·ω)·α + branch, each product rounded; the
//    program is built with --fmad=false), so z is the CPU's bit for bit;
//  * column sums (dγ, dβ, dω) are float: per lane in registers over the rows of its
//    warp, then the warps of a block in warp order through shared memory, one partial
//    per block, and the finishing kernel adds the partials in a fixed tree. No atomics:
//    the result depends on the shape and the grid only.
//
// The _drop variants (kernels.DropoutResidualNormer) fold in the residual dropout: the
// forward multiplies each branch element by its mask element as it loads it, the
// backward also writes dbranch = dz · mask. Each product is the float dropout_apply
// forms (dropout.cu), rounded before it is used, so the bits are those of
// dropout_apply followed by the plain float kernels.
#include "xform.cuh"

#define LF_WARPS 8  // warps (rows in flight) per block
#define LF_THREADS (LF_WARPS * 32)

// lf_mask is element i of the dropout mask, as dropout.cu's dropout_elem; threshold 0
// (p ≤ 0) keeps every element without the hash.
__device__ __forceinline__ float lf_mask(unsigned long long seed, long long i, unsigned long long threshold,
                                         float keep) {
    if (threshold == 0ull) return keep;
    return xf_dropout_keep(seed, (unsigned long long)i, threshold) ? keep : 0.0f;
}

// lf_drop is the dropout of one fused call (unused when DROP is false).
struct lf_drop {
    unsigned long long seed, threshold;
    float keep;
};

__device__ __forceinline__ float lf_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// lf_stats: the row's mean and 1/sqrt(var + eps) from the lane's values v (0 beyond dim).
template <int NC>
__device__ __forceinline__ void lf_stats(const float (&v)[NC], int lane, int dim, float eps, float& mean,
                                         float& rstd) {
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < NC; c++) s += v[c];
    mean = lf_warp_sum(s) / (float)dim;
    float ss = 0.f;
#pragma unroll
    for (int c = 0; c < NC; c++) {
        if (lane + 32 * c < dim) {
            float d = v[c] - mean;
            ss += d * d;
        }
    }
    rstd = 1.f / sqrtf(lf_warp_sum(ss) / (float)dim + eps);
}

// layernorm_fast_fwd<NC>: z = alpha·(x⊙omega) + branch (z may be null),
// y = LN(z)·γ + β, for dim ≤ 32·NC. Each lane reads all its elements before writing
// any, and only it touches them, so y may alias x or branch and z may alias x or branch.
// With DROP, branch element o + j is multiplied by its mask element as it is loaded.
template <int NC, bool DROP>
__device__ __forceinline__ void lf_fwd(float* z, float* y, const float* x, const float* branch,
                                       const float* omega, float alpha, const float* gamma, const float* beta,
                                       int rows, int dim, float eps, lf_drop dr) {
    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * LF_WARPS;
    for (long long r = (long long)blockIdx.x * LF_WARPS + (threadIdx.x >> 5); r < rows; r += warps) {
        const long long o = r * dim;
        float v[NC];
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int j = lane + 32 * c;
            v[c] = 0.f;
            if (j < dim) {
                float t = x[o + j];
                if (omega) t = t * omega[j];
                float b = branch[o + j];
                if (DROP) b = b * lf_mask(dr.seed, o + j, dr.threshold, dr.keep);
                v[c] = t * alpha + b;
            }
        }
        float mean, rstd;
        lf_stats<NC>(v, lane, dim, eps, mean, rstd);
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int j = lane + 32 * c;
            if (j < dim) {
                if (z) z[o + j] = v[c];
                y[o + j] = (v[c] - mean) * rstd * gamma[j] + beta[j];
            }
        }
    }
}

// layernorm_fast_bwd<NC>: per row, from z (mean and rstd recomputed as the forward
// does), x̂ = (z − mean)·rstd, gy = dy·γ, a = Σgy/dim, b = Σgy·x̂/dim and
// dz = rstd·(gy − a − x̂·b), written when dz is not null (dz may alias dy: a lane reads
// its dy before writing its dz). part[blockIdx.x] gets the block's column sums
// [Σ dy·x̂ | Σ dy | Σ x·dz] (3·dim floats; the third is 0 when x is null). (With
// residual dropout the backend follows it with dropout_apply on dz: the mask drawn in
// this row kernel made it slower than the two passes, 110 against 77 µs at 8000×512.)
template <int NC>
__device__ __forceinline__ void lf_bwd(float* part, float* dz, const float* dy, const float* z, const float* x,
                                       const float* gamma, int rows, int dim, float eps) {
    __shared__ float red[3 * 32 * NC];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float pg[NC], pb[NC], pw[NC], g[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) {
        const int j = lane + 32 * c;
        pg[c] = pb[c] = pw[c] = 0.f;
        g[c] = j < dim ? gamma[j] : 0.f;
    }
    const long long warps = (long long)gridDim.x * LF_WARPS;
    for (long long r = (long long)blockIdx.x * LF_WARPS + warp; r < rows; r += warps) {
        const long long o = r * dim;
        float v[NC], d[NC];
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int j = lane + 32 * c;
            v[c] = j < dim ? z[o + j] : 0.f;
            d[c] = j < dim ? dy[o + j] : 0.f;
        }
        float mean, rstd;
        lf_stats<NC>(v, lane, dim, eps, mean, rstd);
        float a = 0.f, b = 0.f;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            v[c] = (v[c] - mean) * rstd;  // x̂ (garbage beyond dim, never used there)
            const float gy = d[c] * g[c];  // 0 beyond dim
            a += gy;
            b += gy * v[c];
            pg[c] += d[c] * v[c];
            pb[c] += d[c];
        }
        a = lf_warp_sum(a) / (float)dim;
        b = lf_warp_sum(b) / (float)dim;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int j = lane + 32 * c;
            if (j < dim) {
                const float dzv = rstd * (d[c] * g[c] - a - v[c] * b);
                if (x) pw[c] += x[o + j] * dzv;
                if (dz) dz[o + j] = dzv;
            }
        }
    }
    // The warps' partials, added in warp order (deterministic), then stored.
    for (int w = 0; w < LF_WARPS; w++) {
        if (warp == w) {
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const int j = lane + 32 * c;
                if (j < dim) {
                    if (w == 0) {
                        red[j] = pg[c];
                        red[dim + j] = pb[c];
                        red[2 * dim + j] = pw[c];
                    } else {
                        red[j] += pg[c];
                        red[dim + j] += pb[c];
                        red[2 * dim + j] += pw[c];
                    }
                }
            }
        }
        __syncthreads();
    }
    float* out = part + (long long)blockIdx.x * 3 * dim;
    for (int i = threadIdx.x; i < 3 * dim; i += blockDim.x) out[i] = red[i];
}

#define LF_INSTANCE(NC)                                                                                            \
    extern "C" __global__ void __launch_bounds__(LF_THREADS) layernorm_fast_fwd##NC(                                \
        float* z, float* y, const float* x, const float* branch, const float* omega, float alpha,                 \
        const float* gamma, const float* beta, int rows, int dim, float eps) {                                    \
        lf_fwd<NC, false>(z, y, x, branch, omega, alpha, gamma, beta, rows, dim, eps, lf_drop{0ull, 0ull, 1.f});   \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(LF_THREADS) layernorm_fast_bwd##NC(                                \
        float* part, float* dz, const float* dy, const float* z, const float* x, const float* gamma, int rows,     \
        int dim, float eps) {                                                                                      \
        lf_bwd<NC>(part, dz, dy, z, x, gamma, rows, dim, eps);                                                     \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(LF_THREADS) layernorm_fast_fwd_drop##NC(                           \
        float* z, float* y, const float* x, const float* branch, const float* omega, float alpha,                 \
        const float* gamma, const float* beta, int rows, int dim, float eps, unsigned long long seed,             \
        unsigned long long threshold, float keep) {                                                                \
        lf_fwd<NC, true>(z, y, x, branch, omega, alpha, gamma, beta, rows, dim, eps, lf_drop{seed, threshold, keep}); \
    }

LF_INSTANCE(1)
LF_INSTANCE(2)
LF_INSTANCE(4)
LF_INSTANCE(8)
LF_INSTANCE(16)
LF_INSTANCE(32)

// layernorm_fast_bwd_finish: column i of the nparts × 3·dim partials, block (32, 8):
// thread (tx, ty) adds partials ty, ty + 8, … in order, then ty = 0 adds the eight in
// order, and the sum is accumulated into dγ (i < dim), dβ (next dim) or dω (last dim,
// times alpha); a null output is skipped.
extern "C" __global__ void layernorm_fast_bwd_finish(float* dgamma, float* dbeta, float* domega, const float* part,
                                                     int nparts, int dim, float alpha) {
    __shared__ float red[8][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int n = 3 * dim;
    for (int base = blockIdx.x * 32; base < n; base += gridDim.x * 32) {
        const int i = base + tx;
        float s = 0.f;
        if (i < n)
            for (int p = ty; p < nparts; p += 8) s += part[(long long)p * n + i];
        red[ty][tx] = s;
        __syncthreads();
        if (ty == 0 && i < n) {
            float t = 0.f;
            for (int k = 0; k < 8; k++) t += red[k][tx];
            const int which = i / dim, j = i - which * dim;
            if (which == 0) {
                if (dgamma) dgamma[j] += t;
            } else if (which == 1) {
                if (dbeta) dbeta[j] += t;
            } else if (domega) {
                domega[j] += t * alpha;
            }
        }
        __syncthreads();
    }
}
