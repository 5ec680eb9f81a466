// cast.cu — float32 ⇄ bfloat16 conversion on raw 16-bit patterns.
//
// Convention: bf16 values are the upper 16 bits of the float32 pattern, rounded to
// nearest even (NaN kept quiet); no cuda_bf16.h, which NVRTC does not ship. Used by the
// bf16 GEMM path (benchmark now, mixed-precision training later).
#include "xform.cuh"

extern "C" __global__ void f32_to_bf16(unsigned short* y, const float* x, long long n) {
    for (long long i = xf_tid(); i < n; i += xf_stride()) {
        unsigned int u = __float_as_uint(x[i]);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            y[i] = (unsigned short)((u >> 16) | 0x40u);
        } else {
            y[i] = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
    }
}

extern "C" __global__ void bf16_to_f32(float* y, const unsigned short* x, long long n) {
    for (long long i = xf_tid(); i < n; i += xf_stride()) y[i] = __uint_as_float((unsigned int)x[i] << 16);
}
