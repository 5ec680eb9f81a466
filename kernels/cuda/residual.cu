// residual.cu — the residual of every sub-layer: y = alpha·(x⊙omega) + branch, forward
// and backward (the ω gradient is a column sum: col_partial mode 1 in reduce.cu).
//
// Convention: omega is Admin's per-channel ω (null means all ones), alpha DeepNet's
// scale. Products in the reference's order, (x·ω)·α then + branch, each rounded (no FMA),
// so an ω or α of 1 gives exactly x + branch. y may alias x or branch.
#include "xform.cuh"

extern "C" __global__ void residual(float* y, const float* x, const float* branch, const float* omega,
                                    float alpha, int rows, int dim) {
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
                                        int dim) {
    long long n = (long long)rows * dim;
    for (long long i = xf_tid(); i < n; i += xf_stride()) {
        float v = dy[i];
        if (omega) v = v * omega[i % dim];
        dx[i] = dx[i] + v * alpha;
    }
}
