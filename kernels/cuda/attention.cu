// attention.cu — masked multi-head scaled dot-product attention, forward.
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
// the probabilities per head, [B, H, TQ, TK], for the caller's mean over heads.
#include "xform.cuh"

extern "C" __global__ void attention(
    float* out, long long oBS, long long oRS,
    const float* q, long long qBS, long long qRS,
    const float* k, long long kBS, long long kRS,
    const float* v, long long vBS, long long vRS,
    int H, int D, int TQ, int TK, float scale,
    const int* kvIndex, const unsigned char* pad, long long padStride,
    int causal, int queryOffset, float* headProbs) {
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
    float* hp = headProbs ? headProbs + (((long long)b * H + h) * TQ + i) * TK : nullptr;
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
