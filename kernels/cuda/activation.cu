// activation.cu — elementwise nonlinearities (fairseq's activation_fn), forward.
//
// Convention: transcendentals in double, rounded once (at least as accurate as torch's
// float kernels; matches the CPU backend). kind: 0 relu, 1 gelu (erf), 2 gelu_accurate
// (tanh approximation), 3 tanh. y may alias x.
#include "xform.cuh"

extern "C" __global__ void activate(float* y, const float* x, long long n, int kind) {
    const double c = 0.7978845608028654;  // sqrt(2/pi)
    for (long long i = xf_tid(); i < n; i += xf_stride()) {
        float v = x[i];
        double z = (double)v;
        float out;
        switch (kind) {
            case 0: out = v > 0.0f ? v : 0.0f; break;
            case 1: out = (float)(z * 0.5 * (1.0 + erf(z / 1.4142135623730951))); break;
            case 2: out = (float)(0.5 * z * (1.0 + tanh(c * (z + 0.044715 * z * z * z)))); break;
            default: out = (float)tanh(z); break;
        }
        y[i] = out;
    }
}
