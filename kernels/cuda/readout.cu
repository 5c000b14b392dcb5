// The readout (docs/model.md §Round step and readout, 3): g = mean over s of
// LN(z[s]; readout.ln), logits = linear(GELU(linear(g, w1, b1)), w2, b2).
// Concatenated after common.cuh (see there).

namespace qecd {

// Logits [O] of the state z [S][D] in shared memory. `scratch` is shared
// memory for 2·S + D + R floats; `logits` is global memory.
__device__ __forceinline__ void readout(const float* z, float* scratch, const float* __restrict__ w,
                                        float* __restrict__ logits) {
    float* stats = scratch;      // [S][2]: mean, 1/√(var + ε)
    float* g = scratch + 2 * S;  // [D]
    float* hid = g + D;          // [R]
    const int lane = threadIdx.x & 31;
    for (int s = threadIdx.x >> 5; s < S; s += NWARPS) {
        WarpRow<D> row;
        row.load(z + s * D, lane);
        if (lane == 0) {
            stats[2 * s] = row.mean;
            stats[2 * s + 1] = row.rstd;
        }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < D; j += NT) {
        const float gj = __ldg(w + QECD_OFF_RO_LN_G + j), bj = __ldg(w + QECD_OFF_RO_LN_B + j);
        float sum = 0.0f;
        for (int s = 0; s < S; ++s) sum += fmaf((z[s * D + j] - stats[2 * s]) * stats[2 * s + 1], gj, bj);
        g[j] = sum / S;
    }
    __syncthreads();
    for (int r = threadIdx.x; r < R; r += NT) {
        float acc = __ldg(w + QECD_OFF_RO_B1 + r);
#pragma unroll 8
        for (int j = 0; j < D; ++j) acc = fmaf(g[j], __ldg(w + QECD_OFF_RO_W1 + j * R + r), acc);
        hid[r] = gelu(acc);
    }
    __syncthreads();
    for (int o = threadIdx.x; o < O; o += NT) {
        float acc = __ldg(w + QECD_OFF_RO_B2 + o);
        for (int r = 0; r < R; ++r) acc = fmaf(hid[r], __ldg(w + QECD_OFF_RO_W2 + r * O + o), acc);
        logits[o] = acc;
    }
}

}  // namespace qecd

// Readout of B streams, one block each: states [B][S][D] → logits [B][O].
extern "C" __global__ void __launch_bounds__(qecd::NT, QECD_MIN_BLOCKS)
    qecd_readout(const float* __restrict__ states, const float* __restrict__ w, float* __restrict__ logits) {
    using namespace qecd;
    extern __shared__ float smem[];
    float* z = smem + QECD_SM_Z;
    const float* st = states + (long long)blockIdx.x * (S * D);
    for (int i = threadIdx.x; i < S * D; i += NT) z[i] = st[i];
    __syncthreads();
    readout(z, smem + QECD_SM_READOUT, w, logits + (long long)blockIdx.x * O);
}
