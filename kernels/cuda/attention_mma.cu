// attention_mma.cu — training attention on the tensor cores (mma.sync m16n8k16, 16-bit
// operands, fp32 accumulators) for the mixed-precision modes, head dimension 64: the
// forward up to 128 keys, the backward up to 64 keys and query rows (the shape of a
// Transformer base model's self and cross attention). Other shapes keep
// attention_fast.cu. (A first backward for up to 128, am_bwd, ran only under a test
// switch, slower than attention_fast.cu's there; the eighth session removed it.)
//
// Contract of attention_fast.cu (kernels.Trainer AttentionForward/AttentionBackward):
// probabilities [B, H, TQ, TK] stored in fp32 before the dropout mask multiplies them,
// out = (P⊙M)·V, gradients accumulated (+=), an all-masked row gives NaN probabilities,
// a NaN output row and NaN gradients (its dq row, the dk and dv of every key of its
// (b, h)), as the CPU does. What changes is where operands are rounded to 16 bits
// (bf16 or IEEE half, the backend's precision) — the places torch.autocast with
// scaled_dot_product_attention rounds them:
//   forward:  S = round(q·scale)·round(k)ᵀ, softmax in fp32 (expf, as attention_fast),
//             out = round(P⊙M)·round(v);
//   backward: dP = round(dout)·round(v)ᵀ, then in fp32 dp = dP⊙M,
//             dot_i = Σ_j dp_ij·p_ij, ds = p⊙(dp − dot) (0 where p = 0),
//             dq += scale·round(ds)·round(k), dk += round(ds)ᵀ·round(q·scale),
//             dv += round(P⊙M)ᵀ·round(dout).
// q·scale is the fp32 product (as the CPU scales the query) then rounded; for the usual
// power-of-two scale (1/8 at head dimension 64) that is round(q)·scale exactly, which is
// what SDPA computes. Rounding is to nearest even (am_pack). Every product of two 16-bit
// values is exact in fp32, so the only other error is the fp32 accumulation inside the
// tensor cores.
//
// Fragments (PTX ISA, mma.m16n8k16 with .bf16/.f16): lane l, g = l/4, t = l%4.
//   A (16×16, row): reg0 = A[g][2t..2t+1], reg1 = A[g+8][2t..], reg2 = A[g][2t+8..],
//                   reg3 = A[g+8][2t+8..] (two 16-bit values, the lower column in the
//                   low half).
//   B (16×8, col):  reg0 = B[2t..2t+1][g], reg1 = B[2t+8..2t+9][g].
//   C (16×8, fp32): c0, c1 = C[g][2t], C[g][2t+1]; c2, c3 = C[g+8][2t], C[g+8][2t+1].
// Two C tiles side by side (columns 0–7, 8–15) hold exactly an A fragment's elements
// (FlashAttention-2's trick), so P and dS go from the accumulators to the next product
// without shared memory. Everything else is loaded with ldmatrix (m8n8, x4): lane l
// gives the address of row l%8 of matrix l/8; without .trans, matrix m lands in reg m
// as (row g, columns 2t, 2t+1), with .trans as (rows 2t, 2t+1, column g). One address
// formula (am_at) serves every use here: for a 16×16 block at
// (r0, c0) of a row-major tile, lane l points at row r0 + l%16, column c0 + 8·(l/16),
// so reg0…reg3 are the blocks (+0,+0), (+8,+0), (+0,+8), (+8,+8). That is the A order
// without .trans; with .trans, read as the transpose, it is the B pair of two n-tiles
// (reg0, reg1: columns c0…c0+7; reg2, reg3: columns c0+8…) and, for an A operand kept
// transposed (dSᵀ, (P⊙M)ᵀ stored [i][j]), the A order with the roles of reg1 and reg2
// swapped, which am_ldm_at handles.
//
// Shared tiles are 16-bit. [rows][64] tiles have a row stride of AM_LD = 72 elements (144
// bytes: the 8 rows of an ldmatrix matrix fall on 8 distinct 16-byte bank groups);
// [TQp][TKp] tiles (backward dS, P⊙M) have TKp + 8 (16·odd bytes, the same property).
// TQp, TKp: TQ, TK rounded up to 16; rows and columns beyond TQ, TK are zeros, so the
// padding adds nothing (a NaN probability only ever sits in a real row and column).
//
// The precision is a kernel argument (half: IEEE half, else bf16), a uniform branch at
// each mma and conversion, rather than a template argument: one instantiation per
// MAXNT instead of two halves the compile time (8 s → 4.4 s for this program).
//
// The arithmetic needs sm_80 (mma with bf16/f16 at k16, cvt to bf16x2). Below that the
// kernels compile to nothing and the launch code never selects them (attention_mma.go).
#include "xform.cuh"

#define AM_D 64        // head dimension
#define AM_LD 72       // row stride (16-bit elements) of a [rows][AM_D] tile
// Blocks per SM the second kernels are compiled for (__launch_bounds__): see am2_*.
#define AM2_FWD_MINB 5
#define AM2_BWD_MINB 4
// The third kernels' (am3_*) blocks per SM for __launch_bounds__ (their shared memory
// allows no more at T 41).
#define AM3_FWD_MINB 4
#define AM3_BWD_MINB 2

// am_pack is a register of two 16-bit values, lo in the low half (the lower column),
// each rounded to nearest even by the hardware converter (cvt.rn, sm_80): IEEE rounding
// as cast.cu's xf_f32_to_bf16 / xf_f32_to_f16, fp16 subnormals kept and magnitudes from
// 65520 up giving ±Inf, so the same values for every input but NaN, which stays a NaN
// (its payload may differ). TestAttentionMMARounding compares the two bit for bit on
// the GPU. The software functions cost ~15 instructions per element in fp16 and made
// this program take 40 s to compile.
__device__ __forceinline__ unsigned am_pack(bool kHalf, float lo, float hi) {
    unsigned r = 0u;
#if __CUDA_ARCH__ >= 800
    if (kHalf) {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    }
#endif
    return r;
}

// c += A·B on one m16n8k16 tile.
__device__ __forceinline__ void am_mma(bool kHalf, float (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                       unsigned b0, unsigned b1) {
#if __CUDA_ARCH__ >= 800
    if (kHalf) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
#endif
}

// The ldmatrix loads. "memory": they read shared memory that plain stores wrote before
// a barrier, and must not move above either.
__device__ __forceinline__ void am_ldm(unsigned (&r)[4], const unsigned short* p) {
#if __CUDA_ARCH__ >= 800
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
#else
    r[0] = r[1] = r[2] = r[3] = 0u;
#endif
}

__device__ __forceinline__ void am_ldm_t(unsigned (&r)[4], const unsigned short* p) {
#if __CUDA_ARCH__ >= 800
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
#else
    r[0] = r[1] = r[2] = r[3] = 0u;
#endif
}

// am_at is this lane's address for the 16×16 block at (r0, c0) of a row-major tile with
// row stride ld (see the top of the file).
__device__ __forceinline__ const unsigned short* am_at(const unsigned short* tile, int ld, int r0, int c0) {
    const int l = threadIdx.x & 31;
    return tile + (r0 + (l & 15)) * ld + c0 + 8 * (l >> 4);
}

// am_ldm_a loads the A fragment of the 16×16 block (r0, c0) of a row-major tile.
__device__ __forceinline__ void am_ldm_a(unsigned (&a)[4], const unsigned short* tile, int ld, int r0, int c0) {
    am_ldm(a, am_at(tile, ld, r0, c0));
}

// am_ldm_at loads the A fragment of the block (m0, k0) of Zᵀ, where Z is stored
// row-major as [k][m] (block (k0, m0) of the tile): with .trans, reg1 holds the block
// (k0 + 8, m0) = A rows m0…m0+7, columns k0+8…, which is the A operand's reg2, and reg2
// the block (k0, m0 + 8), the A operand's reg1.
__device__ __forceinline__ void am_ldm_at(unsigned (&a)[4], const unsigned short* tile, int ld, int k0, int m0) {
    unsigned r[4];
    am_ldm_t(r, am_at(tile, ld, k0, m0));
    a[0] = r[0];
    a[1] = r[2];
    a[2] = r[1];
    a[3] = r[3];
}

// am_ldm_b loads, for B = the 16×16 block (k0, n0) of a row-major [k][n] tile, the B
// fragments of the n-tiles n0 (b[0], b[1]) and n0 + 8 (b[2], b[3]).
__device__ __forceinline__ void am_ldm_b(unsigned (&b)[4], const unsigned short* tile, int ld, int k0, int n0) {
    am_ldm_t(b, am_at(tile, ld, k0, n0));
}

// am_ldm_bt loads the same for B = Yᵀ with Y stored row-major as [n][k] (K for the
// scores, V for dP): without .trans, reg0…reg3 are the blocks (n0, k0), (n0+8, k0),
// (n0, k0+8), (n0+8, k0+8) of Y, i.e. (k0, n0), (k0, n0+8), (k0+8, n0), (k0+8, n0+8)
// of B.
__device__ __forceinline__ void am_ldm_bt(unsigned (&b)[4], const unsigned short* tile, int ld, int n0, int k0) {
    unsigned r[4];
    am_ldm(r, am_at(tile, ld, n0, k0));
    b[0] = r[0];
    b[1] = r[2];
    b[2] = r[1];
    b[3] = r[3];
}

// One [rows][AM_D] fp32 matrix (global, row stride rs) to stage as a 16-bit tile with
// rowsPad ≥ rows rows (the rest zeros), times s when scaled.
struct AmSrc {
    const void* src;  // float32, or 16-bit where h16 (am_stage with MIX only)
    long long rs;     // in elements of src's type
    int rows, rowsPad;
    int dst;  // offset of the tile in the block's shared memory, 16-bit elements
    float s;
    bool scaled;
    bool h16;
};

// am_elem is element off of a float32 matrix, or of a 16-bit one when h16.
__device__ __forceinline__ const void* am_elem(const void* p, long long off, bool h16) {
    return reinterpret_cast<const char*>(p) + off * (h16 ? 2 : 4);
}

// am_widen2 is the two 16-bit values of a register (lo in the low half) as floats:
// exact, so rounding them again (am_pack) gives them back (a NaN stays a NaN).
__device__ __forceinline__ float2 am_widen2(bool kHalf, unsigned w) {
    if (kHalf) {
        float lo = 0.0f, hi = 0.0f;
#if __CUDA_ARCH__ >= 800
        asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 %0, l;\n cvt.f32.f16 %1, h;\n}\n"
            : "=f"(lo), "=f"(hi)
            : "r"(w));
#endif
        return make_float2(lo, hi);
    }
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}

// am_stage copies NA matrices into shared memory with the whole block, 16 float4 per
// row, up to AM_U loads of a thread in flight before their stores: the tiles are a few
// KiB each, so the time is load latency. Rows with a 16-byte aligned start take float4
// loads, others four scalar ones (same values).
// The second kernels (am2_*) take U = 12: they stage everything in one pass at the start,
// so fewer trips to memory shorten each block's chain of latencies.
// With MIX (the 16-bit input kernels, attention_mma2_*_h) a source may be 16-bit (h16):
// its four elements come as one 8-byte load (four 2-byte ones when unaligned) and are
// widened exactly, so what follows is the float32 source's arithmetic on the same
// values: the same bits as staging a float32 copy of them.
#define AM_U 8
template <int NA, int U = AM_U, bool MIX = false>
__device__ __forceinline__ void am_stage(bool kHalf, unsigned short* smem, const AmSrc (&m)[NA]) {
    int tot = 0;
    bool vec = true;
#pragma unroll
    for (int a = 0; a < NA; a++) {
        tot += m[a].rowsPad * 16;
        const bool h = MIX && m[a].h16;
        const unsigned long long bits =
            reinterpret_cast<unsigned long long>(m[a].src) | (unsigned long long)(m[a].rs * (h ? 2 : 4));
        vec = vec && (bits & (h ? 7ull : 15ull)) == 0;
    }
    const int nt = blockDim.x;
    for (int e0 = threadIdx.x; e0 < tot; e0 += U * nt) {
        float4 x[U];
        int d[U];  // where x[u] goes (shared offset); −1 past the end
#pragma unroll
        for (int u = 0; u < U; u++) {
            int e = e0 + u * nt;
            x[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            d[u] = -1;
            const float* p = nullptr;
            const unsigned short* p16 = nullptr;
            float s = 1.0f;
            bool scaled = false;
            if (e < tot) {
#pragma unroll
                for (int a = 0; a < NA; a++) {
                    const int n = m[a].rowsPad * 16;
                    if (e >= 0 && e < n) {
                        const int r = e >> 4, c = e & 15;
                        d[u] = m[a].dst + r * AM_LD + 4 * c;
                        if (r < m[a].rows) {
                            if (MIX && m[a].h16) {
                                p16 = reinterpret_cast<const unsigned short*>(m[a].src) + (long long)r * m[a].rs + 4 * c;
                            } else {
                                p = reinterpret_cast<const float*>(m[a].src) + (long long)r * m[a].rs + 4 * c;
                            }
                        }
                        s = m[a].s;
                        scaled = m[a].scaled;
                    }
                    e -= n;
                }
            }
            if (p || (MIX && p16)) {
                float4 y;
                if (MIX && p16) {
                    const uint2 w = vec ? __ldg(reinterpret_cast<const uint2*>(p16))
                                        : make_uint2((unsigned)__ldg(p16) | ((unsigned)__ldg(p16 + 1) << 16),
                                                     (unsigned)__ldg(p16 + 2) | ((unsigned)__ldg(p16 + 3) << 16));
                    const float2 lo = am_widen2(kHalf, w.x), hi = am_widen2(kHalf, w.y);
                    y = make_float4(lo.x, lo.y, hi.x, hi.y);
                } else {
                    y = vec ? __ldg(reinterpret_cast<const float4*>(p))
                            : make_float4(__ldg(p), __ldg(p + 1), __ldg(p + 2), __ldg(p + 3));
                }
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
        for (int u = 0; u < U; u++) {
            if (d[u] >= 0) {
                uint2 o;
                o.x = am_pack(kHalf, x[u].x, x[u].y);
                o.y = am_pack(kHalf, x[u].z, x[u].w);
                *reinterpret_cast<uint2*>(smem + d[u]) = o;
            }
        }
    }
}

// am_quad_max and am_quad_sum reduce over the 4 lanes of a quad (one row of a C tile).
// fmaxf drops a NaN operand, like the CPU's running "if s > m".
__device__ __forceinline__ float am_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float am_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// am_add_rows adds s·acc (C layout: 16 rows from r0, AM_D columns as 8 n-tiles) into the
// rows r0 + … < n of a global matrix g (row stride rs). Every load before any store, as
// attention_fast.cu's af_add_rows; pairs as float2 when g and rs allow it (vec2).
__device__ __forceinline__ void am_add_rows(float* g, long long rs, int r0, int n, const float (&acc)[8][4], float s,
                                            bool vec2) {
    const int l = threadIdx.x & 31, gr = l >> 2, t = l & 3;
    float2 old[8][2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int r = r0 + gr + 8 * h;
#pragma unroll
        for (int nn = 0; nn < 8; nn++) {
            old[nn][h] = make_float2(0.0f, 0.0f);
            if (r < n) {
                const float* p = g + (long long)r * rs + 8 * nn + 2 * t;
                old[nn][h] = vec2 ? *reinterpret_cast<const float2*>(p) : make_float2(p[0], p[1]);
            }
        }
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int r = r0 + gr + 8 * h;
        if (r < n) {
#pragma unroll
            for (int nn = 0; nn < 8; nn++) {
                float* p = g + (long long)r * rs + 8 * nn + 2 * t;
                const float2 y = make_float2(old[nn][h].x + acc[nn][2 * h] * s, old[nn][h].y + acc[nn][2 * h + 1] * s);
                if (vec2) {
                    *reinterpret_cast<float2*>(p) = y;
                } else {
                    p[0] = y.x;
                    p[1] = y.y;
                }
            }
        }
    }
}

__device__ __forceinline__ bool am_vec2(const float* p, long long bs, long long rs) {
    return ((reinterpret_cast<unsigned long long>(p) & 7ull) | (unsigned long long)(bs & 1) |
            (unsigned long long)(rs & 1)) == 0;
}

// 16-bit outputs (kernels.HalfBuffers, XF_OUT_BF16/F16 of the Backend's format, which is
// the operands' kHalf): am_store_rows16 stores the rounding of s·acc (am_add_rows's rows
// added to nothing: +0 + x is x but for the sign of a zero) into rows r0 + … < n of the
// 16-bit matrix g, a column pair per 4-byte store when am_vec2_16 allows it. The
// attention kernels that write 16-bit gradients overwrite them: each element has one
// writer, so there is nothing to accumulate into.
__device__ __forceinline__ bool am_vec2_16(const void* p, long long bs, long long rs) {
    return ((reinterpret_cast<unsigned long long>(p) & 3ull) | (unsigned long long)(bs & 1) |
            (unsigned long long)(rs & 1)) == 0;
}

// am_span is where a sentence's rows are in a packed tensor (kernels.PackedAttention):
// item row i (the padded layout's position) is row base + i, for lo ≤ i < hi; the rows
// outside are pads, loaded as zeros and never stored. base may be negative (a
// left-padded sentence); base + lo is the sentence's first packed row. spans holds
// three ints per sentence: base, lo, hi.
struct am_span {
    long long base;
    int lo, hi;
};

__device__ __forceinline__ am_span am_span_of(const int* spans, int b) {
    return am_span{(long long)__ldg(spans + 3 * b), __ldg(spans + 3 * b + 1), __ldg(spans + 3 * b + 2)};
}

// LO: rows below lo are not stored either (a packed sentence's rows, am_span); without
// it the code is the one the padded kernels always had.
template <bool LO = false>
__device__ __forceinline__ void am_store_rows16(bool kHalf, unsigned short* g, long long rs, int r0, int n,
                                                const float (&acc)[8][4], float s, bool vec2, int lo = 0) {
    const int l = threadIdx.x & 31, gr = l >> 2, t = l & 3;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int r = r0 + gr + 8 * h;
        if (r < n && (!LO || r >= lo)) {
#pragma unroll
            for (int nn = 0; nn < 8; nn++) {
                unsigned short* p = g + (long long)r * rs + 8 * nn + 2 * t;
                const unsigned y = am_pack(kHalf, acc[nn][2 * h] * s, acc[nn][2 * h + 1] * s);
                if (vec2) {
                    *reinterpret_cast<unsigned*>(p) = y;
                } else {
                    p[0] = (unsigned short)(y & 0xffffu);
                    p[1] = (unsigned short)(y >> 16);
                }
            }
        }
    }
}

// The forward's masked softmax and output product, shared by the first (am_fwd) and the
// second and third kernels (am2_fwd_tile), which differ in where the dropout mask comes
// from and what they stage: one copy of the arithmetic, so the same bits by
// construction. s holds a warp's scores, [16][TKp] as 2·MAXNT C tiles (register
// arrays: MAXNT is a template argument), NT ≤ MAXNT key blocks of them real.
//
// am_fwd_row_exp is the masked softmax's first part for the lane's elements of row half
// hh (e = 2hh, 2hh + 1; the 4 lanes of a quad hold the row): keys past last or padded
// masked, s replaced by exp(s − max) (NaN for a row with every key masked, as the CPU),
// and 1/Σ returned for the caller to scale by.
template <int MAXNT>
__device__ __forceinline__ float am_fwd_row_exp(float (&s)[2 * MAXNT][4], int hh, int t, int last,
                                                const unsigned char* padded) {
    float m = -XF_INF;
#pragma unroll
    for (int n = 0; n < 2 * MAXNT; n++)
#pragma unroll
        for (int e = 2 * hh; e < 2 * hh + 2; e++) {
            const int j = 8 * n + 2 * t + (e & 1);
            const bool keep = j <= last && !padded[j];
            s[n][e] = keep ? s[n][e] : -XF_INF;
            m = fmaxf(m, s[n][e]);
        }
    m = am_quad_max(m);
    float sum = 0.0f;
#pragma unroll
    for (int n = 0; n < 2 * MAXNT; n++)
#pragma unroll
        for (int e = 2 * hh; e < 2 * hh + 2; e++) {
            float x = expf(s[n][e] - m);  // masked keys: exp(−inf) = 0
            if (m == -XF_INF) x = __int_as_float(0x7fc00000);  // all masked: NaN, as the CPU
            s[n][e] = x;
            sum += x;
        }
    return 1.0f / am_quad_sum(sum);
}

// am_fwd_pv: o[16][64] = round(P⊙M)·V, P⊙M from the registers (two C tiles make an A
// fragment), V by ldmatrix.trans.
template <int MAXNT>
__device__ __forceinline__ void am_fwd_pv(bool kHalf, float (&o)[8][4], const float (&s)[2 * MAXNT][4],
                                          const unsigned short* Vs, int NT) {
#pragma unroll
    for (int n = 0; n < 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < MAXNT; kk++) {
        if (kk < NT) {
            const unsigned a0 = am_pack(kHalf, s[2 * kk][0], s[2 * kk][1]);
            const unsigned a1 = am_pack(kHalf, s[2 * kk][2], s[2 * kk][3]);
            const unsigned a2 = am_pack(kHalf, s[2 * kk + 1][0], s[2 * kk + 1][1]);
            const unsigned a3 = am_pack(kHalf, s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dd = 0; dd < 4; dd++) {
                unsigned bb[4];
                am_ldm_b(bb, Vs, AM_LD, 16 * kk, 16 * dd);
                am_mma(kHalf, o[2 * dd], a0, a1, a2, a3, bb[0], bb[1]);
                am_mma(kHalf, o[2 * dd + 1], a0, a1, a2, a3, bb[2], bb[3]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Forward: block (x, h, b) of W warps takes query rows [x·16W, (x+1)·16W), warp w the 16
// rows from i0 = x·16W + 16w. NT = TKp/16 key blocks, at most MAXNT (a template argument,
// so the score tiles are register arrays; blocks past NT are skipped by uniform branches).
// Shared memory (16-bit): Q [16W][AM_LD] (scaled), K [TKp][AM_LD], V [TKp][AM_LD], then
// TKp bytes of key padding flags.
//  1. staging by the block; scores S[16][TKp] = Q·Kᵀ per warp (K rows as B columns).
//  2. mask, softmax per row (quad shuffles: the 4 lanes of a quad hold one row of every
//     C tile), probabilities stored (fp32), multiplied by the dropout mask.
//  3. out[16][64] = round(P⊙M)·V, P⊙M from the registers, V by ldmatrix.trans.
// This lane's element (n, e) of a [16][·] C-tile row block is row gr + 8·(e/2), column
// 8n + 2t + e%2.
// ---------------------------------------------------------------------------------------
template <int MAXNT>
__device__ __forceinline__ void am_fwd(bool kHalf, float* out, long long oBS, long long oRS, const float* q,
                                       long long qBS, long long qRS, const float* k, long long kBS, long long kRS,
                                       const float* v, long long vBS, long long vRS, int H, int TQ, int TK, float scale,
                                       const unsigned char* pad, long long padStride, int causal, int queryOffset,
                                       float* probs, const float* dropMask) {
    extern __shared__ uint4 am_smem4[];
    const int NT = (TK + 15) >> 4, TKp = 16 * NT;
    const int nw = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gr = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z;
    const int rowsQ = 16 * nw, tile0 = blockIdx.x * rowsQ;
    unsigned short* Qs = reinterpret_cast<unsigned short*>(am_smem4);
    unsigned short* Ks = Qs + rowsQ * AM_LD;
    unsigned short* Vs = Ks + TKp * AM_LD;
    unsigned char* padded = reinterpret_cast<unsigned char*>(Vs + TKp * AM_LD);
    const long long hD = (long long)h * AM_D;

    {
        const AmSrc m[3] = {
            {q + (long long)b * qBS + (long long)tile0 * qRS + hD, qRS, min(rowsQ, TQ - tile0), rowsQ, 0, scale, true},
            {k + (long long)b * kBS + hD, kRS, TK, TKp, (int)(Ks - Qs), 1.0f, false},
            {v + (long long)b * vBS + hD, vRS, TK, TKp, (int)(Vs - Qs), 1.0f, false},
        };
        am_stage<3>(kHalf, Qs, m);
        const unsigned char* pr = pad ? pad + (long long)b * padStride : nullptr;
        for (int j = threadIdx.x; j < TK; j += blockDim.x) padded[j] = (pr && __ldg(pr + j) != 0) ? 1 : 0;
    }
    __syncthreads();
    const int i0 = tile0 + 16 * warp;
    if (i0 >= TQ) return;  // uniform over the warp; no barrier follows

    // 1. scores
    float s[2 * MAXNT][4];
#pragma unroll
    for (int n = 0; n < 2 * MAXNT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    {
        unsigned a[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; kk++) am_ldm_a(a[kk], Qs, AM_LD, 16 * warp, 16 * kk);
#pragma unroll
        for (int jj = 0; jj < MAXNT; jj++) {
            if (jj < NT) {
#pragma unroll
                for (int kk = 0; kk < 4; kk++) {
                    unsigned bb[4];
                    am_ldm_bt(bb, Ks, AM_LD, 16 * jj, 16 * kk);
                    am_mma(kHalf, s[2 * jj], a[kk][0], a[kk][1], a[kk][2], a[kk][3], bb[0], bb[1]);
                    am_mma(kHalf, s[2 * jj + 1], a[kk][0], a[kk][1], a[kk][2], a[kk][3], bb[2], bb[3]);
                }
            }
        }
    }

    // The dropout mask of this lane's elements, loaded before the softmax so that the
    // loads overlap its shuffles.
    const long long rowOff = (((long long)b * H + h) * TQ + i0 + gr) * TK;  // row i0 + gr
    const long long rowOff8 = rowOff + 8ll * TK;                            // row i0 + gr + 8
    const bool in0 = i0 + gr < TQ, in8 = i0 + gr + 8 < TQ;
    float dm[2 * MAXNT][4];
#pragma unroll
    for (int n = 0; n < 2 * MAXNT; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int j = 8 * n + 2 * t + (e & 1);
            const bool in = (e < 2 ? in0 : in8) && j < TK;
            dm[n][e] = (dropMask && in) ? __ldg(dropMask + (e < 2 ? rowOff : rowOff8) + j) : 1.0f;
        }

    // 2. softmax of rows i0 + gr (e = 0, 1) and i0 + gr + 8 (e = 2, 3); s becomes the
    // probabilities after dropout, 0 past TK.
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        const int i = i0 + gr + 8 * hh;
        const int last = causal ? min(TK - 1, i + queryOffset) : TK - 1;
        const float inv = am_fwd_row_exp<MAXNT>(s, hh, t, last, padded);
        const bool in = hh == 0 ? in0 : in8;
        float* pr = probs + (hh == 0 ? rowOff : rowOff8);
#pragma unroll
        for (int n = 0; n < 2 * MAXNT; n++)
#pragma unroll
            for (int e = 2 * hh; e < 2 * hh + 2; e++) {
                const int j = 8 * n + 2 * t + (e & 1);
                float p = 0.0f;
                if (j < TK) {
                    p = s[n][e] * inv;
                    if (in) pr[j] = p;
                    if (dropMask) p = p * dm[n][e];
                }
                s[n][e] = p;
            }
    }

    // 3. out = round(P⊙M)·V
    float o[8][4];
    am_fwd_pv<MAXNT>(kHalf, o, s, Vs, NT);
    float* ob = out + (long long)b * oBS + hD;
    const bool vec2 = am_vec2(out, oBS, oRS);
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        const int i = i0 + gr + 8 * hh;
        if (i < TQ) {
            float* row = ob + (long long)i * oRS + 2 * t;
#pragma unroll
            for (int n = 0; n < 8; n++) {
                if (vec2) {
                    *reinterpret_cast<float2*>(row + 8 * n) = make_float2(o[n][2 * hh], o[n][2 * hh + 1]);
                } else {
                    row[8 * n] = o[n][2 * hh];
                    row[8 * n + 1] = o[n][2 * hh + 1];
                }
            }
        }
    }
}

#define AM_FWD(MAXNT)                                                                                     \
    extern "C" __global__ void __launch_bounds__(128) attention_mma_fwd##MAXNT(                                   \
        float* out, long long oBS, long long oRS, const float* q, long long qBS, long long qRS, const float* k,   \
        long long kBS, long long kRS, const float* v, long long vBS, long long vRS, int H, int TQ, int TK,        \
        float scale, const unsigned char* pad, long long padStride, int causal, int queryOffset, float* probs,    \
        const float* dropMask, int half) { XF_PDL_ENTRY();                                                        \
        am_fwd<MAXNT>(half != 0, out, oBS, oRS, q, qBS, qRS, k, kBS, kRS, v, vBS, vRS, H, TQ, TK, scale, pad,     \
                      padStride, causal, queryOffset, probs, dropMask);                                           \
    }
AM_FWD(4)
AM_FWD(8)

// ---------------------------------------------------------------------------------------
// The second kernels (am2_*, attention_mma2_fwd / attention_mma2_bwd): TK ≤ 64 forward,
// TQ, TK ≤ 64 backward (MAXNT 4), the Transformer base training shapes. Same arithmetic
// as am_fwd and the removed first backward (the same operands rounded, the same fp32 sums
// in the same fragment order, so the same references and bounds hold), organised for
// what bounded the first kernels there (B·T ≈ 8000, T 20–64: ~1,600 blocks of 3 warps,
// each a chain of 5–8 dependent trips to memory, 5 blocks per SM by registers):
//  * every global load of a block is issued at its start: the dropout mask (forward) or
//    the probabilities and mask (backward) by cp.async straight into shared memory (no
//    registers held while they fly), q, k, v (, dout) staged with 12 loads of a thread
//    in flight;
//  * the forward no longer holds the mask in 32 registers;
//  * the backward reads p and m from shared memory and, after a barrier, writes dS and
//    P⊙M (16-bit) over them: one trip for P and M instead of one per query block, and
//    127 registers instead of 184 (5 blocks per SM at T 41 instead of 2).
// Measured on the H200 (bf16, dropout, B·T ≈ 8000): T 41 forward 67 µs (first kernel
// 74), backward 103 µs (first 254, float kernels 136); T 20 52 / 99, T 64 64 / 125.
// ---------------------------------------------------------------------------------------
__device__ __forceinline__ int am_round4(int n) { return (n + 3) & ~3; }

// am_cp_async copies n floats from global src to shared dst with the whole block, 4
// bytes per cp.async (rows of P and M start anywhere), without waiting: am_cp_wait
// waits for all of a thread's copies; a barrier after it publishes them to the block.
__device__ __forceinline__ void am_cp_async(float* dst, const float* src, int n) {
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
#if __CUDA_ARCH__ >= 800
        const unsigned a = (unsigned)__cvta_generic_to_shared(dst + e);
        asm volatile(
            "{\n .reg .u64 g;\n cvta.to.global.u64 g, %1;\n cp.async.ca.shared.global [%0], [g], 4;\n}\n" ::"r"(a),
            "l"(src + e)
            : "memory");
#else
        dst[e] = src[e];
#endif
    }
}

__device__ __forceinline__ void am_cp_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

// The second kernels take the dropout mask in one of two forms (kernels.SeededAttention):
// stored (dropMask non-null, what DropoutMask wrote) or drawn from its seed where it is
// used (dropMask null, threshold non-zero: kernels.DropoutThreshold, keepScale
// kernels.DropoutScale), element ((b·H + h)·TQ + i)·TK + j for probability (b, h, i, j),
// so the drawn value is the stored one, keep ? keepScale : 0, and p·m the same product,
// bit for bit. Neither: no dropout. Drawing saves the dropout_mask launch, the mask's
// write and both directions' reads of it (10.8 MB each at B 200, T 41, H 8) and, in the
// forward, its shared-memory rows; the hash costs ~20 integer instructions per element.
__device__ __forceinline__ float am2_drawn(unsigned long long seed, unsigned long long threshold, float keepScale,
                                           long long e) {
    return xf_dropout_keep(seed, (unsigned long long)e, threshold) ? keepScale : 0.0f;
}

// The keep bits of a drawn mask, computed ahead (the third kernels' "bits" variants,
// attention_mma3_*_b): am2_fwd_tile and am2_bwd_pair drew each element's bit inside
// their per-element loops, where the hash's ~25 dependent integer instructions sat under
// a per-element branch (the bounds test) that ptxas kept as a branch, so a warp walked
// its 32 elements one chain at a time; in the backward only the query-block warps (half
// the block) did that while the others waited at the barrier. The bits variants have the
// whole block draw the item's bits first, as independent hashes (am3_keep_bits), into a
// bitmap in shared memory, and the per-element loops read a bit and run branch-free. The
// bits are xf_dropout_keep's, so the products, and the results, are the same.
//
// am_keep_mixed is xf_dropout_keep's test from z1 = seed + (i + 1)·0x9E3779B97F4A7C15 on
// (the caller steps z1 by additions, which wrap as the product does). Only the top 24
// bits of SplitMix64's output count, and its last step z ^= z >> 31 leaves bits 33 and up
// as they are, so the output's top 32 bits are those of the last product, whose high
// word needs one high and two low 32-bit multiplies instead of a 64-bit product.
__device__ __forceinline__ bool am_keep_mixed(unsigned long long z, unsigned long long threshold) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27;
    const unsigned lo = (unsigned)z, hi = (unsigned)(z >> 32);
    const unsigned top = __umulhi(lo, 0x133111EBu) + lo * 0x94D049BBu + hi * 0x133111EBu;
    return (unsigned long long)(top >> 8) >= threshold;
}

// am3_keep_bits writes bit l of bits (l < n) = the keep bit of mask element e0 + l, with
// the whole block (blockDim.x a multiple of 32, so each warp's 32 elements are one word),
// and zeros the two words after the last (am3_row_bits reads up to two words past a row).
__device__ __forceinline__ void am3_keep_bits(unsigned* bits, int n, long long e0, unsigned long long seed,
                                              unsigned long long threshold) {
    const unsigned long long c1 = 0x9E3779B97F4A7C15ull;
    const int n32 = (n + 31) & ~31;
    unsigned long long z = seed + ((unsigned long long)e0 + threadIdx.x + 1ull) * c1;
    const unsigned long long step = (unsigned long long)blockDim.x * c1;
#pragma unroll 4
    for (int l = threadIdx.x; l < n32; l += blockDim.x) {
        const unsigned w = __ballot_sync(0xffffffffu, l < n && am_keep_mixed(z, threshold));
        if ((threadIdx.x & 31) == 0) bits[l >> 5] = w;
        z += step;
    }
    if (threadIdx.x < 2) bits[(n32 >> 5) + threadIdx.x] = 0u;
}

// am3_row_bits is the keep bits of the TK ≤ 64 elements of local row r (bit j: key j;
// bits from TK on belong to the next rows), from the bitmap at bit r·TK.
__device__ __forceinline__ unsigned long long am3_row_bits(const unsigned* bits, int r, int TK) {
    const int b0 = r * TK, w = b0 >> 5, s = b0 & 31;
    const unsigned w0 = bits[w], w1 = bits[w + 1], w2 = bits[w + 2];
    return (unsigned long long)__funnelshift_r(w0, w1, s) |
           ((unsigned long long)__funnelshift_r(w1, w2, s) << 32);
}

// am3_bit is bit k (a constant after unrolling) of a lane's row bits pre-shifted by 2t.
__device__ __forceinline__ bool am3_bit(unsigned long long rb, int k) { return (rb >> k) & 1ull; }

// am3_keep_words is the bitmap's size in words for n elements (am3_keep_bits), rounded up
// to 16 bytes; attention_mma3.go's am3KeepBytes computes the same in bytes.
__device__ __forceinline__ int am3_keep_words(int n) { return (((n + 31) >> 5) + 2 + 3) & ~3; }

// am2_fwd_tile is the forward's work after the staging: query tile tile0 of (b, h),
// from the 16-bit tiles Qs, Ks, Vs, the stored mask rows Ms (or a drawn mask) and the
// padding flags, each warp its 16 query rows. No barrier: warps past TQ return.
// BITS (the third kernels' bits variant): no stored mask, and a drawn one's keep bits
// come from keepBits (am3_keep_bits of the tile's rows, from element tileOff on).
template <bool BITS = false, int MAXNT = 4>
__device__ __forceinline__ void am2_fwd_tile(bool kHalf, const unsigned short* Qs, const unsigned short* Ks,
                                             const unsigned short* Vs, const float* Ms, const unsigned char* padded,
                                             int b, int h, int tile0, void* out, long long oBS, long long oRS, int H,
                                             int TQ, int TK, int causal, int queryOffset, float* probs,
                                             const float* dropMask, int outFmt, unsigned long long seed,
                                             unsigned long long threshold, float keepScale,
                                             const unsigned* keepBits = nullptr, const am_span* qsp = nullptr) {
    const int NT = (TK + 15) >> 4;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gr = lane >> 2, t = lane & 3;
    const long long hD = (long long)h * AM_D;
    const long long tileOff = (((long long)b * H + h) * TQ + tile0) * TK;  // (tile0, 0) of P and M
    const int i0 = tile0 + 16 * warp;
    if (i0 >= TQ) return;  // uniform over the warp; no barrier follows

    // 1. scores
    float s[2 * MAXNT][4];
#pragma unroll
    for (int n = 0; n < 2 * MAXNT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    {
        unsigned a[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; kk++) am_ldm_a(a[kk], Qs, AM_LD, 16 * warp, 16 * kk);
#pragma unroll
        for (int jj = 0; jj < MAXNT; jj++) {
            if (jj < NT) {
#pragma unroll
                for (int kk = 0; kk < 4; kk++) {
                    unsigned bb[4];
                    am_ldm_bt(bb, Ks, AM_LD, 16 * jj, 16 * kk);
                    am_mma(kHalf, s[2 * jj], a[kk][0], a[kk][1], a[kk][2], a[kk][3], bb[0], bb[1]);
                    am_mma(kHalf, s[2 * jj + 1], a[kk][0], a[kk][1], a[kk][2], a[kk][3], bb[2], bb[3]);
                }
            }
        }
    }

    // 2. softmax of rows i0 + gr (e = 0, 1) and i0 + gr + 8 (e = 2, 3), as am_fwd; a
    // stored mask from shared memory (local row 16·warp + gr + 8·hh), a drawn one at the
    // element's index in P (rowOff + 8·hh·TK + j).
    const bool drawn = dropMask == nullptr && threshold != 0ull;
    const long long rowOff = tileOff + (long long)(16 * warp + gr) * TK;
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        const int i = i0 + gr + 8 * hh;
        const int last = causal ? min(TK - 1, i + queryOffset) : TK - 1;
        const float inv = am_fwd_row_exp<MAXNT>(s, hh, t, last, padded);
        const bool in = i < TQ;
        float* prow = probs + rowOff + 8ll * hh * TK;
        if constexpr (BITS) {
            // The same values as below, branch-free: the row's keep bits (its row in the
            // tile's bitmap; a row past TQ reads the last row's and keeps p unmasked).
            const int lr = min(16 * warp + gr + 8 * hh, TQ - 1 - tile0);
            const unsigned long long rb = drawn ? am3_row_bits(keepBits, lr, TK) >> (2 * t) : 0ull;
#pragma unroll
            for (int n = 0; n < 2 * MAXNT; n++)
#pragma unroll
                for (int e = 2 * hh; e < 2 * hh + 2; e++) {
                    const int j = 8 * n + 2 * t + (e & 1);
                    const bool ok = j < TK;
                    const float p = ok ? s[n][e] * inv : 0.0f;
                    if (ok && in) prow[j] = p;
                    const float f = am3_bit(rb, 8 * n + (e & 1)) ? keepScale : 0.0f;
                    s[n][e] = ok && in && drawn ? p * f : p;
                }
        } else {
            const float* mrow = Ms + (16 * warp + gr + 8 * hh) * TK;
#pragma unroll
            for (int n = 0; n < 2 * MAXNT; n++)
#pragma unroll
                for (int e = 2 * hh; e < 2 * hh + 2; e++) {
                    const int j = 8 * n + 2 * t + (e & 1);
                    float p = 0.0f;
                    if (j < TK) {
                        p = s[n][e] * inv;
                        if (in) {
                            prow[j] = p;
                            if (dropMask) {
                                p = p * mrow[j];
                            } else if (drawn) {
                                p = p * am2_drawn(seed, threshold, keepScale, rowOff + 8ll * hh * TK + j);
                            }
                        }
                    }
                    s[n][e] = p;
                }
        }
    }

    // 3. out = round(P⊙M)·V
    float o[8][4];
    am_fwd_pv<MAXNT>(kHalf, o, s, Vs, NT);
    if (qsp) {  // packed rows: 16-bit out only (the host guarantees it)
        am_store_rows16<true>(kHalf, reinterpret_cast<unsigned short*>(out) + qsp->base * oRS + hD, oRS, i0,
                              min(TQ, qsp->hi), o, 1.0f, am_vec2_16(out, oRS, oRS), qsp->lo);
        return;
    }
    if (outFmt != XF_OUT_F32) {
        am_store_rows16(kHalf, reinterpret_cast<unsigned short*>(out) + (long long)b * oBS + hD, oRS, i0, TQ, o, 1.0f,
                        am_vec2_16(out, oBS, oRS));
        return;
    }
    float* ob = reinterpret_cast<float*>(out) + (long long)b * oBS + hD;
    const bool vec2 = am_vec2(ob, oBS, oRS);
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        const int i = i0 + gr + 8 * hh;
        if (i < TQ) {
            float* row = ob + (long long)i * oRS + 2 * t;
#pragma unroll
            for (int n = 0; n < 8; n++) {
                if (vec2) {
                    *reinterpret_cast<float2*>(row + 8 * n) = make_float2(o[n][2 * hh], o[n][2 * hh + 1]);
                } else {
                    row[8 * n] = o[n][2 * hh];
                    row[8 * n + 1] = o[n][2 * hh + 1];
                }
            }
        }
    }
}

// Forward: as am_fwd (block (x, h, b), a warp per 16 query rows, at most 4 warps). Shared
// memory: Q [16W][AM_LD], K, V [TKp][AM_LD] (16-bit), the tile's dropout-mask rows
// [16W][TK] (fp32, rounded up to 4 floats; only with a stored mask), then TK padding
// flags.
// MIX (attention_mma2_fwd_h): q, k, v are float32 or 16-bit each, bit 0, 1, 2 of in16.
template <bool MIX>
__device__ __forceinline__ void am2_fwd(bool kHalf, void* out, long long oBS, long long oRS, const void* q,
                                        long long qBS, long long qRS, const void* k, long long kBS, long long kRS,
                                        const void* v, long long vBS, long long vRS, int H, int TQ, int TK, float scale,
                                        const unsigned char* pad, long long padStride, int causal, int queryOffset,
                                        float* probs, const float* dropMask, int outFmt, unsigned long long seed,
                                        unsigned long long threshold, float keepScale, int in16) {
    extern __shared__ uint4 am_smem4[];
    const int NT = (TK + 15) >> 4, TKp = 16 * NT;
    const int nw = blockDim.x >> 5;
    const int h = blockIdx.y, b = blockIdx.z;
    const int rowsQ = 16 * nw, tile0 = blockIdx.x * rowsQ, nq = min(rowsQ, TQ - tile0);
    unsigned short* Qs = reinterpret_cast<unsigned short*>(am_smem4);
    unsigned short* Ks = Qs + rowsQ * AM_LD;
    unsigned short* Vs = Ks + TKp * AM_LD;
    float* Ms = reinterpret_cast<float*>(Vs + TKp * AM_LD);
    unsigned char* padded = reinterpret_cast<unsigned char*>(Ms + (dropMask ? am_round4(rowsQ * TK) : 0));
    const long long hD = (long long)h * AM_D;
    const long long tileOff = (((long long)b * H + h) * TQ + tile0) * TK;  // (tile0, 0) of P and M

    // The tile's mask rows are contiguous in global memory.
    if (dropMask) am_cp_async(Ms, dropMask + tileOff, nq * TK);
    // Padding flags: loaded before the staging, stored after it (4 rounds of ≥ 32
    // threads cover TK ≤ 128).
    const unsigned char* pr = pad ? pad + (long long)b * padStride : nullptr;
    unsigned char pf[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
        const int j = threadIdx.x + u * blockDim.x;
        pf[u] = (pr && j < TK) ? __ldg(pr + j) : 0;
    }
    {
        const bool hq = MIX && (in16 & 1), hk = MIX && (in16 & 2), hv = MIX && (in16 & 4);
        const AmSrc m[3] = {
            {am_elem(q, (long long)b * qBS + (long long)tile0 * qRS + hD, hq), qRS, nq, rowsQ, 0, scale, true, hq},
            {am_elem(k, (long long)b * kBS + hD, hk), kRS, TK, TKp, (int)(Ks - Qs), 1.0f, false, hk},
            {am_elem(v, (long long)b * vBS + hD, hv), vRS, TK, TKp, (int)(Vs - Qs), 1.0f, false, hv},
        };
        am_stage<3, 12, MIX>(kHalf, Qs, m);
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
        const int j = threadIdx.x + u * blockDim.x;
        if (j < TK) padded[j] = pf[u] != 0 ? 1 : 0;
    }
    am_cp_wait();
    __syncthreads();
    am2_fwd_tile(kHalf, Qs, Ks, Vs, Ms, padded, b, h, tile0, out, oBS, oRS, H, TQ, TK, causal, queryOffset, probs,
                 dropMask, outFmt, seed, threshold, keepScale);
}

extern "C" __global__ void __launch_bounds__(128, AM2_FWD_MINB) attention_mma2_fwd(
    void* out, long long oBS, long long oRS, const float* q, long long qBS, long long qRS, const float* k,
    long long kBS, long long kRS, const float* v, long long vBS, long long vRS, int H, int TQ, int TK, float scale,
    const unsigned char* pad, long long padStride, int causal, int queryOffset, float* probs, const float* dropMask,
    int half, int outFmt, unsigned long long seed, unsigned long long threshold, float keepScale) { XF_PDL_ENTRY();
    am2_fwd<false>(half != 0, out, oBS, oRS, q, qBS, qRS, k, kBS, kRS, v, vBS, vRS, H, TQ, TK, scale, pad, padStride,
                   causal, queryOffset, probs, dropMask, outFmt, seed, threshold, keepScale, 0);
}

// attention_mma2_fwd_h is attention_mma2_fwd whose q, k and v may each be 16-bit (in16:
// bit 0 q, 1 k, 2 v; views counted in 16-bit elements), as the model's projections write
// them with kernels.HalfOutputs. The same bits as attention_mma2_fwd on float32 copies of
// the same values (am_stage).
extern "C" __global__ void __launch_bounds__(128, AM2_FWD_MINB) attention_mma2_fwd_h(
    void* out, long long oBS, long long oRS, const void* q, long long qBS, long long qRS, const void* k,
    long long kBS, long long kRS, const void* v, long long vBS, long long vRS, int H, int TQ, int TK, float scale,
    const unsigned char* pad, long long padStride, int causal, int queryOffset, float* probs, const float* dropMask,
    int half, int outFmt, unsigned long long seed, unsigned long long threshold, float keepScale, int in16) { XF_PDL_ENTRY();
    am2_fwd<true>(half != 0, out, oBS, oRS, q, qBS, qRS, k, kBS, kRS, v, vBS, vRS, H, TQ, TK, scale, pad, padStride,
                  causal, queryOffset, probs, dropMask, outFmt, seed, threshold, keepScale, in16);
}

// am2_zbytes is the size of each of the backward's two last regions: P (then dS) and M
// (then P⊙M): fp32 [TQ][TK] or 16-bit [TQp][TKp + 8], whichever is larger, in bytes
// rounded up to 16. attention_mma.go's amBackwardShared2 computes the same.
__device__ __forceinline__ int am2_zbytes(int TQ, int TK) {
    const int TQp = (TQ + 15) & ~15, TKp = (TK + 15) & ~15;
    return (max(4 * TQ * TK, 2 * TQp * (TKp + 8)) + 15) & ~15;
}

// am2_grad_rows adds s·acc into rows r0 + … < n of gradient g of batch b, head offset
// hD (float32, am_add_rows), or stores its rounding there (16-bit, am_store_rows16).
// With sp (packed rows, 16-bit gradients only: the host guarantees it) row r of the item
// goes to packed row sp->base + r, for sp->lo ≤ r < min(n, sp->hi).
__device__ __forceinline__ void am2_grad_rows(bool kHalf, int outFmt, void* g, long long bs, long long rs, int b,
                                              long long hD, int r0, int n, const float (&acc)[8][4], float s,
                                              const am_span* sp = nullptr) {
    if (sp) {
        unsigned short* g16 = reinterpret_cast<unsigned short*>(g) + sp->base * rs + hD;
        am_store_rows16<true>(kHalf, g16, rs, r0, min(n, sp->hi), acc, s, am_vec2_16(g, rs, rs), sp->lo);
        return;
    }
    if (outFmt != XF_OUT_F32) {
        unsigned short* g16 = reinterpret_cast<unsigned short*>(g) + (long long)b * bs + hD;
        am_store_rows16(kHalf, g16, rs, r0, n, acc, s, am_vec2_16(g, bs, rs));
    } else {
        float* g32 = reinterpret_cast<float*>(g);
        am_add_rows(g32 + (long long)b * bs + hD, rs, r0, n, acc, s, am_vec2(g32, bs, rs));
    }
}

// am2_bwd_pair is the backward's work after the staging, for (b, h): the 16-bit tiles
// Qs (scaled), Ks, Vs, Os (dout), P in z1 (fp32 [TQ][TK]) and, with a stored mask, M in
// z2; phases A and B below (barriers inside: every thread of the block calls it).
// BITS (the third kernels' bits variant): no stored mask, and a drawn one's keep bits
// come from keepBits (am3_keep_bits of (b, h)'s TQ·TK elements).
template <bool BITS = false, int MAXNT = 4>
__device__ __forceinline__ void am2_bwd_pair(bool kHalf, const unsigned short* Qs, const unsigned short* Ks,
                                             const unsigned short* Vs, const unsigned short* Os, unsigned char* z1,
                                             unsigned char* z2, int b, int h, void* dq, long long dqBS,
                                             long long dqRS, void* dk, long long dkBS, long long dkRS, void* dv,
                                             long long dvBS, long long dvRS, const float* mask, int H, int TQ, int TK,
                                             float scale, int outFmt, unsigned long long seed,
                                             unsigned long long threshold, float keepScale,
                                             const unsigned* keepBits = nullptr, const am_span* qsp = nullptr,
                                             const am_span* ksp = nullptr) {
    const int NT = (TK + 15) >> 4, TKp = 16 * NT, LDZ = TKp + 8;
    const int nw = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gr = lane >> 2, t = lane & 3;
    const int TQp = (TQ + 15) & ~15, MT = TQp >> 4;
    const float* Pz = reinterpret_cast<const float*>(z1);
    const float* Mz = reinterpret_cast<const float*>(z2);
    unsigned short* dS = reinterpret_cast<unsigned short*>(z1);
    unsigned short* PM = reinterpret_cast<unsigned short*>(z2);
    const long long hD = (long long)h * AM_D;
    const long long pbase = (((long long)b * H + h) * TQ) * TK;

    // A. ds and p·m of query block `warp`, rounded into registers (pairs: [n][0] row gr,
    // [n][1] row gr + 8).
    const bool active = warp < MT;
    const int i0 = 16 * warp;
    unsigned dsr[2 * MAXNT][2], pmr[2 * MAXNT][2];
    if (active) {
        float dp[2 * MAXNT][4];
#pragma unroll
        for (int n = 0; n < 2 * MAXNT; n++) dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
        {
            unsigned a[4][4];
#pragma unroll
            for (int kk = 0; kk < 4; kk++) am_ldm_a(a[kk], Os, AM_LD, i0, 16 * kk);
#pragma unroll
            for (int jj = 0; jj < MAXNT; jj++) {
                if (jj < NT) {
#pragma unroll
                    for (int kk = 0; kk < 4; kk++) {
                        unsigned bb[4];
                        am_ldm_bt(bb, Vs, AM_LD, 16 * jj, 16 * kk);
                        am_mma(kHalf, dp[2 * jj], a[kk][0], a[kk][1], a[kk][2], a[kk][3], bb[0], bb[1]);
                        am_mma(kHalf, dp[2 * jj + 1], a[kk][0], a[kk][1], a[kk][2], a[kk][3], bb[2], bb[3]);
                    }
                }
            }
        }
        // This lane's p and m (row i0 + gr + 8·(e/2), key 8n + 2t + e%2; 0 and 1 outside
        // TQ × TK), read twice from shared memory rather than held. Zero probabilities
        // (masked keys, padding) leave ds = 0 and stay out of the dot, as the CPU skips
        // them.
        const float* Pr = Pz + (i0 + gr) * TK;
        const float* Mr = Mz + (i0 + gr) * TK;
        const bool in0 = i0 + gr < TQ, in8 = i0 + gr + 8 < TQ;
        if constexpr (BITS) {
            // The same values as the loops below, branch-free, the keep bits from the
            // bitmap (rows past TQ read the last row's: their p is 0, so ds and p·m are 0
            // whatever dp holds, and so are those of keys past TK).
            const bool drawn = threshold != 0ull;
            const unsigned long long rb0 = drawn ? am3_row_bits(keepBits, min(i0 + gr, TQ - 1), TK) >> (2 * t) : 0ull;
            const unsigned long long rb8 =
                drawn ? am3_row_bits(keepBits, min(i0 + gr + 8, TQ - 1), TK) >> (2 * t) : 0ull;
            float dot[2] = {0.0f, 0.0f};
#pragma unroll
            for (int n = 0; n < 2 * MAXNT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = 8 * n + 2 * t + (e & 1);
                    const int off = (e < 2 ? 0 : 8 * TK) + j;
                    float pv = 0.0f;
                    if ((e < 2 ? in0 : in8) && j < TK) pv = Pr[off];
                    const float f = am3_bit(e < 2 ? rb0 : rb8, 8 * n + (e & 1)) ? keepScale : 0.0f;
                    dp[n][e] = drawn ? dp[n][e] * f : dp[n][e];
                    dot[e >> 1] = pv != 0.0f ? fmaf(dp[n][e], pv, dot[e >> 1]) : dot[e >> 1];
                }
            dot[0] = am_quad_sum(dot[0]);
            dot[1] = am_quad_sum(dot[1]);
#pragma unroll
            for (int n = 0; n < 2 * MAXNT; n++) {
                float d4[4], pm[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = 8 * n + 2 * t + (e & 1);
                    const int off = (e < 2 ? 0 : 8 * TK) + j;
                    float pv = 0.0f;
                    if ((e < 2 ? in0 : in8) && j < TK) pv = Pr[off];
                    const float f = am3_bit(e < 2 ? rb0 : rb8, 8 * n + (e & 1)) ? keepScale : 0.0f;
                    d4[e] = pv != 0.0f ? pv * (dp[n][e] - dot[e >> 1]) : 0.0f;
                    pm[e] = drawn ? pv * f : pv;
                }
                dsr[n][0] = am_pack(kHalf, d4[0], d4[1]);
                dsr[n][1] = am_pack(kHalf, d4[2], d4[3]);
                pmr[n][0] = am_pack(kHalf, pm[0], pm[1]);
                pmr[n][1] = am_pack(kHalf, pm[2], pm[3]);
            }
        } else {
            // A drawn mask: element pbase + (i0 + gr)·TK + off, its keep bit at 4n + e.
            const bool drawn = mask == nullptr && threshold != 0ull;
            const long long mrow = pbase + (long long)(i0 + gr) * TK;
            unsigned kept = 0u;
            float dot[2] = {0.0f, 0.0f};
#pragma unroll
            for (int n = 0; n < 2 * MAXNT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = 8 * n + 2 * t + (e & 1);
                    const int off = (e < 2 ? 0 : 8 * TK) + j;
                    if ((e < 2 ? in0 : in8) && j < TK) {
                        const float pv = Pr[off];
                        if (mask) {
                            dp[n][e] = dp[n][e] * Mr[off];
                        } else if (drawn) {
                            const bool kp = xf_dropout_keep(seed, (unsigned long long)(mrow + off), threshold);
                            kept |= (kp ? 1u : 0u) << (4 * n + e);
                            dp[n][e] = dp[n][e] * (kp ? keepScale : 0.0f);
                        }
                        if (pv != 0.0f) dot[e >> 1] = fmaf(dp[n][e], pv, dot[e >> 1]);
                    }
                }
            dot[0] = am_quad_sum(dot[0]);
            dot[1] = am_quad_sum(dot[1]);
#pragma unroll
            for (int n = 0; n < 2 * MAXNT; n++) {
                float d4[4], pm[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = 8 * n + 2 * t + (e & 1);
                    const int off = (e < 2 ? 0 : 8 * TK) + j;
                    float pv = 0.0f, mv = 1.0f;
                    if ((e < 2 ? in0 : in8) && j < TK) {
                        pv = Pr[off];
                        if (mask) {
                            mv = Mr[off];
                        } else if (drawn) {
                            mv = (kept >> (4 * n + e)) & 1u ? keepScale : 0.0f;
                        }
                    }
                    d4[e] = pv != 0.0f ? pv * (dp[n][e] - dot[e >> 1]) : 0.0f;
                    pm[e] = mask || drawn ? pv * mv : pv;
                }
                dsr[n][0] = am_pack(kHalf, d4[0], d4[1]);
                dsr[n][1] = am_pack(kHalf, d4[2], d4[3]);
                pmr[n][0] = am_pack(kHalf, pm[0], pm[1]);
                pmr[n][1] = am_pack(kHalf, pm[2], pm[3]);
            }
        }
    }
    __syncthreads();  // every p and m read: dS and P⊙M go over them
    if (active) {
#pragma unroll
        for (int n = 0; n < 2 * MAXNT; n++) {
            if (n < 2 * NT) {
                const int c = 8 * n + 2 * t, r = i0 + gr;
                *reinterpret_cast<unsigned*>(dS + r * LDZ + c) = dsr[n][0];
                *reinterpret_cast<unsigned*>(dS + (r + 8) * LDZ + c) = dsr[n][1];
                *reinterpret_cast<unsigned*>(PM + r * LDZ + c) = pmr[n][0];
                *reinterpret_cast<unsigned*>(PM + (r + 8) * LDZ + c) = pmr[n][1];
            }
        }
        // dq += scale·round(ds)·K
        float acc[8][4];
#pragma unroll
        for (int n = 0; n < 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < MAXNT; kk++) {
            if (kk < NT) {
#pragma unroll
                for (int dd = 0; dd < 4; dd++) {
                    unsigned bb[4];
                    am_ldm_b(bb, Ks, AM_LD, 16 * kk, 16 * dd);
                    am_mma(kHalf, acc[2 * dd], dsr[2 * kk][0], dsr[2 * kk][1], dsr[2 * kk + 1][0],
                           dsr[2 * kk + 1][1], bb[0], bb[1]);
                    am_mma(kHalf, acc[2 * dd + 1], dsr[2 * kk][0], dsr[2 * kk][1], dsr[2 * kk + 1][0],
                           dsr[2 * kk + 1][1], bb[2], bb[3]);
                }
            }
        }
        am2_grad_rows(kHalf, outFmt, dq, dqBS, dqRS, b, hD, i0, TQ, acc, scale, qsp);
    }
    __syncthreads();  // dS and PM complete

    // B. dv = PMᵀ·dO and dk = dSᵀ·Qs per key block
    for (int w = warp; w < 2 * NT; w += nw) {
        const int j0 = 16 * (w >> 1);
        const bool isK = (w & 1) != 0;
        const unsigned short* Z = isK ? dS : PM;
        const unsigned short* Y = isK ? Qs : Os;
        float acc[8][4];
#pragma unroll
        for (int n = 0; n < 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
        for (int ib = 0; ib < MT; ib++) {
            unsigned a[4];
            am_ldm_at(a, Z, LDZ, 16 * ib, j0);
#pragma unroll
            for (int dd = 0; dd < 4; dd++) {
                unsigned bb[4];
                am_ldm_b(bb, Y, AM_LD, 16 * ib, 16 * dd);
                am_mma(kHalf, acc[2 * dd], a[0], a[1], a[2], a[3], bb[0], bb[1]);
                am_mma(kHalf, acc[2 * dd + 1], a[0], a[1], a[2], a[3], bb[2], bb[3]);
            }
        }
        if (isK) {
            am2_grad_rows(kHalf, outFmt, dk, dkBS, dkRS, b, hD, j0, TK, acc, 1.0f, ksp);
        } else {
            am2_grad_rows(kHalf, outFmt, dv, dvBS, dvRS, b, hD, j0, TK, acc, 1.0f, ksp);
        }
    }
}

// Backward: block (h, b) = (blockIdx.y, blockIdx.z) with max(MT, NT) ≤ 4 warps, so that
// phase A is one pass (a query block per warp) with barriers every warp reaches.
// Shared memory: Qs [TQp][AM_LD] (scaled), K, V [TKp][AM_LD], dO [TQp][AM_LD] (16-bit),
// then Z1 = P [TQ][TK] (fp32) later dS [TQp][LDZ], Z2 = M [TQ][TK] later P⊙M [TQp][LDZ]
// (with a drawn mask, am2_fwd's, Z2 holds only P⊙M: 2·TQp·LDZ bytes, which the launch
// code then asks for instead of am2_zbytes).
//  A. warp < MT: dP = dO·Vᵀ; dp = dP·m, dot, ds, p·m from the shared P and M (or m
//     drawn, once per element: the keep bits of a lane's 32 elements in one register),
//     held rounded in registers; barrier; written into dS and P⊙M; dq +=
//     scale·round(ds)·K.
//  B. after a barrier, per (key block, dk or dv) (a warp each, in turn): dv = PMᵀ·dO or
//     dk = dSᵀ·Qs over the query blocks (both operands by ldmatrix.trans). No atomics:
//     the block owns its (b, h), so the sums are the same every run.
// MIX (attention_mma2_bwd_h): dout, q, k, v are float32 or 16-bit each, bit 3, 0, 1, 2 of
// in16.
template <bool MIX>
__device__ __forceinline__ void am2_bwd(bool kHalf, void* dq, long long dqBS, long long dqRS, void* dk,
                                        long long dkBS, long long dkRS, void* dv, long long dvBS, long long dvRS,
                                        const void* dout, long long doBS, long long doRS, const void* q,
                                        long long qBS, long long qRS, const void* k, long long kBS, long long kRS,
                                        const void* v, long long vBS, long long vRS, const float* probs,
                                        const float* mask, int H, int TQ, int TK, float scale, int outFmt,
                                        unsigned long long seed, unsigned long long threshold, float keepScale,
                                        int in16) {
    extern __shared__ uint4 am_smem4[];
    const int TKp = (TK + 15) & ~15;
    const int h = blockIdx.y, b = blockIdx.z;
    const int TQp = (TQ + 15) & ~15;
    unsigned short* Qs = reinterpret_cast<unsigned short*>(am_smem4);
    unsigned short* Ks = Qs + TQp * AM_LD;
    unsigned short* Vs = Ks + TKp * AM_LD;
    unsigned short* Os = Vs + TKp * AM_LD;
    unsigned char* z1 = reinterpret_cast<unsigned char*>(Os + TQp * AM_LD);
    unsigned char* z2 = z1 + am2_zbytes(TQ, TK);
    const long long hD = (long long)h * AM_D;
    const long long pbase = (((long long)b * H + h) * TQ) * TK;

    am_cp_async(reinterpret_cast<float*>(z1), probs + pbase, TQ * TK);
    if (mask) am_cp_async(reinterpret_cast<float*>(z2), mask + pbase, TQ * TK);
    {
        const bool hq = MIX && (in16 & 1), hk = MIX && (in16 & 2), hv = MIX && (in16 & 4), ho = MIX && (in16 & 8);
        const AmSrc m[4] = {
            {am_elem(q, (long long)b * qBS + hD, hq), qRS, TQ, TQp, 0, scale, true, hq},
            {am_elem(k, (long long)b * kBS + hD, hk), kRS, TK, TKp, (int)(Ks - Qs), 1.0f, false, hk},
            {am_elem(v, (long long)b * vBS + hD, hv), vRS, TK, TKp, (int)(Vs - Qs), 1.0f, false, hv},
            {am_elem(dout, (long long)b * doBS + hD, ho), doRS, TQ, TQp, (int)(Os - Qs), 1.0f, false, ho},
        };
        am_stage<4, 12, MIX>(kHalf, Qs, m);
    }
    am_cp_wait();
    __syncthreads();

    am2_bwd_pair(kHalf, Qs, Ks, Vs, Os, z1, z2, b, h, dq, dqBS, dqRS, dk, dkBS, dkRS, dv, dvBS, dvRS, mask, H, TQ,
                 TK, scale, outFmt, seed, threshold, keepScale);
}

extern "C" __global__ void __launch_bounds__(128, AM2_BWD_MINB) attention_mma2_bwd(
    void* dq, long long dqBS, long long dqRS, void* dk, long long dkBS, long long dkRS, void* dv, long long dvBS,
    long long dvRS, const float* dout, long long doBS, long long doRS, const float* q, long long qBS, long long qRS,
    const float* k, long long kBS, long long kRS, const float* v, long long vBS, long long vRS, const float* probs,
    const float* mask, int H, int TQ, int TK, float scale, int half, int outFmt, unsigned long long seed,
    unsigned long long threshold, float keepScale) { XF_PDL_ENTRY();
    am2_bwd<false>(half != 0, dq, dqBS, dqRS, dk, dkBS, dkRS, dv, dvBS, dvRS, dout, doBS, doRS, q, qBS, qRS, k, kBS,
                   kRS, v, vBS, vRS, probs, mask, H, TQ, TK, scale, outFmt, seed, threshold, keepScale, 0);
}

// attention_mma2_bwd_h is attention_mma2_bwd whose dout, q, k and v may each be 16-bit
// (in16: bit 0 q, 1 k, 2 v, 3 dout), as attention_mma2_fwd_h: the same bits as
// attention_mma2_bwd on float32 copies of the same values.
extern "C" __global__ void __launch_bounds__(128, AM2_BWD_MINB) attention_mma2_bwd_h(
    void* dq, long long dqBS, long long dqRS, void* dk, long long dkBS, long long dkRS, void* dv, long long dvBS,
    long long dvRS, const void* dout, long long doBS, long long doRS, const void* q, long long qBS, long long qRS,
    const void* k, long long kBS, long long kRS, const void* v, long long vBS, long long vRS, const float* probs,
    const float* mask, int H, int TQ, int TK, float scale, int half, int outFmt, unsigned long long seed,
    unsigned long long threshold, float keepScale, int in16) { XF_PDL_ENTRY();
    am2_bwd<true>(half != 0, dq, dqBS, dqRS, dk, dkBS, dkRS, dv, dvBS, dvRS, dout, doBS, doRS, q, qBS, qRS, k, kBS,
                  kRS, v, vBS, vRS, probs, mask, H, TQ, TK, scale, outFmt, seed, threshold, keepScale, in16);
}

// ---------------------------------------------------------------------------------------
// The third kernels (attention_mma3_fwd / attention_mma3_bwd): the second kernels' work
// (am2_fwd_tile, am2_bwd_pair: the same arithmetic, so the same bits) in persistent
// blocks. A second kernel's block is one chain, load → compute → store, and all blocks
// of a wave load at once and then compute at once, so memory and arithmetic take turns
// instead of overlapping. Here a grid of about as many blocks as fit on the device loops
// over the work items (item = blockIdx.x, + gridDim.x, …), and while it computes one
// item the next one's fp32 rows are on their way into a landing area of shared memory
// by 16-byte cp.async (no registers held). Each item then starts with a shared-to-shared
// pass that rounds the landed rows into the 16-bit tiles, as am_stage rounds them from
// global memory (same products q·scale, same am_pack). The landing area costs shared
// memory (fewer resident blocks), which the overlap has to pay for: the launch code
// takes these kernels where the timing test found them faster.
// Only a drawn mask or none (the training step's, kernels.SeededAttention): a stored mask
// would need its own double buffer. Every row start of q, k, v (and dout) must be 16-byte
// aligned (cp.async's 16-byte form); the launch code checks that, else it keeps the second
// kernels.
// ---------------------------------------------------------------------------------------

// am3_smem is the dynamic shared memory, declared in a C++ function: a declaration in
// an extern "C" kernel would give am_smem4 C linkage, which conflicts with the others.
__device__ __forceinline__ unsigned short* am3_smem() {
    extern __shared__ uint4 am_smem4[];
    return reinterpret_cast<unsigned short*>(am_smem4);
}

// am3_fetch starts the copy of rows [rows][AM_D] of a global fp32 matrix (row stride rs)
// into the landing area dst (row stride AM_D floats), with the whole block.
__device__ __forceinline__ void am3_fetch(float* dst, const float* src, long long rs, int rows) {
    for (int e = threadIdx.x; e < rows * 16; e += blockDim.x) {
        const int r = e >> 4, c = e & 15;
        xf_cp_async16(dst + r * AM_D + 4 * c, src + (long long)r * rs + 4 * c);
    }
}

// am3_round rounds landed rows into a 16-bit tile [rowsPad][AM_LD] (rows past `rows`
// zeros), times s when scaled: am_stage's arithmetic on the same fp32 values.
__device__ __forceinline__ void am3_round(bool kHalf, unsigned short* tile, const float* src, int rows, int rowsPad,
                                          float s, bool scaled) {
    for (int e = threadIdx.x; e < rowsPad * 16; e += blockDim.x) {
        const int r = e >> 4, c = e & 15;
        float4 y = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < rows) {
            y = *reinterpret_cast<const float4*>(src + r * AM_D + 4 * c);
            if (scaled) {
                y.x = y.x * s;
                y.y = y.y * s;
                y.z = y.z * s;
                y.w = y.w * s;
            }
        }
        uint2 o;
        o.x = am_pack(kHalf, y.x, y.y);
        o.y = am_pack(kHalf, y.z, y.w);
        *reinterpret_cast<uint2*>(tile + r * AM_LD + 4 * c) = o;
    }
}

// Forward items: (tile x, head h, batch b), item = (b·H + h)·tiles + x. Shared memory:
// Q [16W][AM_LD], K, V [TKp][AM_LD] (16-bit), TK padding flags rounded up to 16 bytes,
// with BITS the keep bitmap of the tile's rows (am3_keep_words(16W·TK) words), then the
// landing area: Q rows [16W][AM_D], K and V rows [TK][AM_D] (fp32).
// The padding flags of the next item travel in two registers (W = 1 gives 32 threads for
// TK ≤ 64).
template <bool BITS, int MAXNT = 4>
__device__ __forceinline__ void am3_fwd(void* out, long long oBS, long long oRS, const float* q, long long qBS,
                                        long long qRS, const float* k, long long kBS, long long kRS, const float* v,
                                        long long vBS, long long vRS, int H, int TQ, int TK, float scale,
                                        const unsigned char* pad, long long padStride, int causal, int queryOffset,
                                        float* probs, int half, int outFmt, unsigned long long seed,
                                        unsigned long long threshold, float keepScale, int tiles, int items) {
    const bool kHalf = half != 0;
    const int TKp = (TK + 15) & ~15;
    const int rowsQ = 16 * (blockDim.x >> 5);
    unsigned short* Qs = am3_smem();
    unsigned short* Ks = Qs + rowsQ * AM_LD;
    unsigned short* Vs = Ks + TKp * AM_LD;
    unsigned char* padded = reinterpret_cast<unsigned char*>(Vs + TKp * AM_LD);
    unsigned* keepBits = reinterpret_cast<unsigned*>(padded + ((TK + 15) & ~15));
    float* Lq = reinterpret_cast<float*>(keepBits + (BITS ? am3_keep_words(rowsQ * TK) : 0));
    float* Lk = Lq + rowsQ * AM_D;
    float* Lv = Lk + TK * AM_D;
    const bool drawn = threshold != 0ull;

    int item = blockIdx.x;
    unsigned char pf[2] = {0, 0};
    // fetch starts the copies and the padding-flag loads of item it.
    auto fetch = [&](int it) {
        const int x = it % tiles, hb = it / tiles, h = hb % H, b = hb / H;
        const int tile0 = x * rowsQ, nq = min(rowsQ, TQ - tile0);
        const long long hD = (long long)h * AM_D;
        am3_fetch(Lq, q + (long long)b * qBS + (long long)tile0 * qRS + hD, qRS, nq);
        am3_fetch(Lk, k + (long long)b * kBS + hD, kRS, TK);
        am3_fetch(Lv, v + (long long)b * vBS + hD, vRS, TK);
        const unsigned char* pr = pad ? pad + (long long)b * padStride : nullptr;
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const int j = threadIdx.x + u * blockDim.x;
            pf[u] = (pr && j < TK) ? __ldg(pr + j) : 0;
        }
    };
    if (item < items) fetch(item);
    while (item < items) {
        const int x = item % tiles, hb = item / tiles, h = hb % H, b = hb / H;
        const int tile0 = x * rowsQ, nq = min(rowsQ, TQ - tile0);
        am_cp_wait();
        __syncthreads();  // the landed rows are visible; the previous item's tiles (and bits) are free
        if (BITS && drawn) am3_keep_bits(keepBits, nq * TK, (((long long)b * H + h) * TQ + tile0) * TK, seed, threshold);
        am3_round(kHalf, Qs, Lq, nq, rowsQ, scale, true);
        am3_round(kHalf, Ks, Lk, TK, TKp, 1.0f, false);
        am3_round(kHalf, Vs, Lv, TK, TKp, 1.0f, false);
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const int j = threadIdx.x + u * blockDim.x;
            if (j < TK) padded[j] = pf[u] != 0 ? 1 : 0;
        }
        __syncthreads();  // tiles complete; the landing area is free
        const int next = item + gridDim.x;
        if (next < items) fetch(next);
        am2_fwd_tile<BITS, MAXNT>(kHalf, Qs, Ks, Vs, nullptr, padded, b, h, tile0, out, oBS, oRS, H, TQ, TK, causal,
                           queryOffset, probs, nullptr, outFmt, seed, threshold, keepScale, keepBits);
        item = next;
    }
}

// dropMask is always null here (the launch code keeps stored masks on attention_mma2_fwd).
extern "C" __global__ void __launch_bounds__(128, AM3_FWD_MINB) attention_mma3_fwd(
    void* out, long long oBS, long long oRS, const float* q, long long qBS, long long qRS, const float* k,
    long long kBS, long long kRS, const float* v, long long vBS, long long vRS, int H, int TQ, int TK, float scale,
    const unsigned char* pad, long long padStride, int causal, int queryOffset, float* probs, const float* dropMask,
    int half, int outFmt, unsigned long long seed, unsigned long long threshold, float keepScale, int tiles, int items) { XF_PDL_ENTRY();
    (void)dropMask;
    am3_fwd<false>(out, oBS, oRS, q, qBS, qRS, k, kBS, kRS, v, vBS, vRS, H, TQ, TK, scale, pad, padStride, causal,
                   queryOffset, probs, half, outFmt, seed, threshold, keepScale, tiles, items);
}

// attention_mma3_fwd_b: attention_mma3_fwd with the keep bits drawn ahead (am3_keep_bits).
extern "C" __global__ void __launch_bounds__(128, AM3_FWD_MINB) attention_mma3_fwd_b(
    void* out, long long oBS, long long oRS, const float* q, long long qBS, long long qRS, const float* k,
    long long kBS, long long kRS, const float* v, long long vBS, long long vRS, int H, int TQ, int TK, float scale,
    const unsigned char* pad, long long padStride, int causal, int queryOffset, float* probs, const float* dropMask,
    int half, int outFmt, unsigned long long seed, unsigned long long threshold, float keepScale, int tiles, int items) { XF_PDL_ENTRY();
    (void)dropMask;
    am3_fwd<true>(out, oBS, oRS, q, qBS, qRS, k, kBS, kRS, v, vBS, vRS, H, TQ, TK, scale, pad, padStride, causal,
                  queryOffset, probs, half, outFmt, seed, threshold, keepScale, tiles, items);
}

// Backward items: (h, b), item = b·H + h. Shared memory: as attention_mma2_bwd with a
// drawn mask or none (Qs, Ks, Vs, Os tiles, Z1 of am2_zbytes for P then dS, Z2 for P⊙M),
// with BITS the keep bitmap (am3_keep_words(TQ·TK) words), then the landing area: q, k,
// v, dout rows ([TQ], [TK], [TK], [TQ] × AM_D fp32) and P (TQ·TK fp32, by 4-byte copies:
// its rows start anywhere), which the rounding pass copies into Z1. Warps: enough for
// phase A in one pass and phase B's 2·NT items in one (amBackwardWarps3).
template <bool BITS, int MAXNT = 4>
__device__ __forceinline__ void am3_bwd(void* dq, long long dqBS, long long dqRS, void* dk, long long dkBS,
                                        long long dkRS, void* dv, long long dvBS, long long dvRS, const float* dout,
                                        long long doBS, long long doRS, const float* q, long long qBS, long long qRS,
                                        const float* k, long long kBS, long long kRS, const float* v, long long vBS,
                                        long long vRS, const float* probs, int H, int TQ, int TK, float scale, int half,
                                        int outFmt, unsigned long long seed, unsigned long long threshold,
                                        float keepScale, int items) {
    const bool kHalf = half != 0;
    const int TKp = (TK + 15) & ~15, TQp = (TQ + 15) & ~15, LDZ = TKp + 8;
    unsigned short* Qs = am3_smem();
    unsigned short* Ks = Qs + TQp * AM_LD;
    unsigned short* Vs = Ks + TKp * AM_LD;
    unsigned short* Os = Vs + TKp * AM_LD;
    unsigned char* z1 = reinterpret_cast<unsigned char*>(Os + TQp * AM_LD);
    unsigned char* z2 = z1 + am2_zbytes(TQ, TK);
    unsigned* keepBits = reinterpret_cast<unsigned*>(z2 + 2 * TQp * LDZ);
    float* Lq = reinterpret_cast<float*>(keepBits + (BITS ? am3_keep_words(TQ * TK) : 0));
    float* Lk = Lq + TQ * AM_D;
    float* Lv = Lk + TK * AM_D;
    float* Lo = Lv + TK * AM_D;
    float* Lp = Lo + TQ * AM_D;
    const bool drawn = threshold != 0ull;

    auto fetch = [&](int it) {
        const int h = it % H, b = it / H;
        const long long hD = (long long)h * AM_D;
        am_cp_async(Lp, probs + (((long long)b * H + h) * TQ) * TK, TQ * TK);
        am3_fetch(Lq, q + (long long)b * qBS + hD, qRS, TQ);
        am3_fetch(Lk, k + (long long)b * kBS + hD, kRS, TK);
        am3_fetch(Lv, v + (long long)b * vBS + hD, vRS, TK);
        am3_fetch(Lo, dout + (long long)b * doBS + hD, doRS, TQ);
    };
    int item = blockIdx.x;
    if (item < items) fetch(item);
    while (item < items) {
        const int h = item % H, b = item / H;
        am_cp_wait();
        __syncthreads();  // the landed rows are visible; the previous item is done with every tile
        if (BITS && drawn) am3_keep_bits(keepBits, TQ * TK, (((long long)b * H + h) * TQ) * TK, seed, threshold);
        am3_round(kHalf, Qs, Lq, TQ, TQp, scale, true);
        am3_round(kHalf, Ks, Lk, TK, TKp, 1.0f, false);
        am3_round(kHalf, Vs, Lv, TK, TKp, 1.0f, false);
        am3_round(kHalf, Os, Lo, TQ, TQp, 1.0f, false);
        float* Pz = reinterpret_cast<float*>(z1);
        for (int e = threadIdx.x; e < TQ * TK; e += blockDim.x) Pz[e] = Lp[e];
        __syncthreads();  // tiles and P complete; the landing area is free
        const int next = item + gridDim.x;
        if (next < items) fetch(next);
        am2_bwd_pair<BITS, MAXNT>(kHalf, Qs, Ks, Vs, Os, z1, z2, b, h, dq, dqBS, dqRS, dk, dkBS, dkRS, dv, dvBS,
                                  dvRS, nullptr, H, TQ, TK, scale, outFmt, seed, threshold, keepScale, keepBits);
        item = next;
    }
}

// mask is always null here (stored masks stay on attention_mma2_bwd).
extern "C" __global__ void __launch_bounds__(256, AM3_BWD_MINB) attention_mma3_bwd(
    void* dq, long long dqBS, long long dqRS, void* dk, long long dkBS, long long dkRS, void* dv, long long dvBS,
    long long dvRS, const float* dout, long long doBS, long long doRS, const float* q, long long qBS, long long qRS,
    const float* k, long long kBS, long long kRS, const float* v, long long vBS, long long vRS, const float* probs,
    const float* mask, int H, int TQ, int TK, float scale, int half, int outFmt, unsigned long long seed,
    unsigned long long threshold, float keepScale, int items) { XF_PDL_ENTRY();
    (void)mask;
    am3_bwd<false>(dq, dqBS, dqRS, dk, dkBS, dkRS, dv, dvBS, dvRS, dout, doBS, doRS, q, qBS, qRS, k, kBS, kRS, v, vBS,
                   vRS, probs, H, TQ, TK, scale, half, outFmt, seed, threshold, keepScale, items);
}

// attention_mma3_bwd_b: attention_mma3_bwd with the keep bits drawn ahead (am3_keep_bits).
extern "C" __global__ void __launch_bounds__(256, AM3_BWD_MINB) attention_mma3_bwd_b(
    void* dq, long long dqBS, long long dqRS, void* dk, long long dkBS, long long dkRS, void* dv, long long dvBS,
    long long dvRS, const float* dout, long long doBS, long long doRS, const float* q, long long qBS, long long qRS,
    const float* k, long long kBS, long long kRS, const float* v, long long vBS, long long vRS, const float* probs,
    const float* mask, int H, int TQ, int TK, float scale, int half, int outFmt, unsigned long long seed,
    unsigned long long threshold, float keepScale, int items) { XF_PDL_ENTRY();
    (void)mask;
    am3_bwd<true>(dq, dqBS, dqRS, dk, dkBS, dkRS, dv, dvBS, dvRS, dout, doBS, doRS, q, qBS, qRS, k, kBS, kRS, v, vBS,
                  vRS, probs, H, TQ, TK, scale, half, outFmt, seed, threshold, keepScale, items);
}

// attention_mma3_fwd_b2/_b3 and attention_mma3_bwd_b2/_b3: the bits variants with the
// score tiles sized for at most 2 or 3 key blocks (TK ≤ 32, ≤ 48) instead of 4. The
// element loops of the softmax and of the backward's phase A run over 2·MAXNT tiles
// with the blocks past NT predicated off, so a smaller MAXNT only drops that dead work
// (half of it at T 31, a quarter at T 41) and its registers; every live element sees
// the same arithmetic, so the results are the bits of attention_mma3_*_b.
#define AM3_B_NT(NT)                                                                                                  \
    extern "C" __global__ void __launch_bounds__(128, AM3_FWD_MINB) attention_mma3_fwd_b##NT(                          \
        void* out, long long oBS, long long oRS, const float* q, long long qBS, long long qRS, const float* k,          \
        long long kBS, long long kRS, const float* v, long long vBS, long long vRS, int H, int TQ, int TK, float scale, \
        const unsigned char* pad, long long padStride, int causal, int queryOffset, float* probs,                      \
        const float* dropMask, int half, int outFmt, unsigned long long seed, unsigned long long threshold,           \
        float keepScale, int tiles, int items) { XF_PDL_ENTRY();                                                       \
        (void)dropMask;                                                                                                \
        am3_fwd<true, NT>(out, oBS, oRS, q, qBS, qRS, k, kBS, kRS, v, vBS, vRS, H, TQ, TK, scale, pad, padStride,      \
                          causal, queryOffset, probs, half, outFmt, seed, threshold, keepScale, tiles, items);         \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(256, AM3_BWD_MINB) attention_mma3_bwd_b##NT(                          \
        void* dq, long long dqBS, long long dqRS, void* dk, long long dkBS, long long dkRS, void* dv, long long dvBS,   \
        long long dvRS, const float* dout, long long doBS, long long doRS, const float* q, long long qBS,              \
        long long qRS, const float* k, long long kBS, long long kRS, const float* v, long long vBS, long long vRS,     \
        const float* probs, const float* mask, int H, int TQ, int TK, float scale, int half, int outFmt,               \
        unsigned long long seed, unsigned long long threshold, float keepScale, int items) { XF_PDL_ENTRY();          \
        (void)mask;                                                                                                    \
        am3_bwd<true, NT>(dq, dqBS, dqRS, dk, dkBS, dkRS, dv, dvBS, dvRS, dout, doBS, doRS, q, qBS, qRS, k, kBS, kRS, \
                          v, vBS, vRS, probs, H, TQ, TK, scale, half, outFmt, seed, threshold, keepScale, items);      \
    }
AM3_B_NT(2)
AM3_B_NT(3)

// ---------------------------------------------------------------------------------------
// The third kernels with 16-bit inputs (attention_mma3_fwd_h / attention_mma3_bwd_h): q,
// k, v (and dout) come 16-bit, as the model's projections write them with
// kernels.HalfOutputs (torch.autocast's bf16/fp16 Linear outputs). The rows go by 16-byte
// cp.async straight into the 16-bit tiles: no fp32 landing area and no rounding pass
// (the tiles hold exactly what am3_round would have made of widened copies), half the
// bytes. To overlap the next item's copies with the current item's compute the tiles
// are double-buffered (buffer s computes while buffer s^1 fills); two 16-bit tile sets
// take less shared memory than one set plus the fp32 landing area (T 41: forward 41.5 KB
// instead of 54 KB, 5 blocks per SM instead of 4; backward 74 KB instead of 88 KB).
// What remains per item is the scaling of q: am3h_scale replaces each landed q by
// RN16(q·scale), the fp32 product rounded, exactly what am_stage and am3_round compute
// from a float32 q holding the same value, so the results are the third (and second)
// kernels' bits on the widened inputs. For a power-of-two scale (1/8 at head dimension
// 64) the product is exact unless it leaves the format's normal range (fp16 below
// 2⁻¹⁴·8), so the pass changes nothing there but the exponent; it is kept for every
// scale, so other head dimensions stay right. Padding rows of K, V (and Q, dO in the
// backward) past TK (TQ), which no copy writes, are zeroed once at the start; the
// forward's last query tile of a (b, h) may be partial, so am3h_scale zeroes its rows past
// nq every item. The same calls as the float32 third kernels (a drawn mask or none), and
// every row start 16-byte aligned.
// ---------------------------------------------------------------------------------------

// am3h_fetch starts the copy of rows [rows][AM_D] of a 16-bit global matrix (row stride
// rs elements) into a 16-bit tile (row stride AM_LD), 8 × 16 bytes a row, with the whole
// block.
__device__ __forceinline__ void am3h_fetch(unsigned short* tile, const unsigned short* src, long long rs, int rows) {
    for (int e = threadIdx.x; e < rows * 8; e += blockDim.x) {
        const int r = e >> 3, c = e & 7;
        xf_cp_async16(tile + r * AM_LD + 8 * c, src + (long long)r * rs + 8 * c);
    }
}

// am3h_fetch_span is am3h_fetch of item rows i0 … i0 + rows − 1 of a packed tensor (src:
// its column hD, row stride rs) whose sentence is at sp: rows in [sp.lo, sp.hi) are
// copied from packed row sp.base + i, the others (pads) written as zeros, which is what
// am3h_fetch lands from a padded tensor whose pad rows are zero.
__device__ __forceinline__ void am3h_fetch_span(unsigned short* tile, const unsigned short* src, long long rs,
                                                am_span sp, int i0, int rows) {
    for (int e = threadIdx.x; e < rows * 8; e += blockDim.x) {
        const int r = e >> 3, c = e & 7, i = i0 + r;
        if (i >= sp.lo && i < sp.hi) {
            xf_cp_async16(tile + r * AM_LD + 8 * c, src + (sp.base + i) * rs + 8 * c);
        } else {
            *reinterpret_cast<uint4*>(tile + r * AM_LD + 8 * c) = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

// am3h_zero writes zeros into rows [r0, r1) of a tile.
__device__ __forceinline__ void am3h_zero(unsigned short* tile, int r0, int r1) {
    for (int e = threadIdx.x; e < (r1 - r0) * 8; e += blockDim.x) {
        *reinterpret_cast<uint4*>(tile + (r0 + (e >> 3)) * AM_LD + 8 * (e & 7)) = make_uint4(0u, 0u, 0u, 0u);
    }
}

// am3h_scale replaces the landed 16-bit rows [0, rows) of the tile by RN16(x·s) (x
// widened exactly, the fp32 product, am_pack) and writes zeros into rows [rows, rowsPad).
__device__ __forceinline__ void am3h_scale(bool kHalf, unsigned short* tile, int rows, int rowsPad, float s) {
    for (int e = threadIdx.x; e < rowsPad * 16; e += blockDim.x) {
        const int r = e >> 4, c = e & 15;
        uint2* p = reinterpret_cast<uint2*>(tile + r * AM_LD + 4 * c);
        uint2 o = make_uint2(0u, 0u);
        if (r < rows) {
            const uint2 w = *p;
            const float2 lo = am_widen2(kHalf, w.x), hi = am_widen2(kHalf, w.y);
            o.x = am_pack(kHalf, lo.x * s, lo.y * s);
            o.y = am_pack(kHalf, hi.x * s, hi.y * s);
        }
        *p = o;
    }
}

// Forward items as attention_mma3_fwd. Shared memory: two buffers of Q [16W][AM_LD], K, V
// [TKp][AM_LD] (16-bit), then TK padding flags (those of the item being computed; the
// next item's travel in two registers), rounded up to 16 bytes, then with BITS the keep
// bitmap of the tile's rows (am3_keep_words(16W·TK) words), drawn by the whole block
// between the item's two barriers as attention_mma3_fwd_b does. MAXNT as AM3_B_NT's.
#define AM3H_FWD_PARAMS                                                                                          \
    void *out, long long oBS, long long oRS, const unsigned short *q, long long qBS, long long qRS,               \
        const unsigned short *k, long long kBS, long long kRS, const unsigned short *v, long long vBS,           \
        long long vRS, int H, int TQ, int TK, float scale, const unsigned char *pad, long long padStride,        \
        int causal, int queryOffset, float *probs, int half, int outFmt, unsigned long long seed,                \
        unsigned long long threshold, float keepScale, int tiles, int items
#define AM3H_FWD_ARGS                                                                                            \
    out, oBS, oRS, q, qBS, qRS, k, kBS, kRS, v, vBS, vRS, H, TQ, TK, scale, pad, padStride, causal, queryOffset, \
        probs, half, outFmt, seed, threshold, keepScale, tiles, items

// ROWS (attention_mma3_fwd_hr*, kernels.PackedAttention): q, k, v and out are packed
// rows, placed by qSpan (the queries' sentences) and kSpan (the keys'), three ints per
// sentence (am_span); their batch strides are unused.
template <bool BITS, int MAXNT, bool ROWS = false>
__device__ __forceinline__ void am3h_fwd(AM3H_FWD_PARAMS, const int* qSpan = nullptr, const int* kSpan = nullptr) {
    const bool kHalf = half != 0;
    const int TKp = (TK + 15) & ~15;
    const int rowsQ = 16 * (blockDim.x >> 5);
    const int bufElems = (rowsQ + 2 * TKp) * AM_LD;
    unsigned short* buf = am3_smem();
    unsigned char* padded = reinterpret_cast<unsigned char*>(buf + 2 * bufElems);
    unsigned* keepBits = reinterpret_cast<unsigned*>(padded + ((TK + 15) & ~15));
    const bool drawn = threshold != 0ull;
#pragma unroll
    for (int s = 0; s < 2; s++) {
        unsigned short* Ks = buf + s * bufElems + rowsQ * AM_LD;
        am3h_zero(Ks, TK, TKp);
        am3h_zero(Ks + TKp * AM_LD, TK, TKp);
    }

    int item = blockIdx.x;
    unsigned char pf[2] = {0, 0};
    // fetch starts the copies of item it into buffer s, and its padding-flag loads.
    auto fetch = [&](int it, int s) {
        const int x = it % tiles, hb = it / tiles, h = hb % H, b = hb / H;
        const int tile0 = x * rowsQ, nq = min(rowsQ, TQ - tile0);
        const long long hD = (long long)h * AM_D;
        unsigned short* Qs = buf + s * bufElems;
        if constexpr (ROWS) {
            const am_span qs = am_span_of(qSpan, b), ks = am_span_of(kSpan, b);
            am3h_fetch_span(Qs, q + hD, qRS, qs, tile0, nq);
            am3h_fetch_span(Qs + rowsQ * AM_LD, k + hD, kRS, ks, 0, TK);
            am3h_fetch_span(Qs + (rowsQ + TKp) * AM_LD, v + hD, vRS, ks, 0, TK);
        } else {
            am3h_fetch(Qs, q + (long long)b * qBS + (long long)tile0 * qRS + hD, qRS, nq);
            am3h_fetch(Qs + rowsQ * AM_LD, k + (long long)b * kBS + hD, kRS, TK);
            am3h_fetch(Qs + (rowsQ + TKp) * AM_LD, v + (long long)b * vBS + hD, vRS, TK);
        }
        const unsigned char* pr = pad ? pad + (long long)b * padStride : nullptr;
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const int j = threadIdx.x + u * blockDim.x;
            pf[u] = (pr && j < TK) ? __ldg(pr + j) : 0;
        }
    };
    if (item < items) fetch(item, 0);
    int s = 0;
    while (item < items) {
        const int x = item % tiles, hb = item / tiles, h = hb % H, b = hb / H;
        const int tile0 = x * rowsQ, nq = min(rowsQ, TQ - tile0);
        unsigned short* Qs = buf + s * bufElems;
        am_cp_wait();
        __syncthreads();  // buffer s landed and visible; every warp is done with buffer s^1 and the flags
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const int j = threadIdx.x + u * blockDim.x;
            if (j < TK) padded[j] = pf[u] != 0 ? 1 : 0;
        }
        const int next = item + gridDim.x;
        if (next < items) fetch(next, s ^ 1);
        am3h_scale(kHalf, Qs, nq, rowsQ, scale);
        if (BITS && drawn) am3_keep_bits(keepBits, nq * TK, (((long long)b * H + h) * TQ + tile0) * TK, seed, threshold);
        __syncthreads();  // q scaled, flags (and bits) in place
        am_span qs{};
        if constexpr (ROWS) qs = am_span_of(qSpan, b);
        am2_fwd_tile<BITS, MAXNT>(kHalf, Qs, Qs + rowsQ * AM_LD, Qs + (rowsQ + TKp) * AM_LD, nullptr, padded, b, h,
                                  tile0, out, oBS, oRS, H, TQ, TK, causal, queryOffset, probs, nullptr, outFmt, seed,
                                  threshold, keepScale, keepBits, ROWS ? &qs : nullptr);
        item = next;
        s ^= 1;
    }
}

extern "C" __global__ void __launch_bounds__(128, AM3_FWD_MINB) attention_mma3_fwd_h(AM3H_FWD_PARAMS) { XF_PDL_ENTRY();
    am3h_fwd<false, 4>(AM3H_FWD_ARGS);
}

// Backward items as attention_mma3_bwd. Shared memory: two buffers of Qs, Ks, Vs, Os
// [·][AM_LD] (16-bit) and Z1 (am2_zbytes: P as it lands by 4-byte copies, then dS),
// then one Z2 for P⊙M (only written and read inside an item). Warps: amBackwardWarps3's
// (phase A's query blocks and phase B's 2·NT items each in one pass).
// ROWS: as am3h_fwd's (dout, q, k, v, dq, dk, dv packed rows; qSpan for dout, q and dq,
// kSpan for k, v, dk and dv).
template <bool BITS, int MAXNT, bool ROWS = false>
__device__ __forceinline__ void am3h_bwd(bool kHalf, void* dq, long long dqBS, long long dqRS, void* dk, long long dkBS,
                                         long long dkRS, void* dv, long long dvBS, long long dvRS,
                                         const unsigned short* dout, long long doBS, long long doRS,
                                         const unsigned short* q, long long qBS, long long qRS, const unsigned short* k,
                                         long long kBS, long long kRS, const unsigned short* v, long long vBS,
                                         long long vRS, const float* probs, int H, int TQ, int TK, float scale,
                                         int outFmt, unsigned long long seed, unsigned long long threshold,
                                         float keepScale, int items, const int* qSpan = nullptr,
                                         const int* kSpan = nullptr) {
    const int TKp = (TK + 15) & ~15, TQp = (TQ + 15) & ~15, LDZ = TKp + 8;
    const int bufElems = AM_LD * (2 * TQp + 2 * TKp) + am2_zbytes(TQ, TK) / 2;
    unsigned short* buf = am3_smem();
    unsigned char* z2 = reinterpret_cast<unsigned char*>(buf + 2 * bufElems);
    // With BITS the keep bitmap of the item's TQ·TK elements follows Z2.
    unsigned* keepBits = reinterpret_cast<unsigned*>(z2 + 2 * TQp * LDZ);
    const bool drawn = threshold != 0ull;
#pragma unroll
    for (int s = 0; s < 2; s++) {
        unsigned short* Qs = buf + s * bufElems;
        am3h_zero(Qs, TQ, TQp);
        am3h_zero(Qs + TQp * AM_LD, TK, TKp);
        am3h_zero(Qs + (TQp + TKp) * AM_LD, TK, TKp);
        am3h_zero(Qs + (TQp + 2 * TKp) * AM_LD, TQ, TQp);
    }

    auto fetch = [&](int it, int s) {
        const int h = it % H, b = it / H;
        const long long hD = (long long)h * AM_D;
        unsigned short* Qs = buf + s * bufElems;
        float* Pz = reinterpret_cast<float*>(Qs + AM_LD * (2 * TQp + 2 * TKp));
        am_cp_async(Pz, probs + (((long long)b * H + h) * TQ) * TK, TQ * TK);
        if constexpr (ROWS) {
            const am_span qs = am_span_of(qSpan, b), ks = am_span_of(kSpan, b);
            am3h_fetch_span(Qs, q + hD, qRS, qs, 0, TQ);
            am3h_fetch_span(Qs + TQp * AM_LD, k + hD, kRS, ks, 0, TK);
            am3h_fetch_span(Qs + (TQp + TKp) * AM_LD, v + hD, vRS, ks, 0, TK);
            am3h_fetch_span(Qs + (TQp + 2 * TKp) * AM_LD, dout + hD, doRS, qs, 0, TQ);
        } else {
            am3h_fetch(Qs, q + (long long)b * qBS + hD, qRS, TQ);
            am3h_fetch(Qs + TQp * AM_LD, k + (long long)b * kBS + hD, kRS, TK);
            am3h_fetch(Qs + (TQp + TKp) * AM_LD, v + (long long)b * vBS + hD, vRS, TK);
            am3h_fetch(Qs + (TQp + 2 * TKp) * AM_LD, dout + (long long)b * doBS + hD, doRS, TQ);
        }
    };
    int item = blockIdx.x;
    if (item < items) fetch(item, 0);
    // step computes item on buffer s (a constant at each call: the tiles' addresses are
    // then fixed offsets, which keeps ptxas from holding them across the item).
    auto step = [&](int s) {
        const int h = item % H, b = item / H;
        unsigned short* Qs = buf + s * bufElems;
        am_cp_wait();
        __syncthreads();  // buffer s landed and visible; every warp is done with buffer s^1 and Z2
        const int next = item + gridDim.x;
        if (next < items) fetch(next, s ^ 1);
        am3h_scale(kHalf, Qs, TQ, TQp, scale);
        if (BITS && drawn) am3_keep_bits(keepBits, TQ * TK, (((long long)b * H + h) * TQ) * TK, seed, threshold);
        __syncthreads();  // q scaled (and the bits drawn)
        unsigned short* Ks = Qs + TQp * AM_LD;
        unsigned short* Vs = Ks + TKp * AM_LD;
        unsigned short* Os = Vs + TKp * AM_LD;
        unsigned char* z1 = reinterpret_cast<unsigned char*>(Os + TQp * AM_LD);
        am_span qs{}, ks{};
        if constexpr (ROWS) qs = am_span_of(qSpan, b), ks = am_span_of(kSpan, b);
        am2_bwd_pair<BITS, MAXNT>(kHalf, Qs, Ks, Vs, Os, z1, z2, b, h, dq, dqBS, dqRS, dk, dkBS, dkRS, dv, dvBS, dvRS,
                                  nullptr, H, TQ, TK, scale, outFmt, seed, threshold, keepScale, keepBits,
                                  ROWS ? &qs : nullptr, ROWS ? &ks : nullptr);
        item = next;
    };
    while (item < items) {
        step(0);
        if (item >= items) break;
        step(1);
    }
}

// attention_mma3_bwd_h: the float32 third backward's bound (128 registers, no spills on
// sm_90; 2 blocks of 6 warps per SM at T 41, where the registers, not the shared memory,
// now limit them). Held to 112 registers for 3 blocks (__maxnreg__), ptxas spilled 264
// bytes a thread; with __launch_bounds__(192, 3) it stopped at 96 and spilled too.
extern "C" __global__ void __launch_bounds__(256, AM3_BWD_MINB) attention_mma3_bwd_h(
    void* dq, long long dqBS, long long dqRS, void* dk, long long dkBS, long long dkRS, void* dv, long long dvBS,
    long long dvRS, const unsigned short* dout, long long doBS, long long doRS, const unsigned short* q, long long qBS,
    long long qRS, const unsigned short* k, long long kBS, long long kRS, const unsigned short* v, long long vBS,
    long long vRS, const float* probs, int H, int TQ, int TK, float scale, int half, int outFmt,
    unsigned long long seed, unsigned long long threshold, float keepScale, int items) { XF_PDL_ENTRY();
    am3h_bwd<false, 4>(half != 0, dq, dqBS, dqRS, dk, dkBS, dkRS, dv, dvBS, dvRS, dout, doBS, doRS, q, qBS, qRS, k,
                       kBS, kRS, v, vBS, vRS, probs, H, TQ, TK, scale, outFmt, seed, threshold, keepScale, items);
}

// attention_mma3_fwd_hb*, attention_mma3_bwd_hb*: the 16-bit-input third kernels with the
// bits variant's keep bitmap and the short-key sizes of AM3_B_NT (hb: 4 key blocks, hb2:
// 2, hb3: 3). The same arithmetic on the same rounded operands, so the bits of the
// float32-input bits kernels on the widened inputs.
#define AM3_HB(SUF, NT)                                                                                               \
    extern "C" __global__ void __launch_bounds__(128, AM3_FWD_MINB) attention_mma3_fwd_hb##SUF(AM3H_FWD_PARAMS) { XF_PDL_ENTRY(); \
        am3h_fwd<true, NT>(AM3H_FWD_ARGS);                                                                          \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(256, AM3_BWD_MINB) attention_mma3_bwd_hb##SUF(                      \
        void* dq, long long dqBS, long long dqRS, void* dk, long long dkBS, long long dkRS, void* dv, long long dvBS, \
        long long dvRS, const unsigned short* dout, long long doBS, long long doRS, const unsigned short* q,          \
        long long qBS, long long qRS, const unsigned short* k, long long kBS, long long kRS, const unsigned short* v,  \
        long long vBS, long long vRS, const float* probs, int H, int TQ, int TK, float scale, int half, int outFmt,   \
        unsigned long long seed, unsigned long long threshold, float keepScale, int items) { XF_PDL_ENTRY();         \
        am3h_bwd<true, NT>(half != 0, dq, dqBS, dqRS, dk, dkBS, dkRS, dv, dvBS, dvRS, dout, doBS, doRS, q, qBS, qRS,  \
                           k, kBS, kRS, v, vBS, vRS, probs, H, TQ, TK, scale, outFmt, seed, threshold, keepScale,    \
                           items);                                                                                  \
    }
AM3_HB(, 4)
AM3_HB(2, 2)
AM3_HB(3, 3)

// attention_mma3_fwd_hr*, attention_mma3_bwd_hr*: the _hb kernels on packed rows
// (kernels.PackedAttention): q, k, v, dout and the outputs are rows of packed tensors
// that qSpan and kSpan place (am_span, three ints per sentence); the tiles land the same
// values as the _hb kernels land from the padded tensors PackRows would build (pad rows
// zero), so the results are their bits, stored only at the real rows.
#define AM3_HR(SUF, NT)                                                                                               \
    extern "C" __global__ void __launch_bounds__(128, AM3_FWD_MINB) attention_mma3_fwd_hr##SUF(                      \
        AM3H_FWD_PARAMS, const int* qSpan, const int* kSpan) { XF_PDL_ENTRY();                                      \
        am3h_fwd<true, NT, true>(AM3H_FWD_ARGS, qSpan, kSpan);                                                      \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(256, AM3_BWD_MINB) attention_mma3_bwd_hr##SUF(                      \
        void* dq, long long dqBS, long long dqRS, void* dk, long long dkBS, long long dkRS, void* dv, long long dvBS, \
        long long dvRS, const unsigned short* dout, long long doBS, long long doRS, const unsigned short* q,          \
        long long qBS, long long qRS, const unsigned short* k, long long kBS, long long kRS, const unsigned short* v,  \
        long long vBS, long long vRS, const float* probs, int H, int TQ, int TK, float scale, int half, int outFmt,   \
        unsigned long long seed, unsigned long long threshold, float keepScale, int items, const int* qSpan,          \
        const int* kSpan) { XF_PDL_ENTRY();                                                                         \
        am3h_bwd<true, NT, true>(half != 0, dq, dqBS, dqRS, dk, dkBS, dkRS, dv, dvBS, dvRS, dout, doBS, doRS, q, qBS,  \
                                 qRS, k, kBS, kRS, v, vBS, vRS, probs, H, TQ, TK, scale, outFmt, seed, threshold,     \
                                 keepScale, items, qSpan, kSpan);                                                   \
    }
AM3_HR(, 4)
AM3_HR(2, 2)
AM3_HR(3, 3)

// attention_mma_round packs pairs of floats as the kernels above round their operands
// (y[i] = x[2i] in the low half, x[2i+1] in the high half), for TestAttentionMMARounding.
extern "C" __global__ void attention_mma_round(unsigned* y, const float* x, long long pairs, int half) { XF_PDL_ENTRY();
    for (long long i = xf_tid(); i < pairs; i += xf_stride()) {
        y[i] = half ? am_pack(true, x[2 * i], x[2 * i + 1]) : am_pack(false, x[2 * i], x[2 * i + 1]);
    }
}
