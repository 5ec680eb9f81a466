// activation.cu — elementwise nonlinearities (fairseq's activation_fn), forward and
// backward, and the backward of ReLU followed by dropout.
//
// Convention: transcendentals in double, rounded once (at least as accurate as torch's
// float kernels; matches the CPU backend). kind: 0 relu, 1 gelu (erf), 2 gelu_accurate
// (tanh approximation), 3 tanh. Outputs may alias inputs exactly (same element), not
// with an offset.
//
// These kernels only stream memory (ReLU's are pure traffic: 8000×2048 floats are
// 64 MiB a pass), so they move float4s when every pointer is 16-byte aligned (fresh
// buffers are; Slices need not be) and issue all of an element's loads before any use:
// the ReLU backward used to load dy only after testing x, two dependent round trips
// to memory per element. The per-element arithmetic is the same expression on either
// path, so the results do not depend on the alignment.
#include "xform.cuh"

// Per-element functions. K is the kind, a template argument so that the switch is
// taken once per launch instead of once per element.
template <int K>
__device__ __forceinline__ float act_fwd(float v) {
    const double c = 0.7978845608028654;  // sqrt(2/pi)
    double z = (double)v;
    switch (K) {
        case 0: return v > 0.0f ? v : 0.0f;
        case 1: return (float)(z * 0.5 * (1.0 + erf(z / 1.4142135623730951)));
        case 2: return (float)(0.5 * z * (1.0 + tanh(c * (z + 0.044715 * z * z * z))));
        default: return (float)tanh(z);
    }
}

// act_bwd: (float)(dy · act'(x)) with x the activation's input, the derivative in double
// as the CPU backend evaluates it (relu: dy where x > 0, else 0; NaN gives 0).
// Constants are written as Go folds them (3·0.044715 = 0.134145).
template <int K>
__device__ __forceinline__ float act_bwd(float dy, float v) {
    if (K == 0) return v > 0.0f ? dy : 0.0f;
    const double c = 0.7978845608028654;        // sqrt(2/pi)
    const double sqrt2pi = 2.5066282746310002;  // sqrt(2*pi)
    double z = (double)v, d;
    switch (K) {
        case 1: d = 0.5 * (1 + erf(z / 1.4142135623730951)) + z * exp(-z * z / 2) / sqrt2pi; break;
        case 2: {
            double t = tanh(c * (z + 0.044715 * z * z * z));
            d = 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * c * (1 + 0.134145 * z * z);
            break;
        }
        default: {
            double t = tanh(z);
            d = 1 - t * t;
            break;
        }
    }
    return (float)((double)dy * d);
}

__device__ __forceinline__ bool act_aligned16(const void* a, const void* b, const void* c) {
    return (((unsigned long long)a | (unsigned long long)b | (unsigned long long)c) & 15ull) == 0;
}

// map1: y[i] = f(x[i]) for i < n, grid-stride, float4 where aligned.
template <class F>
__device__ __forceinline__ void map1(float* y, const float* x, long long n, F f) {
    long long done = 0;
    if (act_aligned16(y, x, x)) {
        long long n4 = n >> 2;
        const float4* x4 = reinterpret_cast<const float4*>(x);
        float4* y4 = reinterpret_cast<float4*>(y);
        for (long long i = xf_tid(); i < n4; i += xf_stride()) {
            float4 v = x4[i];
            v.x = f(v.x);
            v.y = f(v.y);
            v.z = f(v.z);
            v.w = f(v.w);
            y4[i] = v;
        }
        done = n4 << 2;
    }
    for (long long i = done + xf_tid(); i < n; i += xf_stride()) y[i] = f(x[i]);
}

// map2: y[i] = f(u[i], v[i]) for i < n, both loads issued before f looks at either.
template <class F>
__device__ __forceinline__ void map2(float* y, const float* u, const float* v, long long n, F f) {
    long long done = 0;
    if (act_aligned16(y, u, v)) {
        long long n4 = n >> 2;
        const float4* u4 = reinterpret_cast<const float4*>(u);
        const float4* v4 = reinterpret_cast<const float4*>(v);
        float4* y4 = reinterpret_cast<float4*>(y);
        for (long long i = xf_tid(); i < n4; i += xf_stride()) {
            float4 a = u4[i], b = v4[i], r;
            r.x = f(a.x, b.x);
            r.y = f(a.y, b.y);
            r.z = f(a.z, b.z);
            r.w = f(a.w, b.w);
            y4[i] = r;
        }
        done = n4 << 2;
    }
    for (long long i = done + xf_tid(); i < n; i += xf_stride()) {
        float a = u[i], b = v[i];
        y[i] = f(a, b);
    }
}

template <int K>
struct ActFwd {
    __device__ __forceinline__ float operator()(float v) const { return act_fwd<K>(v); }
};

template <int K>
struct ActBwd {
    __device__ __forceinline__ float operator()(float dy, float v) const { return act_bwd<K>(dy, v); }
};

extern "C" __global__ void activate(float* y, const float* x, long long n, int kind) { XF_PDL_ENTRY();
    switch (kind) {
        case 0: map1(y, x, n, ActFwd<0>()); break;
        case 1: map1(y, x, n, ActFwd<1>()); break;
        case 2: map1(y, x, n, ActFwd<2>()); break;
        default: map1(y, x, n, ActFwd<3>()); break;
    }
}

// activate_bwd: dx = act_bwd(dy, x); dx may alias dy.
extern "C" __global__ void activate_bwd(float* dx, const float* dy, const float* x, long long n, int kind) { XF_PDL_ENTRY();
    switch (kind) {
        case 0: map2(dx, dy, x, n, ActBwd<0>()); break;
        case 1: map2(dx, dy, x, n, ActBwd<1>()); break;
        case 2: map2(dx, dy, x, n, ActBwd<2>()); break;
        default: map2(dx, dy, x, n, ActBwd<3>()); break;
    }
}

// ReluDropBwd is kernels.ReLUDropoutBackwarder's element: with a = dropout(relu(pre))
// saved from the forward, a > 0 exactly where relu passed and the mask kept the
// element (the proof is on the interface in kernels/fused.go), so the gradient is da·s
// there and 0 elsewhere. da·s is the product dropout_apply forms (x · mask element).
struct ReluDropBwd {
    float s;
    __device__ __forceinline__ float operator()(float da, float a) const { return a > 0.0f ? da * s : 0.0f; }
};

// relu_dropout_bwd: dpre = a > 0 ? da·s : 0 with s = kernels.DropoutScale(p); dpre
// may alias da or a.
extern "C" __global__ void relu_dropout_bwd(float* dpre, const float* da, const float* a, float s, long long n) { XF_PDL_ENTRY();
    map2(dpre, da, a, n, ReluDropBwd{s});
}

// relu_dropout_bwd16 is relu_dropout_bwd into a 16-bit dpre (format fmt, XF_OUT_*):
// the rounding of the same float, so the first Linear's backward reads it uncast.
extern "C" __global__ void relu_dropout_bwd16(void* dpre, const float* da, const float* a, float s, long long n,
                                              int fmt) { XF_PDL_ENTRY();
    const ReluDropBwd f{s};
    long long done = 0;
    if ((((unsigned long long)da | (unsigned long long)a) & 15ull) == 0 && xf_out_aligned(dpre, fmt)) {
        const long long n4 = n >> 2;
        const float4* u4 = reinterpret_cast<const float4*>(da);
        const float4* v4 = reinterpret_cast<const float4*>(a);
        for (long long q = xf_tid(); q < n4; q += xf_stride()) {
            const float4 g = u4[q], w = v4[q];
            xf_store4(dpre, q, make_float4(f(g.x, w.x), f(g.y, w.y), f(g.z, w.z), f(g.w, w.w)), fmt);
        }
        done = n4 << 2;
    }
    for (long long i = done + xf_tid(); i < n; i += xf_stride()) xf_store(dpre, i, f(da[i], a[i]), fmt);
}

// relu_dropout_bwd_hh is relu_dropout_bwd on 16-bit da and a into a 16-bit dpre (all in
// format fmt; dpre may alias da or a): RN16 of the float ReluDropBwd forms from the
// widened values. Four elements per thread (8-byte loads and store) where the three
// are 8-byte aligned.
extern "C" __global__ void relu_dropout_bwd_hh(void* dpre, const void* da, const void* a, float s, long long n,
                                               int fmt) { XF_PDL_ENTRY();
    const ReluDropBwd f{s};
    const unsigned short* g16 = reinterpret_cast<const unsigned short*>(da);
    const unsigned short* a16 = reinterpret_cast<const unsigned short*>(a);
    long long done = 0;
    if ((((unsigned long long)dpre | (unsigned long long)da | (unsigned long long)a) & 7ull) == 0) {
        const long long n4 = n >> 2;
        const uint2* u4 = reinterpret_cast<const uint2*>(da);
        const uint2* v4 = reinterpret_cast<const uint2*>(a);
        for (long long q = xf_tid(); q < n4; q += xf_stride()) {
            const uint2 g = u4[q], w = v4[q];
            const float4 r = make_float4(f(xf_widen1(g.x & 0xffffu, fmt), xf_widen1(w.x & 0xffffu, fmt)),
                                         f(xf_widen1(g.x >> 16, fmt), xf_widen1(w.x >> 16, fmt)),
                                         f(xf_widen1(g.y & 0xffffu, fmt), xf_widen1(w.y & 0xffffu, fmt)),
                                         f(xf_widen1(g.y >> 16, fmt), xf_widen1(w.y >> 16, fmt)));
            xf_store4(dpre, q, r, fmt);
        }
        done = n4 << 2;
    }
    for (long long i = done + xf_tid(); i < n; i += xf_stride())
        xf_store(dpre, i, f(xf_widen1(g16[i], fmt), xf_widen1(a16[i], fmt)), fmt);
}

// ---------------------------------------------------------------------------------------
// relu_dropout_bwd_hh8: relu_dropout_bwd_hh with the same bits, eight elements per
// thread: 16-byte loads of da and a and a 16-byte store (the old kernel's 8-byte
// accesses and per-element format tests ran at ~3.5 TB/s; this pass is 3 × 32 MB at the
// bench shape), the format a template argument, widening and rounding by the hardware
// converters (cvt.f32.f16 is exact; cvt.rn.*x2.f32 gives xf_round16's bits for every
// non-NaN value, checked on the GPU by TestAttentionMMARounding). A group whose result
// has a NaN (a NaN or infinite da where a > 0) is redone with relu_dropout_bwd_hh's
// arithmetic, so NaN payloads are the same bits too. Unaligned arrays, and the last
// n mod 8 elements, take relu_dropout_bwd_hh's per-element code.
// ---------------------------------------------------------------------------------------

// relu_drop8 is one group of eight: the 16-bit da and a words in, the 16-bit dpre words
// out.
template <bool kHalf>
__device__ __forceinline__ uint4 relu_drop8(const ReluDropBwd& f, uint4 gu, uint4 au) {
    constexpr int fmt = kHalf ? XF_OUT_F16 : XF_OUT_BF16;
    const unsigned gw[4] = {gu.x, gu.y, gu.z, gu.w}, aw[4] = {au.x, au.y, au.z, au.w};
    float v[8];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const float2 g = xf_widen2<kHalf>(gw[j]), w = xf_widen2<kHalf>(aw[j]);
        v[2 * j] = f(g.x, w.x);
        v[2 * j + 1] = f(g.y, w.y);
    }
    unsigned o[4];
    if (!xf_any_nan8(v)) {
#pragma unroll
        for (int j = 0; j < 4; j++) o[j] = xf_pack2<kHalf>(v[2 * j], v[2 * j + 1]);
    } else {
        // relu_dropout_bwd_hh's arithmetic, element for element.
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float lo = f(xf_widen1(gw[j] & 0xffffu, fmt), xf_widen1(aw[j] & 0xffffu, fmt));
            const float hi = f(xf_widen1(gw[j] >> 16, fmt), xf_widen1(aw[j] >> 16, fmt));
            o[j] = (unsigned)xf_round16(lo, fmt) | ((unsigned)xf_round16(hi, fmt) << 16);
        }
    }
    return make_uint4(o[0], o[1], o[2], o[3]);
}

template <bool kHalf>
__device__ __forceinline__ void relu_drop_hh8(void* dpre, const void* da, const void* a, float s, long long n) {
    constexpr int fmt = kHalf ? XF_OUT_F16 : XF_OUT_BF16;
    const ReluDropBwd f{s};
    const unsigned short* g16 = reinterpret_cast<const unsigned short*>(da);
    const unsigned short* a16 = reinterpret_cast<const unsigned short*>(a);
    long long done = 0;
    if ((((unsigned long long)dpre | (unsigned long long)da | (unsigned long long)a) & 15ull) == 0) {
        const long long n8 = n >> 3;
        const uint4* g8 = reinterpret_cast<const uint4*>(da);
        const uint4* a8 = reinterpret_cast<const uint4*>(a);
        uint4* d8 = reinterpret_cast<uint4*>(dpre);
        for (long long q = xf_tid(); q < n8; q += xf_stride()) d8[q] = relu_drop8<kHalf>(f, g8[q], a8[q]);
        done = n8 << 3;
    }
    for (long long i = done + xf_tid(); i < n; i += xf_stride())
        xf_store(dpre, i, f(xf_widen1(g16[i], fmt), xf_widen1(a16[i], fmt)), fmt);
}

// relu_dropout_bwd_hh8 is relu_dropout_bwd_hh (same arguments, same bits; dpre may alias
// da or a) for a grid sized for n/8 threads.
extern "C" __global__ void relu_dropout_bwd_hh8(void* dpre, const void* da, const void* a, float s, long long n,
                                                int fmt) { XF_PDL_ENTRY();
    if (fmt == XF_OUT_F16)
        relu_drop_hh8<true>(dpre, da, a, s, n);
    else
        relu_drop_hh8<false>(dpre, da, a, s, n);
}

// ---------------------------------------------------------------------------------------
// relu_dropout_bwd_hh8p: relu_dropout_bwd_hh8's dpre (the same bits: relu_drop8) over
// a [rows × cols] array that also sums the stored dpre per column, for the first
// Linear's bias gradient (kernels.ReLUDropoutBiasBackwarder), so the deferred weight
// gradients' flush does not read dpre again for it. cols a multiple of 8, every array
// 16-byte aligned (the Go side checks). Block 32 × RDP_LANES threads: x a group of
// eight columns (32 groups = 256 columns a block), y a row lane; grid (⌈cols/256⌉,
// chunks of per rows). Lane y takes rows r0 + y, r0 + y + RDP_LANES, … in order, adding
// the widened stored values into eight float32 sums; the lanes' sums are then added in
// lane order through shared memory into part[chunk][column]. bias_grad_finish1 adds the
// chunks in order into db. The order depends on (rows, per) alone: the same bits every
// run. Each thread loads its next row before it stores the current one (dpre may alias
// da), so two rows of loads are in flight.
// ---------------------------------------------------------------------------------------

#define RDP_LANES 8

template <bool kHalf>
__device__ __forceinline__ void relu_drop_hh8p(void* dpre, const void* da, const void* a, float s, int rows,
                                               int cols, int per, float* part) {
    __shared__ float red[RDP_LANES][32 * 8];
    const ReluDropBwd f{s};
    const int groups = cols >> 3;
    const int q = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * per, r1 = min(rows, r0 + per);
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (q < groups) {
        const uint4* g8 = reinterpret_cast<const uint4*>(da) + q;
        const uint4* a8 = reinterpret_cast<const uint4*>(a) + q;
        uint4* d8 = reinterpret_cast<uint4*>(dpre) + q;
        int r = r0 + threadIdx.y;
        uint4 gu = make_uint4(0u, 0u, 0u, 0u), au = gu;
        if (r < r1) {
            gu = g8[(long long)r * groups];
            au = a8[(long long)r * groups];
        }
        for (; r < r1; r += RDP_LANES) {
            uint4 gn = gu, an = au;
            if (r + RDP_LANES < r1) {
                gn = g8[(long long)(r + RDP_LANES) * groups];
                an = a8[(long long)(r + RDP_LANES) * groups];
            }
            const uint4 o = relu_drop8<kHalf>(f, gu, au);
            d8[(long long)r * groups] = o;
            const unsigned ow[4] = {o.x, o.y, o.z, o.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 w = xf_widen2<kHalf>(ow[j]);
                acc[2 * j] += w.x;
                acc[2 * j + 1] += w.y;
            }
            gu = gn;
            au = an;
        }
    }
#pragma unroll
    for (int k = 0; k < 8; k++) red[threadIdx.y][8 * threadIdx.x + k] = acc[k];
    __syncthreads();
    for (int i = threadIdx.y * 32 + threadIdx.x; i < 32 * 8; i += 32 * RDP_LANES) {
        const int c = blockIdx.x * 256 + i;
        if (c < cols) {
            float t = 0.f;
#pragma unroll
            for (int l = 0; l < RDP_LANES; l++) t += red[l][i];
            part[(long long)blockIdx.y * cols + c] = t;
        }
    }
}

extern "C" __global__ void __launch_bounds__(32 * RDP_LANES) relu_dropout_bwd_hh8p(void* dpre, const void* da,
                                                                                 const void* a, float s, int rows,
                                                                                 int cols, int per, float* part,
                                                                                 int fmt) { XF_PDL_ENTRY();
    if (fmt == XF_OUT_F16)
        relu_drop_hh8p<true>(dpre, da, a, s, rows, cols, per, part);
    else
        relu_drop_hh8p<false>(dpre, da, a, s, rows, cols, per, part);
}
