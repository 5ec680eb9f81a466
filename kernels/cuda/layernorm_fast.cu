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
// The _drop forward (kernels.DropoutResidualNormer) folds in the residual dropout: it
// multiplies each branch element by its mask element as it loads it, the product the
// float dropout_apply forms (dropout.cu), rounded before it is used, so the bits are
// those of dropout_apply followed by the plain float kernel. The scalar backward leaves
// the dropout to dropout_apply; the float4 kernels at the end of this file take it in
// both directions.
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
        const float* gamma, const float* beta, int rows, int dim, float eps) { XF_PDL_ENTRY();                    \
        lf_fwd<NC, false>(z, y, x, branch, omega, alpha, gamma, beta, rows, dim, eps, lf_drop{0ull, 0ull, 1.f});   \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(LF_THREADS) layernorm_fast_bwd##NC(                                \
        float* part, float* dz, const float* dy, const float* z, const float* x, const float* gamma, int rows,     \
        int dim, float eps) { XF_PDL_ENTRY();                                                                      \
        lf_bwd<NC>(part, dz, dy, z, x, gamma, rows, dim, eps);                                                     \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(LF_THREADS) layernorm_fast_fwd_drop##NC(                           \
        float* z, float* y, const float* x, const float* branch, const float* omega, float alpha,                 \
        const float* gamma, const float* beta, int rows, int dim, float eps, unsigned long long seed,             \
        unsigned long long threshold, float keep) { XF_PDL_ENTRY();                                                \
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
                                                     int nparts, int dim, float alpha) { XF_PDL_ENTRY();
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

// ---------------------------------------------------------------------------------------
// float4 kernels (lfv_*): the same contract and per-element arithmetic, for dim a
// multiple of 4 and every tensor 16-byte aligned (the Go side checks; other shapes keep
// the kernels above). What the kernels above lose time on at the training shape (8000 ×
// 512, H200: backward 53.6 µs + 6.4 µs finish against a ~22 µs traffic floor) and what
// changes here:
//  * scalar loads (16 per tensor per lane per row) → one 16-byte load per 4 elements:
//    4× fewer memory instructions, and the row's z, dy and x are all requested before
//    the first reduction (x was requested after the reductions: a second round trip to
//    memory per row);
//  * γ is read from L1 where it is used instead of being held in 16 registers; the
//    column sums stay per lane in registers (layernorm_fast_bwd_v*) or go to the
//    warp's slice of shared memory (layernorm_fast_bwd_vs*, the default: 93 instead
//    of 128 registers at NV 4). Measured at 8000×512: the two are equally fast at 2
//    blocks of 8 warps per SM (34 µs with the dropout); capping registers for 3 or 4
//    blocks per SM (80 and 64 registers) was slower and erratic (38–70 µs), so the
//    load-all-then-reduce structure, not the warp count, was what the old kernel
//    lacked;
//  * the block's warps were added into shared memory one warp at a time (8 barriers);
//    now each warp has its own slice and one barrier precedes the in-order sum;
//  * the residual dropout is drawn inside the backward (dbranch = dz · mask) instead of
//    a separate dropout_apply pass over dz (22 µs), and dbranch may be written in the
//    Backend's 16-bit format (fmt, XF_OUT_*: the rounding of the float it would have
//    written, as the Linear's operand rounding gives), so the branch's Linear backward
//    needs no cast.
// The lane of a row holds float4 q = lane + 32·c, c < NV (columns 4q … 4q+3); NV is a
// power of two with 128·NV ≥ dim. Sums differ in order from the kernels above (float
// either way; the tests' bound is the same), so the Go side uses one family for both
// the plain and the dropout call and the fused-vs-unfused bits stay equal.

__device__ __forceinline__ float lfv_hsum(float4 a) { return (a.x + a.y) + (a.z + a.w); }

// lfv_keep is mask element i (keep or 0), as dropout.cu's dropout_elem.
__device__ __forceinline__ float lfv_keep(unsigned long long seed, long long i, unsigned long long threshold,
                                          float keep) {
    return xf_dropout_keep(seed, (unsigned long long)i, threshold) ? keep : 0.0f;
}


// lfw_thr is a dropout threshold as lfw_keep4 compares it: element kept when the hash's
// top 24 bits r ≥ threshold, i.e. high word ≥ threshold·256 (t8), which fits 32 bits
// for every threshold below 2^24; threshold ≥ 2^24 (p ≥ 1) keeps nothing (none).
struct lfw_thr {
    unsigned t8;
    bool none;
};

__device__ __forceinline__ lfw_thr lfw_threshold(unsigned long long threshold) {
    return lfw_thr{(unsigned)(threshold << 8), threshold > 0xffffffull};
}

// lfw_keep4: bit k (k < 4) is xf_dropout_keep(seed, 4q + k, threshold). The four states
// are consecutive multiples of γ apart, so one product and three 64-bit adds.
__device__ __forceinline__ unsigned lfw_keep4(unsigned long long seed, long long q, lfw_thr t) {
    const unsigned long long g = 0x9E3779B97F4A7C15ull;
    unsigned long long z = seed + (4ull * (unsigned long long)q + 1ull) * g;
    unsigned m = 0u;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        m |= (xf_dropout_hash_hi(z) >= t.t8 ? 1u : 0u) << k;
        z += g;
    }
    return t.none ? 0u : m;
}

// lfw_mask4 multiplies u by the mask elements whose keep bits m holds (keep or 0 each,
// the factor dropout_apply multiplies by).
__device__ __forceinline__ float4 lfw_mask4(float4 u, unsigned m, float keep) {
    u.x = u.x * ((m & 1u) ? keep : 0.0f);
    u.y = u.y * ((m & 2u) ? keep : 0.0f);
    u.z = u.z * ((m & 4u) ? keep : 0.0f);
    u.w = u.w * ((m & 8u) ? keep : 0.0f);
    return u;
}

// lfv_drop4 multiplies u by mask elements i … i + 3 (lfv_keep each: the hash per element).
__device__ __forceinline__ void lfv_drop4(float4& u, unsigned long long seed, long long i,
                                          unsigned long long threshold, float keep) {
    u.x = u.x * lfv_keep(seed, i, threshold, keep);
    u.y = u.y * lfv_keep(seed, i + 1, threshold, keep);
    u.z = u.z * lfv_keep(seed, i + 2, threshold, keep);
    u.w = u.w * lfv_keep(seed, i + 3, threshold, keep);
}

// lfv_mul4 is t⊙w (the ω scaling), lfv_resid4 the residual sum t·α + u, each product
// rounded (--fmad=false), as residual.cu forms it: the forward and the backward that
// recomputes z share them, so they form the same bits.
__device__ __forceinline__ void lfv_mul4(float4& t, float4 w) {
    t.x = t.x * w.x;
    t.y = t.y * w.y;
    t.z = t.z * w.z;
    t.w = t.w * w.w;
}

__device__ __forceinline__ void lfv_resid4(float4& v, float4 t, float alpha, float4 u) {
    v.x = t.x * alpha + u.x;
    v.y = t.y * alpha + u.y;
    v.z = t.z * alpha + u.z;
    v.w = t.w * alpha + u.w;
}

// lfv_rowstats: mean and 1/sqrt(var + eps) of the row held as v (invalid float4s 0).
template <int NV>
__device__ __forceinline__ void lfv_rowstats(const float4 (&v)[NV], int lane, int dim4, int dim, float eps,
                                             float& mean, float& rstd) {
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < NV; c++) s += lfv_hsum(v[c]);
    mean = lf_warp_sum(s) / (float)dim;
    float ss = 0.f;
#pragma unroll
    for (int c = 0; c < NV; c++) {
        if (lane + 32 * c < dim4) {
            const float a = v[c].x - mean, b = v[c].y - mean, d = v[c].z - mean, e = v[c].w - mean;
            ss += (a * a + b * b) + (d * d + e * e);
        }
    }
    rstd = 1.f / sqrtf(lf_warp_sum(ss) / (float)dim + eps);
}

__device__ __forceinline__ void lfp_store4(void* y, long long q, float4 v, int fmt);

// lfv_norm_store stores a row whose sum v, mean and rstd the forward has formed: z = v
// (z null: not), y = (v − mean)·rstd·γ + β, and y16 (null: not) its 16-bit copy, rounded
// by the hardware conversion (HW16, lfp_store4: the pipelined forward) or by xf_store4
// (the same bits). The _v, _w and _p forwards share it.
template <int NV, bool HW16>
__device__ __forceinline__ void lfv_norm_store(float* z, float* y, void* y16, int fmt, const float4 (&v)[NV],
                                               float mean, float rstd, const float4* g4, const float4* e4,
                                               long long o4, int lane, int dim4) {
#pragma unroll
    for (int c = 0; c < NV; c++) {
        const int q = lane + 32 * c;
        if (q < dim4) {
            if (z) reinterpret_cast<float4*>(z)[o4 + q] = v[c];
            const float4 g = __ldg(g4 + q), e = __ldg(e4 + q);
            float4 o;
            o.x = (v[c].x - mean) * rstd * g.x + e.x;
            o.y = (v[c].y - mean) * rstd * g.y + e.y;
            o.z = (v[c].z - mean) * rstd * g.z + e.z;
            o.w = (v[c].w - mean) * rstd * g.w + e.w;
            reinterpret_cast<float4*>(y)[o4 + q] = o;
            if (y16) {
                if (HW16) {
                    lfp_store4(y16, o4 + q, o, fmt);
                } else {
                    xf_store4(y16, o4 + q, o, fmt);
                }
            }
        }
    }
}

// lfv_fwd<NV>: layernorm_fast_fwd's contract, one row per warp at a time; drop ≠ 0
// multiplies branch element i by mask element i as it is loaded (the _drop kernels).
// y16 (null: none; 8-byte aligned) also gets y in format fmt (XF_OUT_BF16/F16): the
// rounding of the very float stored to y, so the next sub-layer's Linear reads it
// instead of casting y (kernels.RoundedResidualNormer). W (the _w kernels) draws the
// mask with lfw_keep4 instead of xf_dropout_keep: the same bits.
template <int NV, bool W = false>
__device__ __forceinline__ void lfv_fwd(float* z, float* y, const float* x, const float* branch,
                                        const float* omega, float alpha, const float* gamma, const float* beta,
                                        int rows, int dim, float eps, int drop, unsigned long long seed,
                                        unsigned long long threshold, float keep, void* y16, int fmt) {
    const int lane = threadIdx.x & 31;
    const int dim4 = dim >> 2;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* b4 = reinterpret_cast<const float4*>(branch);
    const float4* w4 = reinterpret_cast<const float4*>(omega);
    const float4* g4 = reinterpret_cast<const float4*>(gamma);
    const float4* e4 = reinterpret_cast<const float4*>(beta);
    const lfw_thr wt = lfw_threshold(threshold);
    for (long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
        const long long o4 = r * dim4;
        float4 v[NV], b[NV];
#pragma unroll
        for (int c = 0; c < NV; c++) {
            const int q = lane + 32 * c;
            v[c] = b[c] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (q < dim4) {
                v[c] = x4[o4 + q];
                b[c] = b4[o4 + q];
            }
        }
#pragma unroll
        for (int c = 0; c < NV; c++) {
            const int q = lane + 32 * c;
            if (q < dim4) {
                float4 t = v[c], u = b[c];
                if (omega) lfv_mul4(t, __ldg(w4 + q));
                if (drop && W) {
                    u = lfw_mask4(u, lfw_keep4(seed, o4 + q, wt), keep);
                } else if (drop) {
                    lfv_drop4(u, seed, 4 * (o4 + q), threshold, keep);
                }
                lfv_resid4(v[c], t, alpha, u);
            }
        }
        float mean, rstd;
        lfv_rowstats<NV>(v, lane, dim4, dim, eps, mean, rstd);
        lfv_norm_store<NV, false>(z, y, y16, fmt, v, mean, rstd, g4, e4, o4, lane, dim4);
    }
}

__device__ __forceinline__ void lfv_acc(float4& a, float4 b) {
    a.x += b.x;
    a.y += b.y;
    a.z += b.z;
    a.w += b.w;
}

// lfv_extra is what the _p and _r backward kernels take beyond lfv_bwd's arguments.
// dz2 not null: the row's dy is the input gradient the sub-layer above left as two
// parts (kernels.ResidualSum), dy + (dz2·ω2)·α2 (ω2 null: dz2·α2), formed as
// residual_bwd forms it, each product rounded (--fmad=false), so the sum has the bits
// residual_bwd would have written into dy, and the pass that wrote it is gone. omega
// and alpha are the sub-layer's own ω and α, which only the _r kernels read.
struct lfv_extra {
    const float* dz2;
    const float* omega2;
    float alpha2;
    const float* omega;
    float alpha;
};

// lfv_fin is the finish the _w backward kernels do themselves (cnt null: none, the Go
// side launches layernorm_fast_bwd_finish_v): 33 arrival counters, zero before the
// launch and left zero after it (the Backend's, one set for every launch: they all run
// in stream order), and the column gradients finish_v would add to (a null one is
// skipped), alpha scaling dω.
struct lfv_fin {
    unsigned* cnt;
    float *dgamma, *dbeta, *domega;
    float alpha;
};

// lfw_finish: layernorm_fast_bwd_finish_v's sums, the same bits, at the end of the
// backward instead of in a launch of their own (~5 µs per call in the step's profile,
// most of it the launch and the re-read of the partials from another kernel). Every
// block calls it after storing part[blockIdx.x] (nparts = gridDim.x partials of
// n4 = 3·dim/4 float4s). finish_v's thread (tx, ty) adds partials ty, ty + 32, … of a
// column in order, and then the 32 thread sums in ty order; here the class of block b
// is b mod 32, and the last block of a class to arrive (atomic counter cnt[class]) adds
// the class's partials in that order into S[class] (32 more partial rows at the end of
// part), and the last class to finish (cnt[32]) adds S[0], S[1], …, S[31] (+0 for
// classes without blocks, as finish_v adds its idle threads' zeros) into the column
// gradients. Same operands, same order, so the same bits whichever blocks finish last;
// the counters are reset by those last blocks, when nothing else will touch them in
// this launch. Writers fence their stores before their ticket; readers read through
// L2 (ld.cg) after theirs.
__device__ __forceinline__ void lfw_finish(float* part, int dim4, const lfv_fin& fin) {
    __shared__ unsigned lfw_last;
    const int nb = gridDim.x, cls = blockIdx.x & 31, ncls = min(nb, 32);
    const int n4 = 3 * dim4;
    const float4* p4 = reinterpret_cast<const float4*>(part);
    float4* s4 = reinterpret_cast<float4*>(part) + (long long)nb * n4;
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned members = (unsigned)((nb - cls + 31) >> 5);
        const unsigned t = atomicAdd(fin.cnt + cls, 1u);
        lfw_last = t == members - 1u;
        if (lfw_last) fin.cnt[cls] = 0u;  // every member has taken its ticket
    }
    __syncthreads();
    if (!lfw_last) return;
    __threadfence();
    for (int i = threadIdx.x; i < n4; i += blockDim.x) {
        float4 s = zero;
        for (int p = cls; p < nb; p += 32) lfv_acc(s, __ldcg(p4 + (long long)p * n4 + i));
        __stcg(s4 + (long long)cls * n4 + i, s);
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned t = atomicAdd(fin.cnt + 32, 1u);
        lfw_last = t == (unsigned)ncls - 1u;
        if (lfw_last) fin.cnt[32] = 0u;
    }
    __syncthreads();
    if (!lfw_last) return;
    __threadfence();
    for (int i = threadIdx.x; i < n4; i += blockDim.x) {
        // Eight loads requested before the first add they feed.
        float4 t = zero;
#pragma unroll
        for (int k0 = 0; k0 < 32; k0 += 8) {
            float4 v[8];
#pragma unroll
            for (int k = 0; k < 8; k++) v[k] = k0 + k < ncls ? __ldcg(s4 + (long long)(k0 + k) * n4 + i) : zero;
#pragma unroll
            for (int k = 0; k < 8; k++) lfv_acc(t, v[k]);
        }
        const int which = i / dim4, j = 4 * (i - which * dim4);
        if (which == 0) {
            if (fin.dgamma) {
                fin.dgamma[j] += t.x;
                fin.dgamma[j + 1] += t.y;
                fin.dgamma[j + 2] += t.z;
                fin.dgamma[j + 3] += t.w;
            }
        } else if (which == 1) {
            if (fin.dbeta) {
                fin.dbeta[j] += t.x;
                fin.dbeta[j + 1] += t.y;
                fin.dbeta[j + 2] += t.z;
                fin.dbeta[j + 3] += t.w;
            }
        } else if (fin.domega) {
            fin.domega[j] += t.x * fin.alpha;
            fin.domega[j + 1] += t.y * fin.alpha;
            fin.domega[j + 2] += t.z * fin.alpha;
            fin.domega[j + 3] += t.w * fin.alpha;
        }
    }
}

// lfv_bwd<NV, SACC, EXTRA, RECOMP, W>: layernorm_fast_bwd's contract (dz may alias dy; dz
// null: not written), plus dbranch = dz · mask (null: not written; may alias dy; format
// fmt, XF_OUT_*; threshold 0 multiplies by keep without the hash, as dropout_apply).
// Per warp the column sums [Σ dy·x̂ | Σ dy | Σ x·dz] run over its rows in order, in
// registers (SACC false) or in its slice of the dynamic shared memory (SACC true; W
// slices of 3·dim floats either way, the register variant stores into it at the end);
// then one barrier and part[blockIdx.x] = the W slices added in warp order. x null
// leaves the third sum 0.
// EXTRA: ex.dz2 (may be null) as lfv_extra says. RECOMP (EXTRA too): z is not read —
// the pointer z is the branch output and x must not be null — the row of z is
// recomputed as lfv_fwd computed it, (x·ω)·α + branch·mask with ω = ex.omega and
// α = ex.alpha, the same operations in the same order, so the same bits, and the mask
// element found for z is the one dbranch takes (one hash per element, as before). The
// forward then need not write z at all (16 MB at 8000×512). The four variants run the
// same per-row arithmetic; EXTRA and RECOMP only change what is loaded.
// W (the _w kernels): the mask from lfw_keep4 (xf_dropout_keep's bits), and with
// fin.cnt the finish done here (lfw_finish; part then has gridDim.x + 32 rows).
template <int NV, bool SACC, bool EXTRA = false, bool RECOMP = false, bool W = false, bool KEPT = false>
__device__ __forceinline__ void lfv_bwd(float* part, float* dz, void* dbranch, int fmt, const float* dy,
                                        const float* z, const float* x, const float* gamma, int rows, int dim,
                                        float eps, unsigned long long seed, unsigned long long threshold,
                                        float keep, lfv_extra ex = lfv_extra{nullptr, nullptr, 0.f, nullptr, 1.f},
                                        lfv_fin fin = lfv_fin{nullptr, nullptr, nullptr, nullptr, 1.f},
                                        const unsigned* keptIn = nullptr) {
    extern __shared__ float4 lfv_sh[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int dim4 = dim >> 2;
    float4* acc = lfv_sh + (long long)warp * 3 * dim4;
    const float4* z4 = reinterpret_cast<const float4*>(z);
    const float4* d4 = reinterpret_cast<const float4*>(dy);
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* g4 = reinterpret_cast<const float4*>(gamma);
    const float4* e4 = reinterpret_cast<const float4*>(ex.dz2);
    const float4* w24 = reinterpret_cast<const float4*>(ex.omega2);
    const float4* w4 = reinterpret_cast<const float4*>(ex.omega);
    const bool pair = EXTRA && ex.dz2 != nullptr;
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    const lfw_thr wt = lfw_threshold(threshold);
    float4 ag[NV], ab[NV], aw[NV];
#pragma unroll
    for (int c = 0; c < NV; c++) {
        ag[c] = ab[c] = aw[c] = zero;
        const int q = lane + 32 * c;
        if (SACC && q < dim4) acc[q] = acc[dim4 + q] = acc[2 * dim4 + q] = zero;
    }
    const long long warps = (long long)gridDim.x * nw;
    for (long long r = (long long)blockIdx.x * nw + warp; r < rows; r += warps) {
        const long long o4 = r * dim4;
        float4 v[NV], d[NV], xv[NV], e[EXTRA ? NV : 1];
#pragma unroll
        for (int c = 0; c < NV; c++) {
            const int q = lane + 32 * c;
            v[c] = d[c] = xv[c] = zero;
            if (EXTRA) e[c] = zero;
            if (q < dim4) {
                v[c] = z4[o4 + q];
                d[c] = d4[o4 + q];
                if (x) xv[c] = x4[o4 + q];
                if (EXTRA && pair) e[c] = e4[o4 + q];
            }
        }
        // RECOMP: bit 4c+k is mask element 4(o4 + lane + 32c) + k (all set when
        // threshold is 0: every element kept, times keep, as lfv_keep gives). KEPT:
        // the same word, as the forward stored it (lfp_fwd's KEEP).
        unsigned int kept = 0xffffffffu;
        if (KEPT) kept = __ldg(keptIn + r * 32 + lane);
        if (EXTRA) {
#pragma unroll
            for (int c = 0; c < NV; c++) {
                const int q = lane + 32 * c;
                if (q < dim4) {
                    if (pair) {
                        float4 s = e[c];
                        if (ex.omega2) lfv_mul4(s, __ldg(w24 + q));
                        d[c].x = d[c].x + s.x * ex.alpha2;
                        d[c].y = d[c].y + s.y * ex.alpha2;
                        d[c].z = d[c].z + s.z * ex.alpha2;
                        d[c].w = d[c].w + s.w * ex.alpha2;
                    }
                    if (RECOMP) {
                        float4 t = xv[c], u = v[c];
                        if (ex.omega) lfv_mul4(t, __ldg(w4 + q));
                        if (KEPT) {
                            // the word loaded with the row
                        } else if (W && threshold != 0ull) {
                            kept &= ~((15u & ~lfw_keep4(seed, o4 + q, wt)) << (4 * c));
                        } else if (threshold != 0ull) {
                            const unsigned long long i = 4ull * (unsigned long long)(o4 + q);
                            const unsigned int m = (xf_dropout_keep(seed, i, threshold) ? 1u : 0u) |
                                                   (xf_dropout_keep(seed, i + 1, threshold) ? 2u : 0u) |
                                                   (xf_dropout_keep(seed, i + 2, threshold) ? 4u : 0u) |
                                                   (xf_dropout_keep(seed, i + 3, threshold) ? 8u : 0u);
                            kept &= ~((15u & ~m) << (4 * c));
                        }
                        lfv_resid4(v[c], t, ex.alpha, lfw_mask4(u, kept >> (4 * c), keep));
                    }
                }
            }
        }
        float mean, rstd;
        lfv_rowstats<NV>(v, lane, dim4, dim, eps, mean, rstd);
        float a = 0.f, b = 0.f;
#pragma unroll
        for (int c = 0; c < NV; c++) {
            const int q = lane + 32 * c;
            if (q < dim4) {
                const float4 g = __ldg(g4 + q);
                v[c].x = (v[c].x - mean) * rstd;  // x̂
                v[c].y = (v[c].y - mean) * rstd;
                v[c].z = (v[c].z - mean) * rstd;
                v[c].w = (v[c].w - mean) * rstd;
                const float gx = d[c].x * g.x, gy = d[c].y * g.y, gz = d[c].z * g.z, gw = d[c].w * g.w;
                a += (gx + gy) + (gz + gw);
                b += (gx * v[c].x + gy * v[c].y) + (gz * v[c].z + gw * v[c].w);
            }
        }
        for (int o = 16; o > 0; o >>= 1) {  // both sums in one shuffle chain
            a += __shfl_xor_sync(0xffffffffu, a, o);
            b += __shfl_xor_sync(0xffffffffu, b, o);
        }
        a = a / (float)dim;
        b = b / (float)dim;
#pragma unroll
        for (int c = 0; c < NV; c++) {
            const int q = lane + 32 * c;
            if (q < dim4) {
                const float4 g = __ldg(g4 + q);
                float4 t;
                t.x = rstd * (d[c].x * g.x - a - v[c].x * b);
                t.y = rstd * (d[c].y * g.y - a - v[c].y * b);
                t.z = rstd * (d[c].z * g.z - a - v[c].z * b);
                t.w = rstd * (d[c].w * g.w - a - v[c].w * b);
                const float4 pg = make_float4(d[c].x * v[c].x, d[c].y * v[c].y, d[c].z * v[c].z, d[c].w * v[c].w);
                const float4 pw = make_float4(xv[c].x * t.x, xv[c].y * t.y, xv[c].z * t.z, xv[c].w * t.w);
                if (SACC) {
                    float4 s0 = acc[q], s1 = acc[dim4 + q], s2 = acc[2 * dim4 + q];
                    lfv_acc(s0, pg);
                    lfv_acc(s1, d[c]);
                    lfv_acc(s2, pw);
                    acc[q] = s0;
                    acc[dim4 + q] = s1;
                    acc[2 * dim4 + q] = s2;
                } else {
                    lfv_acc(ag[c], pg);
                    lfv_acc(ab[c], d[c]);
                    lfv_acc(aw[c], pw);
                }
                if (dz) reinterpret_cast<float4*>(dz)[o4 + q] = t;
                if (dbranch) {
                    if (RECOMP || KEPT) {
                        t = lfw_mask4(t, kept >> (4 * c), keep);
                    } else if (W && threshold != 0ull) {
                        t = lfw_mask4(t, lfw_keep4(seed, o4 + q, wt), keep);
                    } else if (threshold != 0ull) {
                        lfv_drop4(t, seed, 4 * (o4 + q), threshold, keep);
                    } else {
                        t.x = t.x * keep;
                        t.y = t.y * keep;
                        t.z = t.z * keep;
                        t.w = t.w * keep;
                    }
                    xf_store4(dbranch, o4 + q, t, fmt);
                }
            }
        }
    }
    if (!SACC) {
#pragma unroll
        for (int c = 0; c < NV; c++) {
            const int q = lane + 32 * c;
            if (q < dim4) {
                acc[q] = ag[c];
                acc[dim4 + q] = ab[c];
                acc[2 * dim4 + q] = aw[c];
            }
        }
    }
    __syncthreads();
    const int n4 = 3 * dim4;
    float4* out = reinterpret_cast<float4*>(part) + (long long)blockIdx.x * n4;
    for (int i = threadIdx.x; i < n4; i += blockDim.x) {
        float4 s = lfv_sh[i];
        for (int w = 1; w < nw; w++) lfv_acc(s, lfv_sh[(long long)w * n4 + i]);
        out[i] = s;
    }
    if (W && fin.cnt != nullptr) lfw_finish(part, dim4, fin);
}

// Blocks of at most LFV_THREADS threads (the Go side's lfvMaxWarps warps).
#define LFV_THREADS 256

// The kernels' parameter lists, each shared by a _v kernel and its _w twin (which adds
// LFW_FIN_PARAMS): FWD the forward, BWD the plain backward (_v, _vs, _ws), PAIR the
// backward with dy in two parts (_vp, _wp), RECOMP the one that recomputes z (_vr,
// _wr).
#define LFV_FWD_PARAMS                                                                                          \
    float *z, float *y, const float *x, const float *branch, const float *omega, float alpha,                  \
        const float *gamma, const float *beta, int rows, int dim, float eps, int drop, unsigned long long seed, \
        unsigned long long threshold, float keep, void *y16, int fmt
#define LFV_BWD_PARAMS                                                                                          \
    float *part, float *dz, void *dbranch, int fmt, const float *dy, const float *z, const float *x,           \
        const float *gamma, int rows, int dim, float eps, unsigned long long seed, unsigned long long threshold, \
        float keep
#define LFV_PAIR_PARAMS                                                                                         \
    float *part, float *dz, void *dbranch, int fmt, const float *dy, const float *dz2, const float *omega2,    \
        float alpha2, const float *z, const float *x, const float *gamma, int rows, int dim, float eps,         \
        unsigned long long seed, unsigned long long threshold, float keep
#define LFV_RECOMP_PARAMS                                                                                       \
    float *part, float *dz, void *dbranch, int fmt, const float *dy, const float *dz2, const float *omega2,    \
        float alpha2, const float *branch, const float *x, const float *omega, float alpha, const float *gamma, \
        int rows, int dim, float eps, unsigned long long seed, unsigned long long threshold, float keep

// LFV_BY_DIM runs its statement with lfv_dim the row length: the constant 128·NV where
// the row fills the lanes (d_model 128, 256, 512, 1024), else the argument. With the
// constant the divisions by dim become exact power-of-two products and the guards and
// index arithmetic fold: the same operations on the same values, so the same bits, in
// ~8 % less time at 8000 × 512 (32.0 against 33.7 µs backward, 22.2 against 23.9
// forward; gpu_lnbwd_ablation_test.go).
#define LFV_BY_DIM(NV, ...)                \
    if (dim == 128 * (NV)) {               \
        constexpr int lfv_dim = 128 * (NV); \
        __VA_ARGS__;                       \
    } else {                               \
        const int lfv_dim = dim;           \
        __VA_ARGS__;                       \
    }

// LFV_STEP is LFV_BY_DIM with lfv_fmt the output format, and where the row fills the
// lanes and the call is the training step's (COND: every optional pointer it names set
// and the dropout on; the format bf16 or fp16), the statement compiled once more with
// those facts (lfv_fmt a constant, __builtin_assume(COND)): the branches on them fold,
// so a row's loads, arithmetic and stores are scheduled together. The same operations,
// so the same bits. At 8000 × 512 the ablation's form of the backward took 27.5 instead
// of 32.0 µs, the kernel with its finish 32.2 instead of 35.1.
#define LFV_STEP(NV, COND, ...)                                             \
    if (dim == 128 * (NV) && (COND) && fmt == XF_OUT_BF16) {                \
        constexpr int lfv_dim = 128 * (NV), lfv_fmt = XF_OUT_BF16;          \
        __builtin_assume(COND);                                             \
        __VA_ARGS__;                                                        \
    } else if (dim == 128 * (NV) && (COND) && fmt == XF_OUT_F16) {          \
        constexpr int lfv_dim = 128 * (NV), lfv_fmt = XF_OUT_F16;           \
        __builtin_assume(COND);                                             \
        __VA_ARGS__;                                                        \
    } else {                                                                \
        const int lfv_fmt = fmt;                                            \
        LFV_BY_DIM(NV, __VA_ARGS__)                                         \
    }

#define LFV_INSTANCE(NV)                                                                                         \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS) layernorm_fast_fwd_v##NV(LFV_FWD_PARAMS) { XF_PDL_ENTRY(); \
        LFV_BY_DIM(NV, lfv_fwd<NV>(z, y, x, branch, omega, alpha, gamma, beta, rows, lfv_dim, eps, drop, seed,   \
                                   threshold, keep, y16, fmt))                                                   \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS) layernorm_fast_bwd_v##NV(LFV_BWD_PARAMS) { XF_PDL_ENTRY(); \
        LFV_BY_DIM(NV, lfv_bwd<NV, false>(part, dz, dbranch, fmt, dy, z, x, gamma, rows, lfv_dim, eps, seed,     \
                                          threshold, keep))                                                      \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS) layernorm_fast_bwd_vs##NV(LFV_BWD_PARAMS) { XF_PDL_ENTRY(); \
        LFV_STEP(NV, part && dz && dbranch && x && threshold != 0ull,                                            \
                 lfv_bwd<NV, true>(part, dz, dbranch, lfv_fmt, dy, z, x, gamma, rows, lfv_dim, eps, seed,        \
                                   threshold, keep))                                                             \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS) layernorm_fast_bwd_vp##NV(LFV_PAIR_PARAMS) { XF_PDL_ENTRY(); \
        LFV_STEP(NV, part && dz && dbranch && dz2 && omega2 && x && threshold != 0ull,                           \
                 lfv_bwd<NV, true, true, false>(part, dz, dbranch, lfv_fmt, dy, z, x, gamma, rows, lfv_dim, eps, \
                                                seed, threshold, keep,                                           \
                                                lfv_extra{dz2, omega2, alpha2, nullptr, 1.f}))                   \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS) layernorm_fast_bwd_vr##NV(LFV_RECOMP_PARAMS) { XF_PDL_ENTRY(); \
        LFV_STEP(NV, part && dz && dbranch && dz2 && omega2 && x && omega && threshold != 0ull,                  \
                 lfv_bwd<NV, true, true, true>(part, dz, dbranch, lfv_fmt, dy, branch, x, gamma, rows, lfv_dim,  \
                                               eps, seed, threshold, keep,                                       \
                                               lfv_extra{dz2, omega2, alpha2, omega, alpha}))                    \
    }

LFV_INSTANCE(1)
LFV_INSTANCE(2)
LFV_INSTANCE(4)
LFV_INSTANCE(8)

// The _w kernels: layernorm_fast_fwd_v / _bwd_vs / _vp / _vr with the mask from
// lfw_keep4 and (cnt not null) the finish at the end of the backward (lfw_finish):
// the same arguments, the backward's followed by the finish's; the same bits.
#define LFW_FIN_PARAMS unsigned *cnt, float *dgamma, float *dbeta, float *domega, float fin_alpha
#define LFW_FIN lfv_fin{cnt, dgamma, dbeta, domega, fin_alpha}
#define LFW_INSTANCE(NV)                                                                                        \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS) layernorm_fast_fwd_w##NV(LFV_FWD_PARAMS) { XF_PDL_ENTRY(); \
        lfv_fwd<NV, true>(z, y, x, branch, omega, alpha, gamma, beta, rows, dim, eps, drop, seed, threshold,   \
                          keep, y16, fmt);                                                                      \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS)                                                   \
        layernorm_fast_bwd_ws##NV(LFV_BWD_PARAMS, LFW_FIN_PARAMS) { XF_PDL_ENTRY();                             \
        lfv_bwd<NV, true, false, false, true>(part, dz, dbranch, fmt, dy, z, x, gamma, rows, dim, eps, seed,    \
                                              threshold, keep, lfv_extra{nullptr, nullptr, 0.f, nullptr, 1.f},  \
                                              LFW_FIN);                                                         \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS)                                                   \
        layernorm_fast_bwd_wp##NV(LFV_PAIR_PARAMS, LFW_FIN_PARAMS) { XF_PDL_ENTRY();                            \
        lfv_bwd<NV, true, true, false, true>(part, dz, dbranch, fmt, dy, z, x, gamma, rows, dim, eps, seed,     \
                                             threshold, keep, lfv_extra{dz2, omega2, alpha2, nullptr, 1.f},     \
                                             LFW_FIN);                                                          \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS)                                                   \
        layernorm_fast_bwd_wr##NV(LFV_RECOMP_PARAMS, LFW_FIN_PARAMS) { XF_PDL_ENTRY();                          \
        lfv_bwd<NV, true, true, true, true>(part, dz, dbranch, fmt, dy, branch, x, gamma, rows, dim, eps, seed, \
                                            threshold, keep, lfv_extra{dz2, omega2, alpha2, omega, alpha},      \
                                            LFW_FIN);                                                           \
    }

LFW_INSTANCE(1)
LFW_INSTANCE(2)
LFW_INSTANCE(4)
LFW_INSTANCE(8)

// ---------------------------------------------------------------------------------------
// The pipelined forward (layernorm_fast_fwd_p*, _pl*; the default, XFORM_CUDA_LNP=0 turns it off): lfv_fwd's
// contract and per-element arithmetic, the same bits, restructured because the float4
// forward moves its ~74 MB (x, branch in; z, y, y16 out at 8,000 × 512) at ~2.9 TB/s in
// the step's profile (25 µs) against ~4 TB/s that the H200 reaches. lfv_fwd gives each
// warp one row: load, wait, reduce, store, exit. ~1,000 blocks over ~530 resident slots
// are two waves that start together, so the whole GPU waits on its first loads at once
// and then computes and stores with no reads in flight; letting the warps loop over rows
// without changing that order measured the same. Here each warp loops over rows r,
// r + W, … (W the grid's warps; the Go side sizes the grid so that every warp gets k or
// k − 1 rows) and requests row r + W's x and branch as soon as row r's z is formed (the
// registers of row r's x and branch are free then: 80 registers at NV 4 instead of 94
// with the requests first), then draws row r + W's dropout mask (it needs no loaded
// data) into one word of keep bits, then reduces and stores row r: the loads are in
// flight during the hash (most of the instructions), the shuffles and the stores, and
// once they arrive only the residual arithmetic waits on them. FAST also takes the
// cheaper instructions that give the same bits: the mask from lfw_keep4 (the _w
// kernels' 32-bit hash words) and y16 rounded by the hardware conversion (xf_pack2),
// which gives xf_round16's bits for every non-NaN value (TestAttentionMMARounding), NaN
// falling back to xf_store4. _pl (FAST false) keeps lfv_fwd's 64-bit hash per element
// (xf_dropout_keep) and its software rounding, so a timing separates the schedule from
// the instruction count.

// lfp_any_nan4 says whether any of v is a NaN (unordered comparisons).
__device__ __forceinline__ bool lfp_any_nan4(float4 v) {
    unsigned r;
    asm("{\n .reg .pred p;\n setp.nan.f32 p, %1, %2;\n setp.nan.or.f32 p, %3, %4, p;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(r)
        : "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w));
    return r != 0u;
}

// lfp_store4 is xf_store4(y, q, v, fmt), the 16-bit formats rounded by cvt.rn unless a
// NaN is among the four (xf_round16 keeps its payload; the hardware would not).
__device__ __forceinline__ void lfp_store4(void* y, long long q, float4 v, int fmt) {
    if (fmt == XF_OUT_F32 || lfp_any_nan4(v)) {
        xf_store4(y, q, v, fmt);
        return;
    }
    uint2 o;
    if (fmt == XF_OUT_F16) {
        o.x = xf_pack2<true>(v.x, v.y);
        o.y = xf_pack2<true>(v.z, v.w);
    } else {
        o.x = xf_pack2<false>(v.x, v.y);
        o.y = xf_pack2<false>(v.z, v.w);
    }
    reinterpret_cast<uint2*>(y)[q] = o;
}

// lfp_load requests row r's x and branch float4s of the lane (zeros beyond dim and for
// r ≥ rows, as lfv_rowstats wants the invalid ones).
template <int NV>
__device__ __forceinline__ void lfp_load(float4 (&xv)[NV], float4 (&bv)[NV], const float4* x4, const float4* b4,
                                         long long r, int rows, int lane, int dim4) {
    const long long o4 = r * dim4;
#pragma unroll
    for (int c = 0; c < NV; c++) {
        const int q = lane + 32 * c;
        xv[c] = bv[c] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (r < rows && q < dim4) {
            xv[c] = x4[o4 + q];
            bv[c] = b4[o4 + q];
        }
    }
}

// lfp_keep: bit 4c + k (c < NV ≤ 8, k < 4) is the keep bit of row r's element
// 4(lane + 32c) + k, xf_dropout_keep's (FAST: from lfw_keep4, the same bits); all set
// without dropout, for r ≥ rows and beyond dim. lfw_mask4 turns 4 of them into the
// factors lfv_drop4 multiplies by (keep or 0), so the products are lfv_fwd's.
template <int NV, bool FAST>
__device__ __forceinline__ unsigned lfp_keep(int drop, unsigned long long seed, unsigned long long threshold,
                                             lfw_thr wt, long long r, int rows, int lane, int dim4) {
    unsigned kept = 0xffffffffu;
    if (!drop || r >= rows) return kept;
    const long long o4 = r * dim4;
#pragma unroll
    for (int c = 0; c < NV; c++) {
        const int q = lane + 32 * c;
        if (q < dim4) {
            unsigned m;
            if (FAST) {
                m = lfw_keep4(seed, o4 + q, wt);
            } else {
                const unsigned long long i = 4ull * (unsigned long long)(o4 + q);
                m = (xf_dropout_keep(seed, i, threshold) ? 1u : 0u) | (xf_dropout_keep(seed, i + 1, threshold) ? 2u : 0u) |
                    (xf_dropout_keep(seed, i + 2, threshold) ? 4u : 0u) |
                    (xf_dropout_keep(seed, i + 3, threshold) ? 8u : 0u);
            }
            kept &= ~((15u & ~m) << (4 * c));
        }
    }
    return kept;
}

// lfp_fwd<NV, FAST>: lfv_fwd with the next row's loads in flight (see above). Aliasing as
// lfv_fwd allows (y or z on x or branch): a lane's prefetch reads another row than the
// one it stores, and its own row's elements are read before they are written. KEEP
// also stores each row's keep word (lfp_keep's) at keptOut[32·r + lane], for the
// backward to read instead of drawing the mask again (lfv_bwd's KEPT).
template <int NV, bool FAST, bool KEEP = false>
__device__ __forceinline__ void lfp_fwd(float* z, float* y, const float* x, const float* branch,
                                        const float* omega, float alpha, const float* gamma, const float* beta,
                                        int rows, int dim, float eps, int drop, unsigned long long seed,
                                        unsigned long long threshold, float keep, void* y16, int fmt,
                                        unsigned* keptOut = nullptr) {
    const int lane = threadIdx.x & 31;
    const int dim4 = dim >> 2;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* b4 = reinterpret_cast<const float4*>(branch);
    const float4* w4 = reinterpret_cast<const float4*>(omega);
    const float4* g4 = reinterpret_cast<const float4*>(gamma);
    const float4* e4 = reinterpret_cast<const float4*>(beta);
    const lfw_thr wt = lfw_threshold(threshold);
    long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    float4 xn[NV], bn[NV];
    lfp_load<NV>(xn, bn, x4, b4, r, rows, lane, dim4);
    unsigned kn = lfp_keep<NV, FAST>(drop, seed, threshold, wt, r, rows, lane, dim4);
    for (; r < rows; r += warps) {
        const long long o4 = r * dim4;
        float4 v[NV];
#pragma unroll
        for (int c = 0; c < NV; c++) {
            const int q = lane + 32 * c;
            v[c] = xn[c];
            if (q < dim4) {
                float4 t = xn[c], b = bn[c];
                if (omega) lfv_mul4(t, __ldg(w4 + q));
                if (drop) b = lfw_mask4(b, kn >> (4 * c), keep);
                lfv_resid4(v[c], t, alpha, b);
            }
        }
        if (KEEP) keptOut[r * 32 + lane] = kn;
        lfp_load<NV>(xn, bn, x4, b4, r + warps, rows, lane, dim4);
        kn = lfp_keep<NV, FAST>(drop, seed, threshold, wt, r + warps, rows, lane, dim4);
        float mean, rstd;
        lfv_rowstats<NV>(v, lane, dim4, dim, eps, mean, rstd);
        lfv_norm_store<NV, FAST>(z, y, y16, fmt, v, mean, rstd, g4, e4, o4, lane, dim4);
    }
}

// MINB blocks of LFV_THREADS per SM at least: 3 (≤ 85 registers; 80 at NV 4, no spills)
// for NV ≤ 4, so that 24 warps per SM share the rows; 2 at NV 8, whose two rows in
// registers need more (128, no spills; dim 1024 is not the step's shape).
#define LFP_INSTANCE(NV, MINB)                                                                                  \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS, MINB) layernorm_fast_fwd_p##NV(LFV_FWD_PARAMS) { XF_PDL_ENTRY(); \
        LFV_BY_DIM(NV, lfp_fwd<NV, true>(z, y, x, branch, omega, alpha, gamma, beta, rows, lfv_dim, eps, drop,  \
                                         seed, threshold, keep, y16, fmt))                                      \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS, MINB) layernorm_fast_fwd_pl##NV(LFV_FWD_PARAMS) { XF_PDL_ENTRY(); \
        LFV_BY_DIM(NV, lfp_fwd<NV, false>(z, y, x, branch, omega, alpha, gamma, beta, rows, lfv_dim, eps, drop, \
                                          seed, threshold, keep, y16, fmt))                                     \
    }

LFP_INSTANCE(1, 3)
LFP_INSTANCE(2, 3)
LFP_INSTANCE(4, 3)
LFP_INSTANCE(8, 2)

// The kept-mask pair (kernels.KeptMaskNormer; XFORM_CUDA_LN_KEEP=0 turns it off):
// layernorm_fast_fwd_pk* is layernorm_fast_fwd_p* that also stores each row's keep
// word, 32 words a row (kept, 4-byte aligned); layernorm_fast_bwd_vpk* is
// layernorm_fast_bwd_vp* that reads them for dbranch's mask instead of hashing 4·NV
// elements a lane (~2.5 µs of the backward at 8000 × 512, the ablation's stage 4), and
// layernorm_fast_bwd_vrk* the recomputing _vr* that reads them for z's mask too (the
// forward then stores the words instead of z: 1 MB instead of 16 at 8000 × 512). The
// words are the mask the forward applied, lfw_mask4 multiplies as lfv_drop4 does: the
// same bits. The Go side launches them only with the dropout on.
#define LFK_INSTANCE(NV, MINB)                                                                                 \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS, MINB)                                            \
        layernorm_fast_fwd_pk##NV(LFV_FWD_PARAMS, unsigned* kept) { XF_PDL_ENTRY();                            \
        LFV_BY_DIM(NV, lfp_fwd<NV, true, true>(z, y, x, branch, omega, alpha, gamma, beta, rows, lfv_dim, eps, \
                                               drop, seed, threshold, keep, y16, fmt, kept))                   \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS)                                                  \
        layernorm_fast_bwd_vpk##NV(LFV_PAIR_PARAMS, const unsigned* kept) { XF_PDL_ENTRY();                    \
        LFV_STEP(NV, part && dz && dbranch && dz2 && omega2 && x && threshold != 0ull,                         \
                 lfv_bwd<NV, true, true, false, false, true>(                                                  \
                     part, dz, dbranch, lfv_fmt, dy, z, x, gamma, rows, lfv_dim, eps, seed, threshold, keep,   \
                     lfv_extra{dz2, omega2, alpha2, nullptr, 1.f},                                             \
                     lfv_fin{nullptr, nullptr, nullptr, nullptr, 1.f}, kept))                                  \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(LFV_THREADS)                                                  \
        layernorm_fast_bwd_vrk##NV(LFV_RECOMP_PARAMS, const unsigned* kept) { XF_PDL_ENTRY();                  \
        LFV_STEP(NV, part && dz && dbranch && dz2 && omega2 && x && omega && threshold != 0ull,                \
                 lfv_bwd<NV, true, true, true, false, true>(                                                   \
                     part, dz, dbranch, lfv_fmt, dy, branch, x, gamma, rows, lfv_dim, eps, seed, threshold,    \
                     keep, lfv_extra{dz2, omega2, alpha2, omega, alpha},                                       \
                     lfv_fin{nullptr, nullptr, nullptr, nullptr, 1.f}, kept))                                  \
    }

LFK_INSTANCE(1, 3)
LFK_INSTANCE(2, 3)
LFK_INSTANCE(4, 3)
LFK_INSTANCE(8, 2)

// layernorm_fast_bwd_finish_v: layernorm_fast_bwd_finish for the float4 kernels'
// partials (the same nparts × 3·dim layout), block (32, 32) so that each thread adds
// only nparts/32 partials (the backward's grid is a few blocks per SM: ~500 partials),
// all its loads requested before the adds they feed; thread ty = 0 then adds the 32
// in order.
// lfv_finish_cols is layernorm_fast_bwd_finish_v's body (below), shared with the list
// form so that both add the same operands in the same order.
__device__ __forceinline__ void lfv_finish_cols(float* dgamma, float* dbeta, float* domega, const float* part,
                                                int nparts, int dim, float alpha) {
    __shared__ float red[32][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int n = 3 * dim;
    for (int base = blockIdx.x * 32; base < n; base += gridDim.x * 32) {
        const int i = base + tx;
        float s = 0.f;
        if (i < n) {
#pragma unroll 8
            for (int p = ty; p < nparts; p += 32) s += part[(long long)p * n + i];
        }
        red[ty][tx] = s;
        __syncthreads();
        if (ty == 0 && i < n) {
            float t = 0.f;
            for (int k = 0; k < 32; k++) t += red[k][tx];
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

extern "C" __global__ void __launch_bounds__(1024) layernorm_fast_bwd_finish_v(float* dgamma, float* dbeta,
                                                                                float* domega, const float* part,
                                                                                int nparts, int dim, float alpha) { XF_PDL_ENTRY();
    lfv_finish_cols(dgamma, dbeta, domega, part, nparts, dim, alpha);
}

// layernorm_fast_bwd_finish_list: finish_v for count backward calls in one launch
// (blockIdx.y the call; the Backend defers the finishes of a training step's backward
// to its end, kernels.WeightGradDeferrer): each call's columns are finish_v's with the
// same operands in the same order, so the same bits. A call's grid of finish_v is
// (3·dim + 31)/32 blocks; here gridDim.x is the largest of the calls', and a call with
// fewer columns leaves the extra blocks idle (its loop does not start).
struct lfl_job {
    float *dgamma, *dbeta, *domega;
    const float* part;
    int nparts, dim;
    float alpha;
    int unused;
};

extern "C" __global__ void __launch_bounds__(1024) layernorm_fast_bwd_finish_list(const lfl_job* jobs) { XF_PDL_ENTRY();
    const lfl_job j = jobs[blockIdx.y];
    if (blockIdx.x * 32 >= 3 * j.dim) return;  // before any barrier: the whole block leaves
    lfv_finish_cols(j.dgamma, j.dbeta, j.domega, j.part, j.nparts, j.dim, j.alpha);
}
