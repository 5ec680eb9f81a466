// reduce.cu — deterministic reductions shared by the backward operations: column sums
// over rows (bias, LayerNorm γ/β and Admin ω gradients), sums of squares over many
// buffers (gradient norm), and the final sum of per-block partials.
//
// Convention: no float atomics anywhere. Every reduction runs in two passes with a
// launch shape that depends only on the problem shape (never on the device or on
// timing): pass one writes double partials for fixed row chunks / fixed blocks, pass
// two adds those partials in index order. So a result is the same bits on every run,
// and within a double rounding of the CPU backend's row-order float64 sum, which makes
// the float result equal to the CPU's except at rare rounding ties.
#include "xform.cuh"

// col_partial sums columns of row-major [rows, cols] data over the rows of one chunk.
// Block (32, 8): threadIdx.x picks the column (blockIdx.x·32 + x), threadIdx.y strides
// over the chunk's rows by 8; the 8 partial sums are then added in y order. Chunk c =
// blockIdx.y covers rows [c·rowsPer, (c+1)·rowsPer). mode:
//   0: Σ a                                   (bias gradient: a = dy)
//   1: Σ a·b                                 (ω gradient: a = x, b = dy)
//   2: Σ a·x̂ and Σ a with x̂ = (b − mean_r)·rstd_r, stats = [mean, rstd] per row in
//      double (LayerNorm γ and β gradients: a = dy, b = x)
// part holds nout = (mode == 2 ? 2 : 1) rows of cols doubles per chunk.
extern "C" __global__ void col_partial(double* part, const float* a, const float* b, const double* stats,
                                       int rows, int cols, int rowsPer, int mode) { XF_PDL_ENTRY();
    __shared__ double red[2][8][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int j = blockIdx.x * 32 + tx;
    const int lo = blockIdx.y * rowsPer;
    int hi = lo + rowsPer;
    if (hi > rows) hi = rows;
    double s0 = 0, s1 = 0;
    if (j < cols) {
        for (int r = lo + ty; r < hi; r += 8) {
            long long o = (long long)r * cols + j;
            double av = (double)a[o];
            if (mode == 0) {
                s0 += av;
            } else if (mode == 1) {
                s0 += av * (double)b[o];
            } else {
                double xh = ((double)b[o] - stats[2 * r]) * stats[2 * r + 1];
                s0 += av * xh;
                s1 += av;
            }
        }
    }
    red[0][ty][tx] = s0;
    red[1][ty][tx] = s1;
    __syncthreads();
    if (ty == 0 && j < cols) {
        double t0 = 0, t1 = 0;
        for (int y = 0; y < 8; y++) {
            t0 += red[0][y][tx];
            t1 += red[1][y][tx];
        }
        const int nout = mode == 2 ? 2 : 1;
        double* pc = part + (long long)blockIdx.y * nout * cols;
        pc[j] = t0;
        if (mode == 2) pc[cols + j] = t1;
    }
}

// col_finish adds output o of the chunk partials in chunk order and accumulates into a
// gradient: out[j] += (float)(alpha · Σ_c part[c][o][j]), as the CPU backend rounds its
// float64 sum once (alpha = 1 is exact).
extern "C" __global__ void col_finish(float* out, const double* part, int chunks, int cols, int nout, int o,
                                      double alpha) { XF_PDL_ENTRY();
    for (long long j = xf_tid(); j < cols; j += xf_stride()) {
        double s = 0;
        for (int c = 0; c < chunks; c++) s += part[((long long)c * nout + o) * cols + j];
        out[j] = out[j] + (float)(s * alpha);
    }
}

// The list kernels (sumsq_partial, scale_list here; adam_list, fill_list in optim.cu)
// run one chunk of one buffer per block: list_span_of and the layout of desc and tasks
// are in xform.cuh.

// sumsq_add and sumsq_add4 (xform.cuh: adam_list's norm form adds the same terms).

// sumsq_partial: part[b] = Σ (pre·x)² over chunk b, in double, pre·x rounded to float
// first (the value scale_list would have stored; pre = 1 is exact). addrs holds the
// buffers' device addresses, lens their lengths: a list of its own (desc, desc + nbuf)
// or the gradient list inside adam_list's descriptor. Each thread adds the groups of
// four elements q = threadIdx.x + i·LIST_THREADS in order, then the chunk's last
// partial group (len % 4 elements) if it owns q = len / 4; the float4 and the scalar
// path (a buffer not 16-byte aligned) follow that same order, so the bits depend on
// the buffer lengths only; sum_strided then adds the partials in a fixed order.
extern "C" __global__ void sumsq_partial(double* part, const unsigned long long* addrs,
                                         const unsigned long long* lens, const int2* tasks, float pre) { XF_PDL_ENTRY();
    __shared__ double scratch[32];
    const list_span sp = list_span_of(tasks, lens);
    const float* p = (const float*)addrs[sp.k] + sp.start;
    const int n4 = sp.len >> 2;
    double s = 0;
    if (aligned16(p)) {
        const float4* p4 = reinterpret_cast<const float4*>(p);
        for (int q0 = threadIdx.x; q0 < n4; q0 += LIST_UNROLL * LIST_THREADS) {
            float4 v[LIST_UNROLL];
#pragma unroll
            for (int u = 0; u < LIST_UNROLL; u++) {
                const int q = q0 + u * LIST_THREADS;
                if (q < n4) v[u] = __ldg(p4 + q);
            }
#pragma unroll
            for (int u = 0; u < LIST_UNROLL; u++) {
                if (q0 + u * LIST_THREADS < n4) s = sumsq_add4(s, v[u], pre);
            }
        }
    } else {
        for (int q = threadIdx.x; q < n4; q += LIST_THREADS) {
            const float* e = p + 4 * q;
            s = sumsq_add4(s, make_float4(e[0], e[1], e[2], e[3]), pre);
        }
    }
    if (threadIdx.x == n4 % LIST_THREADS)
        for (int e = 4 * n4; e < sp.len; e++) s = sumsq_add(s, p[e], pre);
    s = xf_block_sum(s, scratch);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// scale_list sets x = a·x (float product) over every buffer of desc (one list) on the
// chunks of tasks: gradient clipping and normalisation in one launch.
extern "C" __global__ void scale_list(const unsigned long long* desc, int nbuf, float a, const int2* tasks) { XF_PDL_ENTRY();
    const list_span sp = list_span_of(tasks, desc + nbuf);
    float* p = (float*)desc[sp.k] + sp.start;
    int done = 0;
    if (aligned16(p)) {
        float4* p4 = reinterpret_cast<float4*>(p);
        const int n4 = sp.len >> 2;
        for (int q0 = threadIdx.x; q0 < n4; q0 += LIST_UNROLL * LIST_THREADS) {
            float4 v[LIST_UNROLL];
#pragma unroll
            for (int u = 0; u < LIST_UNROLL; u++) {
                const int q = q0 + u * LIST_THREADS;
                if (q < n4) v[u] = p4[q];
            }
#pragma unroll
            for (int u = 0; u < LIST_UNROLL; u++) {
                const int q = q0 + u * LIST_THREADS;
                if (q < n4) p4[q] = make_float4(v[u].x * a, v[u].y * a, v[u].z * a, v[u].w * a);
            }
        }
        done = 4 * n4;
    }
    for (int e = done + threadIdx.x; e < sp.len; e += LIST_THREADS) p[e] = p[e] * a;
}

// sum_strided: out[c] = Σ_i in[i·stride + c] for c < k, i < n; one block, each thread a
// fixed set of i, then the block sum (fixed tree). Finishes sumsq_partial (stride 1)
// and the loss rows (stride 2).
extern "C" __global__ void sum_strided(double* out, const double* in, long long n, int stride, int k) { XF_PDL_ENTRY();
    __shared__ double scratch[32];
    for (int c = 0; c < k; c++) {
        double s = 0;
        for (long long i = threadIdx.x; i < n; i += blockDim.x) s += in[i * stride + c];
        s = xf_block_sum(s, scratch);
        if (threadIdx.x == 0) out[c] = s;
    }
}
