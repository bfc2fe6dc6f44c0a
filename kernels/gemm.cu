// Tiled SGEMM (exact f32) for the fully connected layers and for measuring the device's f32
// GEMM throughput: C[m, n] = sum_k op(A)[m, k] * op(B)[k, n] (+ bias[n]), row-major storage.
//   op(A)[m, k] = TA ? A[k * lda + m] : A[m * lda + k]
//   op(B)[k, n] = TB ? B[n * ldb + k] : B[k * ldb + n]
// Block tile BM x BN, k-tile 8, each thread a TM x TN micro-tile made of 4-wide groups spread
// over the tile (so the 16-byte shared-memory reads of a warp are conflict free), register
// double buffering of the next k-tile. Global loads are mapped so consecutive threads read
// consecutive addresses for either transpose; shared rows are padded by 4 words so the
// transposed stores do not conflict either.
#include "common.cuh"

struct GemmParams {
    const float* a;
    const float* b;
    float* c;
    const float* bias;  // [n] or null
    int m, n, k;
    int lda, ldb, ldc;
    int _pad0, _pad1;
};
static_assert(sizeof(GemmParams) == 64, "GemmParams layout must match the Rust mirror");
LF_OFFSET(GemmParams, a, 0); LF_OFFSET(GemmParams, b, 8); LF_OFFSET(GemmParams, c, 16);
LF_OFFSET(GemmParams, bias, 24); LF_OFFSET(GemmParams, m, 32); LF_OFFSET(GemmParams, n, 36);
LF_OFFSET(GemmParams, k, 40); LF_OFFSET(GemmParams, lda, 44); LF_OFFSET(GemmParams, ldb, 48);
LF_OFFSET(GemmParams, ldc, 52); LF_OFFSET(GemmParams, _pad0, 56); LF_OFFSET(GemmParams, _pad1, 60);

template <bool TA, bool TB, int BM, int BN, int TM, int TN>
LF_DEVICE void sgemm_tiled(const GemmParams& p) {
    constexpr int BK = 8;
    constexpr int TX = BN / TN;  // threads along n
    constexpr int TY = BM / TM;  // threads along m
    constexpr int NT = TX * TY;
    constexpr int GM = TM / 4;   // 4-wide row groups per thread
    constexpr int GN = TN / 4;
    constexpr int A_PER = BM * BK / NT;
    constexpr int B_PER = BN * BK / NT;
    constexpr int PITCH_A = BM + 4;
    constexpr int PITCH_B = BN + 4;
    static_assert(TM % 4 == 0 && TN % 4 == 0, "micro-tiles are made of 4-wide groups");
    static_assert((BM * BK) % NT == 0 && (BN * BK) % NT == 0, "tiles must split evenly");
    __shared__ __align__(16) float As[2][BK][PITCH_A];
    __shared__ __align__(16) float Bs[2][BK][PITCH_B];

    const int tid = threadIdx.x;
    const int tx = tid % TX;
    const int ty = tid / TX;
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;

    float ra[A_PER], rb[B_PER];
    // Element e of a thread: linear index i = tid + e*NT inside the tile, split so that the
    // contiguous global dimension varies fastest across threads.
    auto load = [&](int k0) {
#pragma unroll
        for (int e = 0; e < A_PER; ++e) {
            const int i = tid + e * NT;
            const int mm = TA ? i % BM : i / BK;
            const int kk = TA ? i / BM : i % BK;
            const int gm = m0 + mm, gk = k0 + kk;
            ra[e] = (gm < p.m && gk < p.k) ? __ldg(TA ? p.a + (size_t)gk * p.lda + gm : p.a + (size_t)gm * p.lda + gk) : 0.0f;
        }
#pragma unroll
        for (int e = 0; e < B_PER; ++e) {
            const int i = tid + e * NT;
            const int nn = TB ? i / BK : i % BN;
            const int kk = TB ? i % BK : i / BN;
            const int gn = n0 + nn, gk = k0 + kk;
            rb[e] = (gn < p.n && gk < p.k) ? __ldg(TB ? p.b + (size_t)gn * p.ldb + gk : p.b + (size_t)gk * p.ldb + gn) : 0.0f;
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int e = 0; e < A_PER; ++e) {
            const int i = tid + e * NT;
            const int mm = TA ? i % BM : i / BK;
            const int kk = TA ? i / BM : i % BK;
            As[buf][kk][mm] = ra[e];
        }
#pragma unroll
        for (int e = 0; e < B_PER; ++e) {
            const int i = tid + e * NT;
            const int nn = TB ? i / BK : i % BN;
            const int kk = TB ? i % BK : i / BN;
            Bs[buf][kk][nn] = rb[e];
        }
    };

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    const int T = (p.k + BK - 1) / BK;
    if (T > 0) {
        load(0);
        store(0);
    }
    __syncthreads();
    for (int t = 0; t < T; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < T;
        if (more) load((t + 1) * BK);
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[TM], b[TN];
#pragma unroll
            for (int g = 0; g < GM; ++g) {
                const float4 v = *reinterpret_cast<const float4*>(&As[cur][k][g * (BM / GM) + ty * 4]);
                a[g * 4 + 0] = v.x;
                a[g * 4 + 1] = v.y;
                a[g * 4 + 2] = v.z;
                a[g * 4 + 3] = v.w;
            }
#pragma unroll
            for (int g = 0; g < GN; ++g) {
                const float4 v = *reinterpret_cast<const float4*>(&Bs[cur][k][g * (BN / GN) + tx * 4]);
                b[g * 4 + 0] = v.x;
                b[g * 4 + 1] = v.y;
                b[g * 4 + 2] = v.z;
                b[g * 4 + 3] = v.w;
            }
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (more) store(cur ^ 1);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int gm = m0 + (i / 4) * (BM / GM) + ty * 4 + (i % 4);
        if (gm >= p.m) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int gn = n0 + (j / 4) * (BN / GN) + tx * 4 + (j % 4);
            if (gn >= p.n) continue;
            float v = acc[i][j];
            if (p.bias) v += p.bias[gn];
            p.c[(size_t)gm * p.ldc + gn] = v;
        }
    }
}

// MINB: minimum resident blocks per SM requested from the register allocator (2 caps the
// 128x128 tile at 128 registers per thread: two blocks, 16 warps, per SM).
#define LF_SGEMM(NAME, TA, TB, BM, BN, TM, TN, MINB)                                   \
    extern "C" __global__ void __launch_bounds__((BM / TM) * (BN / TN), MINB)          \
        NAME(const GemmParams p) {                                                     \
        sgemm_tiled<TA, TB, BM, BN, TM, TN>(p);                                        \
    }

// name: sgemm_<op(A)><op(B)>_<BM>x<BN>; 256 threads each. Grid: (ceil(n/BN), ceil(m/BM)).
LF_SGEMM(sgemm_nn_128x128, false, false, 128, 128, 8, 8, 2)
LF_SGEMM(sgemm_nt_128x128, false, true, 128, 128, 8, 8, 2)
LF_SGEMM(sgemm_tn_128x128, true, false, 128, 128, 8, 8, 2)
LF_SGEMM(sgemm_nn_64x64, false, false, 64, 64, 4, 4, 1)
LF_SGEMM(sgemm_nt_64x64, false, true, 64, 64, 4, 4, 1)
LF_SGEMM(sgemm_tn_64x64, true, false, 64, 64, 4, 4, 1)

// out[j] = sum over rows i (in order) of x[i * cols + j]: the bias gradient of a linear layer.
struct ColSumParams {
    const float* x;
    float* out;
    int rows, cols;
};
static_assert(sizeof(ColSumParams) == 24, "ColSumParams layout must match the Rust mirror");
LF_OFFSET(ColSumParams, x, 0); LF_OFFSET(ColSumParams, out, 8); LF_OFFSET(ColSumParams, rows, 16);
LF_OFFSET(ColSumParams, cols, 20);

extern "C" __global__ void __launch_bounds__(256) col_sum(const ColSumParams p) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= p.cols) return;
    float acc = 0.0f;
    for (int i = 0; i < p.rows; ++i) acc += p.x[(size_t)i * p.cols + j];
    p.out[j] = acc;
}
