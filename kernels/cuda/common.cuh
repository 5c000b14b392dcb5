// Shared by every qecd kernel: the config, and the building blocks of the round
// step and the readout (LayerNorm, linear maps, exact GELU).
//
// NVRTC compiles one string: kernels/src/cuda/source.rs prepends the config and
// the layouts as #defines (QECD_*), then concatenates common.cuh, readout.cu and
// step.cu, in that order. Every size is a compile-time constant, so loops over
// widths unroll and the index arithmetic folds.
//
// Launch shape: QECD_NT threads per block, and __launch_bounds__(NT,
// QECD_MIN_BLOCKS) with NT · MIN_BLOCKS = 1024, i.e. at most 64 registers per
// thread, so that two or more blocks share an SM where shared memory allows.
//
// Layouts (all f32, floats not bytes):
// - weights: one device buffer, tensors at QECD_OFF_* (layer l's tensors at
//   QECD_OFF_LAYER0 + l * QECD_LAYER_STRIDE + QECD_LOFF_*). Linear maps are
//   stored transposed, Wᵀ [in][out], so the threads of a warp, which compute
//   consecutive outputs, read consecutive weights. attn.bias is stored
//   [H][S_j][S_i] for the same reason.
// - states: [B][S][D]; features: stream b's round t at b * stride + t * S * NF.
// - shared memory per block (one block per stream): the state z [S][D], the
//   LayerNorm / attention output a [S][LDA] and the Q|K|V / FFN hidden buffer
//   [S][LDB]; the padded strides LDA and LDB are odd, so that a warp walking a
//   column (attention) hits 32 different banks.

namespace qecd {

constexpr int S = QECD_S;    // stabilizers
constexpr int D = QECD_D;    // width
constexpr int H = QECD_H;    // heads
constexpr int L = QECD_L;    // layers
constexpr int F = QECD_F;    // feed-forward width
constexpr int R = QECD_R;    // readout width
constexpr int O = QECD_O;    // observables
constexpr int NF = QECD_NF;  // features per stabilizer and round
constexpr int NT = QECD_NT;  // threads per block
constexpr int DH = D / H;    // head width
constexpr int NWARPS = NT / 32;
constexpr int LDA = QECD_LDA;
constexpr int LDB = QECD_LDB;

constexpr float FRAC_1_SQRT_2 = 0.70710678118654752440f;
constexpr float LN_EPS = 1e-5f;

// Exact GELU, x·Φ(x).
__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * FRAC_1_SQRT_2)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One warp's row of N values, PER = ⌈N/32⌉ per lane (lane + 32·i), zero past N.
template <int N>
struct WarpRow {
    static constexpr int PER = (N + 31) / 32;
    float v[PER];
    float mean;
    float rstd;

    // Loads row `x` and computes its mean and 1/√(var + ε) (biased variance, two passes).
    __device__ __forceinline__ void load(const float* x, int lane) {
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int j = lane + 32 * i;
            v[i] = j < N ? x[j] : 0.0f;
            sum += v[i];
        }
        mean = warp_sum(sum) / N;
        float sq = 0.0f;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const float dv = v[i] - mean;
            if (lane + 32 * i < N) sq = fmaf(dv, dv, sq);
        }
        rstd = 1.0f / sqrtf(warp_sum(sq) / N + LN_EPS);
    }
};

// y[s] = LN(x[s]; g, b) for s < S, one warp per row; x and y in shared memory.
__device__ __forceinline__ void layer_norm(const float* x, int ldx, const float* __restrict__ g,
                                           const float* __restrict__ b, float* y, int ldy) {
    const int lane = threadIdx.x & 31;
    for (int s = threadIdx.x >> 5; s < S; s += NWARPS) {
        WarpRow<D> row;
        row.load(x + s * ldx, lane);
#pragma unroll
        for (int i = 0; i < WarpRow<D>::PER; ++i) {
            const int j = lane + 32 * i;
            if (j < D) y[s * ldy + j] = fmaf((row.v[i] - row.mean) * row.rstd, __ldg(g + j), __ldg(b + j));
        }
    }
}

// What a linear map does with its result.
enum Store { STORE = 0, ADD = 1, STORE_GELU = 2 };

// Rows of x each thread takes (register blocking): enough work items for
// every thread first, then up to 4 rows per weight load.
__device__ constexpr int rows_per_thread(int n) {
    return S * n / NT < 1 ? 1 : (S * n / NT > 4 ? 4 : S * n / NT);
}

// y[s][j] (MODE)= b[j] + Σ_k x[s][k]·Wᵀ[k][j] for s < S, j < N. x and y are in
// shared memory (row strides ldx, ldy), wt = Wᵀ [K][N] and b [N] in global
// memory. Thread work item: one output column j for RB consecutive rows, so a
// weight is loaded once per RB products; the lanes of a warp take consecutive
// columns of the same rows: the weight loads coalesce and the x loads are
// shared-memory broadcasts. Every output is b + Σ_k in k order.
template <int K, int N, int MODE>
__device__ __forceinline__ void linear(const float* x, int ldx, const float* __restrict__ wt,
                                       const float* __restrict__ bias, float* y, int ldy) {
    constexpr int RB = rows_per_thread(N);
    constexpr int GROUPS = (S + RB - 1) / RB;
    for (int item = threadIdx.x; item < GROUPS * N; item += NT) {
        const int j = item % N;
        const int s0 = (item / N) * RB;
        const float* xr[RB];
        float acc[RB];
        const float bj = __ldg(bias + j);
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            // Rows past S repeat the last row; their results are dropped.
            xr[r] = x + (s0 + r < S ? s0 + r : S - 1) * ldx;
            acc[r] = bj;
        }
#pragma unroll 8
        for (int k = 0; k < K; ++k) {
            const float w = __ldg(wt + k * N + j);
#pragma unroll
            for (int r = 0; r < RB; ++r) acc[r] = fmaf(xr[r][k], w, acc[r]);
        }
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            if (s0 + r < S) {
                float* out = y + (s0 + r) * ldy + j;
                if (MODE == ADD) {
                    *out += acc[r];
                } else if (MODE == STORE_GELU) {
                    *out = gelu(acc[r]);
                } else {
                    *out = acc[r];
                }
            }
        }
    }
}

}  // namespace qecd
