// embedding.cu — token embedding gather with scale, positional rows added on top, and
// the backward scatter-add into the table.
#include "xform.cuh"

// y[i*dim + c] = scale * table[ids[i]*dim + c]. Ids are validated by the caller.
extern "C" __global__ void embed(float* y, const float* table, const int* ids, int rows, int dim, float scale) { XF_PDL_ENTRY();
    long long total = (long long)rows * dim;
    for (long long i = xf_tid(); i < total; i += xf_stride()) {
        long long r = i / dim, c = i - r * dim;
        y[i] = scale * table[(long long)ids[r] * dim + c];
    }
}

// y[i*dim + c] += table[rows[i]*dim + c] (learned or sinusoidal positions).
extern "C" __global__ void add_rows(float* y, const float* table, const int* rowIdx, int rows, int dim) { XF_PDL_ENTRY();
    long long total = (long long)rows * dim;
    for (long long i = xf_tid(); i < total; i += xf_stride()) {
        long long r = i / dim, c = i - r * dim;
        y[i] += table[(long long)rowIdx[r] * dim + c];
    }
}

// embed_bwd: dtable[id] += scale·dy[i] over the rows i whose id is id, without atomics.
// The host sorts the rows by id (stably) into csr: offsets[0..nu] then ids[nu] then the
// row indices; one thread per (distinct id, column) adds its rows in increasing i, each
// term rounded as the CPU backend's serial loop rounds it, so the result is bit-identical
// to it and the same on every run. Rows of the skipped (pad) id are left out by the host.
extern "C" __global__ void embed_bwd(float* dtable, const float* dy, const int* csr, int nu, int dim, float scale) { XF_PDL_ENTRY();
    const int* ids = csr + nu + 1;
    const int* rowsOf = csr + 2 * nu + 1;
    long long total = (long long)nu * dim;
    for (long long t = xf_tid(); t < total; t += xf_stride()) {
        long long u = t / dim, c = t - u * dim;
        float* dst = dtable + (long long)ids[u] * dim + c;
        float acc = *dst;
        for (int p = csr[u]; p < csr[u + 1]; p++) acc = acc + scale * dy[(long long)rowsOf[p] * dim + c];
        *dst = acc;
    }
}
