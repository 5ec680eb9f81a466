// loss.cu — fairseq's label-smoothed cross entropy fused with log_softmax, forward and
// backward in one kernel: one read of the logits and one write of the gradient.
//
// Convention (the CPU backend's LabelSmoothedLoss): per row, log_softmax exactly as
// log_softmax in softmax.cu (NaN-propagating max, float x − max, double Σ exp, c = max +
// (float)log Σ formed once, lp = x − c in float); with ε̄ = ε / V in double,
//   loss_r = (1 − ε)·(−lp_t) + ε̄·(−Σ_v lp_v)      nll_r = −lp_t
// and, when dlogits is not null, dlogits = (float)((exp(lp) − ε̄ − [v = t](1 − ε))·scale).
// Rows whose target is ignore contribute 0 and get a zero gradient row. The per-row
// values go to rowOut [rows, 2] (double) and are summed by sum_strided in row order on
// the device, so the host reads two doubles per call. dlogits may alias logits.
//
// One block per row (grid-stride over rows). The row needs four passes (max, Σ exp,
// Σ lp or Σ x, gradient); reading it four times from global memory made the loss cost
// 2.5× its one-read-one-write bound, so when it fits (mode LS_STAGED, 4·V bytes of
// dynamic shared memory, opted in beyond 48 KiB by the launcher) the row is copied into
// shared memory once and every pass reads it there. mode bits:
//   LS_STAGED  row staged in dynamic shared memory (else every pass reads global memory)
//   LS_VEC     V % 4 == 0 and both row arrays 16-byte aligned: float4 loads and stores
//   LS_OUT_BF16, LS_OUT_F16  dlogits is 16-bit (a kernels.HalfBuffers buffer): each
//              element is the rounding of the float the kernel would store (LS_FAST
//              only: the 16-bit modes); LS_VEC then needs 8-byte alignment of dlogits
//   LS_FAST    float arithmetic (bf16/fp16 modes): expf (≤ 2 ulp) instead of double exp,
//              Σ lp_v taken as V·c − Σ x_v, sums formed in float over each group of four
//              and in double beyond. Without it the arithmetic is the exact one above
//              (double exp, the per-thread element order of the scalar passes fixed by
//              the block size), used in FP32 mode for parity with the CPU.
#include "xform.cuh"

#define LS_STAGED 1
#define LS_VEC 2
#define LS_FAST 4
#define LS_OUT_BF16 8
#define LS_OUT_F16 16

// ls_stage copies V floats of x into s. Eight float4 loads per thread are issued before
// their stores so a block keeps its whole row in flight (one row is ~100 KiB at a
// 27k vocabulary, and only two such blocks fit on an SM). Streaming loads: the logits
// are not read again.
__device__ __forceinline__ void ls_stage(float* s, const float* x, int V, bool vec) {
    if (vec) {
        const float4* src = reinterpret_cast<const float4*>(x);
        float4* dst = reinterpret_cast<float4*>(s);
        const int n4 = V >> 2;
        for (int base = threadIdx.x; base < n4; base += 8 * blockDim.x) {
            float4 v[8];
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const int j = base + u * blockDim.x;
                if (j < n4) v[u] = __ldcs(src + j);
            }
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const int j = base + u * blockDim.x;
                if (j < n4) dst[j] = v[u];
            }
        }
    } else {
        for (int j = threadIdx.x; j < V; j += blockDim.x) s[j] = x[j];
    }
    __syncthreads();
}

// ls_grad_exact is the exact gradient of one element (the CPU's double arithmetic).
__device__ __forceinline__ float ls_grad_exact(float x, float c, double epsI, double omeps, bool target,
                                               double scale) {
    double gv = exp((double)(x - c)) - epsI;
    if (target) gv -= omeps;
    return (float)(gv * scale);
}

// ls_row_exact: the row with the exact arithmetic, element j in thread j % blockDim as
// the kernel always had.
__device__ __forceinline__ void ls_row_exact(float* g, double* out, const float* x, int V, int t, float eps,
                                             double epsI, float scale, float* fscratch,
                                             double* dscratch) {
    const float xt = x[t];  // read before any thread may overwrite it (aliasing, unstaged)
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
        out[0] = (1 - (double)eps) * (double)(-lpt) + epsI * smooth;
        out[1] = (double)(-lpt);
    }
    if (!g) return;
    // Scalar stores: four double exps interleaved for float4 stores spill registers,
    // and this path is bound by the double exp, not by the stores.
    const double omeps = 1 - (double)eps, sc = (double)scale;
    for (int j = threadIdx.x; j < V; j += blockDim.x) __stcs(g + j, ls_grad_exact(x[j], c, epsI, omeps, j == t, sc));
}

// ls_grad_fast is the float gradient of one element.
__device__ __forceinline__ float ls_grad_fast(float x, float c, float epsIf, float omepsf, bool target, float scale) {
    float gv = expf(x - c) - epsIf;
    if (target) gv = gv - omepsf;
    return gv * scale;
}

// ls_max_sum reduces the row maximum (NaN wins) and a double sum over the block with
// one pair of barriers.
__device__ __forceinline__ void ls_max_sum(float& m, double& s, float* fscratch, double* dscratch) {
    for (int o = 16; o > 0; o >>= 1) {
        m = xf_max_nan(m, __shfl_xor_sync(0xffffffffu, m, o));
        s += __shfl_xor_sync(0xffffffffu, s, o);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        fscratch[warp] = m;
        dscratch[warp] = s;
    }
    __syncthreads();
    m = lane < nw ? fscratch[lane] : -XF_INF;
    s = lane < nw ? dscratch[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) {
        m = xf_max_nan(m, __shfl_xor_sync(0xffffffffu, m, o));
        s += __shfl_xor_sync(0xffffffffu, s, o);
    }
    __syncthreads();
}

// ls_store4 is xf_store4 with streaming stores: the gradient is read once, by the
// output projection's backward, after the whole loss has run.
__device__ __forceinline__ void ls_store4(void* g, int q, float4 v, int fmt) {
    if (fmt == XF_OUT_F32) {
        __stcs(reinterpret_cast<float4*>(g) + q, v);
    } else {
        uint2 o;
        o.x = (unsigned int)xf_round16(v.x, fmt) | ((unsigned int)xf_round16(v.y, fmt) << 16);
        o.y = (unsigned int)xf_round16(v.z, fmt) | ((unsigned int)xf_round16(v.w, fmt) << 16);
        __stcs(reinterpret_cast<uint2*>(g) + q, o);
    }
}

// ls_row_fast: the row in float arithmetic. Pass 1: max and Σ x; pass 2: Σ expf(x − m);
// pass 3: the gradient. The per-element float → double conversions of the exact kernel
// run at a quarter of the float rate, so each group of four is summed in float first.
__device__ __forceinline__ void ls_row_fast(void* g, int fmt, double* out, const float* x, int V, int t,
                                            float eps, double epsI, float scale, bool vec, float* fscratch,
                                            double* dscratch) {
    const float xt = x[t];  // read before any thread may overwrite it (aliasing, unstaged)
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const int n4 = vec ? V >> 2 : 0;
    float m = -XF_INF;
    double sx = 0;
    for (int q = threadIdx.x; q < n4; q += blockDim.x) {
        const float4 v = x4[q];
        m = xf_max_nan(xf_max_nan(m, v.x), xf_max_nan(v.y, xf_max_nan(v.z, v.w)));
        sx += (double)((v.x + v.y) + (v.z + v.w));
    }
    for (int j = 4 * n4 + threadIdx.x; j < V; j += blockDim.x) {
        m = xf_max_nan(m, x[j]);
        sx += (double)x[j];
    }
    ls_max_sum(m, sx, fscratch, dscratch);
    double s = 0;
    for (int q = threadIdx.x; q < n4; q += blockDim.x) {
        const float4 v = x4[q];
        s += (double)((expf(v.x - m) + expf(v.y - m)) + (expf(v.z - m) + expf(v.w - m)));
    }
    for (int j = 4 * n4 + threadIdx.x; j < V; j += blockDim.x) s += (double)expf(x[j] - m);
    const float c = m + (float)log(xf_block_sum(s, dscratch));
    const float lpt = xt - c;
    if (threadIdx.x == 0) {
        // −Σ_v lp_v = V·c − Σ_v x_v: the CPU rounds each x − c to float first, which
        // moves this sum by ~√V half-ulps of |lp|, ~1e-10 of the row's loss.
        const double smooth = (double)V * (double)c - sx;
        out[0] = (1 - (double)eps) * (double)(-lpt) + epsI * smooth;
        out[1] = (double)(-lpt);
    }
    if (!g) return;
    const float epsIf = (float)epsI, omepsf = 1.0f - eps;
    for (int q = threadIdx.x; q < n4; q += blockDim.x) {
        const float4 v = x4[q];
        const int j = 4 * q;
        float4 o;
        o.x = ls_grad_fast(v.x, c, epsIf, omepsf, j == t, scale);
        o.y = ls_grad_fast(v.y, c, epsIf, omepsf, j + 1 == t, scale);
        o.z = ls_grad_fast(v.z, c, epsIf, omepsf, j + 2 == t, scale);
        o.w = ls_grad_fast(v.w, c, epsIf, omepsf, j + 3 == t, scale);
        ls_store4(g, q, o, fmt);
    }
    for (int j = 4 * n4 + threadIdx.x; j < V; j += blockDim.x)
        xf_store(g, j, ls_grad_fast(x[j], c, epsIf, omepsf, j == t, scale), fmt);
}

// At most 512 threads with two blocks per SM (64 registers): two ~100 KiB rows fit in
// an SM's shared memory, and 1024-thread blocks would have to do with 32 registers.
// The bounds sit on a declaration so that the definition keeps the plain form the
// kernel-name tests look for.
extern "C" __global__ void __launch_bounds__(512, 2)
    ls_loss(void* dlogits, double* rowOut, const float* logits, const int* targets, int rows, int V, float eps,
            int ignore, float scale, int mode);

extern "C" __global__ void ls_loss(void* dlogits, double* rowOut, const float* logits, const int* targets,
                                   int rows, int V, float eps, int ignore, float scale, int mode) {
    extern __shared__ float4 ls_row4[];
    __shared__ double dscratch[32];
    __shared__ float fscratch[32];
    float* srow = reinterpret_cast<float*>(ls_row4);
    const bool staged = mode & LS_STAGED, vec = mode & LS_VEC, fast = mode & LS_FAST;
    const int fmt = (mode & LS_OUT_F16) ? XF_OUT_F16 : (mode & LS_OUT_BF16) ? XF_OUT_BF16 : XF_OUT_F32;
    const int gsize = fmt == XF_OUT_F32 ? 4 : 2;
    const double epsI = (double)eps / (double)V;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* x = logits + r * V;
        void* g = dlogits ? reinterpret_cast<char*>(dlogits) + r * V * gsize : nullptr;
        const int t = targets[r];
        if (t == ignore) {
            if (threadIdx.x == 0) {
                rowOut[2 * r] = 0;
                rowOut[2 * r + 1] = 0;
            }
            if (g) {
                if (vec) {
                    for (int q = threadIdx.x; q < (V >> 2); q += blockDim.x) ls_store4(g, q, make_float4(0, 0, 0, 0), fmt);
                } else {
                    for (int j = threadIdx.x; j < V; j += blockDim.x) xf_store(g, j, 0.0f, fmt);
                }
            }
            continue;
        }
        if (staged) {
            ls_stage(srow, x, V, vec);
            x = srow;
        }
        if (fast)
            ls_row_fast(g, fmt, rowOut + 2 * r, x, V, t, eps, epsI, scale, vec, fscratch, dscratch);
        else
            ls_row_exact(reinterpret_cast<float*>(g), rowOut + 2 * r, x, V, t, eps, epsI, scale, fscratch, dscratch);
        // The next row's staging overwrites srow, which slower threads may still read.
        if (staged) __syncthreads();
    }
}
