// layernorm.cu — LayerNorm forward over rows of dim elements.
//
// Convention (as torch and the CPU backend): population variance, eps inside the square
// root, mean and variance in double (two passes over the row, which stays in L1/L2),
// the normalised value rounded to float before gamma and beta are applied.
// One block per row, grid-stride over rows; y may alias x (each element is read for the
// statistics before any thread writes, and written by the thread that read it last).
#include "xform.cuh"

extern "C" __global__ void layernorm(float* y, const float* x, const float* gamma, const float* beta,
                                     int rows, int dim, float eps) {
    __shared__ double scratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * dim;
        float* yr = y + r * dim;
        double s = 0;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) s += (double)xr[j];
        double mean = xf_block_sum(s, scratch) / dim;
        double ss = 0;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            double d = (double)xr[j] - mean;
            ss += d * d;
        }
        double rstd = 1.0 / sqrt(xf_block_sum(ss, scratch) / dim + (double)eps);
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            float n = (float)(((double)xr[j] - mean) * rstd);
            yr[j] = n * gamma[j] + beta[j];
        }
    }
}
