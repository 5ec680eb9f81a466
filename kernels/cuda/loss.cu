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
                                   int rows, int V, float eps, int ignore, float scale, int mode) { XF_PDL_ENTRY();
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

// ---------------------------------------------------------------------------------------
// ls_pipe_f32 / ls_pipe_bf16 / ls_pipe_f16: the float-arithmetic loss (bf16/fp16 modes)
// for rows of up to 32·blockDim (≤ 32,768) elements whose logits are float32, bf16 or
// IEEE half (the name is the logits' format; each element is widened to float as it
// leaves shared memory). Same definitions as ls_row_fast: NaN-propagating row max m,
// c = m + (float)log Σ exp(x − m), the loss from V·c − Σ x, the gradient
// (p − ε̄ − [v = t](1 − ε))·scale with p = exp(x − c).
//
// Why another kernel: ls_loss stages a row and then computes on it, so an SM only reads
// while some block is between rows (~2.6 TB/s), and each element costs two expf. Here a
// persistent block (grid ≈ SMs) keeps `stages` rows of raw logits in flight with
// cp.async (1 or 2 buffers of V·size bytes, as many as fit) while it computes on the
// current row, which it holds in registers (LSP_NV float4 per thread), so each element
// is read from HBM once and its buffer is refilled as soon as the block has read it.
// One exp per element: e = exp(x − m) stays in registers and p = e·exp(m − c), which
// keeps the CPU's rounding of c; p then differs from exp(x − c) by a few float ulps
// (the rounding of x − m and m − c instead of that of x − c). Each thread sums its
// elements in float (≤ 32 terms; the block sum is in double): the sum's error moves c by
// ~1e-8, far below c's own rounding. Ignored rows are not read.
//
// fexp (a kernel argument): exp as ex2.approx((x − m)·log2 e) (2 instructions, ~2 ulp
// plus the product's rounding, ≤ ~2e-6 relative where |x − m| ≈ 20, i.e. on p < 1e-8)
// instead of expf (≤ 2 ulp, ~8 instructions); the host picks it (loss_backward.go).
//
// Measured on the H200 (7,900 rows × 27,472, bf16 gradient, µs per call): ls_loss on
// float32 logits 519, ls_pipe_f32 417 (ex2 401), ls_pipe_bf16 368 (ex2 351); at 32,000
// columns 782, 437, 388. bf16 input is only 12 % faster than float32: the one block per
// SM is bound by its per-row barriers and reductions, not by bytes (floor ~220 µs).
// The 16-bit gradient is rounded by cvt.rn (the same bits as xf_round16 except NaN
// payloads).
//
// Host guarantees (loss_backward.go, lsPipeFor): V % 4 == 0, V·size % 16 == 0 and the
// logits 16-byte aligned (cp.async of 16 bytes), V ≤ 4·LSP_NV·blockDim, dlogits (if
// any) aligned for 16-byte (float32) or 8-byte (16-bit) stores, stages·V·size bytes of
// dynamic shared memory. dlogits may alias logits when both have the same format (a row
// is written only after it was copied on chip). sm_80+ for cp.async, max.NaN and
// cvt.rn.*x2; older devices compile a synchronous fallback the host never launches.
// ---------------------------------------------------------------------------------------
#define LSP_NV 8

__device__ __forceinline__ void lsp_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// lsp_wait waits until at most n of the thread's newest copy groups are in flight.
template <int n>
__device__ __forceinline__ void lsp_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(n) : "memory");
#endif
}

// lsp_fetch starts the copy of one row (bytes, a multiple of 16) into buf.
__device__ __forceinline__ void lsp_fetch(char* buf, const char* row, int bytes) {
    for (int o = 16 * threadIdx.x; o < bytes; o += 16 * blockDim.x) xf_cp_async16(buf + o, row + o);
}

// lsp_max is xf_max_nan in one instruction where the device has it.
__device__ __forceinline__ float lsp_max(float a, float b) {
#if __CUDA_ARCH__ >= 800
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
#else
    return xf_max_nan(a, b);
#endif
}

__device__ __forceinline__ float lsp_ex2(float x) {
    float r;
    asm("ex2.approx.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// lsp_pack2 rounds lo, hi to the 16-bit format fmt, lo in the low half.
__device__ __forceinline__ unsigned int lsp_pack2(float lo, float hi, int fmt) {
#if __CUDA_ARCH__ >= 800
    unsigned int r;
    if (fmt == XF_OUT_F16)
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    else
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (unsigned int)xf_round16(lo, fmt) | ((unsigned int)xf_round16(hi, fmt) << 16);
#endif
}

// lsp_store4 writes elements 4q … 4q+3 of a gradient row (streaming: the output
// projection's backward reads it once, after the whole loss).
__device__ __forceinline__ void lsp_store4(void* g, int q, float4 v, int fmt) {
    if (fmt == XF_OUT_F32) {
        __stcs(reinterpret_cast<float4*>(g) + q, v);
    } else {
        uint2 o;
        o.x = lsp_pack2(v.x, v.y, fmt);
        o.y = lsp_pack2(v.z, v.w, fmt);
        __stcs(reinterpret_cast<uint2*>(g) + q, o);
    }
}

// lsp_ld4 widens elements 4q … 4q+3 of a row in format IN (XF_OUT_*) to float.
template <int IN>
__device__ __forceinline__ float4 lsp_ld4(const char* s, int q) {
    if (IN == XF_OUT_F32) return reinterpret_cast<const float4*>(s)[q];
    const uint2 w = reinterpret_cast<const uint2*>(s)[q];
    if (IN == XF_OUT_BF16)
        return make_float4(__uint_as_float(w.x << 16), __uint_as_float(w.x & 0xffff0000u), __uint_as_float(w.y << 16),
                           __uint_as_float(w.y & 0xffff0000u));
    return make_float4(xf_f16_to_f32((unsigned short)(w.x & 0xffffu)), xf_f16_to_f32((unsigned short)(w.x >> 16)),
                       xf_f16_to_f32((unsigned short)(w.y & 0xffffu)), xf_f16_to_f32((unsigned short)(w.y >> 16)));
}

template <int IN>
__device__ __forceinline__ float lsp_ld1(const char* s, int j) {
    if (IN == XF_OUT_F32) return reinterpret_cast<const float*>(s)[j];
    const unsigned short h = reinterpret_cast<const unsigned short*>(s)[j];
    if (IN == XF_OUT_BF16) return __uint_as_float((unsigned int)h << 16);
    return xf_f16_to_f32(h);
}

// lsp_exp4 replaces x by exp(x − m) (m finite or ±Inf; NaN propagates) and adds the
// four to s in float.
template <bool kEx2>
__device__ __forceinline__ void lsp_exp4(float4& x, float m, float& s) {
    if (kEx2) {
        const float l2e = 1.4426950408889634f;
        x.x = lsp_ex2((x.x - m) * l2e);
        x.y = lsp_ex2((x.y - m) * l2e);
        x.z = lsp_ex2((x.z - m) * l2e);
        x.w = lsp_ex2((x.w - m) * l2e);
    } else {
        x.x = expf(x.x - m);
        x.y = expf(x.y - m);
        x.z = expf(x.z - m);
        x.w = expf(x.w - m);
    }
    s += (x.x + x.y) + (x.z + x.w);
}

template <int IN>
__device__ __forceinline__ void lsp_body(void* dlogits, double* rowOut, const void* logits, const int* targets,
                                         int rows, int V, float eps, int ignore, float scale, int ofmt, int stages,
                                         int fexp) {
    extern __shared__ float4 lsp_smem[];
    __shared__ double sxs[32], ss[32];
    __shared__ float ms[32];
    __shared__ float kshare;
    char* sbase = reinterpret_cast<char*>(lsp_smem);
    const int bytes = V * (IN == XF_OUT_F32 ? 4 : 2);
    const int n4 = V >> 2, gsize = ofmt == XF_OUT_F32 ? 4 : 2;
    const double epsI = (double)eps / (double)V;
    const float es = (float)epsI * scale, ts = (1.0f - eps) * scale;
    const char* src = reinterpret_cast<const char*>(logits);
    const long long G = gridDim.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int k = 0; k < stages; k++) {
        const long long r = blockIdx.x + k * G;
        if (r < rows && targets[r] != ignore) lsp_fetch(sbase + k * bytes, src + r * bytes, bytes);
        lsp_commit();  // an empty group keeps the count for lsp_wait
    }
    int k = 0;
    for (long long r = blockIdx.x; r < rows; r += G) {
        const int t = targets[r];
        const bool live = t != ignore;
        char* buf = sbase + k * bytes;
        if (stages == 2) k ^= 1;
        if (stages == 2)
            lsp_wait<1>();
        else
            lsp_wait<0>();
        __syncthreads();  // (A) the row is in buf; the previous row's scratch is read
        void* g = dlogits ? reinterpret_cast<char*>(dlogits) + r * V * gsize : nullptr;
        if (!live) {
            __syncthreads();  // (C) as a live row: every thread is past its reads of buf
            {
                const long long rn = r + stages * G;
                if (rn < rows && targets[rn] != ignore) lsp_fetch(buf, src + rn * bytes, bytes);
                lsp_commit();
            }
            if (threadIdx.x == 0) {
                rowOut[2 * r] = 0;
                rowOut[2 * r + 1] = 0;
            }
            if (g)
                for (int q = threadIdx.x; q < n4; q += blockDim.x) lsp_store4(g, q, make_float4(0, 0, 0, 0), ofmt);
            continue;
        }
        float4 v[LSP_NV];
        float mt = -XF_INF, sxt = 0;
#pragma unroll
        for (int u = 0; u < LSP_NV; u++) {
            const int q = threadIdx.x + u * blockDim.x;
            if (q < n4) {
                const float4 x = lsp_ld4<IN>(buf, q);
                v[u] = x;
                mt = lsp_max(mt, lsp_max(lsp_max(x.x, x.y), lsp_max(x.z, x.w)));
                sxt += (x.x + x.y) + (x.z + x.w);
            }
        }
        float xt = 0;
        if (threadIdx.x == 0) xt = lsp_ld1<IN>(buf, t);
        for (int o = 16; o > 0; o >>= 1) mt = lsp_max(mt, __shfl_xor_sync(0xffffffffu, mt, o));
        if (lane == 0) ms[warp] = mt;
        __syncthreads();  // (C) the warps' maxima are in ms, and every thread has read buf
        {
            const long long rn = r + stages * G;
            if (rn < rows && targets[rn] != ignore) lsp_fetch(buf, src + rn * bytes, bytes);
            lsp_commit();
        }
        float m = lane < nw ? ms[lane] : -XF_INF;
        for (int o = 16; o > 0; o >>= 1) m = lsp_max(m, __shfl_xor_sync(0xffffffffu, m, o));
        float st = 0;
        if (fexp) {
#pragma unroll
            for (int u = 0; u < LSP_NV; u++)
                if (threadIdx.x + u * blockDim.x < n4) lsp_exp4<true>(v[u], m, st);
        } else {
#pragma unroll
            for (int u = 0; u < LSP_NV; u++)
                if (threadIdx.x + u * blockDim.x < n4) lsp_exp4<false>(v[u], m, st);
        }
        double s = (double)st, sx = (double)sxt;
        s = xf_warp_sum(s);
        sx = xf_warp_sum(sx);
        if (lane == 0) {
            ss[warp] = s;
            sxs[warp] = sx;
        }
        __syncthreads();  // (D) the warps' sums are in ss, sxs
        if (warp == 0) {
            s = xf_warp_sum(lane < nw ? ss[lane] : 0.0);
            sx = xf_warp_sum(lane < nw ? sxs[lane] : 0.0);
            const float c = m + (float)log(s);
            if (lane == 0) {
                kshare = expf(m - c) * scale;
                const float lpt = xt - c;
                const double smooth = (double)V * (double)c - sx;
                rowOut[2 * r] = (1 - (double)eps) * (double)(-lpt) + epsI * smooth;
                rowOut[2 * r + 1] = (double)(-lpt);
            }
        }
        if (!g) continue;
        __syncthreads();  // (E) kshare is written
        const float ks = kshare;
#pragma unroll
        for (int u = 0; u < LSP_NV; u++) {
            const int q = threadIdx.x + u * blockDim.x;
            if (q < n4) {
                const float4 e = v[u];
                float4 o;
                o.x = e.x * ks - es;
                o.y = e.y * ks - es;
                o.z = e.z * ks - es;
                o.w = e.w * ks - es;
                if (q == (t >> 2)) {
                    const int c = t & 3;
                    if (c == 0) o.x = o.x - ts;
                    if (c == 1) o.y = o.y - ts;
                    if (c == 2) o.z = o.z - ts;
                    if (c == 3) o.w = o.w - ts;
                }
                lsp_store4(g, q, o, ofmt);
            }
        }
    }
}

// One 1024-thread block per SM at most (64 registers: the row's LSP_NV float4 live in
// them); the bounds sit on declarations so the definitions keep the plain form.
extern "C" __global__ void __launch_bounds__(1024, 1)
    ls_pipe_f32(void* dlogits, double* rowOut, const void* logits, const int* targets, int rows, int V, float eps,
                int ignore, float scale, int ofmt, int stages, int fexp);
extern "C" __global__ void __launch_bounds__(1024, 1)
    ls_pipe_bf16(void* dlogits, double* rowOut, const void* logits, const int* targets, int rows, int V, float eps,
                 int ignore, float scale, int ofmt, int stages, int fexp);
extern "C" __global__ void __launch_bounds__(1024, 1)
    ls_pipe_f16(void* dlogits, double* rowOut, const void* logits, const int* targets, int rows, int V, float eps,
                int ignore, float scale, int ofmt, int stages, int fexp);

extern "C" __global__ void ls_pipe_f32(void* dlogits, double* rowOut, const void* logits, const int* targets, int rows,
                                       int V, float eps, int ignore, float scale, int ofmt, int stages, int fexp) { XF_PDL_ENTRY();
    lsp_body<XF_OUT_F32>(dlogits, rowOut, logits, targets, rows, V, eps, ignore, scale, ofmt, stages, fexp);
}

extern "C" __global__ void ls_pipe_bf16(void* dlogits, double* rowOut, const void* logits, const int* targets, int rows,
                                        int V, float eps, int ignore, float scale, int ofmt, int stages, int fexp) { XF_PDL_ENTRY();
    lsp_body<XF_OUT_BF16>(dlogits, rowOut, logits, targets, rows, V, eps, ignore, scale, ofmt, stages, fexp);
}

extern "C" __global__ void ls_pipe_f16(void* dlogits, double* rowOut, const void* logits, const int* targets, int rows,
                                       int V, float eps, int ignore, float scale, int ofmt, int stages, int fexp) { XF_PDL_ENTRY();
    lsp_body<XF_OUT_F16>(dlogits, rowOut, logits, targets, rows, V, eps, ignore, scale, ofmt, stages, fexp);
}
