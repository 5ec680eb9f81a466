// optim.cu — the fused Adam/RAdam update on fp32 master weights.
//
// Convention: kernels.OptimStep's scalars come from the host (computed in float64 as the
// reference's Python does); the elementwise update runs in float, one rounding per
// operation in the CPU backend's (= torch's) order, so the GPU and CPU updates are
// bit-identical for the same inputs:
//   v = v·β2 + ((1−β2)·g)·g      m = m·β1 + (1−β1)·g
//   p = p + decay·p (decay ≠ 0)  p = p + (−step)·(m / ((float)sqrt((double)v) + eps)) (update ≠ 0)
// The square root is taken in double and rounded once, which equals a correctly
// rounded float sqrt.
#include "xform.cuh"

// adam_val updates one element held in registers (one body for the per-parameter
// kernel and both paths of the list kernel, so all give the same bits).
__device__ __forceinline__ void adam_val(float& x, float gi, float& mi, float& vi, float beta1, float beta2, float omb1,
                                         float omb2, float eps, float decay, float step, int update) {
    vi = vi * beta2 + omb2 * gi * gi;
    mi = mi * beta1 + omb1 * gi;
    if (decay != 0.0f) x = x + decay * x;
    if (update) {
        float den = (float)sqrt((double)vi) + eps;
        x = x + -step * (mi / den);
    }
}

// adam_grad is the gradient the update uses: g·pre, then ·clip, each rounded to float as
// scale_list would have stored it (kernels.ClippedOptimizer); pre = clip = 1 is exact.
__device__ __forceinline__ float adam_grad(float g, float pre, float clip) { return (g * pre) * clip; }

// adam_elem updates element i in memory and returns the new weight.
__device__ __forceinline__ float adam_elem(float* p, const float* g, float* m, float* v, long long i, float beta1,
                                           float beta2, float omb1, float omb2, float eps, float decay, float step,
                                           int update, float pre, float clip) {
    float x = p[i], mi = m[i], vi = v[i];
    adam_val(x, adam_grad(g[i], pre, clip), mi, vi, beta1, beta2, omb1, omb2, eps, decay, step, update);
    v[i] = vi;
    m[i] = mi;
    p[i] = x;
    return x;
}

extern "C" __global__ void adam_step(float* p, const float* g, float* m, float* v, long long n, float beta1,
                                     float beta2, float omb1, float omb2, float eps, float decay, float step,
                                     int update) { XF_PDL_ENTRY();
    for (long long i = xf_tid(); i < n; i += xf_stride()) {
        adam_elem(p, g, m, v, i, beta1, beta2, omb1, omb2, eps, decay, step, update, 1.0f, 1.0f);
    }
}

// The list kernels run on chunks of the buffers, one chunk per block (list_span_of and
// the layout of desc and tasks: xform.cuh).

// adam_copy_span writes RN16 of a chunk's n weights into its 16-bit copy h, as
// round_list does (the float4 path where both are aligned for it): the copies of a
// skipped update. Not inlined: it runs only then, and kept out of the update's
// register allocation.
__device__ __noinline__ void adam_copy_span(unsigned short* h, const float* p, int n, int fmt) {
    int done = 0;
    if (aligned16(p) && xf_out_aligned(h, fmt)) {
        const float4* p4 = reinterpret_cast<const float4*>(p);
        const int n4 = n >> 2;
        for (int q = threadIdx.x; q < n4; q += LIST_THREADS) xf_store4(h, q, p4[q], fmt);
        done = 4 * n4;
    }
    for (int e = done + threadIdx.x; e < n; e += LIST_THREADS) h[e] = xf_round16(p[e], fmt);
}

// Two float4 of each of p, g, m, v per thread in flight: 64 registers, four blocks of
// 256 per SM. Four float4 each took 102 registers, halving the resident threads for
// the same bytes in flight.
#define ADAM_UNROLL 2

// adam_list is adam_step over many parameters in one launch: desc holds the device
// addresses of every p, then every g, m, v, then the lengths (nbuf each). Each element
// gets adam_step's arithmetic exactly, so the result is bit-identical to one launch per
// parameter.
//
// Gradient factor (kernels.ClippedOptimizer; AdamStepAll passes pre = 1, sumsq = null):
// the update uses (g·pre)·clip. When sumsq is not null it points at Σ (pre·g)², written
// by sumsq_partial + sum_strided earlier in the stream; every block derives from it the
// same norm = √Σ, in double as the host's float64 code does (IEEE sqrt and division, so
// the same bits), and then
//   norm not finite (NaN, ±Inf)      → the block returns: nothing is written (skipped update)
//   maxNorm > 0 and norm > maxNorm   → clip = (float)(maxNorm / (norm + 1e-6)) (clip_grad_norm_)
//   else                             → clip = 1
// So the gradients are read here once, not scaled in place before (scale_list) and
// after (clipping) the norm, and the host need not see the norm before this launch.
//
// adam_list_bf16 and adam_list_f16 (kernels.RoundingOptimizer) also write 16-bit copies
// of the weights: half[k], when not 0, is the address of the 16-bit element that
// mirrors p_k[0], and each updated weight is stored there as xf_round16 of the register
// the float store takes: the bits round_list (half.cu) would write from p afterwards,
// without reading p again. A skipped update rewrites the copies from the unchanged
// weights, so after any launch the copies hold RN16(p) whatever they held before.
// Registers (NVRTC 13.5, sm_90, no spills): adam_list 68, three blocks of 256 per SM.
// With the format a run-time argument of one kernel it took 84 (two blocks per SM);
// templated 82; __launch_bounds__(256, 3) brings bf16 to 72 and fp16 to 80, keeping
// three blocks. kFmt == XF_OUT_F32 is adam_list, with no copies.
//
// kNorm (adam_list_norm, _bf16_norm, _f16_norm; the Go side passes sumsq null, so no
// clipping and no skip): the update also forms sumsq_partial's part[blockIdx.x] =
// Σ (pre·g)² over its chunk from the gradients it reads, the same terms added in the
// same order per thread (groups of four q = threadIdx.x + i·LIST_THREADS in order, then
// the chunk's last len % 4 by the thread that owns q = len / 4) and summed over the
// block the same way, so sum_strided then gives the bits of AdamStepClipped's norm
// without its pass over the gradients (kernels.OptimStep.NormAfter).
template <int kFmt, bool kNorm = false>
__device__ __forceinline__ void adam_list_body(const unsigned long long* desc, int nbuf, float beta1, float beta2,
                                               float omb1, float omb2, float eps, float decay, float step,
                                               int update, const int2* tasks, float pre, const double* sumsq,
                                               double maxNorm, const unsigned long long* half,
                                               double* part = nullptr) {
    float clip = 1.0f;
    bool skip = false;
    if (sumsq != nullptr) {
        const double norm = sqrt(*sumsq);
        skip = !isfinite(norm);
        if (skip && kFmt == XF_OUT_F32) return;  // the whole block: no __syncthreads below
        if (maxNorm > 0.0 && norm > maxNorm) clip = (float)(maxNorm / (norm + 1e-6));
    }
    const list_span sp = list_span_of(tasks, desc + 4 * nbuf);
    float* p = (float*)desc[sp.k] + sp.start;
    unsigned short* h = nullptr;
    if (kFmt != XF_OUT_F32 && half[sp.k] != 0ull) h = (unsigned short*)half[sp.k] + sp.start;
    if (kFmt != XF_OUT_F32 && skip) {
        if (h != nullptr) adam_copy_span(h, p, sp.len, kFmt);
        return;
    }
    const float* g = (const float*)desc[nbuf + sp.k] + sp.start;
    float* m = (float*)desc[2 * nbuf + sp.k] + sp.start;
    float* v = (float*)desc[3 * nbuf + sp.k] + sp.start;
    int done = 0;
    double ss = 0;  // kNorm
    const bool vec = aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v) && (h == nullptr || xf_out_aligned(h, kFmt));
    if (vec) {
        float4* p4 = reinterpret_cast<float4*>(p);
        const float4* g4 = reinterpret_cast<const float4*>(g);
        float4* m4 = reinterpret_cast<float4*>(m);
        float4* v4 = reinterpret_cast<float4*>(v);
        const int n4 = sp.len >> 2;
        for (int q0 = threadIdx.x; q0 < n4; q0 += ADAM_UNROLL * LIST_THREADS) {
            float4 pr[ADAM_UNROLL], gr[ADAM_UNROLL], mr[ADAM_UNROLL], vr[ADAM_UNROLL];
#pragma unroll
            for (int u = 0; u < ADAM_UNROLL; u++) {
                const int q = q0 + u * LIST_THREADS;
                if (q < n4) {
                    pr[u] = p4[q];
                    gr[u] = __ldcs(g4 + q);
                    mr[u] = m4[q];
                    vr[u] = v4[q];
                }
            }
#pragma unroll
            for (int u = 0; u < ADAM_UNROLL; u++) {
                const int q = q0 + u * LIST_THREADS;
                if (q < n4) {
                    if (kNorm) ss = sumsq_add4(ss, gr[u], pre);
                    adam_val(pr[u].x, adam_grad(gr[u].x, pre, clip), mr[u].x, vr[u].x, beta1, beta2, omb1,
                             omb2, eps, decay, step, update);
                    adam_val(pr[u].y, adam_grad(gr[u].y, pre, clip), mr[u].y, vr[u].y, beta1, beta2, omb1,
                             omb2, eps, decay, step, update);
                    adam_val(pr[u].z, adam_grad(gr[u].z, pre, clip), mr[u].z, vr[u].z, beta1, beta2, omb1,
                             omb2, eps, decay, step, update);
                    adam_val(pr[u].w, adam_grad(gr[u].w, pre, clip), mr[u].w, vr[u].w, beta1, beta2, omb1,
                             omb2, eps, decay, step, update);
                    v4[q] = vr[u];
                    m4[q] = mr[u];
                    p4[q] = pr[u];
                    if (kFmt != XF_OUT_F32 && h != nullptr) xf_store4(h, q, pr[u], kFmt);
                }
            }
        }
        done = 4 * n4;
    }
    if (kNorm) {
        // The terms the vector loop did not add, in sumsq_partial's order: every group
        // when the chunk takes the scalar path below (g is only read, so these reads
        // may come before its updates), then the chunk's last len % 4.
        const int n4 = sp.len >> 2;
        if (!vec)
            for (int q = threadIdx.x; q < n4; q += LIST_THREADS) {
                const float* e = g + 4 * q;
                ss = sumsq_add4(ss, make_float4(e[0], e[1], e[2], e[3]), pre);
            }
        if (threadIdx.x == n4 % LIST_THREADS)
            for (int e = 4 * n4; e < sp.len; e++) ss = sumsq_add(ss, g[e], pre);
    }
    for (int e = done + threadIdx.x; e < sp.len; e += LIST_THREADS) {
        const float x = adam_elem(p, g, m, v, e, beta1, beta2, omb1, omb2, eps, decay, step, update, pre, clip);
        if (kFmt != XF_OUT_F32 && h != nullptr) h[e] = xf_round16(x, kFmt);
    }
    if (kNorm) {
        __shared__ double scratch[32];
        ss = xf_block_sum(ss, scratch);
        if (threadIdx.x == 0) part[blockIdx.x] = ss;
    }
}

extern "C" __global__ void adam_list(const unsigned long long* desc, int nbuf, float beta1, float beta2,
                                     float omb1, float omb2, float eps, float decay, float step, int update,
                                     const int2* tasks, float pre, const double* sumsq, double maxNorm) { XF_PDL_ENTRY();
    adam_list_body<XF_OUT_F32>(desc, nbuf, beta1, beta2, omb1, omb2, eps, decay, step, update, tasks, pre, sumsq,
                               maxNorm, nullptr);
}

extern "C" __global__ void __launch_bounds__(LIST_THREADS, 3)
    adam_list_bf16(const unsigned long long* desc, int nbuf, float beta1, float beta2, float omb1, float omb2, float eps,
               float decay, float step, int update, const int2* tasks, float pre, const double* sumsq,
               double maxNorm, const unsigned long long* half) { XF_PDL_ENTRY();
    adam_list_body<XF_OUT_BF16>(desc, nbuf, beta1, beta2, omb1, omb2, eps, decay, step, update, tasks, pre, sumsq,
                               maxNorm, half);
}

extern "C" __global__ void __launch_bounds__(LIST_THREADS, 3)
    adam_list_f16(const unsigned long long* desc, int nbuf, float beta1, float beta2, float omb1, float omb2, float eps,
              float decay, float step, int update, const int2* tasks, float pre, const double* sumsq,
              double maxNorm, const unsigned long long* half) { XF_PDL_ENTRY();
    adam_list_body<XF_OUT_F16>(desc, nbuf, beta1, beta2, omb1, omb2, eps, decay, step, update, tasks, pre, sumsq,
                              maxNorm, half);
}

extern "C" __global__ void adam_list_norm(const unsigned long long* desc, int nbuf, float beta1, float beta2,
                                          float omb1, float omb2, float eps, float decay, float step, int update,
                                          const int2* tasks, float pre, const double* sumsq, double maxNorm,
                                          double* part) { XF_PDL_ENTRY();
    adam_list_body<XF_OUT_F32, true>(desc, nbuf, beta1, beta2, omb1, omb2, eps, decay, step, update, tasks, pre,
                                     nullptr, 0.0, nullptr, part);
}

extern "C" __global__ void __launch_bounds__(LIST_THREADS, 3)
    adam_list_bf16_norm(const unsigned long long* desc, int nbuf, float beta1, float beta2, float omb1, float omb2,
                        float eps, float decay, float step, int update, const int2* tasks, float pre,
                        const double* sumsq, double maxNorm, const unsigned long long* half, double* part) { XF_PDL_ENTRY();
    adam_list_body<XF_OUT_BF16, true>(desc, nbuf, beta1, beta2, omb1, omb2, eps, decay, step, update, tasks, pre,
                                      nullptr, 0.0, half, part);
}

extern "C" __global__ void __launch_bounds__(LIST_THREADS, 3)
    adam_list_f16_norm(const unsigned long long* desc, int nbuf, float beta1, float beta2, float omb1, float omb2,
                       float eps, float decay, float step, int update, const int2* tasks, float pre,
                       const double* sumsq, double maxNorm, const unsigned long long* half, double* part) { XF_PDL_ENTRY();
    adam_list_body<XF_OUT_F16, true>(desc, nbuf, beta1, beta2, omb1, omb2, eps, decay, step, update, tasks, pre,
                                     nullptr, 0.0, half, part);
}

// fill_list sets every element of every buffer of desc (addresses, then lengths) to
// value on the chunks of tasks: zeroing all gradients in one launch.
extern "C" __global__ void fill_list(const unsigned long long* desc, int nbuf, float value, const int2* tasks) { XF_PDL_ENTRY();
    const list_span sp = list_span_of(tasks, desc + nbuf);
    float* p = (float*)desc[sp.k] + sp.start;
    int done = 0;
    if (aligned16(p)) {
        float4* p4 = reinterpret_cast<float4*>(p);
        const float4 w = make_float4(value, value, value, value);
        const int n4 = sp.len >> 2;
        for (int q = threadIdx.x; q < n4; q += LIST_THREADS) p4[q] = w;
        done = 4 * n4;
    }
    for (int e = done + threadIdx.x; e < sp.len; e += LIST_THREADS) p[e] = value;
}
