// attention_flash.cu — memory-efficient ("flash") attention for training in the float modes
// (Options.Precision BF16/FP16): kernels.FlashAttention. The forward never stores the
// [B, H, TQ, TK] probabilities: it walks the keys in tiles with an online softmax and keeps
// one float per query row, lse = m + log Σ_j exp(s_j − m), the log-sum-exp of the row's
// scaled, masked scores. The backward (FlashAttention-2) recomputes p_ij = exp(s_ij − lse_i)
// tile by tile. The dropout mask is never stored either: element ((b·H+h)·TQ+i)·TK+j is
// drawn from the seed by kernels.DropoutHash (the same integer arithmetic as dropout.cu,
// repeated here because every .cu file is its own NVRTC program), in the forward and again
// in the backward, so it equals what DropoutMask draws for a stored buffer.
//
// Contract of the stored-probabilities path (attention.cu, attention_fast.cu), float
// arithmetic as attention_fast.cu: fp32 accumulators updated with fmaf (the program is
// built with --fmad=false, so contraction is spelled out), expf/logf (≤ 2 ulp), row maxima
// and sums as half-warp shuffle trees; the scaled query is q·scale rounded to float as on
// the CPU. An all-masked row gets lse = NaN, so its output row is NaN and every
// recomputed probability of the row is NaN (exp(−inf − NaN) = NaN, masked keys included),
// which makes its dq row and the dk, dv of every key of its (b, h) NaN, as the CPU's NaN
// probabilities do.
//
// Backward without atomics (the result is the same every run), in two launches:
//  * attention_flash_bwd_q, a block per (query tile, h, b): Δ_i = dout_i·out_i (written
//    for the second launch), then over key tiles dp_ij = (dout_i·v_j)·m_ij,
//    ds_ij = p_ij·(dp_ij − Δ_i), dq_i += scale·Σ_j ds_ij·k_j. (Δ_i = Σ_j p_ij·m_ij·
//    (dout_i·v_j) is the CPU's Σ_j dp_ij·p_ij, through the saved output.)
//  * attention_flash_bwd_kv, a block per (key tile, h, b): over query tiles, the same
//    p and ds transposed, dv_j += Σ_i p_ij·m_ij·dout_i, dk_j += Σ_i ds_ij·(q_i·scale).
//
// Tiles: FA_T = 64 query rows by FA_T = 64 keys, head dimension D ≤ FA_T (columns past D
// are zero in shared memory). A block of 16 × 16 threads; thread (ty, tx) = (threadIdx.x /
// 16, threadIdx.x % 16) owns rows 4·ty … 4·ty+3 of every product tile, and columns
// tx + 16·c (c < 4) of a score tile (keys in the forward and bwd_q, queries in bwd_kv) or
// 4·tx … 4·tx+3 of an output tile (head dimension). The 16 threads of a row group are one
// half-warp, so row reductions are shuffles with offsets 8, 4, 2, 1. Every shared tile
// has FA_T rows of stride FA_LD = 68 floats: float4-aligned, and 68/4 = 17 odd, so the 8
// lanes of a quarter-warp reading rows tx … tx+7 with float4 loads hit 8 distinct 16-byte
// bank groups; rows read by broadcast (4·ty + r) are the same address within a quarter-warp.
// Dynamic shared memory: 4 tiles (68 KiB) forward, 5 (85 KiB) backward; the launch code
// opts in beyond 48 KiB (attention_flash.go).
//
// Causal: key tiles after a query tile's last visible key are skipped (forward, bwd_q),
// and query tiles whose last row sees no key of the tile (bwd_kv), unless one of their
// rows has a NaN lse (the CPU's NaN reaches every key).
#include "xform.cuh"

#define FA_T 64
#define FA_LD 68
#define FA_LD4 (FA_LD / 4)
#define FA_THREADS 256
#define FA_TILE (FA_T * FA_LD)

// fa_half_max and fa_half_sum reduce over the 16 lanes of a half-warp (a row group).
// fmaxf drops a NaN operand, like the CPU's running "if s > m".
__device__ __forceinline__ float fa_half_max(float v) {
    for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float fa_half_sum(float v) {
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// fa_stage copies rows [0, n) (n ≤ FA_T) and columns [0, D) of a global matrix with row
// stride rs into a shared tile, times s when scaled, and zeros the rest of the tile's
// FA_T × FA_T block (the products read the padding). When D, the row stride and the
// address allow it, float4 loads, all four of a thread issued before its stores: the tile
// is 16 KiB, so the time is load latency.
__device__ __forceinline__ void fa_stage(float* dst, const float* src, long long rs, int n, int D, float s,
                                         bool scaled) {
    const int t = threadIdx.x;
    const bool vec = (D & 3) == 0 &&
                     ((reinterpret_cast<unsigned long long>(src) | (unsigned long long)(rs * 4)) & 15ull) == 0;
    if (vec) {
        const int D4 = D >> 2;
        float4 x[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {  // FA_T rows × 16 float4s = 4 per thread
            const int e = t + u * FA_THREADS, r = e >> 4, c = e & 15;
            x[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (r < n && c < D4) {
                float4 y = __ldg(reinterpret_cast<const float4*>(src + (long long)r * rs) + c);
                if (scaled) {
                    y.x = y.x * s;
                    y.y = y.y * s;
                    y.z = y.z * s;
                    y.w = y.w * s;
                }
                x[u] = y;
            }
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int e = t + u * FA_THREADS, r = e >> 4, c = e & 15;
            reinterpret_cast<float4*>(dst + r * FA_LD)[c] = x[u];
        }
        return;
    }
    for (int e = t; e < FA_T * FA_T; e += FA_THREADS) {
        const int r = e >> 6, c = e & 63;
        float x = 0.0f;
        if (r < n && c < D) {
            x = __ldg(src + (long long)r * rs + c);
            if (scaled) x = x * s;
        }
        dst[r * FA_LD + c] = x;
    }
}

// fa_nt: acc[r][c] += Σ_{k < 4·k4n} A[4·ty+r][k]·B[tx+16·c][k] (A·Bᵀ; rows of A by
// broadcast, rows of B one per lane), k in increasing order.
__device__ __forceinline__ void fa_nt(float (&acc)[4][4], const float* A, const float* B, int k4n, int ty, int tx) {
    const float4* a4 = reinterpret_cast<const float4*>(A) + 4 * ty * FA_LD4;
    const float4* b4 = reinterpret_cast<const float4*>(B) + tx * FA_LD4;
#pragma unroll 2
    for (int k4 = 0; k4 < k4n; k4++) {
        float4 a[4], b[4];
#pragma unroll
        for (int r = 0; r < 4; r++) a[r] = a4[r * FA_LD4 + k4];
#pragma unroll
        for (int c = 0; c < 4; c++) b[c] = b4[16 * c * FA_LD4 + k4];
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                float x = acc[r][c];
                x = fmaf(a[r].x, b[c].x, x);
                x = fmaf(a[r].y, b[c].y, x);
                x = fmaf(a[r].z, b[c].z, x);
                x = fmaf(a[r].w, b[c].w, x);
                acc[r][c] = x;
            }
    }
}

// fa_nn: acc[r][c] += Σ_{k < 4·k4n} A[4·ty+r][k]·B[k][4·tx+c] (A·B; rows of A by
// broadcast, four consecutive columns of B per lane), k in increasing order.
__device__ __forceinline__ void fa_nn(float (&acc)[4][4], const float* A, const float* B, int k4n, int ty, int tx) {
    const float4* a4 = reinterpret_cast<const float4*>(A) + 4 * ty * FA_LD4;
    const float4* b4 = reinterpret_cast<const float4*>(B) + tx;
#pragma unroll 2
    for (int k4 = 0; k4 < k4n; k4++) {
        float4 a[4], b[4];
#pragma unroll
        for (int r = 0; r < 4; r++) a[r] = a4[r * FA_LD4 + k4];
#pragma unroll
        for (int u = 0; u < 4; u++) b[u] = b4[(4 * k4 + u) * FA_LD4];
#pragma unroll
        for (int r = 0; r < 4; r++) {
            float x0 = acc[r][0], x1 = acc[r][1], x2 = acc[r][2], x3 = acc[r][3];
            x0 = fmaf(a[r].x, b[0].x, x0);
            x1 = fmaf(a[r].x, b[0].y, x1);
            x2 = fmaf(a[r].x, b[0].z, x2);
            x3 = fmaf(a[r].x, b[0].w, x3);
            x0 = fmaf(a[r].y, b[1].x, x0);
            x1 = fmaf(a[r].y, b[1].y, x1);
            x2 = fmaf(a[r].y, b[1].z, x2);
            x3 = fmaf(a[r].y, b[1].w, x3);
            x0 = fmaf(a[r].z, b[2].x, x0);
            x1 = fmaf(a[r].z, b[2].y, x1);
            x2 = fmaf(a[r].z, b[2].z, x2);
            x3 = fmaf(a[r].z, b[2].w, x3);
            x0 = fmaf(a[r].w, b[3].x, x0);
            x1 = fmaf(a[r].w, b[3].y, x1);
            x2 = fmaf(a[r].w, b[3].z, x2);
            x3 = fmaf(a[r].w, b[3].w, x3);
            acc[r][0] = x0;
            acc[r][1] = x1;
            acc[r][2] = x2;
            acc[r][3] = x3;
        }
    }
}

__device__ __forceinline__ void fa_zero(float (&acc)[4][4]) {
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int c = 0; c < 4; c++) acc[r][c] = 0.0f;
}

// fa_key_tiles is the number of key tiles a query tile [i0, i0+nq) reads: all of them,
// or with the causal mask those up to its last row's last visible key (at least one, so
// an all-masked row still meets its NaN).
__device__ __forceinline__ int fa_key_tiles(int i0, int nq, int TK, int causal, int queryOffset) {
    int end = TK;
    if (causal) end = max(1, min(TK, i0 + nq + queryOffset));
    return (end + FA_T - 1) / FA_T;
}

// ---------------------------------------------------------------------------------------
// Forward: block (x, h, b) takes query rows [64·x, 64·x+64). Shared: Q (scaled), K, V,
// P tiles. Per key tile: s = Q·Kᵀ, masks, running maximum m and partial sums l per row
// (each thread sums its own columns; the 16 partials of a row share m, so they are
// added once at the end), the output rescaled by exp(m_old − m_new), then out += P·V
// with P the probabilities after dropout.
// ---------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(FA_THREADS) attention_flash_fwd(
    float* out, long long oBS, long long oRS,
    const float* q, long long qBS, long long qRS,
    const float* k, long long kBS, long long kRS,
    const float* v, long long vBS, long long vRS,
    float* lse, int H, int D, int TQ, int TK, float scale,
    const unsigned char* pad, long long padStride, int causal, int queryOffset,
    unsigned long long seed, unsigned long long threshold, float keep) { XF_PDL_ENTRY();
    extern __shared__ float4 fa_smem4[];
    float* Qs = reinterpret_cast<float*>(fa_smem4);
    float* Ks = Qs + FA_TILE;
    float* Vs = Ks + FA_TILE;
    float* Ps = Vs + FA_TILE;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int h = blockIdx.y, b = blockIdx.z;
    const int i0 = blockIdx.x * FA_T, nq = min(FA_T, TQ - i0);
    const long long hD = (long long)h * D, bh = (long long)b * H + h;
    const unsigned char* pr = pad ? pad + (long long)b * padStride : nullptr;
    const int D4n = (D + 3) >> 2;

    fa_stage(Qs, q + (long long)b * qBS + (long long)i0 * qRS + hD, qRS, nq, D, scale, true);

    float m[4], l[4], o[4][4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        m[r] = -XF_INF;
        l[r] = 0.0f;
    }
    fa_zero(o);

    const int nkt = fa_key_tiles(i0, nq, TK, causal, queryOffset);
    for (int kt = 0; kt < nkt; kt++) {
        const int j0 = kt * FA_T, nk = min(FA_T, TK - j0);
        __syncthreads();  // the previous tile's K, V and P are no longer read
        fa_stage(Ks, k + (long long)b * kBS + (long long)j0 * kRS + hD, kRS, nk, D, 1.0f, false);
        fa_stage(Vs, v + (long long)b * vBS + (long long)j0 * vRS + hD, vRS, nk, D, 1.0f, false);
        __syncthreads();
        float s[4][4];
        fa_zero(s);
        fa_nt(s, Qs, Ks, D4n, ty, tx);

        bool padded[4];  // keys past TK count as padding
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const int j = j0 + tx + 16 * c;
            padded[c] = j >= TK || (pr && __ldg(pr + j) != 0);
        }
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int i = i0 + 4 * ty + r;
            float mx = -XF_INF;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int j = j0 + tx + 16 * c;
                if (padded[c] || (causal && j > i + queryOffset)) s[r][c] = -XF_INF;
                mx = fmaxf(mx, s[r][c]);
            }
            mx = fa_half_max(mx);
            const float mNew = fmaxf(m[r], mx);
            // While every key so far is masked, exponents are taken against 0: masked
            // scores give exp(−inf) = 0 rather than exp(−inf + inf) = NaN.
            const float mu = mNew == -XF_INF ? 0.0f : mNew;
            const float alpha = expf(m[r] - mu);
            m[r] = mNew;
            float sum = 0.0f;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int j = j0 + tx + 16 * c;
                float p = expf(s[r][c] - mu);
                sum += p;
                if (threshold != 0ull && i < TQ && j < TK)
                    p = p * (xf_dropout_keep(seed, (unsigned long long)((bh * TQ + i) * TK + j), threshold) ? keep : 0.0f);
                Ps[(4 * ty + r) * FA_LD + tx + 16 * c] = p;
            }
            l[r] = l[r] * alpha + sum;
#pragma unroll
            for (int c = 0; c < 4; c++) o[r][c] = o[r][c] * alpha;
        }
        __syncthreads();
        // P's columns past TK are 0 and V's rows past nk are zero: the last group of
        // four is whole.
        fa_nn(o, Ps, Vs, (nk + 3) >> 2, ty, tx);
    }

#pragma unroll
    for (int r = 0; r < 4; r++) {
        const float lr = fa_half_sum(l[r]);
        const int i = i0 + 4 * ty + r;
        if (i < TQ) {
            const bool none = m[r] == -XF_INF;  // every key masked
            const float inv = 1.0f / lr;
            float* orow = out + (long long)b * oBS + (long long)i * oRS + hD;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int col = 4 * tx + c;
                if (col < D) orow[col] = none ? __int_as_float(0x7fc00000) : o[r][c] * inv;
            }
            if (tx == 0) lse[bh * TQ + i] = none ? __int_as_float(0x7fc00000) : m[r] + logf(lr);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Backward, dq: block (x, h, b) takes query rows [64·x, 64·x+64). Shared: Q (scaled),
// dout, K, V, dS tiles. Δ_i from dout (shared) and out (global), written to delta for
// attention_flash_bwd_kv; then per key tile s = Q·Kᵀ, dp = dout·Vᵀ, p = exp(s − lse),
// ds = p·(dp·m − Δ) into shared, dq += dS·K; finally dq_i += scale·acc.
// ---------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(FA_THREADS, 2) attention_flash_bwd_q(
    float* dq, long long dqBS, long long dqRS,
    const float* dout, long long doBS, long long doRS,
    const float* q, long long qBS, long long qRS,
    const float* k, long long kBS, long long kRS,
    const float* v, long long vBS, long long vRS,
    const float* out, long long oBS, long long oRS,
    const float* lse, float* delta, int H, int D, int TQ, int TK, float scale,
    const unsigned char* pad, long long padStride, int causal, int queryOffset,
    unsigned long long seed, unsigned long long threshold, float keep) { XF_PDL_ENTRY();
    extern __shared__ float4 fa_smem4[];
    float* Qs = reinterpret_cast<float*>(fa_smem4);
    float* Gs = Qs + FA_TILE;  // dout
    float* Ks = Gs + FA_TILE;
    float* Vs = Ks + FA_TILE;
    float* Ss = Vs + FA_TILE;  // ds
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int h = blockIdx.y, b = blockIdx.z;
    const int i0 = blockIdx.x * FA_T, nq = min(FA_T, TQ - i0);
    const long long hD = (long long)h * D, bh = (long long)b * H + h;
    const unsigned char* pr = pad ? pad + (long long)b * padStride : nullptr;
    const int D4n = (D + 3) >> 2;

    fa_stage(Qs, q + (long long)b * qBS + (long long)i0 * qRS + hD, qRS, nq, D, scale, true);
    fa_stage(Gs, dout + (long long)b * doBS + (long long)i0 * doRS + hD, doRS, nq, D, 1.0f, false);
    __syncthreads();

    // Δ and lse of this thread's rows (0 past TQ: those rows' ds are forced to 0).
    float dl[4], ls[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int i = i0 + 4 * ty + r;
        float acc = 0.0f;
        if (i < TQ) {
            const float* orow = out + (long long)b * oBS + (long long)i * oRS + hD;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int col = 4 * tx + c;
                if (col < D) acc = fmaf(Gs[(4 * ty + r) * FA_LD + col], __ldg(orow + col), acc);
            }
        }
        acc = fa_half_sum(acc);
        dl[r] = acc;
        ls[r] = i < TQ ? __ldg(lse + bh * TQ + i) : 0.0f;
        if (tx == 0 && i < TQ) delta[bh * TQ + i] = acc;
    }

    float g[4][4];
    fa_zero(g);
    const int nkt = fa_key_tiles(i0, nq, TK, causal, queryOffset);
    for (int kt = 0; kt < nkt; kt++) {
        const int j0 = kt * FA_T, nk = min(FA_T, TK - j0);
        __syncthreads();  // the previous tile's K and dS are no longer read
        fa_stage(Ks, k + (long long)b * kBS + (long long)j0 * kRS + hD, kRS, nk, D, 1.0f, false);
        fa_stage(Vs, v + (long long)b * vBS + (long long)j0 * vRS + hD, vRS, nk, D, 1.0f, false);
        __syncthreads();
        float s[4][4], dp[4][4];
        fa_zero(s);
        fa_zero(dp);
        fa_nt(s, Qs, Ks, D4n, ty, tx);
        fa_nt(dp, Gs, Vs, D4n, ty, tx);
        bool padded[4];
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const int j = j0 + tx + 16 * c;
            padded[c] = j >= TK || (pr && __ldg(pr + j) != 0);
        }
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int i = i0 + 4 * ty + r;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int j = j0 + tx + 16 * c;
                const bool masked = padded[c] || (causal && j > i + queryOffset);
                // A masked key has p = exp(−inf − lse) = 0, or NaN on an all-masked row.
                const float p = expf((masked ? -XF_INF : s[r][c]) - ls[r]);
                float gp = dp[r][c];
                if (threshold != 0ull && i < TQ && j < TK)
                    gp = gp * (xf_dropout_keep(seed, (unsigned long long)((bh * TQ + i) * TK + j), threshold) ? keep : 0.0f);
                const float ds = i < TQ ? p * (gp - dl[r]) : 0.0f;
                Ss[(4 * ty + r) * FA_LD + tx + 16 * c] = ds;
            }
        }
        __syncthreads();
        fa_nn(g, Ss, Ks, (nk + 3) >> 2, ty, tx);
    }

#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int i = i0 + 4 * ty + r;
        if (i < TQ) {
            float* row = dq + (long long)b * dqBS + (long long)i * dqRS + hD;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int col = 4 * tx + c;
                if (col < D) row[col] = row[col] + g[r][c] * scale;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Backward, dk and dv: block (x, h, b) takes keys [64·x, 64·x+64). Shared: K, V (for the
// whole block), Q (scaled), dout, and T, which holds (p·m)ᵀ and then dSᵀ. Per query
// tile: sᵀ = K·Qᵀ, dpᵀ = V·doutᵀ (thread rows are keys, columns queries), p from lse,
// dv += (P·M)ᵀ·dout, dk += dSᵀ·Q.
// ---------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(FA_THREADS, 2) attention_flash_bwd_kv(
    float* dk, long long dkBS, long long dkRS,
    float* dv, long long dvBS, long long dvRS,
    const float* dout, long long doBS, long long doRS,
    const float* q, long long qBS, long long qRS,
    const float* k, long long kBS, long long kRS,
    const float* v, long long vBS, long long vRS,
    const float* lse, const float* delta, int H, int D, int TQ, int TK, float scale,
    const unsigned char* pad, long long padStride, int causal, int queryOffset,
    unsigned long long seed, unsigned long long threshold, float keep) { XF_PDL_ENTRY();
    extern __shared__ float4 fa_smem4[];
    float* Ks = reinterpret_cast<float*>(fa_smem4);
    float* Vs = Ks + FA_TILE;
    float* Qs = Vs + FA_TILE;
    float* Gs = Qs + FA_TILE;  // dout
    float* Ts = Gs + FA_TILE;  // (p·m)ᵀ, then dsᵀ
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int h = blockIdx.y, b = blockIdx.z;
    const int j0 = blockIdx.x * FA_T, nk = min(FA_T, TK - j0);
    const long long hD = (long long)h * D, bh = (long long)b * H + h;
    const unsigned char* pr = pad ? pad + (long long)b * padStride : nullptr;
    const int D4n = (D + 3) >> 2;

    fa_stage(Ks, k + (long long)b * kBS + (long long)j0 * kRS + hD, kRS, nk, D, 1.0f, false);
    fa_stage(Vs, v + (long long)b * vBS + (long long)j0 * vRS + hD, vRS, nk, D, 1.0f, false);
    bool kpad[4];  // this thread's keys; past TK count as padding
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int j = j0 + 4 * ty + r;
        kpad[r] = j >= TK || (pr && __ldg(pr + j) != 0);
    }

    float gk[4][4], gv[4][4];
    fa_zero(gk);
    fa_zero(gv);
    const int nqt = (TQ + FA_T - 1) / FA_T;
    for (int it = 0; it < nqt; it++) {
        const int i0 = it * FA_T, nq = min(FA_T, TQ - i0);
        float ls[4], dl[4];
        int nanRow = 0;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const int i = i0 + tx + 16 * c;
            ls[c] = i < TQ ? __ldg(lse + bh * TQ + i) : 0.0f;
            dl[c] = i < TQ ? __ldg(delta + bh * TQ + i) : 0.0f;
            nanRow |= ls[c] != ls[c];
        }
        const bool hidden = causal && i0 + nq - 1 + queryOffset < j0;
        // Also the barrier after the previous tile's last reads of Q, dout and T.
        if (__syncthreads_or(nanRow) == 0 && hidden) continue;
        fa_stage(Qs, q + (long long)b * qBS + (long long)i0 * qRS + hD, qRS, nq, D, scale, true);
        fa_stage(Gs, dout + (long long)b * doBS + (long long)i0 * doRS + hD, doRS, nq, D, 1.0f, false);
        __syncthreads();
        // p first, then dp: the two score tiles are never live together (registers).
        float s[4][4];
        fa_zero(s);
        fa_nt(s, Ks, Qs, D4n, ty, tx);
        unsigned dropped = 0;  // bit 4·r + c: dropout removed the element
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int j = j0 + 4 * ty + r;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int i = i0 + tx + 16 * c;
                const bool masked = kpad[r] || (causal && j > i + queryOffset);
                const float p = expf((masked ? -XF_INF : s[r][c]) - ls[c]);
                float mv = 1.0f;
                if (threshold != 0ull && i < TQ && j < TK) {
                    mv = keep;
                    if (!xf_dropout_keep(seed, (unsigned long long)((bh * TQ + i) * TK + j), threshold)) {
                        mv = 0.0f;
                        dropped |= 1u << (4 * r + c);
                    }
                }
                Ts[(4 * ty + r) * FA_LD + tx + 16 * c] = i < TQ ? p * mv : 0.0f;
                s[r][c] = p;
            }
        }
        float dp[4][4];
        fa_zero(dp);
        fa_nt(dp, Vs, Gs, D4n, ty, tx);
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int i = i0 + tx + 16 * c;
                // Past TK p is 0, so the mask value there does not matter.
                const float mv = threshold == 0ull ? 1.0f : ((dropped >> (4 * r + c)) & 1u) ? 0.0f : keep;
                s[r][c] = i < TQ ? s[r][c] * (dp[r][c] * mv - dl[c]) : 0.0f;  // ds
            }
        __syncthreads();
        // Columns of T past TQ are 0 and rows of dout/Q past nq are zero.
        fa_nn(gv, Ts, Gs, (nq + 3) >> 2, ty, tx);
        __syncthreads();
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < 4; c++) Ts[(4 * ty + r) * FA_LD + tx + 16 * c] = s[r][c];
        __syncthreads();
        fa_nn(gk, Ts, Qs, (nq + 3) >> 2, ty, tx);
    }

#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int j = j0 + 4 * ty + r;
        if (j < TK) {
            float* krow = dk + (long long)b * dkBS + (long long)j * dkRS + hD;
            float* vrow = dv + (long long)b * dvBS + (long long)j * dvRS + hD;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int col = 4 * tx + c;
                if (col < D) {
                    krow[col] = krow[col] + gk[r][c];
                    vrow[col] = vrow[col] + gv[r][c];
                }
            }
        }
    }
}
