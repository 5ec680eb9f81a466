// residual_layernorm.cu — the Post-LN / Admin sub-layer end, y = LN(alpha·(x⊙omega) +
// branch), fused: forward in one kernel, backward (LayerNorm's input gradient dz, dγ,
// dβ and Admin's dω) in three (row statistics, one column pass, one finish) instead
// of the unfused six (layernorm_bwd, col_partial, col_finish ×2, then col_partial and
// col_finish for dω).
//
// Convention: bit-identical to the unfused kernels on the same launch shapes. The
// residual is residual.cu's ((x·ω)·α + branch, each product rounded, no FMA), the
// statistics and dz are layernorm.cu's (double, 256 threads per row, the same
// grid-stride loops and xf_block_sum tree), and the column sums are reduce.cu's
// col_partial (block (32, 8), the chunks of colChunks, the 8 row-strided partials added
// in y order) and col_finish (chunks added in order, rounded once, then accumulated).
// Only where values come from changes: dz is recomputed from the saved row statistics
// by the thread that sums its column, so it is never read back from memory.
//
// The _drop variants (kernels.DropoutResidualNormer) also apply the residual dropout:
// the forward multiplies each branch element by its mask element as it reads it, the
// backward writes dbranch = dz · mask beside dz. The mask element is dropout.cu's
// dropout_elem (the product dropout_apply forms, rounded to float before the sum, as
// when it is read back from memory), so the bits are those of dropout_apply followed
// by the plain kernels.
#include "xform.cuh"

// resln_mask is element i of the dropout mask, as dropout.cu's dropout_elem; threshold 0
// (p ≤ 0) keeps every element without the hash.
__device__ __forceinline__ float resln_mask(unsigned long long seed, long long i, unsigned long long threshold,
                                            float keep) {
    if (threshold == 0ull) return keep;
    return xf_dropout_keep(seed, (unsigned long long)i, threshold) ? keep : 0.0f;
}

// resln_drop is the dropout of one fused call (unused when DROP is false).
struct resln_drop {
    unsigned long long seed, threshold;
    float keep;
};

// resln_sum is element i (column j) of the residual sum, as residual.cu computes it,
// with branch element i first multiplied by its mask element when DROP.
template <bool DROP>
__device__ __forceinline__ float resln_sum(const float* x, const float* branch, const float* omega, float alpha,
                                           long long i, int j, resln_drop dr) {
    float v = x[i];
    if (omega) v = v * omega[j];
    float b = branch[i];
    if (DROP) b = b * resln_mask(dr.seed, i, dr.threshold, dr.keep);
    return v * alpha + b;
}

// residual_layernorm: z = alpha·(x⊙omega) + branch (z may be null), y = LN(z)·γ + β.
// One block of 256 threads per row, grid-stride over rows. Every element is read and
// written by one thread only, reads first, so y may alias x or branch and z may alias
// x or branch: once z is written the later passes read z, otherwise they recompute the
// sum from x and branch, which nothing has overwritten yet.
// With DROP, branch is read through the mask (z = alpha·(x⊙omega) + drop(branch)).
template <bool DROP>
__device__ __forceinline__ void resln_fwd(float* z, float* y, const float* x, const float* branch, const float* omega,
                                          float alpha, const float* gamma, const float* beta, int rows, int dim,
                                          float eps, resln_drop dr) {
    __shared__ double scratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long o = r * dim;
        double s = 0;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            float v = resln_sum<DROP>(x, branch, omega, alpha, o + j, j, dr);
            if (z) z[o + j] = v;
            s += (double)v;
        }
        double mean = xf_block_sum(s, scratch) / dim;
        double ss = 0;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            float v = z ? z[o + j] : resln_sum<DROP>(x, branch, omega, alpha, o + j, j, dr);
            double d = (double)v - mean;
            ss += d * d;
        }
        double rstd = 1.0 / sqrt(xf_block_sum(ss, scratch) / dim + (double)eps);
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            float v = z ? z[o + j] : resln_sum<DROP>(x, branch, omega, alpha, o + j, j, dr);
            float n = (float)(((double)v - mean) * rstd);
            y[o + j] = n * gamma[j] + beta[j];
        }
    }
}

extern "C" __global__ void residual_layernorm(float* z, float* y, const float* x, const float* branch,
                                              const float* omega, float alpha, const float* gamma,
                                              const float* beta, int rows, int dim, float eps) { XF_PDL_ENTRY();
    resln_fwd<false>(z, y, x, branch, omega, alpha, gamma, beta, rows, dim, eps, resln_drop{0ull, 0ull, 1.f});
}

// residual_layernorm_drop: residual_layernorm with branch element i multiplied by mask
// element i (seed, threshold and keep as dropout_apply takes them).
extern "C" __global__ void residual_layernorm_drop(float* z, float* y, const float* x, const float* branch,
                                                   const float* omega, float alpha, const float* gamma,
                                                   const float* beta, int rows, int dim, float eps,
                                                   unsigned long long seed, unsigned long long threshold,
                                                   float keep) { XF_PDL_ENTRY();
    resln_fwd<true>(z, y, x, branch, omega, alpha, gamma, beta, rows, dim, eps, resln_drop{seed, threshold, keep});
}

// residual_layernorm_bwd_rows: per row of z, stats[4r..4r+4) = [mean, rstd, a, b] with
// a = Σ gy / dim and b = Σ gy·x̂ / dim (gy = dy·γ, x̂ = (z − mean)·rstd, all double):
// layernorm_bwd's values, summed in its order (one block of 256 threads per row).
extern "C" __global__ void residual_layernorm_bwd_rows(double* stats, const float* dy, const float* z,
                                                       const float* gamma, int rows, int dim, float eps) { XF_PDL_ENTRY();
    __shared__ double scratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* zr = z + r * dim;
        const float* dyr = dy + r * dim;
        double s = 0;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) s += (double)zr[j];
        double mean = xf_block_sum(s, scratch) / dim;
        double ss = 0;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            double d = (double)zr[j] - mean;
            ss += d * d;
        }
        double rstd = 1.0 / sqrt(xf_block_sum(ss, scratch) / dim + (double)eps);
        double a = 0, b = 0;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            double xh = ((double)zr[j] - mean) * rstd;
            double gy = (double)dyr[j] * (double)gamma[j];
            a += gy;
            b += gy * xh;
        }
        a = xf_block_sum(a, scratch) / dim;
        b = xf_block_sum(b, scratch) / dim;
        if (threadIdx.x == 0) {
            double* st = stats + 4 * r;
            st[0] = mean;
            st[1] = rstd;
            st[2] = a;
            st[3] = b;
        }
    }
}

// residual_layernorm_bwd_cols: the column pass, col_partial's block and chunk layout.
// Each thread owns one column j and the chunk rows lo+ty, lo+ty+8, …; for each element
// it computes dz = (float)(rstd·(gy − a − x̂·b)) (layernorm_bwd's dx), writes it when
// dz is not null (dz may alias dy: the element is read before it is written), and adds
//   part[c][0][j]: Σ dy·x̂   (dγ, col_partial mode 2)
//   part[c][1][j]: Σ dy     (dβ, mode 2)
//   part[c][2][j]: Σ x·dz   (dω before α, mode 1 with a = x, b = dz; skipped when x is
//                            null, leaving 0)
// with dz the rounded float, as ResidualBackward reads it from memory. With DROP it
// also writes dbranch = dz · mask (when not null; it may alias dy as dz may), the
// product dropout_apply forms from dz in memory.
template <bool DROP>
__device__ __forceinline__ void resln_bwd_cols(double* part, float* dz, float* dbranch, const double* stats,
                                               const float* dy, const float* z, const float* x, const float* gamma,
                                               int rows, int cols, int rowsPer, resln_drop dr) {
    __shared__ double red[3][8][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int j = blockIdx.x * 32 + tx;
    const int lo = blockIdx.y * rowsPer;
    int hi = lo + rowsPer;
    if (hi > rows) hi = rows;
    double s0 = 0, s1 = 0, s2 = 0;
    if (j < cols) {
        const double g = (double)gamma[j];
        for (int r = lo + ty; r < hi; r += 8) {
            const long long o = (long long)r * cols + j;
            const double* st = stats + 4 * (long long)r;
            const double rstd = st[1];
            const double dyv = (double)dy[o];
            const double xh = ((double)z[o] - st[0]) * rstd;
            const double gy = dyv * g;
            const float d = (float)(rstd * (gy - st[2] - xh * st[3]));
            if (x) s2 += (double)x[o] * (double)d;
            if (dz) dz[o] = d;
            if (DROP && dbranch) dbranch[o] = d * resln_mask(dr.seed, o, dr.threshold, dr.keep);
            s0 += dyv * xh;
            s1 += dyv;
        }
    }
    red[0][ty][tx] = s0;
    red[1][ty][tx] = s1;
    red[2][ty][tx] = s2;
    __syncthreads();
    if (ty == 0 && j < cols) {
        double t0 = 0, t1 = 0, t2 = 0;
        for (int k = 0; k < 8; k++) {
            t0 += red[0][k][tx];
            t1 += red[1][k][tx];
            t2 += red[2][k][tx];
        }
        double* pc = part + (long long)blockIdx.y * 3 * cols;
        pc[j] = t0;
        pc[cols + j] = t1;
        pc[2 * (long long)cols + j] = t2;
    }
}

extern "C" __global__ void residual_layernorm_bwd_cols(double* part, float* dz, const double* stats,
                                                       const float* dy, const float* z, const float* x,
                                                       const float* gamma, int rows, int cols, int rowsPer) { XF_PDL_ENTRY();
    resln_bwd_cols<false>(part, dz, nullptr, stats, dy, z, x, gamma, rows, cols, rowsPer, resln_drop{0ull, 0ull, 1.f});
}

// residual_layernorm_bwd_cols_drop: residual_layernorm_bwd_cols that also writes
// dbranch = dz · mask (see resln_bwd_cols).
extern "C" __global__ void residual_layernorm_bwd_cols_drop(double* part, float* dz, float* dbranch,
                                                            const double* stats, const float* dy, const float* z,
                                                            const float* x, const float* gamma, int rows, int cols,
                                                            int rowsPer, unsigned long long seed,
                                                            unsigned long long threshold, float keep) { XF_PDL_ENTRY();
    resln_bwd_cols<true>(part, dz, dbranch, stats, dy, z, x, gamma, rows, cols, rowsPer,
                         resln_drop{seed, threshold, keep});
}

// resln_finish is col_finish for output o of the three: the chunks in order, times
// alpha, rounded once, accumulated.
__device__ __forceinline__ void resln_finish(float* out, const double* part, int chunks, int cols, int o,
                                             double alpha, long long j) {
    double s = 0;
    for (int c = 0; c < chunks; c++) s += part[((long long)c * 3 + o) * cols + j];
    out[j] = out[j] + (float)(s * alpha);
}

// residual_layernorm_bwd_finish: dγ += Σ part[·][0], dβ += Σ part[·][1],
// dω += (float)(alpha·Σ part[·][2]); a null output is skipped. dγ and dβ use alpha 1,
// as LayerNormBackward's col_finish calls do (a product by 1.0 is exact).
extern "C" __global__ void residual_layernorm_bwd_finish(float* dgamma, float* dbeta, float* domega,
                                                         const double* part, int chunks, int cols, double alpha) { XF_PDL_ENTRY();
    for (long long j = xf_tid(); j < cols; j += xf_stride()) {
        if (dgamma) resln_finish(dgamma, part, chunks, cols, 0, 1.0, j);
        if (dbeta) resln_finish(dbeta, part, chunks, cols, 1, 1.0, j);
        if (domega) resln_finish(domega, part, chunks, cols, 2, alpha, j);
    }
}
