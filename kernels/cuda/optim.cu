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

extern "C" __global__ void adam_step(float* p, const float* g, float* m, float* v, long long n, float beta1,
                                     float beta2, float omb1, float omb2, float eps, float decay, float step,
                                     int update) {
    for (long long i = xf_tid(); i < n; i += xf_stride()) {
        adam_elem(p, g, m, v, i, beta1, beta2, omb1, omb2, eps, decay, step, update);
    }
}

// adam_list is adam_step over many parameters in one launch: desc holds the device
// addresses of every p, then every g, m, v, then the lengths (nbuf each). Each element
// gets adam_step's arithmetic exactly, so the result is bit-identical to one launch per
// parameter.
extern "C" __global__ void adam_list(const unsigned long long* desc, int nbuf, float beta1, float beta2,
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
extern "C" __global__ void fill_list(const unsigned long long* desc, int nbuf, float value) {
    for (int k = 0; k < nbuf; k++) {
        float* p = (float*)desc[k];
        long long n = (long long)desc[nbuf + k];
        for (long long i = xf_tid(); i < n; i += xf_stride()) p[i] = value;
    }
}
