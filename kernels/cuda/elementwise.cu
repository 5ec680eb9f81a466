// elementwise.cu — the small training helpers: masked products (dropout with a
// precomputed mask), accumulation, scaling.
//
// Convention: one float operation per element, as the CPU backend writes it, so results
// are bit-identical. y may alias x.
#include "xform.cuh"

// y[i] = x[i]·m[i] for i < n (n = the mask's length).
extern "C" __global__ void mul(float* y, const float* x, const float* m, long long n) { XF_PDL_ENTRY();
    for (long long i = xf_tid(); i < n; i += xf_stride()) y[i] = x[i] * m[i];
}

// y[i] += x[i] for i < n.
extern "C" __global__ void add_to(float* y, const float* x, long long n) { XF_PDL_ENTRY();
    for (long long i = xf_tid(); i < n; i += xf_stride()) y[i] = y[i] + x[i];
}

// x[i] = x[i]·a for i < n.
extern "C" __global__ void scale(float* x, float a, long long n) { XF_PDL_ENTRY();
    for (long long i = xf_tid(); i < n; i += xf_stride()) x[i] = x[i] * a;
}
