// Tensor-core convolution (forward and backward-data) as implicit GEMM with mma.sync:
//   TF32: mma.m16n8k8  (inputs rounded to tf32 with cvt.rna, f32 accumulation)
//   BF16: mma.m16n8k16 (inputs rounded to bf16 with cvt.rn,  f32 accumulation)
//
// Same operand loaders and epilogue as the exact kernels (conv_common.cuh). Tiles live in shared
// memory as f32 in [k][m] / [k][n] order; the rounding to tf32/bf16 happens when the warp builds
// its fragments. The row pitch is padded so those fragment loads are free of bank conflicts:
//   TF32 reads X[k = tig (+4)][row = gid]:          pitch = 8 (mod 32)  -> banks 8*tig + gid
//   BF16 reads X[k = 2*tig (+1, +8)][row = gid]:    pitch = 4 (mod 16)  -> banks 8*tig + gid
// (gid = lane / 4, tig = lane % 4). The loaders store whole rows of consecutive m / n, which is
// conflict free for any pitch.
//
// Dense convolutions only: a grouped or depthwise conv runs the exact f32 kernels (conv.cu's
// grouped tiles, conv_dw.cu) whatever precision is asked for (src/backend/cuda/conv.rs).
#include "conv_common.cuh"

#define LF_PREC_TF32 0
#define LF_PREC_BF16 1

template <int MODE, int PREC, int WARPS_M, int WARPS_N, int MI, int NI>
LF_DEVICE void conv_igemm_tc(const ConvParams& p) {
    constexpr int BM = WARPS_M * MI * 16;
    constexpr int BN = WARPS_N * NI * 8;
    constexpr int BK = 16;
    constexpr int NT = 32 * WARPS_M * WARPS_N;
    constexpr int PAD = PREC == LF_PREC_TF32 ? 8 : 4;
    static_assert(BM % 32 == 0 && BN % 16 == 0, "pitch rules assume these multiples");
    typedef LfConvLoader<MODE, BM, BN, BK, NT> Loader;
    __shared__ float As[2][BK][BM + PAD];
    __shared__ float Bs[2][BK][BN + PAD];

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int gid = lane >> 2;
    const int tig = lane & 3;
    const int wm = (warp % WARPS_M) * (MI * 16);
    const int wn = (warp / WARPS_M) * (NI * 8);
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;

    Loader ld;
    ld.init(p, m0, n0);
    const int T = ld.tiles(p);

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;

    float ra[Loader::A_PER], rb[Loader::B_PER];
    if (T > 0) {
        ld.load(p, 0, ra, rb);
#pragma unroll
        for (int l = 0; l < Loader::A_PER; ++l) As[0][ld.a_k0 + l * Loader::A_KSTEP][ld.a_m] = ra[l];
#pragma unroll
        for (int l = 0; l < Loader::B_PER; ++l) Bs[0][ld.b_k0 + l * Loader::B_KSTEP][ld.b_n] = rb[l];
    }
    __syncthreads();

    for (int t = 0; t < T; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < T;
        if (more) ld.load(p, t + 1, ra, rb);

        if (PREC == LF_PREC_TF32) {
#pragma unroll
            for (int ks = 0; ks < BK; ks += 8) {
                u32 a[MI][4], b[NI][2];
#pragma unroll
                for (int i = 0; i < MI; ++i) {
                    const int r0 = wm + i * 16 + gid;
                    a[i][0] = lf_tf32(As[cur][ks + tig][r0]);
                    a[i][1] = lf_tf32(As[cur][ks + tig][r0 + 8]);
                    a[i][2] = lf_tf32(As[cur][ks + tig + 4][r0]);
                    a[i][3] = lf_tf32(As[cur][ks + tig + 4][r0 + 8]);
                }
#pragma unroll
                for (int j = 0; j < NI; ++j) {
                    const int c0 = wn + j * 8 + gid;
                    b[j][0] = lf_tf32(Bs[cur][ks + tig][c0]);
                    b[j][1] = lf_tf32(Bs[cur][ks + tig + 4][c0]);
                }
#pragma unroll
                for (int i = 0; i < MI; ++i)
#pragma unroll
                    for (int j = 0; j < NI; ++j) lf_mma_tf32_m16n8k8(acc[i][j], a[i], b[j]);
            }
        } else {
            u32 a[MI][4], b[NI][2];
            const int k0 = 2 * tig;
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                const int r0 = wm + i * 16 + gid;
                a[i][0] = lf_pack_bf16x2(As[cur][k0][r0], As[cur][k0 + 1][r0]);
                a[i][1] = lf_pack_bf16x2(As[cur][k0][r0 + 8], As[cur][k0 + 1][r0 + 8]);
                a[i][2] = lf_pack_bf16x2(As[cur][k0 + 8][r0], As[cur][k0 + 9][r0]);
                a[i][3] = lf_pack_bf16x2(As[cur][k0 + 8][r0 + 8], As[cur][k0 + 9][r0 + 8]);
            }
#pragma unroll
            for (int j = 0; j < NI; ++j) {
                const int c0 = wn + j * 8 + gid;
                b[j][0] = lf_pack_bf16x2(Bs[cur][k0][c0], Bs[cur][k0 + 1][c0]);
                b[j][1] = lf_pack_bf16x2(Bs[cur][k0 + 8][c0], Bs[cur][k0 + 9][c0]);
            }
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NI; ++j) lf_mma_bf16_m16n8k16(acc[i][j], a[i], b[j]);
        }

        if (more) {
#pragma unroll
            for (int l = 0; l < Loader::A_PER; ++l)
                As[cur ^ 1][ld.a_k0 + l * Loader::A_KSTEP][ld.a_m] = ra[l];
#pragma unroll
            for (int l = 0; l < Loader::B_PER; ++l)
                Bs[cur ^ 1][ld.b_k0 + l * Loader::B_KSTEP][ld.b_n] = rb[l];
        }
        __syncthreads();
    }

    // Accumulator fragment: q -> row gid + 8*(q/2), column 2*tig + (q%2).
    const int M = p.n * p.out_h * p.out_w;
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int gm = m0 + wm + i * 16 + gid + (q >> 1) * 8;
                const int gn = n0 + wn + j * 8 + 2 * tig + (q & 1);
                if (gm < M && gn < p.out_c) lf_conv_store(p, gm, gn, acc[i][j][q]);
            }
}

#define LF_CONV_TC(NAME, MODE, PREC, WM, WN, MI, NI)                                   \
    extern "C" __global__ void __launch_bounds__(32 * WM * WN) NAME(const ConvParams p) { \
        conv_igemm_tc<MODE, PREC, WM, WN, MI, NI>(p);                                  \
    }

// name suffix: BM x BN; 128 threads (4 warps) each.
LF_CONV_TC(conv_fwd_tf32_128x64, LF_CONV_FWD, LF_PREC_TF32, 2, 2, 4, 4)
LF_CONV_TC(conv_fwd_tf32_64x64, LF_CONV_FWD, LF_PREC_TF32, 2, 2, 2, 4)
LF_CONV_TC(conv_fwd_tf32_128x32, LF_CONV_FWD, LF_PREC_TF32, 4, 1, 2, 4)
LF_CONV_TC(conv_fwd_tf32_128x16, LF_CONV_FWD, LF_PREC_TF32, 4, 1, 2, 2)
LF_CONV_TC(conv_fwd_tf32_32x32, LF_CONV_FWD, LF_PREC_TF32, 2, 2, 1, 2)
LF_CONV_TC(conv_bwdd_tf32_128x64, LF_CONV_BWD_DATA, LF_PREC_TF32, 2, 2, 4, 4)
LF_CONV_TC(conv_bwdd_tf32_64x64, LF_CONV_BWD_DATA, LF_PREC_TF32, 2, 2, 2, 4)
LF_CONV_TC(conv_bwdd_tf32_128x32, LF_CONV_BWD_DATA, LF_PREC_TF32, 4, 1, 2, 4)
LF_CONV_TC(conv_bwdd_tf32_128x16, LF_CONV_BWD_DATA, LF_PREC_TF32, 4, 1, 2, 2)
LF_CONV_TC(conv_bwdd_tf32_32x32, LF_CONV_BWD_DATA, LF_PREC_TF32, 2, 2, 1, 2)
LF_CONV_TC(conv_fwd_bf16_128x64, LF_CONV_FWD, LF_PREC_BF16, 2, 2, 4, 4)
LF_CONV_TC(conv_fwd_bf16_64x64, LF_CONV_FWD, LF_PREC_BF16, 2, 2, 2, 4)
LF_CONV_TC(conv_fwd_bf16_128x32, LF_CONV_FWD, LF_PREC_BF16, 4, 1, 2, 4)
LF_CONV_TC(conv_fwd_bf16_128x16, LF_CONV_FWD, LF_PREC_BF16, 4, 1, 2, 2)
LF_CONV_TC(conv_fwd_bf16_32x32, LF_CONV_FWD, LF_PREC_BF16, 2, 2, 1, 2)
LF_CONV_TC(conv_bwdd_bf16_128x64, LF_CONV_BWD_DATA, LF_PREC_BF16, 2, 2, 4, 4)
LF_CONV_TC(conv_bwdd_bf16_64x64, LF_CONV_BWD_DATA, LF_PREC_BF16, 2, 2, 2, 4)
LF_CONV_TC(conv_bwdd_bf16_128x32, LF_CONV_BWD_DATA, LF_PREC_BF16, 4, 1, 2, 4)
LF_CONV_TC(conv_bwdd_bf16_128x16, LF_CONV_BWD_DATA, LF_PREC_BF16, 4, 1, 2, 2)
LF_CONV_TC(conv_bwdd_bf16_32x32, LF_CONV_BWD_DATA, LF_PREC_BF16, 2, 2, 1, 2)
