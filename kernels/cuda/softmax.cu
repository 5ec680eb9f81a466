// softmax.cu — row softmax and log-softmax in float32 with double sums.
//
// Convention (as torch and the CPU backend): the row maximum propagates NaN; an all
// −inf row yields NaN. softmax: y = exp(x − max) / Σ exp(x − max), the exponent in
// double. log_softmax: c = max + log Σ exp(x − max) formed once in float, y = x − c.
// One block per row, grid-stride over rows; y may alias x.
#include "xform.cuh"

extern "C" __global__ void softmax(float* y, const float* x, int rows, int dim) { XF_PDL_ENTRY();
    __shared__ double dscratch[32];
    __shared__ float fscratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * dim;
        float* yr = y + r * dim;
        float m = -XF_INF;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) m = xf_max_nan(m, xr[j]);
        double md = (double)xf_block_max<true>(m, fscratch);
        double s = 0;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) s += exp((double)xr[j] - md);
        double inv = 1.0 / xf_block_sum(s, dscratch);
        for (int j = threadIdx.x; j < dim; j += blockDim.x) yr[j] = (float)(exp((double)xr[j] - md) * inv);
    }
}

extern "C" __global__ void log_softmax(float* y, const float* x, int rows, int dim) { XF_PDL_ENTRY();
    __shared__ double dscratch[32];
    __shared__ float fscratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * dim;
        float* yr = y + r * dim;
        float m = -XF_INF;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) m = xf_max_nan(m, xr[j]);
        m = xf_block_max<true>(m, fscratch);
        double s = 0;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) s += exp((double)(xr[j] - m));
        float c = m + (float)log(xf_block_sum(s, dscratch));
        for (int j = threadIdx.x; j < dim; j += blockDim.x) yr[j] = xr[j] - c;
    }
}
