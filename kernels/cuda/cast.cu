// cast.cu — float32 ⇄ bfloat16 and float32 ⇄ IEEE half conversion on raw 16-bit patterns.
//
// Convention: bf16 values are the upper 16 bits of the float32 pattern, rounded to
// nearest even (NaN kept quiet); half values are IEEE binary16, rounded to nearest even
// with subnormals, magnitudes from 65520 up (the midpoint between 65504 and 2^16, which
// rounds to the even 2^16) giving ±Inf, NaN kept quiet. Both are written from the bit
// layouts, without cuda_bf16.h or cuda_fp16.h, which NVRTC does not ship here. Used by
// the 16-bit GEMM path (Options.Precision) and the benchmark.
#include "xform.cuh"

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

extern "C" __global__ void f32_to_bf16(unsigned short* y, const float* x, long long n) {
    for (long long i = xf_tid(); i < n; i += xf_stride()) y[i] = xf_f32_to_bf16(x[i]);
}

extern "C" __global__ void bf16_to_f32(float* y, const unsigned short* x, long long n) {
    for (long long i = xf_tid(); i < n; i += xf_stride()) y[i] = __uint_as_float((unsigned int)x[i] << 16);
}

extern "C" __global__ void f32_to_f16(unsigned short* y, const float* x, long long n) {
    for (long long i = xf_tid(); i < n; i += xf_stride()) y[i] = xf_f32_to_f16(x[i]);
}

extern "C" __global__ void f16_to_f32(float* y, const unsigned short* x, long long n) {
    for (long long i = xf_tid(); i < n; i += xf_stride()) y[i] = xf_f16_to_f32(x[i]);
}

// Up to three arrays converted in one launch (the operands of one GEMM, or dy, w and x
// of LinearBackward): every launch costs ~5 µs of host time, more than converting a
// Linear's operands takes on the device. Each thread converts its share of each array
// in turn (an array with n = 0 is skipped, its pointers unused), four elements at a
// time — one 16-byte load, one 8-byte store — when the array's source and destination
// are aligned for it, else one at a time; each element is rounded by the same function
// either way, so the bits do not depend on the path.
template <bool kHalf>
__device__ __forceinline__ unsigned short xf_cast1(float x) {
    return kHalf ? xf_f32_to_f16(x) : xf_f32_to_bf16(x);
}

template <bool kHalf>
__device__ __forceinline__ void xf_cast_array(unsigned short* y, const float* x, long long n) {
    long long tid = xf_tid(), stride = xf_stride(), start = 0;
    if ((((unsigned long long)x & 15ull) | ((unsigned long long)y & 7ull)) == 0ull) {
        long long n4 = n >> 2;
        const float4* x4 = (const float4*)x;
        uint2* y4 = (uint2*)y;
        for (long long i = tid; i < n4; i += stride) {
            float4 v = x4[i];
            uint2 o;
            o.x = (unsigned int)xf_cast1<kHalf>(v.x) | ((unsigned int)xf_cast1<kHalf>(v.y) << 16);
            o.y = (unsigned int)xf_cast1<kHalf>(v.z) | ((unsigned int)xf_cast1<kHalf>(v.w) << 16);
            y4[i] = o;
        }
        start = n4 << 2;
    }
    for (long long i = start + tid; i < n; i += stride) y[i] = xf_cast1<kHalf>(x[i]);
}

template <bool kHalf>
__device__ __forceinline__ void xf_cast3(unsigned short* y0, const float* x0, long long n0,
                                         unsigned short* y1, const float* x1, long long n1,
                                         unsigned short* y2, const float* x2, long long n2) {
    if (n0 > 0) xf_cast_array<kHalf>(y0, x0, n0);
    if (n1 > 0) xf_cast_array<kHalf>(y1, x1, n1);
    if (n2 > 0) xf_cast_array<kHalf>(y2, x2, n2);
}

extern "C" __global__ void f32_to_bf16_3(unsigned short* y0, const float* x0, long long n0,
                                         unsigned short* y1, const float* x1, long long n1,
                                         unsigned short* y2, const float* x2, long long n2) {
    xf_cast3<false>(y0, x0, n0, y1, x1, n1, y2, x2, n2);
}

extern "C" __global__ void f32_to_f16_3(unsigned short* y0, const float* x0, long long n0,
                                        unsigned short* y1, const float* x1, long long n1,
                                        unsigned short* y2, const float* x2, long long n2) {
    xf_cast3<true>(y0, x0, n0, y1, x1, n1, y2, x2, n2);
}
