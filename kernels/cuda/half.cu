// half.cu — 16-bit copies of float32 tensors for kernels.HalfBuffers.
//
// round_list writes, in one launch, the RN16 rounding (xform.cuh's xf_round16, the
// rounding every 16-bit producer and cast.cu use) of many float32 buffers into their
// 16-bit copies: the persistent copies of a model's Linear weights, refreshed once at
// the start of each training step instead of cast by every Linear (67 launches per
// 6L-6L step). Same layout as the list kernels of optim.cu (xform.cuh's list_span):
// desc holds the nbuf 16-bit destinations, then the nbuf float32 sources, then the
// nbuf lengths, and block b rounds chunk tasks[b].
#include "xform.cuh"

extern "C" __global__ void round_list(const unsigned long long* desc, int nbuf, const int2* tasks, int fmt) { XF_PDL_ENTRY();
    const list_span sp = list_span_of(tasks, desc + 2 * nbuf);
    unsigned short* y = (unsigned short*)desc[sp.k] + sp.start;
    const float* x = (const float*)desc[nbuf + sp.k] + sp.start;
    int done = 0;
    if (aligned16(x) && xf_out_aligned(y, fmt)) {
        const float4* x4 = reinterpret_cast<const float4*>(x);
        const int n4 = sp.len >> 2;
        for (int q = threadIdx.x; q < n4; q += LIST_THREADS) xf_store4(y, q, x4[q], fmt);
        done = 4 * n4;
    }
    for (int e = done + threadIdx.x; e < sp.len; e += LIST_THREADS) y[e] = xf_round16(x[e], fmt);
}
