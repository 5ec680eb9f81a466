// loss.cu — fairseq's label-smoothed cross entropy fused with log_softmax, forward and
// backward in one pass over the logits.
//
// Convention (the CPU backend's LabelSmoothedLoss): per row, log_softmax exactly as
// log_softmax in softmax.cu (NaN-propagating max, float x − max, double Σ exp, c = max +
// (float)log Σ formed once, lp = x − c in float); with ε̄ = ε / V in double,
//   loss_r = (1 − ε)·(−lp_t) + ε̄·(−Σ_v lp_v)      nll_r = −lp_t
// and, when dlogits is not null, dlogits = (float)((exp(lp) − ε̄ − [v = t](1 − ε))·scale).
// Rows whose target is ignore contribute 0 and get a zero gradient row. The per-row
// values go to rowOut [rows, 2] (double) and are summed by sum_strided in row order on
// the device, so the host reads two doubles per call. dlogits may alias logits.
#include "xform.cuh"

extern "C" __global__ void ls_loss(float* dlogits, double* rowOut, const float* logits, const int* targets,
                                   int rows, int V, float eps, int ignore, float scale) {
    __shared__ double dscratch[32];
    __shared__ float fscratch[32];
    const double epsI = (double)eps / (double)V;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* x = logits + r * V;
        float* g = dlogits ? dlogits + r * V : nullptr;
        const int t = targets[r];
        if (t == ignore) {
            if (threadIdx.x == 0) {
                rowOut[2 * r] = 0;
                rowOut[2 * r + 1] = 0;
            }
            if (g)
                for (int j = threadIdx.x; j < V; j += blockDim.x) g[j] = 0.0f;
            continue;
        }
        const float xt = x[t];  // read before any thread may overwrite it (aliasing)
        float m = -XF_INF;
        for (int j = threadIdx.x; j < V; j += blockDim.x) m = xf_max_nan(m, x[j]);
        m = xf_block_max<true>(m, fscratch);
        double s = 0;
        for (int j = threadIdx.x; j < V; j += blockDim.x) s += exp((double)(x[j] - m));
        const float c = m + (float)log(xf_block_sum(s, dscratch));
        double sl = 0;
        for (int j = threadIdx.x; j < V; j += blockDim.x) sl += (double)(x[j] - c);
        const double smooth = -xf_block_sum(sl, dscratch);
        const float lpt = xt - c;
        if (threadIdx.x == 0) {
            rowOut[2 * r] = (1 - (double)eps) * (double)(-lpt) + epsI * smooth;
            rowOut[2 * r + 1] = (double)(-lpt);
        }
        if (g) {
            for (int j = threadIdx.x; j < V; j += blockDim.x) {
                double gv = exp((double)(x[j] - c)) - epsI;
                if (j == t) gv -= 1 - (double)eps;
                g[j] = (float)(gv * (double)scale);
            }
        }
    }
}
