// copy.cu — data movement: strided 2-D copies, row gathers, bias broadcast.
// Forward only (copies have no math to differentiate; their backward is a scatter-add,
// which will live in its own file).
#include "xform.cuh"

// dst[r*dStride + c] = src[r*sStride + c] for r < rows, c < cols. dst and src are
// already offset by the caller.
extern "C" __global__ void copy2d(float* dst, long long dStride, const float* src, long long sStride,
                                  int rows, int cols) {
    long long n = (long long)rows * cols;
    for (long long i = xf_tid(); i < n; i += xf_stride()) {
        long long r = i / cols, c = i - r * cols;
        dst[r * dStride + c] = src[r * sStride + c];
    }
}

// dst[i*dStride + c] = src[idx[i]*sStride + c] for i < rows, c < n (beam reordering of
// the self-attention cache).
extern "C" __global__ void gather_rows(float* dst, long long dStride, const float* src, long long sStride,
                                       const int* idx, int rows, int n) {
    long long total = (long long)rows * n;
    for (long long i = xf_tid(); i < total; i += xf_stride()) {
        long long r = i / n, c = i - r * n;
        dst[r * dStride + c] = src[(long long)idx[r] * sStride + c];
    }
}

// y[r*n + c] = bias[c]: Linear writes the bias first and lets the GEMM add onto it
// (beta = 1), as torch's addmm does.
extern "C" __global__ void fill_rows(float* y, const float* bias, int rows, int n) {
    long long total = (long long)rows * n;
    for (long long i = xf_tid(); i < total; i += xf_stride()) y[i] = bias[i % n];
}
