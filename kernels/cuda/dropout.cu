// dropout.cu — dropout keep masks drawn on the device by the counter-based hash that
// kernels.DropoutHash specifies (SplitMix64's output i for state seed).
//
// Convention: unsigned 64-bit integer arithmetic only (wrapping, as Go's uint64), and
// the keep threshold and scale come from the host (kernels.DropoutThreshold and
// kernels.DropoutScale), so every element equals the CPU backend's bit for bit.
#include "xform.cuh"

// dropout_elem is mask element i: keep when (hash(seed, i) >> 40) >= threshold, else 0.
__device__ __forceinline__ float dropout_elem(unsigned long long seed, long long i, unsigned long long threshold,
                                              float keep) {
    return xf_dropout_keep(seed, (unsigned long long)i, threshold) ? keep : 0.0f;
}

// dropout_elem4 multiplies elements i … i+3 (v.x … v.w) by their mask values.
__device__ __forceinline__ float4 dropout_elem4(float4 v, unsigned long long seed, long long i,
                                                unsigned long long threshold, float keep) {
    v.x = v.x * dropout_elem(seed, i, threshold, keep);
    v.y = v.y * dropout_elem(seed, i + 1, threshold, keep);
    v.z = v.z * dropout_elem(seed, i + 2, threshold, keep);
    v.w = v.w * dropout_elem(seed, i + 3, threshold, keep);
    return v;
}

// m[i] = the mask element, for i < n.
extern "C" __global__ void dropout_mask(float* m, unsigned long long seed, unsigned long long threshold,
                                        float keep, long long n) { XF_PDL_ENTRY();
    for (long long i = xf_tid(); i < n; i += xf_stride()) m[i] = dropout_elem(seed, i, threshold, keep);
}

// y[i] = x[i] · mask element i (the product mul computes, the mask never stored); y may
// alias x.
extern "C" __global__ void dropout_apply(float* y, const float* x, unsigned long long seed,
                                         unsigned long long threshold, float keep, long long n) { XF_PDL_ENTRY();
    for (long long i = xf_tid(); i < n; i += xf_stride()) y[i] = x[i] * dropout_elem(seed, i, threshold, keep);
}

// dropout_apply16 is dropout_apply into a 16-bit y (format fmt, XF_OUT_*): element i is
// the rounding of the float product dropout_apply stores, four elements per thread
// where x and y are aligned for it.
extern "C" __global__ void dropout_apply16(void* y, const float* x, unsigned long long seed,
                                           unsigned long long threshold, float keep, long long n, int fmt) { XF_PDL_ENTRY();
    long long done = 0;
    if (((unsigned long long)x & 15ull) == 0 && xf_out_aligned(y, fmt)) {
        const long long n4 = n >> 2;
        const float4* x4 = reinterpret_cast<const float4*>(x);
        for (long long q = xf_tid(); q < n4; q += xf_stride()) {
            const float4 v = dropout_elem4(x4[q], seed, 4 * q, threshold, keep);
            xf_store4(y, q, v, fmt);
        }
        done = n4 << 2;
    }
    for (long long i = done + xf_tid(); i < n; i += xf_stride()) xf_store(y, i, x[i] * dropout_elem(seed, i, threshold, keep), fmt);
}

// dropout_apply2 is dropout_apply (y may alias x) that also stores the rounding of each
// product into the 16-bit y16 (format fmt, XF_OUT_BF16/F16): four elements per thread
// where the three arrays are aligned for it.
extern "C" __global__ void dropout_apply2(float* y, void* y16, const float* x, unsigned long long seed,
                                          unsigned long long threshold, float keep, long long n, int fmt) { XF_PDL_ENTRY();
    long long done = 0;
    if ((((unsigned long long)x | (unsigned long long)y) & 15ull) == 0 && xf_out_aligned(y16, fmt)) {
        const long long n4 = n >> 2;
        const float4* x4 = reinterpret_cast<const float4*>(x);
        float4* yv = reinterpret_cast<float4*>(y);
        for (long long q = xf_tid(); q < n4; q += xf_stride()) {
            const float4 v = dropout_elem4(x4[q], seed, 4 * q, threshold, keep);
            yv[q] = v;
            xf_store4(y16, q, v, fmt);
        }
        done = n4 << 2;
    }
    for (long long i = done + xf_tid(); i < n; i += xf_stride()) {
        const float v = x[i] * dropout_elem(seed, i, threshold, keep);
        y[i] = v;
        xf_store(y16, i, v, fmt);
    }
}

// dropout_apply_hh is dropout_apply from a 16-bit x into a 16-bit y (format fmt; y may
// alias x): element i is RN16(widen(x[i]) · mask element i), the float product
// dropout_apply forms, rounded. Four elements per thread (one 8-byte load and store)
// where x and y are 8-byte aligned.
extern "C" __global__ void dropout_apply_hh(void* y, const void* x, unsigned long long seed,
                                            unsigned long long threshold, float keep, long long n, int fmt) { XF_PDL_ENTRY();
    const unsigned short* xs = reinterpret_cast<const unsigned short*>(x);
    long long done = 0;
    if ((((unsigned long long)x | (unsigned long long)y) & 7ull) == 0) {
        const long long n4 = n >> 2;
        const uint2* x4 = reinterpret_cast<const uint2*>(x);
        for (long long q = xf_tid(); q < n4; q += xf_stride()) {
            const uint2 u = x4[q];
            const long long i = 4 * q;
            float4 v;
            v.x = xf_widen1(u.x & 0xffffu, fmt) * dropout_elem(seed, i, threshold, keep);
            v.y = xf_widen1(u.x >> 16, fmt) * dropout_elem(seed, i + 1, threshold, keep);
            v.z = xf_widen1(u.y & 0xffffu, fmt) * dropout_elem(seed, i + 2, threshold, keep);
            v.w = xf_widen1(u.y >> 16, fmt) * dropout_elem(seed, i + 3, threshold, keep);
            xf_store4(y, q, v, fmt);
        }
        done = n4 << 2;
    }
    for (long long i = done + xf_tid(); i < n; i += xf_stride())
        xf_store(y, i, xf_widen1(xs[i], fmt) * dropout_elem(seed, i, threshold, keep), fmt);
}

// ---------------------------------------------------------------------------------------
// dropout_apply_hh8: dropout_apply_hh with the same bits, eight elements per thread.
//
// dropout_apply_hh ran at ~1.7 TB/s on the H200 (37 µs for 2 × 32 MB at [7872 × 2048]):
// it is bound by instructions, not bytes. Per element it spent ~40: the 64-bit hash with
// a 64-bit multiply for (i+1)·γ, the format tested per element, and the software
// rounding (~7 instructions for bf16, ~15 for fp16). This kernel:
//   - loads and stores 16 bytes (eight 16-bit elements) per thread;
//   - evaluates the same hash in 32-bit halves (xf_dropout_hash_hi): the state of element i+1 is
//     that of i plus γ (one 64-bit add), the last multiply forms only the high word,
//     and the final xor-shift is dropped because it cannot change the bits compared;
//   - widens and rounds with the hardware converters (cvt.f32.f16, cvt.rn.*x2.f32),
//     which give xf_f16_to_f32's and xf_round16's bits for every non-NaN value
//     (TestAttentionMMARounding checks the rounding on the GPU). A group of eight with
//     a NaN product (a NaN or infinite x) is redone with dropout_apply_hh's own
//     arithmetic, so NaN payloads are the same bits too;
//   - takes the format as a template argument (one branch per launch).
// Where x or y is not 16-byte aligned the whole array, and the last n mod 8 elements
// always, take dropout_apply_hh's per-element code.
// ---------------------------------------------------------------------------------------

// SplitMix64's γ (kernels.DropoutHash): the state of element i is seed + (i+1)·γ, so
// consecutive elements' states are γ apart (additions instead of a multiply each); the
// hash itself is xform.cuh's xf_dropout_hash_hi.
#define DH_GAMMA 0x9E3779B97F4A7C15ull

// dh_positive8 packs, for the eight 16-bit values of o (low half first), whether each
// is > 0 as a float (1 ≤ bits ≤ +Inf's: not ±0, not negative, not NaN) into a byte, bit k
// for element k: what relu_dropout_bwd_hh tests on the dropped activation.
template <bool kHalf>
__device__ __forceinline__ unsigned dh_positive8(const unsigned (&o)[4]) {
    constexpr unsigned inf = kHalf ? 0x7c00u : 0x7f80u;
    unsigned b = 0u;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        b |= ((o[j] & 0xffffu) - 1u < inf ? 1u : 0u) << (2 * j);
        b |= ((o[j] >> 16) - 1u < inf ? 1u : 0u) << (2 * j + 1);
    }
    return b;
}

// With mask (dropout_apply_hh8m) the kernel also writes byte q of mask: bit k says
// whether output element 8q + k is > 0 (dh_positive8). Read as 32-bit little-endian
// words, that is bit i for element i, which is the layout of cuBLASLt's ReLU mask
// (CUBLASLT_EPILOGUE_RELU_AUX: bit r·ld + c, ld the mask's leading dimension in bits)
// for rows of a multiple of 128 columns, TestDReLU16Probe's finding: so fc2's input
// gradient product can apply the ReLU and dropout backward in its DRELU epilogue. The
// caller launches it only where every group takes the 16-byte path (aligned, n a
// multiple of 8, threshold below 2²⁴).
template <bool kHalf, bool kMask = false>
__device__ __forceinline__ void dropout_hh8(void* y, const void* x, unsigned long long seed,
                                            unsigned long long threshold, float keep, long long n,
                                            unsigned char* mask = nullptr) {
    constexpr int fmt = kHalf ? XF_OUT_F16 : XF_OUT_BF16;
    const unsigned short* xs = reinterpret_cast<const unsigned short*>(x);
    long long done = 0;
    // A threshold of 2²⁴ or more keeps nothing (xf_dropout_hash_hi >> 8 < 2²⁴), which the 32-bit
    // comparison with t8 cannot say: such launches (p ≥ 1) take the per-element code.
    if ((((unsigned long long)x | (unsigned long long)y) & 15ull) == 0 && threshold < (1ull << 24)) {
        const unsigned t8 = (unsigned)threshold << 8;
        const long long n8 = n >> 3;
        const uint4* x8 = reinterpret_cast<const uint4*>(x);
        uint4* y8 = reinterpret_cast<uint4*>(y);
        // Each thread loads its next group while it works on this one (a 16-byte load
        // in flight during the hashes). In place, that group is still unwritten: only
        // this thread writes it, after the load.
        long long q = xf_tid();
        uint4 next = q < n8 ? x8[q] : make_uint4(0u, 0u, 0u, 0u);
        for (; q < n8; q += xf_stride()) {
            const uint4 u = next;
            if (q + xf_stride() < n8) next = x8[q + xf_stride()];
            const unsigned w[4] = {u.x, u.y, u.z, u.w};
            // z is the hash state of element 8q + k: seed + (8q + k + 1)·γ.
            const unsigned long long z = seed + (unsigned long long)(8 * q + 1) * DH_GAMMA;
            float v[8];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 f = xf_widen2<kHalf>(w[j]);
                v[2 * j] = f.x * (xf_dropout_hash_hi(z + (2 * j) * DH_GAMMA) >= t8 ? keep : 0.0f);
                v[2 * j + 1] = f.y * (xf_dropout_hash_hi(z + (2 * j + 1) * DH_GAMMA) >= t8 ? keep : 0.0f);
            }
            unsigned o[4];
            if (!xf_any_nan8(v)) {
#pragma unroll
                for (int j = 0; j < 4; j++) o[j] = xf_pack2<kHalf>(v[2 * j], v[2 * j + 1]);
            } else {
                // A NaN or infinite x: dropout_apply_hh's arithmetic, element for element.
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const long long i = 8 * q + 2 * j;
                    const float lo = xf_widen1(w[j] & 0xffffu, fmt) * dropout_elem(seed, i, threshold, keep);
                    const float hi = xf_widen1(w[j] >> 16, fmt) * dropout_elem(seed, i + 1, threshold, keep);
                    o[j] = (unsigned)xf_round16(lo, fmt) | ((unsigned)xf_round16(hi, fmt) << 16);
                }
            }
            y8[q] = make_uint4(o[0], o[1], o[2], o[3]);
            if constexpr (kMask) mask[q] = (unsigned char)dh_positive8<kHalf>(o);
        }
        done = n8 << 3;
    }
    for (long long i = done + xf_tid(); i < n; i += xf_stride())
        xf_store(y, i, xf_widen1(xs[i], fmt) * dropout_elem(seed, i, threshold, keep), fmt);
}

// dropout_apply_hh8 is dropout_apply_hh (same arguments, same bits; y may alias x) for
// a grid sized for n/8 threads.
extern "C" __global__ void dropout_apply_hh8(void* y, const void* x, unsigned long long seed,
                                             unsigned long long threshold, float keep, long long n, int fmt) { XF_PDL_ENTRY();
    if (fmt == XF_OUT_F16)
        dropout_hh8<true>(y, x, seed, threshold, keep, n);
    else
        dropout_hh8<false>(y, x, seed, threshold, keep, n);
}

// dropout_apply_hh8m is dropout_apply_hh8 (the same y bits) that also writes the mask of
// y > 0, a byte per eight elements (dh_positive8).
extern "C" __global__ void dropout_apply_hh8m(void* y, const void* x, unsigned long long seed,
                                              unsigned long long threshold, float keep, long long n, int fmt,
                                              unsigned char* mask) { XF_PDL_ENTRY();
    if (fmt == XF_OUT_F16)
        dropout_hh8<true, true>(y, x, seed, threshold, keep, n, mask);
    else
        dropout_hh8<false, true>(y, x, seed, threshold, keep, n, mask);
}
