// attention_fast.cu — masked multi-head attention in float arithmetic, forward (training,
// encoder, inference, decode step) and backward, for the mixed-precision modes
// (Options.Precision BF16/FP16), where the GEMMs already differ from the CPU by ~1e-3 and
// bit-identity in attention buys nothing. FP32 keeps the exact kernels of attention.cu.
//
// Same contract as attention.cu (kernels.AttentionArgs; the training forward stores the
// per-head probabilities [B, H, TQ, TK] before the dropout mask multiplies them; the
// backward accumulates into dq, dk, dv), different arithmetic:
//  * every dot product and sum is a float accumulator updated with fmaf (one rounding
//    per term; the program is built with --fmad=false, so contraction is spelled out);
//  * row maxima and sums are warp shuffle trees, not the CPU's j order;
//  * exp is expf (at most 2 ulp, CUDA Programming Guide), not __expf, whose error grows
//    with |x| (2 + ⌊1.173·|x|⌋ ulp: ~13 ulp at x = −10). It runs once per score, so its
//    cost is nothing next to the loads;
//  * a zero probability (masked key, dropped entry) still multiplies its value or key
//    row (0·v = 0): the CPU skips the term, which differs only where v or k is not finite.
// The scaled query is q·scale rounded to float as on the CPU. An all-masked row gives NaN
// probabilities, a NaN output row and NaN gradients, as the CPU (and torch) do.
//
// Bounds: TK ≤ 128 keys (AF_MAXNC·32: a lane holds keys lane + 32·c, c < NC) and head
// dimension D ≤ 64 (a lane owns output columns lane and lane + 32). The launch code sends
// other shapes to attention.cu. NC = ⌈TK/32⌉ is a template argument so the per-lane score
// arrays stay in registers: one kernel per NC.
//
// Shared memory is dynamic, float, laid out by the launch code (attention_fast.go), which
// passes the row strides:
//  * ldk: rows that lanes read on distinct rows with float4 loads (keys, and values in
//    the backward's first phase). A multiple of 4 whose quotient by 4 is odd, so the 8
//    lanes of a quarter-warp fall on 8 distinct 16-byte bank groups.
//  * tiles read by row broadcast or with lanes on consecutive columns need no padding:
//    their stride is the width rounded up to 4 (D4, TK4), for float4 alignment.
#include "xform.cuh"

#define AF_R 4       // query rows (forward, backward dq) or keys (backward dk, dv) per warp pass
#define AF_THREADS 256  // at most 8 warps per block

__device__ __forceinline__ float af_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The maximum of the non-NaN values (fmaxf drops a NaN operand), like the CPU's running
// "if s > m".
__device__ __forceinline__ float af_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// af_copy copies rows [0, rows) × columns [0, cols) of a global matrix (row stride rs)
// into shared memory with row stride ld, scaled by s, writing zeros in columns
// [cols, cols4) and rows [rows, rows4): the padding the float4 loops read. Threads t of
// nt (the block, or the lanes of one warp) share the work. When the columns and every
// row start allow it (cols a multiple of 4, 16-byte aligned rows) it moves float4s, four
// loads in flight per thread before their stores: the tiles are a few KiB, so the time
// is load latency, and the scalar loop put one load in flight per thread per trip.
// Either path stores the same values (x·s per element).
__device__ __forceinline__ void af_copy(float* dst, int ld, const float* src, long long rs,
                                        int rows, int rows4, int cols, int cols4, float s, bool scaled,
                                        int t, int nt) {
    const bool vec = (cols & 3) == 0 && cols4 == cols && (ld & 3) == 0 &&
                     ((reinterpret_cast<unsigned long long>(src) | reinterpret_cast<unsigned long long>(dst) |
                       (unsigned long long)(rs * 4)) & 15ull) == 0;
    if (vec) {
        const int n4 = cols >> 2, tot = rows4 * n4;
        for (int e0 = t; e0 < tot; e0 += 4 * nt) {
            float4 x[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int e = e0 + u * nt;
                x[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (e < tot) {
                    const int r = e / n4, c = e - r * n4;
                    if (r < rows) {
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
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int e = e0 + u * nt;
                if (e < tot) {
                    const int r = e / n4, c = e - r * n4;
                    reinterpret_cast<float4*>(dst + r * ld)[c] = x[u];
                }
            }
        }
        return;
    }
    const int lane = t & 31, warp = t >> 5, nw = max(nt >> 5, 1);
    for (int r = warp; r < rows4; r += nw) {
        for (int c = lane; c < cols4; c += 32) {
            float x = 0.0f;
            if (r < rows && c < cols) {
                x = __ldg(src + (long long)r * rs + c);
                if (scaled) x = x * s;
            }
            dst[r * ld + c] = x;
        }
    }
}

// af_stage is af_copy by the whole block.
__device__ __forceinline__ void af_stage(float* dst, int ld, const float* src, long long rs,
                                         int rows, int rows4, int cols, int cols4, float s, bool scaled) {
    af_copy(dst, ld, src, rs, rows, rows4, cols, cols4, s, scaled, threadIdx.x, blockDim.x);
}

// ---------------------------------------------------------------------------------------
// Forward. Block (x, h, b) of W = blockDim.x/32 warps takes query rows
// [x·W·AF_R, (x+1)·W·AF_R); warp w rows i0 = x·W·AF_R + w·AF_R … i0 + AF_R − 1.
// Shared memory: kv [TK4][ldk] (keys, then values), then per warp AF_R rows of lds
// floats (its scaled queries, then its probabilities after dropout), lds ≥ max(D4, TK4).
// When the launch code finds room for a second [TK4][ldk] tile within 48 KiB, it passes
// its offset vOff (floats) and the values are staged there with the keys in step 1, so
// their loads overlap instead of waiting behind the softmax; vOff = 0: values over keys.
//  1. keys staged by the block, each warp's scaled queries by the warp; scores: lane holds
//     keys j = lane + 32·c, s[r][c] = Σ_d qs[i_r][d]·k[j][d] (float4 loads: query rows
//     broadcast, key rows one per lane).
//  2. mask (padding, causal), softmax per row with warp shuffles, probabilities stored
//     (headProbs, coalesced), then multiplied by the dropout mask.
//  3. values staged over the keys (or, with vOff, in step 1 beside them);
//     out[i][d] = Σ_j p[i][j]·v[j][d], lane owning d = lane and lane + 32, four keys per
//     step (one float4 broadcast of p per row).
// ---------------------------------------------------------------------------------------
template <int NC>
__device__ __forceinline__ void af_fwd(
    float* out, long long oBS, long long oRS,
    const float* q, long long qBS, long long qRS,
    const float* k, long long kBS, long long kRS,
    const float* v, long long vBS, long long vRS,
    int H, int D, int TQ, int TK, int ldk, int lds, float scale,
    const int* kvIndex, const unsigned char* pad, long long padStride,
    int causal, int queryOffset, float* headProbs, const float* dropMask, int vOff) {
    extern __shared__ float4 af_smem4[];
    float* kv = reinterpret_cast<float*>(af_smem4);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int D4 = (D + 3) & ~3, TK4 = (TK + 3) & ~3;
    float* qp = kv + TK4 * ldk + warp * (AF_R * lds);
    float* vt = kv + vOff;
    const int h = blockIdx.y, b = blockIdx.z;
    const int i0 = (blockIdx.x * nw + warp) * AF_R;
    const int nr = max(0, min(AF_R, TQ - i0));  // this warp's rows: uniform over the warp
    const long long kb = kvIndex ? kvIndex[b] : b;
    const long long hD = (long long)h * D;
    const float* kbp = k + kb * kBS + hD;
    const float* vbp = v + kb * vBS + hD;
    const float* qbp = q + (long long)b * qBS + (long long)i0 * qRS + hD;
    const unsigned char* pr = pad ? pad + kb * padStride : nullptr;

    // 1. scores
    af_stage(kv, ldk, kbp, kRS, TK, TK, D, D4, 1.0f, false);
    if (vOff) af_stage(vt, ldk, vbp, vRS, TK, TK4, D, D, 1.0f, false);
    af_copy(qp, lds, qbp, qRS, nr, AF_R, D, D4, scale, true, lane, 32);
    __syncthreads();

    float s[AF_R][NC];
#pragma unroll
    for (int r = 0; r < AF_R; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) s[r][c] = 0.0f;
    if (nr > 0) {
        const float4* k4 = reinterpret_cast<const float4*>(kv);
        const float4* q4 = reinterpret_cast<const float4*>(qp);
        const int ldk4 = ldk >> 2, lds4 = lds >> 2;
        for (int d4 = 0; d4 < (D4 >> 2); d4++) {
            float4 kk[NC];
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const int j = lane + 32 * c;
                kk[c] = j < TK ? k4[j * ldk4 + d4] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
#pragma unroll
            for (int r = 0; r < AF_R; r++) {
                const float4 qq = q4[r * lds4 + d4];
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    float a = s[r][c];
                    a = fmaf(qq.x, kk[c].x, a);
                    a = fmaf(qq.y, kk[c].y, a);
                    a = fmaf(qq.z, kk[c].z, a);
                    a = fmaf(qq.w, kk[c].w, a);
                    s[r][c] = a;
                }
            }
        }
    }

    // The key padding and the dropout mask of all AF_R rows are loaded here, together:
    // inside the softmax each row's loads would wait behind the previous row's shuffles
    // and stores. (Loaded before the scores they would hold AF_R·NC more registers
    // through them.)
    float dm[AF_R][NC];
    bool padded[NC];  // the key padding, the same for every row
#pragma unroll
    for (int c = 0; c < NC; c++) {
        const int j = lane + 32 * c;
        padded[c] = pr && j < TK && __ldg(pr + j) != 0;
    }
    const long long rowOff0 = (((long long)b * H + h) * TQ + i0) * TK;
#pragma unroll
    for (int r = 0; r < AF_R; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int j = lane + 32 * c;
            dm[r][c] = (dropMask && r < nr && j < TK) ? __ldg(dropMask + rowOff0 + (long long)r * TK + j) : 0.0f;
        }

    // 2. softmax; s becomes the probabilities after dropout (0 on rows past nr and keys
    // past TK).
#pragma unroll
    for (int r = 0; r < AF_R; r++) {
        if (r < nr) {  // uniform over the warp
            const int i = i0 + r;
            int last = TK - 1;
            if (causal) last = min(last, i + queryOffset);
            float m = -XF_INF;
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const int j = lane + 32 * c;
                const bool keep = j <= last && !padded[c];
                s[r][c] = keep ? s[r][c] : -XF_INF;
                m = fmaxf(m, s[r][c]);
            }
            m = af_warp_max(m);
            float sum = 0.0f;
#pragma unroll
            for (int c = 0; c < NC; c++) {
                // Keys past TK hold −inf: exp gives 0 and they add nothing.
                float e = expf(s[r][c] - m);
                if (m == -XF_INF) e = __int_as_float(0x7fc00000);  // all masked: NaN, as the CPU
                s[r][c] = e;
                sum += e;
            }
            const float inv = 1.0f / af_warp_sum(sum);
            const long long rowOff = (((long long)b * H + h) * TQ + i) * TK;
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const int j = lane + 32 * c;
                float p = 0.0f;
                if (j < TK) {
                    p = s[r][c] * inv;
                    if (headProbs) headProbs[rowOff + j] = p;
                    if (dropMask) p = p * dm[r][c];
                }
                s[r][c] = p;
            }
        } else {
#pragma unroll
            for (int c = 0; c < NC; c++) s[r][c] = 0.0f;
        }
    }
    __syncthreads();  // every warp is done with the keys (and its own query rows)

    // 3. output
    if (!vOff) af_stage(vt, ldk, vbp, vRS, TK, TK4, D, D, 1.0f, false);
#pragma unroll
    for (int r = 0; r < AF_R; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int j = lane + 32 * c;
            if (j < TK4) qp[r * lds + j] = s[r][c];
        }
    __syncthreads();
    if (nr > 0) {
        const int dl0 = min(lane, D - 1), dl1 = min(lane + 32, D - 1);  // in-bounds reads; stored only when < D
        const float4* p4 = reinterpret_cast<const float4*>(qp);
        const int lds4 = lds >> 2;
        float o0[AF_R], o1[AF_R];
#pragma unroll
        for (int r = 0; r < AF_R; r++) o0[r] = o1[r] = 0.0f;
        for (int j4 = 0; j4 < TK4; j4 += 4) {
            float v0[4], v1[4];
#pragma unroll
            for (int t = 0; t < 4; t++) {
                v0[t] = vt[(j4 + t) * ldk + dl0];
                v1[t] = vt[(j4 + t) * ldk + dl1];
            }
#pragma unroll
            for (int r = 0; r < AF_R; r++) {
                const float4 pp = p4[r * lds4 + (j4 >> 2)];
                o0[r] = fmaf(pp.x, v0[0], o0[r]);
                o0[r] = fmaf(pp.y, v0[1], o0[r]);
                o0[r] = fmaf(pp.z, v0[2], o0[r]);
                o0[r] = fmaf(pp.w, v0[3], o0[r]);
                o1[r] = fmaf(pp.x, v1[0], o1[r]);
                o1[r] = fmaf(pp.y, v1[1], o1[r]);
                o1[r] = fmaf(pp.z, v1[2], o1[r]);
                o1[r] = fmaf(pp.w, v1[3], o1[r]);
            }
        }
        float* ob = out + (long long)b * oBS + (long long)i0 * oRS + hD;
#pragma unroll
        for (int r = 0; r < AF_R; r++) {
            if (r < nr) {
                if (lane < D) ob[(long long)r * oRS + lane] = o0[r];
                if (lane + 32 < D) ob[(long long)r * oRS + lane + 32] = o1[r];
            }
        }
    }
}

#define AF_FWD(NC)                                                                                   \
    extern "C" __global__ void __launch_bounds__(AF_THREADS) attention_fast_fwd##NC(                 \
        float* out, long long oBS, long long oRS, const float* q, long long qBS, long long qRS,      \
        const float* k, long long kBS, long long kRS, const float* v, long long vBS, long long vRS,  \
        int H, int D, int TQ, int TK, int ldk, int lds, float scale, const int* kvIndex,            \
        const unsigned char* pad, long long padStride, int causal, int queryOffset,                 \
        float* headProbs, const float* dropMask, int vOff) { XF_PDL_ENTRY();                        \
        af_fwd<NC>(out, oBS, oRS, q, qBS, qRS, k, kBS, kRS, v, vBS, vRS, H, D, TQ, TK, ldk, lds,    \
                   scale, kvIndex, pad, padStride, causal, queryOffset, headProbs, dropMask, vOff); \
    }
AF_FWD(1)
AF_FWD(2)
AF_FWD(3)
AF_FWD(4)

// ---------------------------------------------------------------------------------------
// Backward: one block of AF_THREADS threads per (h, b) = (blockIdx.y, blockIdx.z), since
// dk and dv sum over every query row (no atomics: the result is the same every run).
// With P the saved probabilities, M the dropout mask (1 when null):
//   dp_ij = (dout_i·v_j)·m_ij, dot_i = Σ_j dp_ij·p_ij, ds_ij = p_ij·(dp_ij − dot_i)
//   dq_i += scale·Σ_j ds_ij·k_j,  dk_j += Σ_i ds_ij·(q_i·scale),  dv_j += Σ_i (p_ij·m_ij)·dout_i
// with ds_ij = 0 where p_ij = 0 (masked keys), as the CPU skips them.
// Shared memory (floats): X = max(TK4·ldk, TQ·D4), Y = TQ4·D4, Z = TQ4·TK4.
//  A. X = values [TK4][ldk], Y = dout [TQ4][D4]; warp passes of AF_R query rows, lanes on
//     keys as in the forward's scores: dp, the row's dot (shuffles), ds into Z [TQ4][TK4]
//     (zero on padding rows and columns).
//  B. X = keys [TK4][ldk]; warp passes of AF_R query rows, lanes on d: dq.
//  D. X = scaled queries [TQ][D4]; warp passes of AF_R keys, lanes on d, over i: dk.
//  C. Z = p·m [TQ4][TK4]; warp passes of AF_R keys over i with dout in Y: dv.
// Blocks write disjoint rows and columns (their batch and head), and each block writes
// dq, dk, dv in separate phases, so the three may be column views of one buffer.
// ---------------------------------------------------------------------------------------

// af_rows_by_k: for the AF_R rows of Z starting at row i0, lanes on columns d = dl0 and
// dl1 of the [TK4][ldx] tile X: a[r] = Σ_j Z[i0+r][j]·X[j][d].
__device__ __forceinline__ void af_rows_by_k(float (&a0)[AF_R], float (&a1)[AF_R], const float* Z, int ldz,
                                             int i0, const float* X, int ldx, int n4, int dl0, int dl1) {
    const float4* z4 = reinterpret_cast<const float4*>(Z);
    const int ldz4 = ldz >> 2;
#pragma unroll
    for (int r = 0; r < AF_R; r++) a0[r] = a1[r] = 0.0f;
    for (int j4 = 0; j4 < n4; j4 += 4) {
        float x0[4], x1[4];
#pragma unroll
        for (int t = 0; t < 4; t++) {
            x0[t] = X[(j4 + t) * ldx + dl0];
            x1[t] = X[(j4 + t) * ldx + dl1];
        }
#pragma unroll
        for (int r = 0; r < AF_R; r++) {
            const float4 z = z4[(i0 + r) * ldz4 + (j4 >> 2)];
            a0[r] = fmaf(z.x, x0[0], a0[r]);
            a0[r] = fmaf(z.y, x0[1], a0[r]);
            a0[r] = fmaf(z.z, x0[2], a0[r]);
            a0[r] = fmaf(z.w, x0[3], a0[r]);
            a1[r] = fmaf(z.x, x1[0], a1[r]);
            a1[r] = fmaf(z.y, x1[1], a1[r]);
            a1[r] = fmaf(z.z, x1[2], a1[r]);
            a1[r] = fmaf(z.w, x1[3], a1[r]);
        }
    }
}

// af_cols_by_i: for the AF_R columns j0 … j0+3 of Z, lanes on columns dl0, dl1 of the
// [rows][ldx] tile X: a[t] = Σ_{i<rows} Z[i][j0+t]·X[i][d], in i order.
__device__ __forceinline__ void af_cols_by_i(float (&a0)[AF_R], float (&a1)[AF_R], const float* Z, int ldz,
                                             int j0, const float* X, int ldx, int rows, int dl0, int dl1) {
    const float4* z4 = reinterpret_cast<const float4*>(Z);
    const int ldz4 = ldz >> 2, c4 = j0 >> 2;
#pragma unroll
    for (int t = 0; t < AF_R; t++) a0[t] = a1[t] = 0.0f;
#pragma unroll 2
    for (int i = 0; i < rows; i++) {
        const float4 z = z4[i * ldz4 + c4];
        const float x0 = X[i * ldx + dl0], x1 = X[i * ldx + dl1];
        a0[0] = fmaf(z.x, x0, a0[0]);
        a0[1] = fmaf(z.y, x0, a0[1]);
        a0[2] = fmaf(z.z, x0, a0[2]);
        a0[3] = fmaf(z.w, x0, a0[3]);
        a1[0] = fmaf(z.x, x1, a1[0]);
        a1[1] = fmaf(z.y, x1, a1[1]);
        a1[2] = fmaf(z.z, x1, a1[2]);
        a1[3] = fmaf(z.w, x1, a1[3]);
    }
}

// af_add_rows adds a0/a1 (times s) into the rows r0 + t (t < AF_R, r0 + t < n) of a
// global matrix g (row stride rs), columns lane and lane + 32 below D.
__device__ __forceinline__ void af_add_rows(float* g, long long rs, int r0, int n, int D,
                                            const float (&a0)[AF_R], const float (&a1)[AF_R], float s) {
    const int lane = threadIdx.x & 31;
    // Every load before any store: the rows are distinct, but the compiler cannot know
    // that (rs is a run-time value) and would otherwise wait out each load in turn.
    float g0[AF_R], g1[AF_R];
#pragma unroll
    for (int t = 0; t < AF_R; t++) {
        g0[t] = g1[t] = 0.0f;
        if (r0 + t < n) {
            const float* row = g + (long long)(r0 + t) * rs;
            if (lane < D) g0[t] = row[lane];
            if (lane + 32 < D) g1[t] = row[lane + 32];
        }
    }
#pragma unroll
    for (int t = 0; t < AF_R; t++) {
        if (r0 + t < n) {
            float* row = g + (long long)(r0 + t) * rs;
            if (lane < D) row[lane] = g0[t] + a0[t] * s;
            if (lane + 32 < D) row[lane + 32] = g1[t] + a1[t] * s;
        }
    }
}

template <int NC>
__device__ __forceinline__ void af_bwd(
    float* dq, long long dqBS, long long dqRS,
    float* dk, long long dkBS, long long dkRS,
    float* dv, long long dvBS, long long dvRS,
    const float* dout, long long doBS, long long doRS,
    const float* q, long long qBS, long long qRS,
    const float* k, long long kBS, long long kRS,
    const float* v, long long vBS, long long vRS,
    const float* probs, const float* mask,
    int H, int D, int TQ, int TK, int ldk, float scale) {
    extern __shared__ float4 af_smem4[];
    const int D4 = (D + 3) & ~3, TK4 = (TK + 3) & ~3, TQ4 = (TQ + 3) & ~3;
    float* X = reinterpret_cast<float*>(af_smem4);
    float* Y = X + max(TK4 * ldk, TQ * D4);
    float* Z = Y + TQ4 * D4;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int h = blockIdx.y, b = blockIdx.z;
    const long long hD = (long long)h * D;
    const long long pbase = (((long long)b * H + h) * TQ) * TK;
    const float* P = probs + pbase;
    const float* Mk = mask ? mask + pbase : nullptr;
    const int dl0 = min(lane, D - 1), dl1 = min(lane + 32, D - 1);
    float a0[AF_R], a1[AF_R];

    // A. ds
    af_stage(X, ldk, v + (long long)b * vBS + hD, vRS, TK, TK, D, D4, 1.0f, false);
    af_stage(Y, D4, dout + (long long)b * doBS + hD, doRS, TQ, TQ4, D, D4, 1.0f, false);
    __syncthreads();
    {
        const float4* x4 = reinterpret_cast<const float4*>(X);
        const float4* y4 = reinterpret_cast<const float4*>(Y);
        const int ldk4 = ldk >> 2, D44 = D4 >> 2;
        for (int i0 = warp * AF_R; i0 < TQ; i0 += nw * AF_R) {
            float s[AF_R][NC];
#pragma unroll
            for (int r = 0; r < AF_R; r++)
#pragma unroll
                for (int c = 0; c < NC; c++) s[r][c] = 0.0f;
            for (int d4 = 0; d4 < D44; d4++) {
                float4 vv[NC];
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    const int j = lane + 32 * c;
                    vv[c] = j < TK ? x4[j * ldk4 + d4] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                }
#pragma unroll
                for (int r = 0; r < AF_R; r++) {
                    const float4 g = y4[(i0 + r) * D44 + d4];  // rows past TQ are zeros
#pragma unroll
                    for (int c = 0; c < NC; c++) {
                        float a = s[r][c];
                        a = fmaf(g.x, vv[c].x, a);
                        a = fmaf(g.y, vv[c].y, a);
                        a = fmaf(g.z, vv[c].z, a);
                        a = fmaf(g.w, vv[c].w, a);
                        s[r][c] = a;
                    }
                }
            }
            // The AF_R rows' probabilities and mask, loaded together: inside the row loop
            // each row's loads would wait behind the previous row's shuffles.
            float pr[AF_R][NC], mr[AF_R][NC];
#pragma unroll
            for (int r = 0; r < AF_R; r++)
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    const int i = i0 + r, j = lane + 32 * c;
                    const bool in = i < TQ && j < TK;
                    pr[r][c] = in ? __ldg(P + (long long)i * TK + j) : 0.0f;
                    mr[r][c] = (in && Mk) ? __ldg(Mk + (long long)i * TK + j) : 1.0f;
                }
#pragma unroll
            for (int r = 0; r < AF_R; r++) {
                const int i = i0 + r;
                float* zr = Z + i * TK4;
                if (i < TQ) {  // uniform over the warp
                    float p[NC], dot = 0.0f;
#pragma unroll
                    for (int c = 0; c < NC; c++) {
                        const int j = lane + 32 * c;
                        p[c] = 0.0f;
                        if (j < TK) {
                            p[c] = pr[r][c];
                            if (Mk) s[r][c] = s[r][c] * mr[r][c];
                            if (p[c] != 0.0f) dot = fmaf(s[r][c], p[c], dot);
                        }
                    }
                    dot = af_warp_sum(dot);
#pragma unroll
                    for (int c = 0; c < NC; c++) {
                        const int j = lane + 32 * c;
                        if (j < TK4) zr[j] = p[c] != 0.0f ? p[c] * (s[r][c] - dot) : 0.0f;
                    }
                } else if (i < TQ4) {
#pragma unroll
                    for (int c = 0; c < NC; c++) {
                        const int j = lane + 32 * c;
                        if (j < TK4) zr[j] = 0.0f;
                    }
                }
            }
        }
    }
    __syncthreads();  // ds complete; the values are no longer read

    // B. dq
    af_stage(X, ldk, k + (long long)b * kBS + hD, kRS, TK, TK4, D, D, 1.0f, false);
    __syncthreads();
    for (int i0 = warp * AF_R; i0 < TQ; i0 += nw * AF_R) {
        af_rows_by_k(a0, a1, Z, TK4, i0, X, ldk, TK4, dl0, dl1);
        af_add_rows(dq + (long long)b * dqBS + hD, dqRS, i0, TQ, D, a0, a1, scale);
    }
    __syncthreads();  // the keys are no longer read

    // D. dk
    af_stage(X, D4, q + (long long)b * qBS + hD, qRS, TQ, TQ, D, D, scale, true);
    __syncthreads();
    for (int j0 = warp * AF_R; j0 < TK; j0 += nw * AF_R) {
        af_cols_by_i(a0, a1, Z, TK4, j0, X, D4, TQ, dl0, dl1);
        af_add_rows(dk + (long long)b * dkBS + hD, dkRS, j0, TK, D, a0, a1, 1.0f);
    }
    __syncthreads();  // ds is no longer read

    // C. dv
    // Four elements per thread in flight before their stores (as af_copy).
    {
        const int tot = TQ * TK4;
        for (int e0 = threadIdx.x; e0 < tot; e0 += 4 * blockDim.x) {
            float pv[4], mv[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int e = e0 + u * blockDim.x, i = e / TK4, j = e - i * TK4;
                const bool in = e < tot && j < TK;
                pv[u] = in ? __ldg(P + (long long)i * TK + j) : 0.0f;
                mv[u] = (in && Mk) ? __ldg(Mk + (long long)i * TK + j) : 1.0f;
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int e = e0 + u * blockDim.x;
                if (e < tot) Z[e] = Mk ? pv[u] * mv[u] : pv[u];
            }
        }
    }
    __syncthreads();
    for (int j0 = warp * AF_R; j0 < TK; j0 += nw * AF_R) {
        af_cols_by_i(a0, a1, Z, TK4, j0, Y, D4, TQ, dl0, dl1);
        af_add_rows(dv + (long long)b * dvBS + hD, dvRS, j0, TK, D, a0, a1, 1.0f);
    }
}

#define AF_BWD(NC)                                                                                   \
    extern "C" __global__ void __launch_bounds__(AF_THREADS) attention_fast_bwd##NC(                 \
        float* dq, long long dqBS, long long dqRS, float* dk, long long dkBS, long long dkRS,       \
        float* dv, long long dvBS, long long dvRS, const float* dout, long long doBS,               \
        long long doRS, const float* q, long long qBS, long long qRS, const float* k,              \
        long long kBS, long long kRS, const float* v, long long vBS, long long vRS,                 \
        const float* probs, const float* mask, int H, int D, int TQ, int TK, int ldk,               \
        float scale) { XF_PDL_ENTRY();                                                              \
        af_bwd<NC>(dq, dqBS, dqRS, dk, dkBS, dkRS, dv, dvBS, dvRS, dout, doBS, doRS, q, qBS, qRS,   \
                   k, kBS, kRS, v, vBS, vRS, probs, mask, H, D, TQ, TK, ldk, scale);                \
    }
AF_BWD(1)
AF_BWD(2)
AF_BWD(3)
AF_BWD(4)
