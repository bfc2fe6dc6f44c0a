// Exact f32 convolution as implicit GEMM (forward, backward-data, backward-weight).
//
// These kernels are the GPU parity reference: plain f32 FMAs, shared-memory tiling, register
// double buffering of the next k-tile, no tensor cores. Tile shapes are picked on the host per
// problem (see src/backend/cuda/conv.rs); every entry point below is one instantiation.
#include "conv_common.cuh"

// ---- forward / backward-data -------------------------------------------------------------------------
//
// Block tile BM (pixels) x BN (channels), k-tile BK, each thread owns a TM x TN micro-tile whose
// rows are strided by TX = BM/TM (so a warp stores consecutive pixels: coalesced NCHW stores) and
// whose columns are strided by TY = BN/TN. `src_cs` / `out_cs`: channels per image of the A source
// and output tensors (p.src_c / p.out_c for a dense conv; see ConvGroupParams for a grouped one).
template <int MODE, int BM, int BN, int BK, int TM, int TN>
LF_DEVICE void conv_igemm_f32(const ConvParams& p, int src_cs, int out_cs) {
    constexpr int TX = BM / TM;
    constexpr int TY = BN / TN;
    constexpr int NT = TX * TY;
    typedef LfConvLoader<MODE, BM, BN, BK, NT> Loader;
    __shared__ float As[2][BK][BM];
    __shared__ float Bs[2][BK][BN];

    const int tid = threadIdx.x;
    const int tx = tid % TX;
    const int ty = tid / TX;
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;

    Loader ld;
    ld.init(p, m0, n0, src_cs);
    const int T = ld.tiles(p);

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

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
        if (more) ld.load(p, t + 1, ra, rb);  // global loads in flight during the FMAs below
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = As[cur][k][tx + i * TX];
#pragma unroll
            for (int j = 0; j < TN; ++j) b[j] = Bs[cur][k][ty + j * TY];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (more) {
            // Writes the other buffer: its last readers finished before the previous barrier.
#pragma unroll
            for (int l = 0; l < Loader::A_PER; ++l)
                As[cur ^ 1][ld.a_k0 + l * Loader::A_KSTEP][ld.a_m] = ra[l];
#pragma unroll
            for (int l = 0; l < Loader::B_PER; ++l)
                Bs[cur ^ 1][ld.b_k0 + l * Loader::B_KSTEP][ld.b_n] = rb[l];
        }
        __syncthreads();
    }

    const int M = p.n * p.out_h * p.out_w;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int gm = m0 + tx + i * TX;
        if (gm >= M) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int gn = n0 + ty + j * TY;
            if (gn < p.out_c) lf_conv_store(p, gm, gn, acc[i][j], out_cs);
        }
    }
}

#define LF_CONV_F32(NAME, MODE, BM, BN, TM, TN)                                        \
    extern "C" __global__ void __launch_bounds__((BM / TM) * (BN / TN))                \
        NAME(const ConvParams p) {                                                     \
        conv_igemm_f32<MODE, BM, BN, 16, TM, TN>(p, p.src_c, p.out_c);                 \
    }

// Grouped: one GEMM per group, blockIdx.z = group (conv_common.cuh, ConvGroupParams). Used for
// groups of at least 16 channels; narrower groups and depthwise go to conv_dw.cu. Grouped convs
// always run in exact f32, whatever the backend's precision: the tensor-core kernels of
// conv_tc.cu are dense only.
#define LF_CONV_F32_GROUPED(NAME, MODE, BM, BN, TM, TN)                                \
    extern "C" __global__ void __launch_bounds__((BM / TM) * (BN / TN))                \
        NAME(const ConvGroupParams gp) {                                               \
        const ConvParams p = lf_conv_group(gp, blockIdx.z);                            \
        conv_igemm_f32<MODE, BM, BN, 16, TM, TN>(p, gp.src_ctotal, gp.out_ctotal);     \
    }

// name suffix: BM x BN. Threads: (BM/TM)*(BN/TN).
LF_CONV_F32(conv_fwd_f32_128x64, LF_CONV_FWD, 128, 64, 8, 4)   // 256 threads
LF_CONV_F32(conv_fwd_f32_64x64, LF_CONV_FWD, 64, 64, 4, 4)     // 256
LF_CONV_F32(conv_fwd_f32_128x32, LF_CONV_FWD, 128, 32, 4, 4)   // 256
LF_CONV_F32(conv_fwd_f32_64x32, LF_CONV_FWD, 64, 32, 4, 2)     // 256
LF_CONV_F32(conv_fwd_f32_128x16, LF_CONV_FWD, 128, 16, 4, 4)   // 128
LF_CONV_F32(conv_fwd_f32_32x32, LF_CONV_FWD, 32, 32, 2, 2)     // 256
LF_CONV_F32(conv_bwdd_f32_128x64, LF_CONV_BWD_DATA, 128, 64, 8, 4)
LF_CONV_F32(conv_bwdd_f32_64x64, LF_CONV_BWD_DATA, 64, 64, 4, 4)
LF_CONV_F32(conv_bwdd_f32_128x32, LF_CONV_BWD_DATA, 128, 32, 4, 4)
LF_CONV_F32(conv_bwdd_f32_64x32, LF_CONV_BWD_DATA, 64, 32, 4, 2)
LF_CONV_F32(conv_bwdd_f32_128x16, LF_CONV_BWD_DATA, 128, 16, 4, 4)
LF_CONV_F32(conv_bwdd_f32_32x32, LF_CONV_BWD_DATA, 32, 32, 2, 2)

// Grouped, same tiles (name suffix BM x BN, where BN counts one group's channels).
LF_CONV_F32_GROUPED(conv_fwd_f32g_128x64, LF_CONV_FWD, 128, 64, 8, 4)
LF_CONV_F32_GROUPED(conv_fwd_f32g_64x64, LF_CONV_FWD, 64, 64, 4, 4)
LF_CONV_F32_GROUPED(conv_fwd_f32g_128x32, LF_CONV_FWD, 128, 32, 4, 4)
LF_CONV_F32_GROUPED(conv_fwd_f32g_64x32, LF_CONV_FWD, 64, 32, 4, 2)
LF_CONV_F32_GROUPED(conv_fwd_f32g_128x16, LF_CONV_FWD, 128, 16, 4, 4)
LF_CONV_F32_GROUPED(conv_fwd_f32g_32x32, LF_CONV_FWD, 32, 32, 2, 2)
LF_CONV_F32_GROUPED(conv_bwdd_f32g_128x64, LF_CONV_BWD_DATA, 128, 64, 8, 4)
LF_CONV_F32_GROUPED(conv_bwdd_f32g_64x64, LF_CONV_BWD_DATA, 64, 64, 4, 4)
LF_CONV_F32_GROUPED(conv_bwdd_f32g_128x32, LF_CONV_BWD_DATA, 128, 32, 4, 4)
LF_CONV_F32_GROUPED(conv_bwdd_f32g_64x32, LF_CONV_BWD_DATA, 64, 32, 4, 2)
LF_CONV_F32_GROUPED(conv_bwdd_f32g_128x16, LF_CONV_BWD_DATA, 128, 16, 4, 4)
LF_CONV_F32_GROUPED(conv_bwdd_f32g_32x32, LF_CONV_BWD_DATA, 32, 32, 2, 2)

// ---- backward-weight ------------------------------------------------------------------------------------
//
// dw[k, c, r, s] = sum over (img, oh, ow) of dy[img, k, oh, ow] * x[img, c, oh*st-pad+r, ow*st-pad+s]
// GEMM: rows = K, columns = C*R*S (the weight layout), reduction = N*P*Q pixels, which is long
// (up to 131072 for CIFAR at batch 128) while the output is small: split-K over gridDim.z. Each
// split writes its partial product to its own slice of `out` (no atomics) and
// conv_splitk_reduce sums the slices in split order, so the result is deterministic.
struct ConvBwdWParams {
    const float* x;   // [n, c, h, w]
    const float* dy;  // [n, k, p, q]
    float* out;       // [splits, k, c*r*s] (dw itself when splits == 1)
    int n, c, h, w;
    int k, p, q;
    int r, s;
    int stride, pad;
    int tiles_per_split;  // k-tiles (of BK pixels) per split
};
static_assert(sizeof(ConvBwdWParams) == 72, "ConvBwdWParams layout must match the Rust mirror");
LF_OFFSET(ConvBwdWParams, x, 0); LF_OFFSET(ConvBwdWParams, dy, 8); LF_OFFSET(ConvBwdWParams, out, 16);
LF_OFFSET(ConvBwdWParams, n, 24); LF_OFFSET(ConvBwdWParams, c, 28); LF_OFFSET(ConvBwdWParams, h, 32);
LF_OFFSET(ConvBwdWParams, w, 36); LF_OFFSET(ConvBwdWParams, k, 40); LF_OFFSET(ConvBwdWParams, p, 44);
LF_OFFSET(ConvBwdWParams, q, 48); LF_OFFSET(ConvBwdWParams, r, 52); LF_OFFSET(ConvBwdWParams, s, 56);
LF_OFFSET(ConvBwdWParams, stride, 60); LF_OFFSET(ConvBwdWParams, pad, 64);
LF_OFFSET(ConvBwdWParams, tiles_per_split, 68);

// `x_cs` / `dy_cs`: channels per image of x and dy (p.c / p.k when dense); `split`: the k-split
// this block reduces; `out`: where its [k, c*r*s] partial product goes.
template <int BM, int BN, int BK, int TM, int TN>
LF_DEVICE void conv_bwdw_f32(const ConvBwdWParams& p, int x_cs, int dy_cs, int split, float* out) {
    constexpr int TX = BM / TM;
    constexpr int TY = BN / TN;
    constexpr int NT = TX * TY;
    static_assert(NT % BK == 0, "each thread must own one pixel of the k-tile");
    static_assert((BM * BK) % NT == 0 && (BN * BK) % NT == 0, "tiles must split evenly");
    constexpr int A_PER = BM * BK / NT;
    constexpr int B_PER = BN * BK / NT;
    constexpr int KSTEP = NT / BK;
    // Rows padded by 32/BK words: a warp stores BK consecutive pixels for 32/BK rows at once.
    constexpr int PAD = 32 / BK;
    __shared__ float As[2][BK][BM + PAD];  // dy tile: [pixel][out channel]
    __shared__ float Bs[2][BK][BN + PAD];  // x tile:  [pixel][(c, r, s)]

    const int tid = threadIdx.x;
    const int tx = tid % TX;
    const int ty = tid / TX;
    const int m0 = blockIdx.x * BM;  // out channel k
    const int n0 = blockIdx.y * BN;  // weight column (c, r, s)
    const int rs_count = p.r * p.s;
    const int CRS = p.c * rs_count;
    const int PQ = p.p * p.q;
    const int J = p.n * PQ;
    const int T_all = (J + BK - 1) / BK;
    const int t_begin = split * p.tiles_per_split;
    const int t_end = min(T_all, t_begin + p.tiles_per_split);

    // Loader mapping: pixel jj = tid % BK is fixed; rows/columns step by KSTEP.
    const int jj = tid % BK;
    const int row0 = tid / BK;
    int b_coff[B_PER], b_r[B_PER], b_s[B_PER];
    bool b_ok[B_PER];
#pragma unroll
    for (int l = 0; l < B_PER; ++l) {
        const int col = n0 + row0 + l * KSTEP;
        b_ok[l] = col < CRS;
        const int cc = b_ok[l] ? col : 0;
        const int c = cc / rs_count;
        const int rs = cc - c * rs_count;
        b_r[l] = rs / p.s;
        b_s[l] = rs - b_r[l] * p.s;
        b_coff[l] = c * p.h * p.w;
    }

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    float ra[A_PER], rb[B_PER];
    auto load = [&](int t) {
        const int j = t * BK + jj;
        const bool jv = j < J;
        int img = 0, oh = 0, ow = 0;
        if (jv) {
            img = j / PQ;
            const int rem = j - img * PQ;
            oh = rem / p.q;
            ow = rem - oh * p.q;
        }
        const float* dy_px = p.dy + (size_t)img * dy_cs * PQ + oh * p.q + ow;
#pragma unroll
        for (int l = 0; l < A_PER; ++l) {
            const int kk = m0 + row0 + l * KSTEP;
            ra[l] = (jv && kk < p.k) ? __ldg(dy_px + (size_t)kk * PQ) : 0.0f;
        }
        const float* x_img = p.x + (size_t)img * x_cs * p.h * p.w;
#pragma unroll
        for (int l = 0; l < B_PER; ++l) {
            const int ih = oh * p.stride - p.pad + b_r[l];
            const int iw = ow * p.stride - p.pad + b_s[l];
            const bool v = jv && b_ok[l] && (unsigned)ih < (unsigned)p.h && (unsigned)iw < (unsigned)p.w;
            rb[l] = v ? __ldg(x_img + b_coff[l] + ih * p.w + iw) : 0.0f;
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int l = 0; l < A_PER; ++l) As[buf][jj][row0 + l * KSTEP] = ra[l];
#pragma unroll
        for (int l = 0; l < B_PER; ++l) Bs[buf][jj][row0 + l * KSTEP] = rb[l];
    };

    if (t_begin < t_end) {
        load(t_begin);
        store(0);
    }
    __syncthreads();
    for (int t = t_begin; t < t_end; ++t) {
        const int cur = (t - t_begin) & 1;
        const bool more = t + 1 < t_end;
        if (more) load(t + 1);
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = As[cur][k][tx + i * TX];
#pragma unroll
            for (int j = 0; j < TN; ++j) b[j] = Bs[cur][k][ty + j * TY];
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
        const int kk = m0 + tx + i * TX;
        if (kk >= p.k) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int col = n0 + ty + j * TY;
            if (col < CRS) out[(size_t)kk * CRS + col] = acc[i][j];
        }
    }
}

#define LF_CONV_BWDW(NAME, BM, BN, TM, TN)                                             \
    extern "C" __global__ void __launch_bounds__((BM / TM) * (BN / TN))                \
        NAME(const ConvBwdWParams p) {                                                 \
        conv_bwdw_f32<BM, BN, 16, TM, TN>(p, p.c, p.k, blockIdx.z,                     \
                                          p.out + (size_t)blockIdx.z * p.k * p.c * p.r * p.s); \
    }

// name suffix: BM (out channels) x BN (weight columns); 256 threads each.
LF_CONV_BWDW(conv_bwdw_f32_64x64, 64, 64, 4, 4)
LF_CONV_BWDW(conv_bwdw_f32_32x64, 32, 64, 2, 4)
LF_CONV_BWDW(conv_bwdw_f32_16x64, 16, 64, 1, 4)

// Grouped backward-weight: `b` describes one group (c = C/g, k = K/g; x, dy and out at group 0),
// blockIdx.z = group * splits + split. Split s of group g writes rows g*K/g.. of slice s of the
// [splits, K, C/g*R*S] partials (dw itself when splits == 1); conv_splitk_reduce then sums the
// slices in split order, as for a dense conv: deterministic.
struct ConvBwdWGroupParams {
    ConvBwdWParams b;
    int c_total;  // channels per image of x
    int k_total;  // channels per image of dy (= rows of dw)
    int splits;
    int _pad;
};
static_assert(sizeof(ConvBwdWGroupParams) == 88, "ConvBwdWGroupParams layout must match the Rust mirror");
LF_OFFSET(ConvBwdWGroupParams, b, 0); LF_OFFSET(ConvBwdWGroupParams, c_total, 72);
LF_OFFSET(ConvBwdWGroupParams, k_total, 76); LF_OFFSET(ConvBwdWGroupParams, splits, 80);
LF_OFFSET(ConvBwdWGroupParams, _pad, 84);

#define LF_CONV_BWDW_GROUPED(NAME, BM, BN, TM, TN)                                     \
    extern "C" __global__ void __launch_bounds__((BM / TM) * (BN / TN))                \
        NAME(const ConvBwdWGroupParams gp) {                                           \
        ConvBwdWParams p = gp.b;                                                       \
        const int g = blockIdx.z / gp.splits;                                          \
        const int split = blockIdx.z - g * gp.splits;                                  \
        const size_t crs = (size_t)p.c * p.r * p.s;                                    \
        p.x += (size_t)g * p.c * p.h * p.w;                                            \
        p.dy += (size_t)g * p.k * p.p * p.q;                                           \
        float* out = p.out + (size_t)split * gp.k_total * crs + (size_t)g * p.k * crs; \
        conv_bwdw_f32<BM, BN, 16, TM, TN>(p, gp.c_total, gp.k_total, split, out);      \
    }

LF_CONV_BWDW_GROUPED(conv_bwdw_f32g_64x64, 64, 64, 4, 4)
LF_CONV_BWDW_GROUPED(conv_bwdw_f32g_32x64, 32, 64, 2, 4)
LF_CONV_BWDW_GROUPED(conv_bwdw_f32g_16x64, 16, 64, 1, 4)

// out[i] = sum over z (in order) of parts[z * len + i].
struct SplitKReduceParams {
    const float* parts;
    float* out;
    long long len;
    int splits;
    int _pad;
};
static_assert(sizeof(SplitKReduceParams) == 32, "SplitKReduceParams layout must match the Rust mirror");
LF_OFFSET(SplitKReduceParams, parts, 0); LF_OFFSET(SplitKReduceParams, out, 8);
LF_OFFSET(SplitKReduceParams, len, 16); LF_OFFSET(SplitKReduceParams, splits, 24);
LF_OFFSET(SplitKReduceParams, _pad, 28);

extern "C" __global__ void __launch_bounds__(256) conv_splitk_reduce(const SplitKReduceParams p) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.len) return;
    float acc = 0.0f;
    for (int z = 0; z < p.splits; ++z) acc += p.parts[(size_t)z * p.len + i];
    p.out[i] = acc;
}
