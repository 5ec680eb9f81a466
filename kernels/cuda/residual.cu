// residual.cu — the residual of every sub-layer: y = alpha·(x⊙omega) + branch, forward
// and backward (the ω gradient is a column sum: col_partial mode 1 in reduce.cu).
//
// Convention: omega is Admin's per-channel ω (null means all ones), alpha DeepNet's
// scale. Products in the reference's order, (x·ω)·α then + branch, each rounded (no FMA),
// so an ω or α of 1 gives exactly x + branch. y may alias x or branch.
#include "xform.cuh"

extern "C" __global__ void residual(float* y, const float* x, const float* branch, const float* omega,
                                    float alpha, int rows, int dim) { XF_PDL_ENTRY();
    long long n = (long long)rows * dim;
    for (long long i = xf_tid(); i < n; i += xf_stride()) {
        float v = x[i];
        if (omega) v = v * omega[i % dim];
        y[i] = v * alpha + branch[i];
    }
}

// residual_bwd: dx += (dy·ω)·α (ω null: dy·α), the CPU backend's product order. The
// branch's gradient is dy itself, so nothing else is written here.
extern "C" __global__ void residual_bwd(float* dx, const float* dy, const float* omega, float alpha, int rows,
                                        int dim) { XF_PDL_ENTRY();
    long long n = (long long)rows * dim;
    for (long long i = xf_tid(); i < n; i += xf_stride()) {
        float v = dy[i];
        if (omega) v = v * omega[i % dim];
        dx[i] = dx[i] + v * alpha;
    }
}

// rb_sum4 is element group k (column group q) of dx + (dy·ω)·α, rounded as
// residual_bwd rounds it (ω null: dy·α).
__device__ __forceinline__ float4 rb_sum4(const float4* x4, const float4* d4, const float4* w4, float alpha,
                                          long long k, int q) {
    float4 v = d4[k];
    if (w4) {
        const float4 w = __ldg(w4 + q);
        v.x = v.x * w.x;
        v.y = v.y * w.y;
        v.z = v.z * w.z;
        v.w = v.w * w.w;
    }
    float4 o = x4[k];
    o.x = o.x + v.x * alpha;
    o.y = o.y + v.y * alpha;
    o.z = o.z + v.z * alpha;
    o.w = o.w + v.w * alpha;
    return o;
}

// residual_bwd4 is residual_bwd for dim a multiple of 4 with dx, dy (and ω) 16-byte
// aligned (the Go side checks): a float4 per thread, blocks over rows, the column from
// the thread index instead of a 64-bit i % dim per element (what held residual_bwd at
// ~18 µs for 48 MB at 8000×512). The same products in the same order: the same bits.
extern "C" __global__ void residual_bwd4(float* dx, const float* dy, const float* omega, float alpha, int rows,
                                         int dim4) { XF_PDL_ENTRY();
    float4* x4 = reinterpret_cast<float4*>(dx);
    const float4* d4 = reinterpret_cast<const float4*>(dy);
    const float4* w4 = reinterpret_cast<const float4*>(omega);
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        for (int q = threadIdx.x; q < dim4; q += blockDim.x) {
            const long long k = r * dim4 + q;
            float4 o = rb_sum4(x4, d4, w4, alpha, k, q);
            x4[k] = o;
        }
    }
}

// residual_bwd_dropout4 is residual_bwd4 on a copy of dx followed by dropout_apply into y
// (kernels.ResidualSumNormer.ApplyDropoutSum): y = (dx + (dy·ω)·α) · mask element i,
// the mask xf_dropout_keep's (keep or 0; threshold 0 keeps every element, times keep),
// each product rounded as the two kernels round it, so the bits of the two passes in
// one (dx is only read; y may alias dx).
extern "C" __global__ void residual_bwd_dropout4(float* y, const float* dx, const float* dy, const float* omega,
                                                 float alpha, int rows, int dim4, unsigned long long seed,
                                                 unsigned long long threshold, float keep) { XF_PDL_ENTRY();
    float4* y4 = reinterpret_cast<float4*>(y);
    const float4* x4 = reinterpret_cast<const float4*>(dx);
    const float4* d4 = reinterpret_cast<const float4*>(dy);
    const float4* w4 = reinterpret_cast<const float4*>(omega);
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        for (int q = threadIdx.x; q < dim4; q += blockDim.x) {
            const long long k = r * dim4 + q;
            float4 o = rb_sum4(x4, d4, w4, alpha, k, q);
            const unsigned long long i = 4ull * (unsigned long long)k;
            o.x = o.x * (xf_dropout_keep(seed, i, threshold) ? keep : 0.0f);
            o.y = o.y * (xf_dropout_keep(seed, i + 1, threshold) ? keep : 0.0f);
            o.z = o.z * (xf_dropout_keep(seed, i + 2, threshold) ? keep : 0.0f);
            o.w = o.w * (xf_dropout_keep(seed, i + 3, threshold) ? keep : 0.0f);
            y4[k] = o;
        }
    }
}
