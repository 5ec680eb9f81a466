// activation.cu — elementwise nonlinearities (fairseq's activation_fn), forward and
// backward.
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

// activate_bwd: dx = (float)(dy · act'(x)) with x the activation's input, the derivative
// in double as the CPU backend evaluates it (relu: dy where x > 0, else 0; NaN gives 0).
// dx may alias dy. Constants are written as Go folds them (3·0.044715 = 0.134145).
extern "C" __global__ void activate_bwd(float* dx, const float* dy, const float* x, long long n, int kind) {
    const double c = 0.7978845608028654;           // sqrt(2/pi)
    const double sqrt2pi = 2.5066282746310002;     // sqrt(2*pi)
    for (long long i = xf_tid(); i < n; i += xf_stride()) {
        float v = x[i];
        if (kind == 0) {
            dx[i] = v > 0.0f ? dy[i] : 0.0f;
            continue;
        }
        double z = (double)v, d;
        switch (kind) {
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
        dx[i] = (float)((double)dy[i] * d);
    }
}
