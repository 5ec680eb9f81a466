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

// xf_dropout_keep is kernels.DropoutKeep: element i of a dropout mask survives when the
// top 24 bits of SplitMix64's output i for state seed (kernels.DropoutHash; unsigned
// 64-bit arithmetic, wrapping as Go's uint64) reach threshold. Every kernel that draws
// a mask from its seed (dropout.cu, the fused residual+LayerNorm, flash attention)
// uses this one definition, so their masks are the same bits.
__device__ __forceinline__ bool xf_dropout_keep(unsigned long long seed, unsigned long long i,
                                                unsigned long long threshold) {
    unsigned long long z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (z >> 40) >= threshold;
}

// The list kernels (reduce.cu's sum of squares and scale, optim.cu's Adam and fill) run
// over many buffers described by desc: the device addresses of each list, then the
// element counts (nbuf each, as uint64). Block b handles chunk tasks[b] = (k, c): elements
// [c·LIST_CHUNK, min((c+1)·LIST_CHUNK, n_k)) of buffer k. The host builds the table from
// the lengths alone, so a 14M-element embedding gets ~1,700 blocks and a 512-element
// bias one, and no block walks the descriptors of the others (walking them all cost
// every block ~250 dependent descriptor loads). LIST_CHUNK is the Go side's listChunk;
// blocks have LIST_THREADS threads, each LIST_CHUNK / (4·LIST_THREADS) = 8 float4.
#define LIST_CHUNK 8192
#define LIST_THREADS 256
#define LIST_UNROLL (LIST_CHUNK / (4 * LIST_THREADS))

// list_span is block blockIdx.x's chunk: buffer k, first element start, len elements.
struct list_span {
    int k, len;
    long long start;
};

__device__ __forceinline__ list_span list_span_of(const int2* tasks, const unsigned long long* lens) {
    const int2 tk = tasks[blockIdx.x];
    list_span sp;
    sp.k = tk.x;
    sp.start = (long long)tk.y * LIST_CHUNK;
    const long long left = (long long)lens[tk.x] - sp.start;
    sp.len = (int)(left < LIST_CHUNK ? left : LIST_CHUNK);
    return sp;
}

__device__ __forceinline__ bool aligned16(const void* p) { return ((unsigned long long)p & 15) == 0; }
