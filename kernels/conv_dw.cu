// Direct convolution for depthwise and narrow-group convolutions (groups of at most 8 input and
// 8 output channels: MobileNetV2's depthwise 3x3, ResNeXt's 32x4d / 32x8d grouped 3x3), where
// the implicit-GEMM tiles of conv.cu would be mostly padding (a 16-wide reduction chunk for 1 or
// 4 channels). Exact f32, plain FMAs, no shared memory in the forward and backward-data kernels:
// neighbouring threads read neighbouring pixels, so the R x S reuse of each input comes from L1.
//
//   forward:        one thread per output element (img, k, oh, ow), ow fastest; sums its group's
//                   C/g channels x R x S taps in (c, r, s) order, then the conv epilogue
//                   (scale, shift, residual, ReLU / ReLU6) as conv_common.cuh's lf_conv_store;
//   backward-data:  one thread per input element (img, c, ih, iw); sums over its group's K/g
//                   output channels and the taps that reach it, in (k, r, s) order;
//   backward-weight: one block of DW_BWDW_THREADS per (k, c in group, chunk of up to
//                   DW_BWDW_TAPS taps, pixel split). Thread t sums pixels t, t + NT, ... of its
//                   split in that order, then a shared-memory tree of fixed shape adds the
//                   threads; split z writes slice z of [splits, K, C/g*R*S] partials, summed in
//                   split order by conv.cu's conv_splitk_reduce. No atomics: bit-identical run
//                   to run.
//
// 3x3 variants (the template argument KS = 3) unroll the taps; KS = 0 reads R and S at run time.
#include "common.cuh"

struct DwParams {
    const float* x;         // [n, c, h, w]: forward and backward-weight input
    const float* wgt;       // [k, c/g, r, s]: forward and backward-data
    const float* dy;        // [n, k, p, q]: backward-data and backward-weight input
    float* out;             // y [n, k, p, q], dx [n, c, h, w], or dw partials [splits, k, c/g*r*s]
    const float* scale;     // forward epilogue: per out channel multiplier, or null
    const float* shift;     // forward epilogue: per out channel addend, or null
    const float* residual;  // forward epilogue: tensor shaped like y, or null
    int n, c, h, w;
    int k, p, q;
    int r, s;
    int stride, pad;
    int cg, kg;             // channels per group: input (c/g), output (k/g)
    int act;                // forward epilogue, last: 0 none, 1 ReLU, 2 ReLU6
    int pix_per_split;      // backward-weight: output pixels (img, oh, ow) per split
    int _pad;
};
static_assert(sizeof(DwParams) == 120, "DwParams layout must match the Rust mirror");
LF_OFFSET(DwParams, x, 0); LF_OFFSET(DwParams, wgt, 8); LF_OFFSET(DwParams, dy, 16);
LF_OFFSET(DwParams, out, 24); LF_OFFSET(DwParams, scale, 32); LF_OFFSET(DwParams, shift, 40);
LF_OFFSET(DwParams, residual, 48); LF_OFFSET(DwParams, n, 56); LF_OFFSET(DwParams, c, 60);
LF_OFFSET(DwParams, h, 64); LF_OFFSET(DwParams, w, 68); LF_OFFSET(DwParams, k, 72);
LF_OFFSET(DwParams, p, 76); LF_OFFSET(DwParams, q, 80); LF_OFFSET(DwParams, r, 84);
LF_OFFSET(DwParams, s, 88); LF_OFFSET(DwParams, stride, 92); LF_OFFSET(DwParams, pad, 96);
LF_OFFSET(DwParams, cg, 100); LF_OFFSET(DwParams, kg, 104); LF_OFFSET(DwParams, act, 108);
LF_OFFSET(DwParams, pix_per_split, 112); LF_OFFSET(DwParams, _pad, 116);

// ---- forward -----------------------------------------------------------------------------------

template <int KS>
LF_DEVICE void dw_fwd(const DwParams& p) {
    const int R = KS ? KS : p.r;
    const int S = KS ? KS : p.s;
    const int total = p.n * p.k * p.p * p.q;  // fits in i32 (checked on the host)
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    const int ow = t % p.q;
    const int t1 = t / p.q;
    const int oh = t1 % p.p;
    const int t2 = t1 / p.p;
    const int kk = t2 % p.k;
    const int img = t2 / p.k;
    const int g = kk / p.kg;
    const int plane = p.h * p.w;
    const float* xg = p.x + ((size_t)img * p.c + (size_t)g * p.cg) * plane;
    const float* wk = p.wgt + (size_t)kk * p.cg * R * S;
    const int ih0 = oh * p.stride - p.pad;
    const int iw0 = ow * p.stride - p.pad;
    float acc = 0.0f;
    for (int c = 0; c < p.cg; ++c) {
        const float* xc = xg + (size_t)c * plane;
        const float* wc = wk + c * R * S;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int ih = ih0 + r;
            if ((unsigned)ih >= (unsigned)p.h) continue;
#pragma unroll
            for (int s = 0; s < S; ++s) {
                const int iw = iw0 + s;
                if ((unsigned)iw >= (unsigned)p.w) continue;
                acc = fmaf(__ldg(xc + ih * p.w + iw), __ldg(wc + r * S + s), acc);
            }
        }
    }
    // Epilogue, as lf_conv_store: affine, residual, activation.
    if (p.scale) acc = acc * p.scale[kk];
    if (p.shift) acc = acc + p.shift[kk];
    if (p.residual) acc = acc + p.residual[t];
    if (p.act == 1) acc = lf_relu(acc);
    else if (p.act == 2) acc = fminf(fmaxf(acc, 0.0f), 6.0f);
    p.out[t] = acc;
}

extern "C" __global__ void __launch_bounds__(256) dw_fwd_3x3(const DwParams p) { dw_fwd<3>(p); }
extern "C" __global__ void __launch_bounds__(256) dw_fwd_any(const DwParams p) { dw_fwd<0>(p); }

// ---- backward-data -----------------------------------------------------------------------------

template <int KS>
LF_DEVICE void dw_bwd_data(const DwParams& p) {
    const int R = KS ? KS : p.r;
    const int S = KS ? KS : p.s;
    const int total = p.n * p.c * p.h * p.w;
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    const int iw = t % p.w;
    const int t1 = t / p.w;
    const int ih = t1 % p.h;
    const int t2 = t1 / p.h;
    const int c = t2 % p.c;
    const int img = t2 / p.c;
    const int g = c / p.cg;
    const int cl = c - g * p.cg;
    const int pq = p.p * p.q;
    const float* dyg = p.dy + ((size_t)img * p.k + (size_t)g * p.kg) * pq;
    const float* wg = p.wgt + ((size_t)g * p.kg * p.cg + cl) * R * S;
    // dx[ih, iw] gathers dy[oh, ow] for ih = oh*stride - pad + r.
    const int th = ih + p.pad;
    const int tw = iw + p.pad;
    float acc = 0.0f;
    for (int kk = 0; kk < p.kg; ++kk) {
        const float* dyk = dyg + (size_t)kk * pq;
        const float* wk = wg + (size_t)kk * p.cg * R * S;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int hh = th - r;
            if (hh < 0 || hh % p.stride != 0) continue;
            const int oh = hh / p.stride;
            if (oh >= p.p) continue;
#pragma unroll
            for (int s = 0; s < S; ++s) {
                const int ww = tw - s;
                if (ww < 0 || ww % p.stride != 0) continue;
                const int ow = ww / p.stride;
                if (ow >= p.q) continue;
                acc = fmaf(__ldg(dyk + oh * p.q + ow), __ldg(wk + r * S + s), acc);
            }
        }
    }
    p.out[t] = acc;
}

extern "C" __global__ void __launch_bounds__(256) dw_bwdd_3x3(const DwParams p) { dw_bwd_data<3>(p); }
extern "C" __global__ void __launch_bounds__(256) dw_bwdd_any(const DwParams p) { dw_bwd_data<0>(p); }

// ---- backward-weight ---------------------------------------------------------------------------

#define DW_BWDW_THREADS 256
#define DW_BWDW_TAPS 9

// Grid: x = k * cg (output channel, input channel in its group), y = chunk of DW_BWDW_TAPS taps
// of the R*S window, z = pixel split.
extern "C" __global__ void __launch_bounds__(DW_BWDW_THREADS) dw_bwdw(const DwParams p) {
    __shared__ float red[DW_BWDW_TAPS][DW_BWDW_THREADS];
    const int tid = threadIdx.x;
    const int kk = blockIdx.x / p.cg;
    const int cl = blockIdx.x - kk * p.cg;
    const int g = kk / p.kg;
    const int RS = p.r * p.s;
    const int tap0 = blockIdx.y * DW_BWDW_TAPS;
    const int ntaps = min(DW_BWDW_TAPS, RS - tap0);
    int tr[DW_BWDW_TAPS], ts[DW_BWDW_TAPS];
#pragma unroll
    for (int i = 0; i < DW_BWDW_TAPS; ++i) {
        const int tap = tap0 + (i < ntaps ? i : 0);
        tr[i] = tap / p.s;
        ts[i] = tap - tr[i] * p.s;
    }
    const int PQ = p.p * p.q;
    const int J = p.n * PQ;
    const int j_begin = blockIdx.z * p.pix_per_split;
    const int j_end = min(J, j_begin + p.pix_per_split);
    const int plane = p.h * p.w;
    const float* xc = p.x + ((size_t)g * p.cg + cl) * plane;  // image 0, input channel c
    const float* dyk = p.dy + (size_t)kk * PQ;                 // image 0, output channel k

    float acc[DW_BWDW_TAPS];
#pragma unroll
    for (int i = 0; i < DW_BWDW_TAPS; ++i) acc[i] = 0.0f;
    for (int j = j_begin + tid; j < j_end; j += DW_BWDW_THREADS) {
        const int img = j / PQ;
        const int rem = j - img * PQ;
        const int oh = rem / p.q;
        const int ow = rem - oh * p.q;
        const float d = __ldg(dyk + (size_t)img * p.k * PQ + rem);
        const float* xi = xc + (size_t)img * p.c * plane;
        const int ih0 = oh * p.stride - p.pad;
        const int iw0 = ow * p.stride - p.pad;
#pragma unroll
        for (int i = 0; i < DW_BWDW_TAPS; ++i) {
            if (i >= ntaps) break;
            const int ih = ih0 + tr[i];
            const int iw = iw0 + ts[i];
            if ((unsigned)ih < (unsigned)p.h && (unsigned)iw < (unsigned)p.w)
                acc[i] = fmaf(d, __ldg(xi + ih * p.w + iw), acc[i]);
        }
    }
#pragma unroll
    for (int i = 0; i < DW_BWDW_TAPS; ++i) red[i][tid] = acc[i];
    __syncthreads();
    // Fixed-shape tree: red[.][t] += red[.][t + h] for h = NT/2, NT/4, ..., 1.
    for (int half = DW_BWDW_THREADS / 2; half > 0; half >>= 1) {
        if (tid < half) {
#pragma unroll
            for (int i = 0; i < DW_BWDW_TAPS; ++i) red[i][tid] += red[i][tid + half];
        }
        __syncthreads();
    }
    if (tid < ntaps) {
        const size_t crs = (size_t)p.cg * RS;
        p.out[(size_t)blockIdx.z * p.k * crs + (size_t)kk * crs + (size_t)cl * RS + tap0 + tid] = red[tid][0];
    }
}
