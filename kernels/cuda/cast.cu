// cast.cu — float32 ⇄ bfloat16 and float32 ⇄ IEEE half conversion on raw 16-bit patterns.
//
// The conversions themselves (xf_f32_to_bf16, xf_f32_to_f16, xf_f16_to_f32, xf_cast1)
// are in xform.cuh, where kernels that write 16-bit outputs directly share them. Used by
// the 16-bit GEMM path (Options.Precision) and the benchmark.
#include "xform.cuh"

extern "C" __global__ void f32_to_bf16(unsigned short* y, const float* x, long long n) { XF_PDL_ENTRY();
    for (long long i = xf_tid(); i < n; i += xf_stride()) y[i] = xf_f32_to_bf16(x[i]);
}

extern "C" __global__ void bf16_to_f32(float* y, const unsigned short* x, long long n) { XF_PDL_ENTRY();
    for (long long i = xf_tid(); i < n; i += xf_stride()) y[i] = __uint_as_float((unsigned int)x[i] << 16);
}

extern "C" __global__ void f32_to_f16(unsigned short* y, const float* x, long long n) { XF_PDL_ENTRY();
    for (long long i = xf_tid(); i < n; i += xf_stride()) y[i] = xf_f32_to_f16(x[i]);
}

extern "C" __global__ void f16_to_f32(float* y, const unsigned short* x, long long n) { XF_PDL_ENTRY();
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
                                         unsigned short* y2, const float* x2, long long n2) { XF_PDL_ENTRY();
    xf_cast3<false>(y0, x0, n0, y1, x1, n1, y2, x2, n2);
}

extern "C" __global__ void f32_to_f16_3(unsigned short* y0, const float* x0, long long n0,
                                        unsigned short* y1, const float* x1, long long n1,
                                        unsigned short* y2, const float* x2, long long n2) { XF_PDL_ENTRY();
    xf_cast3<true>(y0, x0, n0, y1, x1, n1, y2, x2, n2);
}
