// xform.cuh — conventions shared by every kernel of kernels/cuda.
//
// * Tensors are row-major float32 in device memory. Sizes are int; offsets and strides
//   are long long elements, so a buffer may exceed 2^31 elements.
// * Every kernel is extern "C" (the Go side looks functions up by plain name) and loops
//   grid-stride, so any grid size is correct and the launcher picks one for speed only.
// * Pointers to optional inputs may be null; the kernel says which.
// * Parity with the pure-Go CPU backend (the oracle) comes first: reductions accumulate
//   in double, products are formed in the CPU backend's order, and the program is built
//   with --fmad=false because Go on amd64 never contracts a*b+c into an FMA.
#pragma once

#define XF_INF __int_as_float(0x7f800000)

// Block-wide reductions for blockDim.x a multiple of 32 and at most 1024. scratch needs
// 32 slots; the result is returned to every thread. Callers must __syncthreads() before
// reusing scratch.
__device__ __forceinline__ double xf_warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double xf_block_sum(double v, double* scratch) {
    v = xf_warp_sum(v);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : 0.0;
    v = xf_warp_sum(v);
    __syncthreads();
    return v;
}

// Maximum where a NaN wins (torch's max propagates NaN; so does the CPU backend's rowMax).
__device__ __forceinline__ float xf_max_nan(float a, float b) {
    return (a > b || a != a) ? a : b;
}

// Plain maximum: NaN loses (a comparison with NaN is false), as the CPU attention does.
__device__ __forceinline__ float xf_max(float a, float b) { return b > a ? b : a; }

template <bool kNaN>
__device__ __forceinline__ float xf_block_max(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = kNaN ? xf_max_nan(v, w) : xf_max(v, w);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : -XF_INF;
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = kNaN ? xf_max_nan(v, w) : xf_max(v, w);
    }
    __syncthreads();
    return v;
}

__device__ __forceinline__ long long xf_tid() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ long long xf_stride() { return (long long)gridDim.x * blockDim.x; }
