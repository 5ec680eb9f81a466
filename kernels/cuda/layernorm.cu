// layernorm.cu — LayerNorm over rows of dim elements: forward and backward.
//
// Convention (as torch and the CPU backend): population variance, eps inside the square
// root, mean and variance in double (two passes over the row, which stays in L1/L2),
// the normalised value rounded to float before gamma and beta are applied.
// One block per row, grid-stride over rows; y may alias x (each element is read for the
// statistics before any thread writes, and written by the thread that read it last).
#include "xform.cuh"

extern "C" __global__ void layernorm(float* y, const float* x, const float* gamma, const float* beta,
                                     int rows, int dim, float eps) { XF_PDL_ENTRY();
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

// layernorm_bwd: the input gradient of LayerNorm, one block per row, and the row
// statistics for the γ/β column pass (col_partial mode 2).
//
// Convention (the CPU backend's LayerNormBackward): mean and rstd recomputed in double
// exactly as the forward; with gy = dy·γ and x̂ = (x − mean)·rstd, all in double,
// a = Σ gy / dim, b = Σ gy·x̂ / dim and dx = (float)(rstd·(gy − a − x̂·b)).
// stats (may be null) receives [mean, rstd] per row. writeDx = 0 computes the statistics
// only: the caller uses that when dx aliases dy, so the column pass can read dy before
// it is overwritten. With writeDx, dx may alias dy (each element is read for the sums,
// then rewritten by the thread that read it).
extern "C" __global__ void layernorm_bwd(float* dx, double* stats, const float* dy, const float* x,
                                         const float* gamma, int rows, int dim, float eps, int writeDx) { XF_PDL_ENTRY();
    __shared__ double scratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * dim;
        const float* dyr = dy + r * dim;
        double s = 0;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) s += (double)xr[j];
        double mean = xf_block_sum(s, scratch) / dim;
        double ss = 0;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            double d = (double)xr[j] - mean;
            ss += d * d;
        }
        double rstd = 1.0 / sqrt(xf_block_sum(ss, scratch) / dim + (double)eps);
        if (stats && threadIdx.x == 0) {
            stats[2 * r] = mean;
            stats[2 * r + 1] = rstd;
        }
        if (!writeDx) continue;
        double a = 0, b = 0;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            double xh = ((double)xr[j] - mean) * rstd;
            double gy = (double)dyr[j] * (double)gamma[j];
            a += gy;
            b += gy * xh;
        }
        a = xf_block_sum(a, scratch) / dim;
        b = xf_block_sum(b, scratch) / dim;
        float* dxr = dx + r * dim;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            double xh = ((double)xr[j] - mean) * rstd;
            double gy = (double)dyr[j] * (double)gamma[j];
            dxr[j] = (float)(rstd * (gy - a - xh * b));
        }
    }
}
