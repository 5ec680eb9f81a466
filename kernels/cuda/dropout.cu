// dropout.cu — dropout keep masks drawn on the device by the counter-based hash that
// kernels.DropoutHash specifies (SplitMix64's output i for state seed).
//
// Convention: unsigned 64-bit integer arithmetic only (wrapping, as Go's uint64), and
// the keep threshold and scale come from the host (kernels.DropoutThreshold and
// kernels.DropoutScale), so every element equals the CPU backend's bit for bit.
#include "xform.cuh"

// m[i] = keep when (hash(seed, i) >> 40) >= threshold, else 0, for i < n.
extern "C" __global__ void dropout_mask(float* m, unsigned long long seed, unsigned long long threshold,
                                        float keep, long long n) {
    for (long long i = xf_tid(); i < n; i += xf_stride()) {
        unsigned long long z = seed + ((unsigned long long)i + 1ull) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        m[i] = (z >> 40) >= threshold ? keep : 0.0f;
    }
}
