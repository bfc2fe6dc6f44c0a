// Implicit-GEMM convolution: parameters and tile loaders shared by the exact f32 kernels
// (conv.cu) and the tensor-core kernels (conv_tc.cu). No im2col buffer is ever materialised: the
// loaders gather the GEMM operands straight from the NCHW tensors.
//
// One parameter block serves the forward pass and the backward-data pass, which are the same
// GEMM with different index maps:
//
//   FWD:       out = y  [N, K, P, Q]   A = x  [N, C, H, W]   reduction over (c, r, s)
//   BWD_DATA:  out = dx [N, C, H, W]   A = dy [N, K, P, Q]   reduction over (k, r, s)
//
// GEMM view: rows m = output pixels (img, oh, ow) of `out`, columns n = output channels of
// `out`, reduction index = (channel chunk, r, s) of the A source. The reduction runs channel
// chunks of BK outer and the R*S taps inner, so consecutive k-tiles re-read the same cache
// lines of the weights and of the input.
#pragma once
#include "common.cuh"

struct ConvParams {
    const float* src;       // A source: x (FWD) or dy (BWD_DATA), [n, src_c, src_h, src_w]
    const float* wgt;       // weights [K, C, R, S]
    float* out;             // [n, out_c, out_h, out_w]
    const float* scale;     // epilogue: per out channel multiplier, or null
    const float* shift;     // epilogue: per out channel addend, or null
    const float* residual;  // epilogue: tensor shaped like `out` added before the ReLU, or null
    int n;
    int src_c, src_h, src_w;
    int out_c, out_h, out_w;
    int r, s;
    int stride, pad;
    int act;         // epilogue, last: 0 none, 1 = max(v, 0), 2 = min(max(v, 0), 6)
    int w_stride_n;  // weight offset per output channel of the GEMM (FWD: C*R*S, BWD: R*S)
    int w_stride_c;  // weight offset per reduction channel       (FWD: R*S,   BWD: C*R*S)
};
static_assert(sizeof(ConvParams) == 104, "ConvParams layout must match the Rust mirror");
LF_OFFSET(ConvParams, src, 0); LF_OFFSET(ConvParams, wgt, 8); LF_OFFSET(ConvParams, out, 16);
LF_OFFSET(ConvParams, scale, 24); LF_OFFSET(ConvParams, shift, 32); LF_OFFSET(ConvParams, residual, 40);
LF_OFFSET(ConvParams, n, 48); LF_OFFSET(ConvParams, src_c, 52); LF_OFFSET(ConvParams, src_h, 56);
LF_OFFSET(ConvParams, src_w, 60); LF_OFFSET(ConvParams, out_c, 64); LF_OFFSET(ConvParams, out_h, 68);
LF_OFFSET(ConvParams, out_w, 72); LF_OFFSET(ConvParams, r, 76); LF_OFFSET(ConvParams, s, 80);
LF_OFFSET(ConvParams, stride, 84); LF_OFFSET(ConvParams, pad, 88); LF_OFFSET(ConvParams, act, 92);
LF_OFFSET(ConvParams, w_stride_n, 96); LF_OFFSET(ConvParams, w_stride_c, 100);

#define LF_CONV_FWD 0
#define LF_CONV_BWD_DATA 1

// Position in the A source read for output pixel (oh, ow) and tap (r, s); false when the tap
// falls into the zero padding (FWD) or onto a non-existent output position (BWD_DATA).
template <int MODE>
LF_DEVICE bool lf_conv_a_pos(const ConvParams& p, int oh, int ow, int r, int s, int& ah, int& aw) {
    if (MODE == LF_CONV_FWD) {
        ah = oh * p.stride - p.pad + r;
        aw = ow * p.stride - p.pad + s;
        return (unsigned)ah < (unsigned)p.src_h && (unsigned)aw < (unsigned)p.src_w;
    } else {
        // dx[h, w] gathers dy[p, q] for h = p*stride - pad + r  <=>  p = (h + pad - r) / stride.
        const int th = oh + p.pad - r;
        const int tw = ow + p.pad - s;
        if (th < 0 || tw < 0) return false;
        if (th % p.stride != 0 || tw % p.stride != 0) return false;
        ah = th / p.stride;
        aw = tw / p.stride;
        return ah < p.src_h && aw < p.src_w;
    }
}

// Per-thread state of the operand loaders. Thread `tid` of an NT-thread block always loads the
// same GEMM row of A (pixel, NT % BM == 0) and the same GEMM column of B (NT % BN == 0), so the
// pixel decode and the weight row pointer are computed once per block.
template <int MODE, int BM, int BN, int BK, int NT>
struct LfConvLoader {
    static_assert(NT % BM == 0, "each thread must own one A row");
    static_assert(NT % BN == 0, "each thread must own one B column");
    static_assert((BM * BK) % NT == 0 && (BN * BK) % NT == 0, "tiles must split evenly");
    static constexpr int A_PER = BM * BK / NT;  // A elements per thread per k-tile
    static constexpr int B_PER = BN * BK / NT;  // B elements per thread per k-tile
    static constexpr int A_KSTEP = NT / BM;     // kk distance between a thread's A elements
    static constexpr int B_KSTEP = NT / BN;

    int a_m;           // tile row this thread loads (As[.][a_m])
    int a_k0;          // first tile kk of its A elements
    bool m_ok;
    int oh, ow;
    const float* src_img;  // A source image of this thread's pixel
    int b_n;           // tile column this thread loads (Bs[.][b_n])
    int b_k0;
    bool n_ok;
    const float* w_row;    // weights of this thread's GEMM column
    int plane;             // src_h * src_w
    int rs_count;

    LF_DEVICE void init(const ConvParams& p, int m0, int n0) { init(p, m0, n0, p.src_c); }

    // `src_cs`: channels per image of the A source tensor. Dense convs pass p.src_c; a grouped
    // conv passes the whole tensor's channel count while p.src_c is one group's (the grouped
    // kernels of conv.cu offset p.src to their group's first channel).
    LF_DEVICE void init(const ConvParams& p, int m0, int n0, int src_cs) {
        const int tid = threadIdx.x;
        const int hw_out = p.out_h * p.out_w;
        const int M = p.n * hw_out;
        a_m = tid % BM;
        a_k0 = tid / BM;
        const int gm = m0 + a_m;
        m_ok = gm < M;
        int img = 0;
        oh = 0;
        ow = 0;
        if (m_ok) {
            img = gm / hw_out;
            const int rem = gm - img * hw_out;
            oh = rem / p.out_w;
            ow = rem - oh * p.out_w;
        }
        plane = p.src_h * p.src_w;
        src_img = p.src + (size_t)img * src_cs * plane;
        b_n = tid % BN;
        b_k0 = tid / BN;
        const int gn = n0 + b_n;
        n_ok = gn < p.out_c;
        w_row = p.wgt + (size_t)(n_ok ? gn : 0) * p.w_stride_n;
        rs_count = p.r * p.s;
    }

    // Loads k-tile `t` (channel chunk t / (R*S), tap t % (R*S)) into registers.
    LF_DEVICE void load(const ConvParams& p, int t, float (&a)[A_PER], float (&b)[B_PER]) const {
        const int chunk = t / rs_count;
        const int rs = t - chunk * rs_count;
        const int r = rs / p.s;
        const int s = rs - r * p.s;
        const int c0 = chunk * BK;
        int ah = 0, aw = 0;
        const bool pv = m_ok && lf_conv_a_pos<MODE>(p, oh, ow, r, s, ah, aw);
        const float* a_ptr = src_img + (pv ? ah * p.src_w + aw : 0);
#pragma unroll
        for (int l = 0; l < A_PER; ++l) {
            const int ch = c0 + a_k0 + l * A_KSTEP;
            a[l] = (pv && ch < p.src_c) ? __ldg(a_ptr + (size_t)ch * plane) : 0.0f;
        }
#pragma unroll
        for (int l = 0; l < B_PER; ++l) {
            const int ch = c0 + b_k0 + l * B_KSTEP;
            b[l] = (n_ok && ch < p.src_c) ? __ldg(w_row + (size_t)ch * p.w_stride_c + rs) : 0.0f;
        }
    }

    // Number of k-tiles of the whole reduction.
    LF_DEVICE int tiles(const ConvParams& p) const {
        return ((p.src_c + BK - 1) / BK) * rs_count;
    }
};

// Epilogue shared by every conv kernel: optional per-channel affine (folded batch norm or bias),
// optional residual add, optional ReLU / ReLU6, in that order. `out_cs`: channels per image of
// the output tensor (p.out_c, or the whole tensor's count for one group of a grouped conv).
LF_DEVICE void lf_conv_store(const ConvParams& p, int gm, int gn, float v, int out_cs) {
    const int hw_out = p.out_h * p.out_w;
    const int img = gm / hw_out;
    const int pix = gm - img * hw_out;
    const size_t o = ((size_t)img * out_cs + gn) * hw_out + pix;
    if (p.scale) v = v * p.scale[gn];
    if (p.shift) v = v + p.shift[gn];
    if (p.residual) v = v + p.residual[o];
    if (p.act == 1) v = lf_relu(v);
    else if (p.act == 2) v = fminf(fmaxf(v, 0.0f), 6.0f);
    p.out[o] = v;
}

LF_DEVICE void lf_conv_store(const ConvParams& p, int gm, int gn, float v) { lf_conv_store(p, gm, gn, v, p.out_c); }

// ---- grouped convolutions ---------------------------------------------------------------------
//
// One group's GEMM is a dense conv of c_in/g input and c_out/g output channels whose tensors have
// more channels per image than the group reads or writes. `c` describes group 0: src, wgt, out,
// scale, shift and residual point at group 0's first channel / weight, src_c and out_c are the
// per-group counts and w_stride_n / w_stride_c the per-group weight strides ([K, C/g, R, S]).
// blockIdx.z is the group: lf_conv_group() moves every pointer to that group.
struct ConvGroupParams {
    ConvParams c;
    int src_ctotal;  // channels per image of the A source tensor
    int out_ctotal;  // channels per image of the output tensor
    int w_group;     // weight elements per group: (K/g) * (C/g) * R * S
    int _pad;
};
static_assert(sizeof(ConvGroupParams) == 120, "ConvGroupParams layout must match the Rust mirror");
LF_OFFSET(ConvGroupParams, c, 0); LF_OFFSET(ConvGroupParams, src_ctotal, 104);
LF_OFFSET(ConvGroupParams, out_ctotal, 108); LF_OFFSET(ConvGroupParams, w_group, 112);
LF_OFFSET(ConvGroupParams, _pad, 116);

// Group `g`'s view of a grouped problem (see ConvGroupParams).
LF_DEVICE ConvParams lf_conv_group(const ConvGroupParams& gp, int g) {
    ConvParams p = gp.c;
    const size_t src_plane = (size_t)p.src_h * p.src_w;
    const size_t out_plane = (size_t)p.out_h * p.out_w;
    p.src += (size_t)g * p.src_c * src_plane;
    p.wgt += (size_t)g * gp.w_group;
    p.out += (size_t)g * p.out_c * out_plane;
    if (p.scale) p.scale += (size_t)g * p.out_c;
    if (p.shift) p.shift += (size_t)g * p.out_c;
    if (p.residual) p.residual += (size_t)g * p.out_c * out_plane;
    return p;
}
