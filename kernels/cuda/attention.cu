// attention.cu — masked multi-head scaled dot-product attention: forward (inference and
// training) and backward.
//
// Convention (kernels.AttentionArgs): query batch b, head h, row i reads q at columns
// [h·D, (h+1)·D) of its row; keys/values come from batch kvIndex[b] (b when null).
// Scores (scale·q)·k with the query scaled in float first, each dot product summed in
// double in d order and rounded once; masked with −inf where pad[kb·padStride + j] is
// set or where causal forbids j > i + queryOffset; softmax in float with a double sum
// (an all-masked row gives NaN, as torch); output Σ_j p_j·v_j in double, in j order.
// This is the CPU backend's arithmetic step for step, so results agree to the last bit
// except for the order of the softmax sum (a block tree in the row kernels below; in j
// order, hence bit-identical, in the tiled kernels at the end of this file, which the
// launch code prefers for TK and D ≤ 64).
//
// attention (the row kernel): one block per (i, h, b) = (blockIdx.x, blockIdx.y, blockIdx.z). Dynamic shared memory:
// D floats of scaled query then TK floats of scores. headProbs, when not null, receives
// the probabilities per head, [B, H, TQ, TK], for the caller's mean over heads or, in
// training, for the backward. dropMask (null: none), laid out as headProbs, multiplies
// each probability (attention dropout with the 1/(1−p) scale folded in) after it is
// stored and before it weights the values; a zero product is skipped, as on the CPU.
#include "xform.cuh"

extern "C" __global__ void attention(
    float* out, long long oBS, long long oRS,
    const float* q, long long qBS, long long qRS,
    const float* k, long long kBS, long long kRS,
    const float* v, long long vBS, long long vRS,
    int H, int D, int TQ, int TK, float scale,
    const int* kvIndex, const unsigned char* pad, long long padStride,
    int causal, int queryOffset, float* headProbs, const float* dropMask) { XF_PDL_ENTRY();
    extern __shared__ float smem[];
    __shared__ double dscratch[32];
    __shared__ float fscratch[32];
    float* qs = smem;
    float* sc = smem + D;
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kb = kvIndex ? kvIndex[b] : b;
    const float* qr = q + b * qBS + i * qRS + (long long)h * D;
    const float* kbase = k + kb * kBS + (long long)h * D;
    const float* vbase = v + kb * vBS + (long long)h * D;
    const unsigned char* pr = pad ? pad + kb * padStride : nullptr;

    for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = qr[d] * scale;
    __syncthreads();

    int last = TK - 1;
    if (causal && i + queryOffset < last) last = i + queryOffset;
    float m = -XF_INF;
    for (int j = threadIdx.x; j < TK; j += blockDim.x) {
        float s = -XF_INF;
        if (j <= last && !(pr && pr[j])) {
            const float* kr = kbase + j * kRS;
            double acc = 0;
            for (int d = 0; d < D; d++) acc += (double)qs[d] * (double)kr[d];
            s = (float)acc;
            m = xf_max(m, s);
        }
        sc[j] = s;
    }
    m = xf_block_max<false>(m, fscratch);

    double sum = 0;
    for (int j = threadIdx.x; j < TK; j += blockDim.x) {
        double e = exp((double)(sc[j] - m));
        if (m == -XF_INF) e = __longlong_as_double(0x7ff8000000000000LL);
        float ef = (float)e;
        sc[j] = ef;
        sum += e;
    }
    double inv = 1.0 / xf_block_sum(sum, dscratch);
    const long long rowOff = (((long long)b * H + h) * TQ + i) * TK;
    float* hp = headProbs ? headProbs + rowOff : nullptr;
    const float* mr = dropMask ? dropMask + rowOff : nullptr;
    for (int j = threadIdx.x; j < TK; j += blockDim.x) {
        float p = (float)((double)sc[j] * inv);
        sc[j] = p;
        if (hp) hp[j] = p;
    }
    __syncthreads();

    float* orow = out + b * oBS + i * oRS + (long long)h * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        double acc = 0;
        for (int j = 0; j < TK; j++) {
            float p = sc[j];
            if (mr) p = p * mr[j];
            if (p == 0.0f) continue;
            acc += (double)p * (double)vbase[j * vRS + d];
        }
        orow[d] = (float)acc;
    }
}

// probs[b, n] = (Σ_h headProbs[b, h, n]) / H with the sum in float in h order, as the
// CPU backend averages the per-head probabilities (n = TQ·TK).
extern "C" __global__ void mean_heads(float* probs, const float* headProbs, int B, int H, long long n) { XF_PDL_ENTRY();
    long long total = (long long)B * n;
    for (long long idx = xf_tid(); idx < total; idx += xf_stride()) {
        long long b = idx / n, j = idx - b * n;
        float s = 0.0f;
        for (int h = 0; h < H; h++) s += headProbs[(b * H + h) * n + j];
        probs[idx] = s / (float)H;
    }
}

// The backward, in two passes, both reading the per-head probabilities P and the
// dropout mask M (null: none) the training forward saved, [B, H, TQ, TK], and keys and
// values of batch b itself (training has no KV index). It is the CPU backend's
// AttentionBackward step for step: with s_j = dout_i·v_j (double, d order),
// dp_j = s_j·m_j, dot = Σ_j dp_j·p_j and ds_j = p_j·(dp_j − dot) in double; keys whose
// p_j is 0 (masked) are skipped everywhere. Gradients are accumulated (+=).
//
// attention_bwd_q: one block per (i, h, b) = (blockIdx.x, blockIdx.y, blockIdx.z).
// Writes ds into dS (double, layout as P) for the second pass, and
// dq_i += (float)(scale · Σ_j ds_j·k_j) with the sum in j order.
extern "C" __global__ void attention_bwd_q(
    float* dq, long long dqBS, long long dqRS,
    const float* dout, long long doBS, long long doRS,
    const float* k, long long kBS, long long kRS,
    const float* v, long long vBS, long long vRS,
    const float* probs, const float* mask, double* dS,
    int H, int D, int TQ, int TK, float scale) { XF_PDL_ENTRY();
    __shared__ double scratch[32];
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const long long row = (((long long)b * H + h) * TQ + i) * TK;
    const float* pr = probs + row;
    const float* mr = mask ? mask + row : nullptr;
    double* ds = dS + row;
    const float* go = dout + b * doBS + i * doRS + (long long)h * D;
    const float* kbase = k + b * kBS + (long long)h * D;
    const float* vbase = v + b * vBS + (long long)h * D;

    double dot = 0;
    for (int j = threadIdx.x; j < TK; j += blockDim.x) {
        float pj = pr[j];
        if (pj == 0.0f) {
            ds[j] = 0;
            continue;
        }
        const float* vr = vbase + j * vRS;
        double s = 0;
        for (int d = 0; d < D; d++) s += (double)go[d] * (double)vr[d];
        double dp = mr ? s * (double)mr[j] : s;
        ds[j] = dp;  // dp for now; the same thread turns it into ds below
        dot += dp * (double)pj;
    }
    dot = xf_block_sum(dot, scratch);
    for (int j = threadIdx.x; j < TK; j += blockDim.x) {
        float pj = pr[j];
        if (pj != 0.0f) ds[j] = (double)pj * (ds[j] - dot);
    }
    __syncthreads();  // every ds_j of the row is visible to the whole block

    float* dqr = dq + b * dqBS + i * dqRS + (long long)h * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        double acc = 0;
        for (int j = 0; j < TK; j++) {
            if (pr[j] == 0.0f) continue;
            acc += ds[j] * (double)kbase[j * kRS + d];
        }
        dqr[d] = dqr[d] + (float)(acc * (double)scale);
    }
}

// attention_bwd_kv: one block per (j, h, b) = (blockIdx.x, blockIdx.y, blockIdx.z),
// threads over d. dv_j += (float)Σ_i (p_ij·m_ij)·dout_i and
// dk_j += (float)Σ_i ds_ij·(float)(q_i·scale), both in double in i order.
extern "C" __global__ void attention_bwd_kv(
    float* dk, long long dkBS, long long dkRS,
    float* dv, long long dvBS, long long dvRS,
    const float* q, long long qBS, long long qRS,
    const float* dout, long long doBS, long long doRS,
    const float* probs, const float* mask, const double* dS,
    int H, int D, int TQ, int TK, float scale) { XF_PDL_ENTRY();
    const int j = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const long long base = ((long long)b * H + h) * TQ * TK + j;
    const float* qb = q + b * qBS + (long long)h * D;
    const float* gb = dout + b * doBS + (long long)h * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        double ak = 0, av = 0;
        for (int i = 0; i < TQ; i++) {
            long long idx = base + (long long)i * TK;
            float pj = probs[idx];
            if (pj == 0.0f) continue;
            double pm = (double)pj;
            if (mask) pm = pm * (double)mask[idx];
            av += pm * (double)gb[i * doRS + d];
            ak += dS[idx] * (double)(qb[i * qRS + d] * scale);
        }
        float* dkr = dk + b * dkBS + j * dkRS + (long long)h * D;
        float* dvr = dv + b * dvBS + j * dvRS + (long long)h * D;
        dkr[d] = dkr[d] + (float)ak;
        dvr[d] = dvr[d] + (float)av;
    }
}

// ---------------------------------------------------------------------------------------
// Tiled kernels for training and encoder shapes: TK ≤ AT_MAX keys and head dimension
// D ≤ AT_MAX (and, for the backward, TQ ≤ AT_MAX). The launch code picks them by shape
// and falls back to the row kernels above otherwise.
//
// Each block works on one (b, h): its operands are staged in shared memory as doubles
// (converted once, so the inner loops are double multiply-add only) and every product
// matrix is computed by at_mma, where thread (ty, tx) owns rows ty + MT·r and columns
// tx + NT·c (r, c < 4) of an M×N result: lanes read consecutive columns (no bank
// conflicts) and rows are broadcast. Each output element is still one thread's double
// sum over the reduction index in increasing order, and the softmax sum and the
// backward's Σ_j dp_j·p_j are summed serially in j order, so every value is the CPU
// backend's to the last bit (the row kernels above sum those two with a tree).
// ---------------------------------------------------------------------------------------

#define AT_MAX 64       // bound on TK, D and the query rows of a block
#define AT_LD (AT_MAX + 1)  // odd row stride of staged tiles: column walks hit distinct banks
#define AT_THREADS 256  // 16×16 threads, each at most one 4×4 tile of a 64×64 result

struct AtTile {
    int tx, ty, MT, NT;
    bool active;
};

// at_tile maps this thread onto an M×N result (M, N ≤ AT_MAX): MT·NT ≤ 256 threads own
// a tile; the rest only help staging.
__device__ __forceinline__ AtTile at_tile(int M, int N) {
    AtTile t;
    t.MT = (M + 3) >> 2;
    t.NT = (N + 3) >> 2;
    t.ty = threadIdx.x / t.NT;
    t.tx = threadIdx.x - t.ty * t.NT;
    t.active = t.ty < t.MT;
    return t;
}

// at_mma adds, for reduction steps k0 ≤ k < k0+kn in increasing order,
// acc[r][c] += A(k, i_r)·B(k, j_c) where A(k, i) = A[(k−k0)·ak + i·ai] and
// B(k, j) = B[(k−k0)·bk + j·bj], i_r = ty + MT·r, j_c = tx + NT·c; a term is added only
// where use(r, i_r, k, A(k, i_r)) holds (the CPU skips zero probabilities). Rows and
// columns past the result's edge read padding and are not stored by the caller.
//
// kExact: both operands are float values, so their product is exact in double (24+24
// significant bits, exponents far inside double's range) and a fused multiply-add,
// rounded once, equals the CPU's multiply then add: one instruction instead of two.
// Where an operand is a full double (ds, p·m) the product rounds, and the multiply and
// the add stay separate (the program is built with --fmad=false).
template <bool kExact, class Use>
__device__ __forceinline__ void at_mma(double (&acc)[4][4], const AtTile& t,
                                       const double* A, int ak, int ai,
                                       const double* B, int bk, int bj,
                                       int k0, int kn, Use use) {
#pragma unroll 2
    for (int kk = 0; kk < kn; kk++) {
        double a[4], bv[4];
        bool u[4];
#pragma unroll
        for (int r = 0; r < 4; r++) {
            a[r] = A[kk * ak + (t.ty + t.MT * r) * ai];
            u[r] = use(r, t.ty + t.MT * r, k0 + kk, a[r]);
        }
#pragma unroll
        for (int c = 0; c < 4; c++) bv[c] = B[kk * bk + (t.tx + t.NT * c) * bj];
#pragma unroll
        for (int r = 0; r < 4; r++) {
#pragma unroll
            for (int c = 0; c < 4; c++) {
                if (kExact) {
                    const double s = __fma_rn(a[r], bv[c], acc[r][c]);
                    if (u[r]) acc[r][c] = s;
                } else {
                    const double p = a[r] * bv[c];
                    if (u[r]) acc[r][c] += p;
                }
            }
        }
    }
}

__device__ __forceinline__ void at_zero(double (&acc)[4][4]) {
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int c = 0; c < 4; c++) acc[r][c] = 0.0;
}

// at_stage fills dst[kk·ld + e] (kk < KC, e < E rounded up to 4) with f(kk, e) for
// kk < kn and e < E, and 0 elsewhere. kFast: consecutive threads take consecutive kk
// (the source is contiguous along the reduction index), else consecutive e.
template <int KC, bool kFast, class F>
__device__ __forceinline__ void at_stage(double* dst, int ld, int kn, int E, F f) {
    const int Ep = (E + 3) & ~3;
    for (int idx = threadIdx.x; idx < KC * Ep; idx += blockDim.x) {
        int kk, e;
        if (kFast) {
            e = idx / KC;
            kk = idx - e * KC;
        } else {
            kk = idx / Ep;
            e = idx - kk * Ep;
        }
        dst[kk * ld + e] = (kk < kn && e < E) ? f(kk, e) : 0.0;
    }
}

#define AT_FWD_KC 16

// attention_tiled: the forward of `attention` (same arguments and arithmetic) for
// TK ≤ AT_MAX and D ≤ AT_MAX. Block (x, h, b) takes query rows [x·QT, x·QT + QT)
// (QT ≤ AT_MAX) of head h, batch b; AT_THREADS threads, static shared memory only.
//  1. scores (scale·q)·k: chunks of AT_FWD_KC head dimensions of the scaled query rows
//     and of the keys are staged as doubles; each score is one thread's double sum in
//     d order, rounded once, masked to −inf.
//  2. softmax, one warp per row: max, exp in double, the sum in j order (a shuffle
//     broadcast per term), probabilities stored (headProbs) then multiplied by the
//     dropout mask.
//  3. output Σ_j p_j·v_j: chunks of keys of the probabilities and values staged as
//     doubles, each output one thread's sum in j order, zero probabilities skipped.
extern "C" __global__ void __launch_bounds__(AT_THREADS, 2) attention_tiled(
    float* out, long long oBS, long long oRS,
    const float* q, long long qBS, long long qRS,
    const float* k, long long kBS, long long kRS,
    const float* v, long long vBS, long long vRS,
    int H, int D, int TQ, int TK, int QT, float scale,
    const int* kvIndex, const unsigned char* pad, long long padStride,
    int causal, int queryOffset, float* headProbs, const float* dropMask) { XF_PDL_ENTRY();
    __shared__ double sa[AT_FWD_KC * AT_LD];
    __shared__ double sb[AT_FWD_KC * AT_LD];
    __shared__ float sp[AT_MAX * AT_LD];  // scores, then probabilities, of row i at i·AT_LD

    const int i0 = blockIdx.x * QT, h = blockIdx.y, b = blockIdx.z;
    const int M = min(QT, TQ - i0);
    if (M <= 0) return;  // uniform over the block
    const long long kb = kvIndex ? kvIndex[b] : b;
    const float* qb = q + (long long)b * qBS + (long long)i0 * qRS + (long long)h * D;
    const float* kbp = k + kb * kBS + (long long)h * D;
    const float* vbp = v + kb * vBS + (long long)h * D;
    const unsigned char* pr = pad ? pad + kb * padStride : nullptr;
    const int lda = ((M + 3) & ~3) + 1, ldk = ((TK + 3) & ~3) + 1, ldv = ((D + 3) & ~3) + 1;
    auto always = [](int, int, int, double) { return true; };

    // 1. scores
    {
        const AtTile t = at_tile(M, TK);
        double acc[4][4];
        at_zero(acc);
        for (int d0 = 0; d0 < D; d0 += AT_FWD_KC) {
            const int kn = min(AT_FWD_KC, D - d0);
            at_stage<AT_FWD_KC, true>(sa, lda, kn, M, [&](int kk, int i) {
                return (double)(qb[(long long)i * qRS + d0 + kk] * scale);
            });
            at_stage<AT_FWD_KC, true>(sb, ldk, kn, TK, [&](int kk, int j) {
                return (double)kbp[(long long)j * kRS + d0 + kk];
            });
            __syncthreads();
            if (t.active) at_mma<true>(acc, t, sa, lda, 1, sb, ldk, 1, d0, kn, always);
            __syncthreads();
        }
        if (t.active) {
#pragma unroll
            for (int r = 0; r < 4; r++) {
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const int i = t.ty + t.MT * r, j = t.tx + t.NT * c;
                    if (i < M && j < TK) {
                        const bool masked = (causal && j > i0 + i + queryOffset) || (pr && pr[j]);
                        sp[i * AT_LD + j] = masked ? -XF_INF : (float)acc[r][c];
                    }
                }
            }
        }
        __syncthreads();
    }

    // 2. softmax, one warp per row; lane holds keys lane and lane + 32.
    {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
        for (int i = warp; i < M; i += nw) {
            float* row = sp + i * AT_LD;
            const float s0 = lane < TK ? row[lane] : -XF_INF;
            const float s1 = lane + 32 < TK ? row[lane + 32] : -XF_INF;
            // The maximum of the non-NaN scores, as the CPU's running "if s > m".
            float m = fmaxf(s0, s1);
            for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
            double e0 = exp((double)(s0 - m)), e1 = exp((double)(s1 - m));
            if (m == -XF_INF) e0 = e1 = __longlong_as_double(0x7ff8000000000000LL);
            // Unrolled so the shuffles issue ahead and only the adds wait on each other.
            double sum = 0;
#pragma unroll
            for (int j = 0; j < 32; j++) {
                const double x = __shfl_sync(0xffffffffu, e0, j);
                if (j < TK) sum += x;
            }
            if (TK > 32) {  // uniform over the warp
#pragma unroll
                for (int j = 0; j < 32; j++) {
                    const double x = __shfl_sync(0xffffffffu, e1, j);
                    if (j + 32 < TK) sum += x;
                }
            }
            const double inv = 1.0 / sum;
            const long long rowOff = (((long long)b * H + h) * TQ + i0 + i) * TK;
#pragma unroll
            for (int part = 0; part < 2; part++) {
                const int j = lane + 32 * part;
                if (j < TK) {
                    const float ef = (float)(part ? e1 : e0);
                    float p = (float)((double)ef * inv);
                    if (headProbs) headProbs[rowOff + j] = p;
                    if (dropMask) p = p * dropMask[rowOff + j];
                    row[j] = p;
                }
            }
        }
        __syncthreads();
    }

    // 3. output
    {
        const AtTile t = at_tile(M, D);
        double acc[4][4];
        at_zero(acc);
        auto nonzero = [](int, int, int, double a) { return a != 0.0; };
        for (int j0 = 0; j0 < TK; j0 += AT_FWD_KC) {
            const int kn = min(AT_FWD_KC, TK - j0);
            at_stage<AT_FWD_KC, false>(sa, lda, kn, M, [&](int kk, int i) {
                return (double)sp[i * AT_LD + j0 + kk];
            });
            at_stage<AT_FWD_KC, false>(sb, ldv, kn, D, [&](int kk, int d) {
                return (double)vbp[(long long)(j0 + kk) * vRS + d];
            });
            __syncthreads();
            if (t.active) at_mma<true>(acc, t, sa, lda, 1, sb, ldv, 1, j0, kn, nonzero);
            __syncthreads();
        }
        if (t.active) {
            float* ob = out + (long long)b * oBS + (long long)i0 * oRS + (long long)h * D;
#pragma unroll
            for (int r = 0; r < 4; r++) {
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const int i = t.ty + t.MT * r, d = t.tx + t.NT * c;
                    if (i < M && d < D) ob[(long long)i * oRS + d] = (float)acc[r][c];
                }
            }
        }
    }
}

#define AT_BWD_KC 8

// attention_bwd_tiled: the whole backward of one (b, h) for TQ, TK, D ≤ AT_MAX, the
// arithmetic of attention_bwd_q and attention_bwd_kv (the CPU's): block (0, h, b),
// AT_THREADS threads, static shared memory only.
//  0. nz[i]: bit j set where p_ij ≠ 0 (the keys every sum below takes).
//  1. dp_ij = (Σ_d dout_i·v_j)·m_ij, chunks of AT_BWD_KC head dimensions staged.
//  2. one thread per query row: dot_i = Σ_j dp_ij·p_ij in j order, then
//     ds_ij = p_ij·(dp_ij − dot_i) in place.
//  3. dq_i += (float)(scale·Σ_j ds_ij·k_j), key chunks of k staged.
//  4. dk_j += (float)Σ_i ds_ij·(double)(q_i·scale), query chunks of the scaled q staged.
//  5. dv_j += (float)Σ_i (p_ij·m_ij)·dout_i, query chunks of p·m and dout staged.
// Blocks write disjoint rows/columns (their batch and head), so dq, dk, dv may be
// column views of one buffer.
extern "C" __global__ void __launch_bounds__(AT_THREADS, 2) attention_bwd_tiled(
    float* dq, long long dqBS, long long dqRS,
    float* dk, long long dkBS, long long dkRS,
    float* dv, long long dvBS, long long dvRS,
    const float* dout, long long doBS, long long doRS,
    const float* q, long long qBS, long long qRS,
    const float* k, long long kBS, long long kRS,
    const float* v, long long vBS, long long vRS,
    const float* probs, const float* mask,
    int H, int D, int TQ, int TK, float scale) { XF_PDL_ENTRY();
    __shared__ double ds[AT_MAX * AT_LD];  // dp, then ds, of (i, j) at i·AT_LD + j
    __shared__ double sa[AT_BWD_KC * AT_LD];
    __shared__ double sb[AT_BWD_KC * AT_LD];
    __shared__ unsigned long long nz[AT_MAX];

    const int h = blockIdx.y, b = blockIdx.z;
    const long long pbase = (((long long)b * H + h) * TQ) * TK;
    const float* P = probs + pbase;
    const float* Mk = mask ? mask + pbase : nullptr;
    const long long hD = (long long)h * D;
    const float* gob = dout + (long long)b * doBS + hD;
    const float* qb = q + (long long)b * qBS + hD;
    const float* kbp = k + (long long)b * kBS + hD;
    const float* vbp = v + (long long)b * vBS + hD;
    const int ldq = ((TQ + 3) & ~3) + 1, ldk = ((TK + 3) & ~3) + 1, ldd = ((D + 3) & ~3) + 1;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;

    // 0. nonzero probabilities
    for (int i = warp; i < TQ; i += nw) {
        const float* pr = P + (long long)i * TK;
        const unsigned lo = __ballot_sync(0xffffffffu, lane < TK && pr[lane] != 0.0f);
        const unsigned hi = __ballot_sync(0xffffffffu, lane + 32 < TK && pr[lane + 32] != 0.0f);
        if (lane == 0) nz[i] = ((unsigned long long)hi << 32) | lo;
    }
    // nz is first read after the __syncthreads of step 1's first chunk.

    // 1. dp = (dout·v)·m
    {
        const AtTile t = at_tile(TQ, TK);
        double acc[4][4];
        at_zero(acc);
        auto always = [](int, int, int, double) { return true; };
        for (int d0 = 0; d0 < D; d0 += AT_BWD_KC) {
            const int kn = min(AT_BWD_KC, D - d0);
            at_stage<AT_BWD_KC, true>(sa, ldq, kn, TQ, [&](int kk, int i) {
                return (double)gob[(long long)i * doRS + d0 + kk];
            });
            at_stage<AT_BWD_KC, true>(sb, ldk, kn, TK, [&](int kk, int j) {
                return (double)vbp[(long long)j * vRS + d0 + kk];
            });
            __syncthreads();
            if (t.active) at_mma<true>(acc, t, sa, ldq, 1, sb, ldk, 1, d0, kn, always);
            __syncthreads();
        }
        if (t.active) {
#pragma unroll
            for (int r = 0; r < 4; r++) {
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const int i = t.ty + t.MT * r, j = t.tx + t.NT * c;
                    if (i < TQ && j < TK) {
                        double dp = acc[r][c];
                        if (Mk) dp = dp * (double)Mk[(long long)i * TK + j];
                        ds[i * AT_LD + j] = (nz[i] >> j) & 1 ? dp : 0.0;
                    }
                }
            }
        }
        __syncthreads();
    }

    // 2. dot and ds, one thread per query row
    if (threadIdx.x < TQ) {
        const int i = threadIdx.x;
        const unsigned long long bits = nz[i];
        const float* pr = P + (long long)i * TK;
        double* row = ds + i * AT_LD;
        double dot = 0;
        for (int j = 0; j < TK; j++)
            if ((bits >> j) & 1) dot += row[j] * (double)pr[j];
        for (int j = 0; j < TK; j++)
            if ((bits >> j) & 1) row[j] = (double)pr[j] * (row[j] - dot);
    }
    __syncthreads();

    // 3. dq = scale·ds·k
    {
        const AtTile t = at_tile(TQ, D);
        double acc[4][4];
        at_zero(acc);
        unsigned long long bits[4];
#pragma unroll
        for (int r = 0; r < 4; r++) bits[r] = t.active ? nz[min(t.ty + t.MT * r, TQ - 1)] : 0;
        auto use = [&](int r, int, int j, double) { return ((bits[r] >> j) & 1) != 0; };
        for (int j0 = 0; j0 < TK; j0 += AT_BWD_KC) {
            const int kn = min(AT_BWD_KC, TK - j0);
            at_stage<AT_BWD_KC, false>(sb, ldd, kn, D, [&](int kk, int d) {
                return (double)kbp[(long long)(j0 + kk) * kRS + d];
            });
            __syncthreads();
            if (t.active) at_mma<false>(acc, t, ds + j0, 1, AT_LD, sb, ldd, 1, j0, kn, use);
            __syncthreads();
        }
        if (t.active) {
            float* dqb = dq + (long long)b * dqBS + hD;
#pragma unroll
            for (int r = 0; r < 4; r++) {
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const int i = t.ty + t.MT * r, d = t.tx + t.NT * c;
                    if (i < TQ && d < D) {
                        float* p = dqb + (long long)i * dqRS + d;
                        *p = *p + (float)(acc[r][c] * (double)scale);
                    }
                }
            }
        }
    }

    // 4. dk = dsᵀ·(scale·q)
    {
        const AtTile t = at_tile(TK, D);
        double acc[4][4];
        at_zero(acc);
        auto use = [&](int, int j, int i, double) { return ((nz[i] >> j) & 1) != 0; };
        for (int c0 = 0; c0 < TQ; c0 += AT_BWD_KC) {
            const int kn = min(AT_BWD_KC, TQ - c0);
            at_stage<AT_BWD_KC, false>(sb, ldd, kn, D, [&](int kk, int d) {
                return (double)(qb[(long long)(c0 + kk) * qRS + d] * scale);
            });
            __syncthreads();
            if (t.active) at_mma<false>(acc, t, ds + c0 * AT_LD, AT_LD, 1, sb, ldd, 1, c0, kn, use);
            __syncthreads();
        }
        if (t.active) {
            float* dkb = dk + (long long)b * dkBS + hD;
#pragma unroll
            for (int r = 0; r < 4; r++) {
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const int j = t.ty + t.MT * r, d = t.tx + t.NT * c;
                    if (j < TK && d < D) {
                        float* p = dkb + (long long)j * dkRS + d;
                        *p = *p + (float)acc[r][c];
                    }
                }
            }
        }
    }

    // 5. dv = (p·m)ᵀ·dout
    {
        const AtTile t = at_tile(TK, D);
        double acc[4][4];
        at_zero(acc);
        auto use = [&](int, int j, int i, double) { return ((nz[i] >> j) & 1) != 0; };
        for (int c0 = 0; c0 < TQ; c0 += AT_BWD_KC) {
            const int kn = min(AT_BWD_KC, TQ - c0);
            at_stage<AT_BWD_KC, false>(sa, ldk, kn, TK, [&](int kk, int j) {
                const long long idx = (long long)(c0 + kk) * TK + j;
                double pm = (double)P[idx];
                if (Mk) pm = pm * (double)Mk[idx];
                return pm;
            });
            at_stage<AT_BWD_KC, false>(sb, ldd, kn, D, [&](int kk, int d) {
                return (double)gob[(long long)(c0 + kk) * doRS + d];
            });
            __syncthreads();
            if (t.active) at_mma<false>(acc, t, sa, ldk, 1, sb, ldd, 1, c0, kn, use);
            __syncthreads();
        }
        if (t.active) {
            float* dvb = dv + (long long)b * dvBS + hD;
#pragma unroll
            for (int r = 0; r < 4; r++) {
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const int j = t.ty + t.MT * r, d = t.tx + t.NT * c;
                    if (j < TK && d < D) {
                        float* p = dvb + (long long)j * dvRS + d;
                        *p = *p + (float)acc[r][c];
                    }
                }
            }
        }
    }
}
