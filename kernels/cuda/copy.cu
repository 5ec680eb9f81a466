// copy.cu — data movement: strided 2-D copies, row gathers, bias broadcast.
// Forward only (copies have no math to differentiate; their backward is a scatter-add,
// which will live in its own file).
#include "xform.cuh"

// dst[r*dStride + c] = src[r*sStride + c] for r < rows, c < cols. dst and src are
// already offset by the caller.
extern "C" __global__ void copy2d(float* dst, long long dStride, const float* src, long long sStride,
                                  int rows, int cols) { XF_PDL_ENTRY();
    long long n = (long long)rows * cols;
    for (long long i = xf_tid(); i < n; i += xf_stride()) {
        long long r = i / cols, c = i - r * cols;
        dst[r * dStride + c] = src[r * sStride + c];
    }
}

// dst[i*dStride + c] = src[idx[i]*sStride + c] for i < rows, c < n (beam reordering of
// the self-attention cache).
extern "C" __global__ void gather_rows(float* dst, long long dStride, const float* src, long long sStride,
                                       const int* idx, int rows, int n) { XF_PDL_ENTRY();
    long long total = (long long)rows * n;
    for (long long i = xf_tid(); i < total; i += xf_stride()) {
        long long r = i / n, c = i - r * n;
        dst[r * dStride + c] = src[(long long)idx[r] * sStride + c];
    }
}

// pack_rows_v / pack_rows_h (kernels.RowPacker): dst row r = src row idx[r], zeros where
// idx[r] < 0; rows dense, w units each. The units are the bytes' own (16-byte words
// for _v, used when a row is a multiple of 16 bytes and both bases are aligned; 2-byte
// halves for _h, which every float32 or 16-bit row is): a bit copy of either format.
extern "C" __global__ void pack_rows_v(uint4* dst, const uint4* src, const int* idx, int rows, int w) { XF_PDL_ENTRY();
    const long long total = (long long)rows * w;
    for (long long i = xf_tid(); i < total; i += xf_stride()) {
        const long long r = i / w, c = i - r * w;
        const int s = idx[r];
        dst[i] = s >= 0 ? src[(long long)s * w + c] : make_uint4(0u, 0u, 0u, 0u);
    }
}

extern "C" __global__ void pack_rows_h(unsigned short* dst, const unsigned short* src, const int* idx, int rows,
                                       int w) { XF_PDL_ENTRY();
    const long long total = (long long)rows * w;
    for (long long i = xf_tid(); i < total; i += xf_stride()) {
        const long long r = i / w, c = i - r * w;
        const int s = idx[r];
        dst[i] = s >= 0 ? src[(long long)s * w + c] : (unsigned short)0;
    }
}

// y[r*n + c] = bias[c]: Linear writes the bias first and lets the GEMM add onto it
// (beta = 1), as torch's addmm does.
extern "C" __global__ void fill_rows(float* y, const float* bias, int rows, int n) { XF_PDL_ENTRY();
    long long total = (long long)rows * n;
    for (long long i = xf_tid(); i < total; i += xf_stride()) y[i] = bias[i % n];
}
