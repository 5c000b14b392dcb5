// The round step (docs/model.md §Round step and readout, 1–2), fused: one
// thread block per stream keeps the state in shared memory through the
// embedding, the state update and every layer, and through all the rounds of
// a launch. Concatenated after common.cuh and readout.cu (see common.cuh).

namespace qecd {

// z ← (z + x) / √2 with x[s] = linear(f[s], embed.w_in, embed.b_in) + embed.stab[s];
// f is this round's features [S][NF], in global memory or in the kernel
// parameters (so read with plain loads, not __ldg).
__device__ __forceinline__ void embed_update(float* z, const float* __restrict__ f, const float* __restrict__ w) {
    for (int i = threadIdx.x; i < S * D; i += NT) {
        const int s = i / D, j = i % D;
        float x = __ldg(w + QECD_OFF_B_IN + j);
#pragma unroll
        for (int k = 0; k < NF; ++k) x = fmaf(f[s * NF + k], __ldg(w + QECD_OFF_W_IN + j * NF + k), x);
        x += __ldg(w + QECD_OFF_STAB + i);
        z[i] = (z[i] + x) * FRAC_1_SQRT_2;
    }
}

// Multi-head attention: qkv [S][LDB] holds Q | K | V per row (shared memory),
// bias_t is attn.bias as [H][S_j][S_i] (global), out [S][LDA] gets the heads
// concatenated. A thread per (head, query) runs the softmax online over the
// keys (running maximum, rescaled sum and output), so no score matrix is
// stored; the lanes of a warp take consecutive queries of one head, so the
// K and V reads are broadcasts and the bias reads coalesce.
__device__ __forceinline__ void attention(const float* qkv, const float* __restrict__ bias_t, float* out) {
    const float scale = 1.0f / sqrtf((float)DH);
    for (int item = threadIdx.x; item < H * S; item += NT) {
        const int h = item / S, i = item % S;
        float q[DH], acc[DH];
#pragma unroll
        for (int c = 0; c < DH; ++c) q[c] = qkv[i * LDB + h * DH + c];
        const float* bt = bias_t + h * S * S + i;
        const float* k = qkv + D + h * DH;  // key j at k + j·LDB, its value at k + j·LDB + D
        float dot = 0.0f;
#pragma unroll
        for (int c = 0; c < DH; ++c) dot = fmaf(q[c], k[c], dot);
        float m = dot * scale + __ldg(bt);
        float l = 1.0f;
#pragma unroll
        for (int c = 0; c < DH; ++c) acc[c] = k[D + c];
        for (int j = 1; j < S; ++j) {
            const float* kj = k + j * LDB;
            dot = 0.0f;
#pragma unroll
            for (int c = 0; c < DH; ++c) dot = fmaf(q[c], kj[c], dot);
            const float score = dot * scale + __ldg(bt + j * S);
            if (score > m) {
                const float corr = expf(m - score);
                l *= corr;
#pragma unroll
                for (int c = 0; c < DH; ++c) acc[c] *= corr;
                m = score;
            }
            const float p = expf(score - m);
            l += p;
#pragma unroll
            for (int c = 0; c < DH; ++c) acc[c] = fmaf(p, kj[D + c], acc[c]);
        }
        const float inv = 1.0f / l;
#pragma unroll
        for (int c = 0; c < DH; ++c) out[i * LDA + h * DH + c] = acc[c] * inv;
    }
}

// One round step of the state z [S][D] (shared memory) with this round's
// features f [S][NF] (global); a and buf are the block's shared scratch.
__device__ __forceinline__ void round_step(float* z, float* a, float* buf, const float* __restrict__ f,
                                           const float* __restrict__ w) {
    embed_update(z, f, w);
    __syncthreads();
#pragma unroll 1
    for (int l = 0; l < L; ++l) {
        const float* lw = w + QECD_OFF_LAYER0 + (long long)l * QECD_LAYER_STRIDE;
        layer_norm(z, D, lw + QECD_LOFF_LN1_G, lw + QECD_LOFF_LN1_B, a, LDA);
        __syncthreads();
        linear<D, 3 * D, STORE>(a, LDA, lw + QECD_LOFF_WQKV, lw + QECD_LOFF_BQKV, buf, LDB);
        __syncthreads();
        attention(buf, lw + QECD_LOFF_ATTN_BIAS, a);
        __syncthreads();
        linear<D, D, ADD>(a, LDA, lw + QECD_LOFF_WO, lw + QECD_LOFF_BO, z, D);
        __syncthreads();
        layer_norm(z, D, lw + QECD_LOFF_LN2_G, lw + QECD_LOFF_LN2_B, a, LDA);
        __syncthreads();
        linear<D, F, STORE_GELU>(a, LDA, lw + QECD_LOFF_W1, lw + QECD_LOFF_B1, buf, LDB);
        __syncthreads();
        linear<F, D, ADD>(buf, LDB, lw + QECD_LOFF_W2, lw + QECD_LOFF_B2, z, D);
        __syncthreads();
    }
}

}  // namespace qecd

// `rounds` round steps of B streams, one block each: states [B][S][D] are
// read, stepped and written back; stream b's round t reads
// features + b·stride + t·S·NF.
extern "C" __global__ void __launch_bounds__(qecd::NT, QECD_MIN_BLOCKS)
    qecd_step(float* __restrict__ states, const float* __restrict__ features, long long stride, int rounds,
              const float* __restrict__ w) {
    using namespace qecd;
    extern __shared__ float smem[];
    float* z = smem + QECD_SM_Z;
    float* st = states + (long long)blockIdx.x * (S * D);
    for (int i = threadIdx.x; i < S * D; i += NT) z[i] = st[i];
    __syncthreads();
    const float* f = features + (long long)blockIdx.x * stride;
    for (int t = 0; t < rounds; ++t) round_step(z, smem + QECD_SM_A, smem + QECD_SM_BUF, f + t * (S * NF), w);
    for (int i = threadIdx.x; i < S * D; i += NT) st[i] = z[i];
}

#if QECD_PARAM_FEATURES > 0
// One round's features of one stream, passed by value in the kernel parameters.
struct RoundFeatures {
    float f[QECD_PARAM_FEATURES];  // [S][NF]
};

// One round step of stream 0 (batch 1) with its features in the kernel
// parameters: the launch carries them, so no copy precedes it (latency).
extern "C" __global__ void __launch_bounds__(qecd::NT, QECD_MIN_BLOCKS)
    qecd_step_one(float* __restrict__ states, const __grid_constant__ RoundFeatures features,
                  const float* __restrict__ w) {
    using namespace qecd;
    extern __shared__ float smem[];
    float* z = smem + QECD_SM_Z;
    for (int i = threadIdx.x; i < S * D; i += NT) z[i] = states[i];
    __syncthreads();
    round_step(z, smem + QECD_SM_A, smem + QECD_SM_BUF, features.f, w);
    for (int i = threadIdx.x; i < S * D; i += NT) states[i] = z[i];
}
#endif

// Whole shots, one block each: from the zero state, `rounds` round steps
// (stream b's round t reads features + b·stride + t·S·NF), then the readout
// into logits [B][O]. The state never leaves shared memory.
extern "C" __global__ void __launch_bounds__(qecd::NT, QECD_MIN_BLOCKS)
    qecd_shot(const float* __restrict__ features, long long stride, int rounds, const float* __restrict__ w,
              float* __restrict__ logits) {
    using namespace qecd;
    extern __shared__ float smem[];
    float* z = smem + QECD_SM_Z;
    for (int i = threadIdx.x; i < S * D; i += NT) z[i] = 0.0f;
    __syncthreads();
    const float* f = features + (long long)blockIdx.x * stride;
    for (int t = 0; t < rounds; ++t) round_step(z, smem + QECD_SM_A, smem + QECD_SM_BUF, f + t * (S * NF), w);
    readout(z, smem + QECD_SM_READOUT, w, logits + (long long)blockIdx.x * O);
}
