// bias_grad.cu — the bias gradients of a batch of deferred weight-gradient products
// (dw_deferred.go): db_i[c] += Σ_r dy_i[r, c] for members i whose 16-bit dy_i
// [rows × cols] (row-major, cols even) sit wherever the allocator put them, read
// through a device array of their addresses. cuBLASLt's pointer-array batches have no
// BGRADB epilogue, so the column sums run here, all members in one launch.
//
// Convention: two launches whose shape depends on (rows, cols, members) alone. The
// partial pass sums the rows of one chunk in row order in float32 (as the epilogue
// accumulates), the finish adds the chunks' partials in chunk order: the same bits
// every run, no atomics.
#include "xform.cuh"

// Grid: x = column pairs / blockDim.x, y = row chunks, z = members. Each thread owns two
// adjacent columns (one 32-bit load per row) of one member over one chunk of per rows.
template <bool kHalf>
__device__ __forceinline__ void bg_partial(float* part, const unsigned long long* dys, int rows, int cols, int per) {
    const int i = blockIdx.z, ch = blockIdx.y, chunks = gridDim.y;
    const int c = 2 * (blockIdx.x * blockDim.x + threadIdx.x);
    if (c >= cols) return;
    const unsigned* dy = (const unsigned*)dys[i];
    const int half = cols >> 1;
    const int r0 = ch * per, r1 = min(rows, r0 + per);
    float s0 = 0.f, s1 = 0.f;
    const unsigned* p = dy + (long long)r0 * half + (c >> 1);
#pragma unroll 8
    for (int r = r0; r < r1; ++r, p += half) {
        const float2 v = xf_widen2<kHalf>(__ldg(p));
        s0 += v.x;
        s1 += v.y;
    }
    float* o = part + ((long long)i * chunks + ch) * cols + c;
    o[0] = s0;
    o[1] = s1;
}

extern "C" __global__ void bias_grad16_partial(float* part, const unsigned long long* dys, int rows, int cols, int per,
                                               int fmt) { XF_PDL_ENTRY();
    if (fmt == XF_OUT_F16)
        bg_partial<true>(part, dys, rows, cols, per);
    else
        bg_partial<false>(part, dys, rows, cols, per);
}

// One thread per (member, column): db_i[c] += the chunks' partials, summed in chunk order.
extern "C" __global__ void bias_grad_finish(const unsigned long long* dbs, const float* part, int chunks, int cols,
                                            int members) { XF_PDL_ENTRY();
    const long long n = (long long)members * cols;
    for (long long t = xf_tid(); t < n; t += xf_stride()) {
        const int i = (int)(t / cols), c = (int)(t - (long long)i * cols);
        const float* p = part + (long long)i * chunks * cols + c;
        float s = 0.f;
        for (int ch = 0; ch < chunks; ++ch) s += p[(long long)ch * cols];
        float* db = (float*)dbs[i];
        db[c] += s;
    }
}

// bias_grad_finish1: db[c] += the chunks' partials part[ch][c], summed in chunk order, for
// one member (relu_dropout_bwd_hh8p's partials).
extern "C" __global__ void bias_grad_finish1(float* db, const float* part, int chunks, int cols) { XF_PDL_ENTRY();
    for (long long c = xf_tid(); c < cols; c += xf_stride()) {
        float s = 0.f;
        for (int ch = 0; ch < chunks; ++ch) s += part[(long long)ch * cols + c];
        db[c] += s;
    }
}

// bias_grad_finish1_list: bias_grad_finish1 for count members in one launch (blockIdx.y
// the member; the Backend defers the finishes of a training step's backward to its
// end): each column's partials in the same chunk order, so the same bits.
struct bgf_job {
    float* db;
    const float* part;
    int chunks, cols;
};

extern "C" __global__ void bias_grad_finish1_list(const bgf_job* jobs) { XF_PDL_ENTRY();
    const bgf_job j = jobs[blockIdx.y];
    for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < j.cols; c += (long long)gridDim.x * blockDim.x) {
        float s = 0.f;
        for (int ch = 0; ch < j.chunks; ++ch) s += j.part[(long long)ch * j.cols + c];
        j.db[c] += s;
    }
}
