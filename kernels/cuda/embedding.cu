// embedding.cu — token embedding gather with scale, and positional rows added on top.
// Forward only; the backward (scatter-add into the table) comes with training.
#include "xform.cuh"

// y[i*dim + c] = scale * table[ids[i]*dim + c]. Ids are validated by the caller.
extern "C" __global__ void embed(float* y, const float* table, const int* ids, int rows, int dim, float scale) {
    long long total = (long long)rows * dim;
    for (long long i = xf_tid(); i < total; i += xf_stride()) {
        long long r = i / dim, c = i - r * dim;
        y[i] = scale * table[(long long)ids[r] * dim + c];
    }
}

// y[i*dim + c] += table[rows[i]*dim + c] (learned or sinusoidal positions).
extern "C" __global__ void add_rows(float* y, const float* table, const int* rowIdx, int rows, int dim) {
    long long total = (long long)rows * dim;
    for (long long i = xf_tid(); i < total; i += xf_stride()) {
        long long r = i / dim, c = i - r * dim;
        y[i] += table[(long long)rowIdx[r] * dim + c];
    }
}
