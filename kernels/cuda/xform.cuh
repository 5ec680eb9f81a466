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

// XF_PDL_ENTRY opens every kernel (Programmatic Dependent Launch, launch.go; on by
// default from compute capability 9.0, XFORM_CUDA_PDL=0 turns it off). So launched, a
// kernel may be scheduled before the one queued ahead of it has finished:
// griddepcontrol.wait holds each of its blocks until that grid has completed and its
// writes are visible, so nothing is read or written early; launch_dependents then lets
// the kernel queued after it be scheduled in turn. What this wins is the launch latency
// and the block ramp-up between dependent kernels. Launched the ordinary way, both
// instructions do nothing. TestEveryKernelOpensWithPDLEntry checks every kernel has it.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define XF_PDL_ENTRY()                                          \
    do {                                                        \
        asm volatile("griddepcontrol.wait;" ::: "memory");      \
        asm volatile("griddepcontrol.launch_dependents;" ::: ); \
    } while (0)
#else
#define XF_PDL_ENTRY() \
    do {               \
    } while (0)
#endif

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

// sumsq_add adds (pre·x)², pre·x rounded to float first, in double: the gradient
// norm's terms (reduce.cu's sumsq_partial, optim.cu's adam_list norm form).
__device__ __forceinline__ double sumsq_add(double s, float x, float pre) {
    const double v = (double)(x * pre);
    return s + v * v;
}

__device__ __forceinline__ double sumsq_add4(double s, float4 v, float pre) {
    s = sumsq_add(s, v.x, pre);
    s = sumsq_add(s, v.y, pre);
    s = sumsq_add(s, v.z, pre);
    return sumsq_add(s, v.w, pre);
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

// 16-bit formats, on raw 16-bit patterns. bf16 values are the upper 16 bits of the
// float32 pattern, rounded to nearest even (NaN kept quiet); half values are IEEE
// binary16, rounded to nearest even with subnormals, magnitudes from 65520 up (the
// midpoint between 65504 and 2^16, which rounds to the even 2^16) giving ±Inf, NaN kept
// quiet. Both are written from the bit layouts, without cuda_bf16.h or cuda_fp16.h,
// which NVRTC does not ship here. Every kernel that stores a 16-bit copy of a float
// (cast.cu, and the producers that write a Linear's operand directly) rounds with these,
// so a copy written by a producer is the same bits as the cast of its float output.
__device__ __forceinline__ unsigned short xf_f32_to_bf16(float x) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ unsigned short xf_f32_to_f16(float x) {
    unsigned int u = __float_as_uint(x);
    unsigned int sign = (u >> 16) & 0x8000u;
    unsigned int a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (unsigned short)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // ≥ 65520 and Inf
    if (a >= 0x38800000u) {
        // Normal half (≥ 2^-14): rebias the exponent (127 → 15) and round the low 13
        // mantissa bits away; a carry out of the mantissa correctly bumps the exponent.
        unsigned int r = a - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1u);
        return (unsigned short)(sign | (r >> 13));
    }
    // Below 2^-25 (exponent field < 102) everything rounds to zero, 2^-25 itself being a
    // tie with the even 0. Otherwise the result is the significand in units of 2^-24 (the
    // subnormal spacing), shifted right by 14…24 bits and rounded to nearest even; 1024
    // units is the bit pattern of 2^-14, the smallest normal.
    if (a < 0x33000000u) return (unsigned short)sign;
    unsigned int s = 126u - (a >> 23);
    unsigned int m = 0x800000u | (a & 0x7fffffu);
    unsigned int q = m >> s, rem = m & ((1u << s) - 1u), half = 1u << (s - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (unsigned short)(sign | q);
}

__device__ __forceinline__ float xf_f16_to_f32(unsigned short h) {
    unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
    unsigned int e = ((unsigned int)h >> 10) & 0x1fu, m = (unsigned int)h & 0x3ffu;
    if (e == 31u) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    if (e == 0u) return __uint_as_float(sign | __float_as_uint((float)m * 5.9604644775390625e-8f));  // m·2^-24, exact
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}

// xf_cast1 rounds to the Backend's 16-bit format: IEEE half when kHalf, else bf16.
template <bool kHalf>
__device__ __forceinline__ unsigned short xf_cast1(float x) {
    return kHalf ? xf_f32_to_f16(x) : xf_f32_to_bf16(x);
}

// Outputs that may be written as float32 or as the Backend's 16-bit format (a
// kernels.HalfBuffers buffer) take a format argument fmt, one of these (half.go's
// xfOut* constants).
#define XF_OUT_F32 0
#define XF_OUT_BF16 1
#define XF_OUT_F16 2

__device__ __forceinline__ unsigned short xf_round16(float v, int fmt) {
    return fmt == XF_OUT_F16 ? xf_f32_to_f16(v) : xf_f32_to_bf16(v);
}

// xf_store writes v as element i of y in format fmt.
__device__ __forceinline__ void xf_store(void* y, long long i, float v, int fmt) {
    if (fmt == XF_OUT_F32)
        reinterpret_cast<float*>(y)[i] = v;
    else
        reinterpret_cast<unsigned short*>(y)[i] = xf_round16(v, fmt);
}

// xf_store4 writes v as elements 4·q … 4·q+3 of y in format fmt: one 16-byte store
// (float32) or one 8-byte store (16-bit); y must be aligned for it.
__device__ __forceinline__ void xf_store4(void* y, long long q, float4 v, int fmt) {
    if (fmt == XF_OUT_F32) {
        reinterpret_cast<float4*>(y)[q] = v;
    } else {
        uint2 o;
        o.x = (unsigned int)xf_round16(v.x, fmt) | ((unsigned int)xf_round16(v.y, fmt) << 16);
        o.y = (unsigned int)xf_round16(v.z, fmt) | ((unsigned int)xf_round16(v.w, fmt) << 16);
        reinterpret_cast<uint2*>(y)[q] = o;
    }
}

// xf_out_aligned says whether y can take xf_store4 stores: 16 bytes for float32
// outputs, 8 for 16-bit ones.
__device__ __forceinline__ bool xf_out_aligned(const void* y, int fmt) {
    return ((unsigned long long)y & (fmt == XF_OUT_F32 ? 15ull : 7ull)) == 0;
}

// xf_cp_async16 copies 16 bytes from global src to shared dst (both 16-byte aligned)
// without waiting: cp.async.cg on sm_80 and newer, whose callers wait with
// cp.async.wait_all (or a group wait) and then a barrier; older devices compile a
// synchronous copy their callers never launch.
__device__ __forceinline__ void xf_cp_async16(void* dst, const void* src) {
#if __CUDA_ARCH__ >= 800
    const unsigned a = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("{\n .reg .u64 g;\n cvta.to.global.u64 g, %1;\n cp.async.cg.shared.global [%0], [g], 16;\n}\n" ::"r"(a),
                 "l"(src)
                 : "memory");
#else
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#endif
}

// xf_dropout_hash_hi is the high 32 bits of SplitMix64's last product for the state
// z = seed + (i + 1)·γ, in 32-bit halves: t = z ^ z>>30, u = t·M1, w = u ^ u>>27, and
// the high word of w·M2 (mod 2⁶⁴), one high product and two low ones, no 64-bit
// multiply. The hash's last step, z ^ z>>31, changes bit k only from bit k+31, so bits
// 33…63 of kernels.DropoutHash are already these; xf_dropout_keep compares bits 40…63:
// kept exactly when xf_dropout_hash_hi(z) >= threshold << 8 (threshold < 2²⁴). The
// 64-bit multiply chain was most of the instructions of the kernels that draw masks per
// element; dropoutHashHi (dropout_hash32_test.go) is this in Go, checked against
// kernels.DropoutHash.
__device__ __forceinline__ unsigned xf_dropout_hash_hi(unsigned long long z) {
    const unsigned lo = (unsigned)z, hi = (unsigned)(z >> 32);
    const unsigned tlo = lo ^ __funnelshift_r(lo, hi, 30), thi = hi ^ (hi >> 30);
    const unsigned ulo = tlo * 0x1CE4E5B9u;
    const unsigned uhi = __umulhi(tlo, 0x1CE4E5B9u) + tlo * 0xBF58476Du + thi * 0x1CE4E5B9u;
    const unsigned wlo = ulo ^ __funnelshift_r(ulo, uhi, 27), whi = uhi ^ (uhi >> 27);
    return __umulhi(wlo, 0x133111EBu) + wlo * 0x94D049BBu + whi * 0x133111EBu;
}

// The eight-per-thread 16-bit passes' conversions (dropout.cu's dropout_hh8,
// activation.cu's relu_drop_hh8).

// xf_widen1 is the float32 value of the 16-bit h in format fmt (XF_OUT_BF16/F16): exact.
__device__ __forceinline__ float xf_widen1(unsigned int h, int fmt) {
    return fmt == XF_OUT_F16 ? xf_f16_to_f32((unsigned short)h) : __uint_as_float(h << 16);
}

// xf_widen2 is the two 16-bit values of w (the low half first) as float32: exact.
template <bool kHalf>
__device__ __forceinline__ float2 xf_widen2(unsigned w) {
    if (!kHalf) return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
    float2 r;
    asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 %0, l;\n cvt.f32.f16 %1, h;\n}"
        : "=f"(r.x), "=f"(r.y)
        : "r"(w));
    return r;
}

// xf_pack2 is RN16(lo) | RN16(hi) << 16 for non-NaN lo and hi: the hardware converters give
// xf_round16's bits for every non-NaN value (TestAttentionMMARounding checks it on the GPU).
template <bool kHalf>
__device__ __forceinline__ unsigned xf_pack2(float lo, float hi) {
#if __CUDA_ARCH__ >= 800
    unsigned r;
    if (kHalf)
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    else
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (unsigned)xf_cast1<kHalf>(lo) | ((unsigned)xf_cast1<kHalf>(hi) << 16);
#endif
}

// xf_any_nan8 says whether any of the eight is a NaN (four unordered comparisons).
__device__ __forceinline__ bool xf_any_nan8(const float (&v)[8]) {
    unsigned r;
    asm("{\n .reg .pred p;\n setp.nan.f32 p, %1, %2;\n setp.nan.or.f32 p, %3, %4, p;\n"
        " setp.nan.or.f32 p, %5, %6, p;\n setp.nan.or.f32 p, %7, %8, p;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(r)
        : "f"(v[0]), "f"(v[1]), "f"(v[2]), "f"(v[3]), "f"(v[4]), "f"(v[5]), "f"(v[6]), "f"(v[7]));
    return r != 0u;
}
