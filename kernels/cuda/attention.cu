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
// except for the order of the softmax sum.
//
// One block per (i, h, b) = (blockIdx.x, blockIdx.y, blockIdx.z). Dynamic shared memory:
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
    int causal, int queryOffset, float* headProbs, const float* dropMask) {
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
extern "C" __global__ void mean_heads(float* probs, const float* headProbs, int B, int H, long long n) {
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
    int H, int D, int TQ, int TK, float scale) {
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
    int H, int D, int TQ, int TK, float scale) {
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
