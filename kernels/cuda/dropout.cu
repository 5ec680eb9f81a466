// dropout.cu — dropout keep masks drawn on the device by the counter-based hash that
// kernels.DropoutHash specifies (SplitMix64's output i for state seed).
//
// Convention: unsigned 64-bit integer arithmetic only (wrapping, as Go's uint64), and
// the keep threshold and scale come from the host (kernels.DropoutThreshold and
// kernels.DropoutScale), so every element equals the CPU backend's bit for bit.
#include "xform.cuh"

// dropout_elem is mask element i: keep when (hash(seed, i) >> 40) >= threshold, else 0.
__device__ __forceinline__ float dropout_elem(unsigned long long seed, long long i, unsigned long long threshold,
                                              float keep) {
    return xf_dropout_keep(seed, (unsigned long long)i, threshold) ? keep : 0.0f;
}

// dropout_elem4 multiplies elements i … i+3 (v.x … v.w) by their mask values.
__device__ __forceinline__ float4 dropout_elem4(float4 v, unsigned long long seed, long long i,
                                                unsigned long long threshold, float keep) {
    v.x = v.x * dropout_elem(seed, i, threshold, keep);
    v.y = v.y * dropout_elem(seed, i + 1, threshold, keep);
    v.z = v.z * dropout_elem(seed, i + 2, threshold, keep);
    v.w = v.w * dropout_elem(seed, i + 3, threshold, keep);
    return v;
}

// m[i] = the mask element, for i < n.
extern "C" __global__ void dropout_mask(float* m, unsigned long long seed, unsigned long long threshold,
                                        float keep, long long n) {
    for (long long i = xf_tid(); i < n; i += xf_stride()) m[i] = dropout_elem(seed, i, threshold, keep);
}

// y[i] = x[i] · mask element i (the product mul computes, the mask never stored); y may
// alias x.
extern "C" __global__ void dropout_apply(float* y, const float* x, unsigned long long seed,
                                         unsigned long long threshold, float keep, long long n) {
    for (long long i = xf_tid(); i < n; i += xf_stride()) y[i] = x[i] * dropout_elem(seed, i, threshold, keep);
}

// dropout_apply16 is dropout_apply into a 16-bit y (format fmt, XF_OUT_*): element i is
// the rounding of the float product dropout_apply stores, four elements per thread
// where x and y are aligned for it.
extern "C" __global__ void dropout_apply16(void* y, const float* x, unsigned long long seed,
                                           unsigned long long threshold, float keep, long long n, int fmt) {
    long long done = 0;
    if (((unsigned long long)x & 15ull) == 0 && xf_out_aligned(y, fmt)) {
        const long long n4 = n >> 2;
        const float4* x4 = reinterpret_cast<const float4*>(x);
        for (long long q = xf_tid(); q < n4; q += xf_stride()) {
            const float4 v = dropout_elem4(x4[q], seed, 4 * q, threshold, keep);
            xf_store4(y, q, v, fmt);
        }
        done = n4 << 2;
    }
    for (long long i = done + xf_tid(); i < n; i += xf_stride()) xf_store(y, i, x[i] * dropout_elem(seed, i, threshold, keep), fmt);
}

// dropout_apply2 is dropout_apply (y may alias x) that also stores the rounding of each
// product into the 16-bit y16 (format fmt, XF_OUT_BF16/F16): four elements per thread
// where the three arrays are aligned for it.
extern "C" __global__ void dropout_apply2(float* y, void* y16, const float* x, unsigned long long seed,
                                          unsigned long long threshold, float keep, long long n, int fmt) {
    long long done = 0;
    if ((((unsigned long long)x | (unsigned long long)y) & 15ull) == 0 && xf_out_aligned(y16, fmt)) {
        const long long n4 = n >> 2;
        const float4* x4 = reinterpret_cast<const float4*>(x);
        float4* yv = reinterpret_cast<float4*>(y);
        for (long long q = xf_tid(); q < n4; q += xf_stride()) {
            const float4 v = dropout_elem4(x4[q], seed, 4 * q, threshold, keep);
            yv[q] = v;
            xf_store4(y16, q, v, fmt);
        }
        done = n4 << 2;
    }
    for (long long i = done + xf_tid(); i < n; i += xf_stride()) {
        const float v = x[i] * dropout_elem(seed, i, threshold, keep);
        y[i] = v;
        xf_store(y16, i, v, fmt);
    }
}

// dr_widen is the float32 value of the 16-bit h in format fmt (XF_OUT_BF16/F16): exact.
__device__ __forceinline__ float dr_widen(unsigned int h, int fmt) {
    return fmt == XF_OUT_F16 ? xf_f16_to_f32((unsigned short)h) : __uint_as_float(h << 16);
}

// dropout_apply_hh is dropout_apply from a 16-bit x into a 16-bit y (format fmt; y may
// alias x): element i is RN16(widen(x[i]) · mask element i), the float product
// dropout_apply forms, rounded. Four elements per thread (one 8-byte load and store)
// where x and y are 8-byte aligned.
extern "C" __global__ void dropout_apply_hh(void* y, const void* x, unsigned long long seed,
                                            unsigned long long threshold, float keep, long long n, int fmt) {
    const unsigned short* xs = reinterpret_cast<const unsigned short*>(x);
    long long done = 0;
    if ((((unsigned long long)x | (unsigned long long)y) & 7ull) == 0) {
        const long long n4 = n >> 2;
        const uint2* x4 = reinterpret_cast<const uint2*>(x);
        for (long long q = xf_tid(); q < n4; q += xf_stride()) {
            const uint2 u = x4[q];
            const long long i = 4 * q;
            float4 v;
            v.x = dr_widen(u.x & 0xffffu, fmt) * dropout_elem(seed, i, threshold, keep);
            v.y = dr_widen(u.x >> 16, fmt) * dropout_elem(seed, i + 1, threshold, keep);
            v.z = dr_widen(u.y & 0xffffu, fmt) * dropout_elem(seed, i + 2, threshold, keep);
            v.w = dr_widen(u.y >> 16, fmt) * dropout_elem(seed, i + 3, threshold, keep);
            xf_store4(y, q, v, fmt);
        }
        done = n4 << 2;
    }
    for (long long i = done + xf_tid(); i < n; i += xf_stride())
        xf_store(y, i, dr_widen(xs[i], fmt) * dropout_elem(seed, i, threshold, keep), fmt);
}
