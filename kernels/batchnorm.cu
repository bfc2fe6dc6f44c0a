// Batch normalisation over [N, C, HW] (HW = 1 for rank-2 inputs): training forward with running
// statistics, inference forward, backward, and folding into a conv epilogue.
//
// Statistics are computed in a fixed order without atomics: grid (C, S) where split s of channel
// c covers a fixed range of images (S depends on the shape only, not on the device). Each block
// computes its count, mean and M2 = sum (x - mean)^2 with two passes over its (L2-resident)
// range; bn_finalize merges the S partials per channel in split order with Chan's formula,
// which is numerically robust, then updates the running statistics.
#include "common.cuh"

#define BN_THREADS 256

struct BnStatsParams {
    const float* x;
    float* partial;  // [c, splits, 3]: count, mean, M2
    int n, c, hw;
    int splits;
    int imgs_per_split;
    int _pad;
};
static_assert(sizeof(BnStatsParams) == 40, "BnStatsParams layout must match the Rust mirror");
LF_OFFSET(BnStatsParams, x, 0); LF_OFFSET(BnStatsParams, partial, 8); LF_OFFSET(BnStatsParams, n, 16);
LF_OFFSET(BnStatsParams, c, 20); LF_OFFSET(BnStatsParams, hw, 24); LF_OFFSET(BnStatsParams, splits, 28);
LF_OFFSET(BnStatsParams, imgs_per_split, 32); LF_OFFSET(BnStatsParams, _pad, 36);

extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_stats_partial(const BnStatsParams p) {
    __shared__ float scratch[32];
    const int c = blockIdx.x;
    const int s = blockIdx.y;
    const int img0 = s * p.imgs_per_split;
    const int img1 = min(p.n, img0 + p.imgs_per_split);
    const int nimg = img1 > img0 ? img1 - img0 : 0;
    const long long cnt = (long long)nimg * p.hw;
    float sum = 0.0f;
    for (long long e = threadIdx.x; e < cnt; e += BN_THREADS) {
        const long long img = img0 + e / p.hw;
        const long long px = e % p.hw;
        sum += p.x[(img * p.c + c) * p.hw + px];
    }
    sum = lf_block_sum<BN_THREADS>(sum, scratch);
    const float mean = cnt > 0 ? sum / (float)cnt : 0.0f;
    float m2 = 0.0f;
    for (long long e = threadIdx.x; e < cnt; e += BN_THREADS) {
        const long long img = img0 + e / p.hw;
        const long long px = e % p.hw;
        const float d = p.x[(img * p.c + c) * p.hw + px] - mean;
        m2 += d * d;
    }
    m2 = lf_block_sum<BN_THREADS>(m2, scratch);
    if (threadIdx.x == 0) {
        float* out = p.partial + ((size_t)c * p.splits + s) * 3;
        out[0] = (float)cnt;
        out[1] = mean;
        out[2] = m2;
    }
}

struct BnFinalizeParams {
    const float* partial;
    const float* gamma;
    float* running_mean;
    float* running_var;
    float* save_mean;    // [c] batch mean
    float* save_invstd;  // [c] 1 / sqrt(biased var + eps)
    float* coef;         // [c] gamma * invstd, used by bn_apply
    int c;
    int splits;
    float momentum;
    float eps;
};
static_assert(sizeof(BnFinalizeParams) == 72, "BnFinalizeParams layout must match the Rust mirror");
LF_OFFSET(BnFinalizeParams, partial, 0); LF_OFFSET(BnFinalizeParams, gamma, 8);
LF_OFFSET(BnFinalizeParams, running_mean, 16); LF_OFFSET(BnFinalizeParams, running_var, 24);
LF_OFFSET(BnFinalizeParams, save_mean, 32); LF_OFFSET(BnFinalizeParams, save_invstd, 40);
LF_OFFSET(BnFinalizeParams, coef, 48); LF_OFFSET(BnFinalizeParams, c, 56);
LF_OFFSET(BnFinalizeParams, splits, 60); LF_OFFSET(BnFinalizeParams, momentum, 64);
LF_OFFSET(BnFinalizeParams, eps, 68);

extern "C" __global__ void __launch_bounds__(128) bn_finalize(const BnFinalizeParams p) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= p.c) return;
    const float* part = p.partial + (size_t)c * p.splits * 3;
    float n = 0.0f, mean = 0.0f, m2 = 0.0f;
    for (int s = 0; s < p.splits; ++s) {
        const float nb = part[s * 3 + 0];
        if (nb == 0.0f) continue;
        const float mb = part[s * 3 + 1];
        const float m2b = part[s * 3 + 2];
        const float tot = n + nb;
        const float delta = mb - mean;
        mean += delta * (nb / tot);
        m2 += m2b + delta * delta * (n * nb / tot);
        n = tot;
    }
    const float var = n > 0.0f ? m2 / n : 0.0f;
    const float unbiased = n > 1.0f ? m2 / (n - 1.0f) : var;
    const float invstd = 1.0f / sqrtf(var + p.eps);
    p.save_mean[c] = mean;
    p.save_invstd[c] = invstd;
    p.coef[c] = p.gamma[c] * invstd;
    p.running_mean[c] = (1.0f - p.momentum) * p.running_mean[c] + p.momentum * mean;
    p.running_var[c] = (1.0f - p.momentum) * p.running_var[c] + p.momentum * unbiased;
}

// y = (x - mean[c]) * coef[c] + beta[c]. Inference mode passes var != null and coef = gamma: the
// coefficient is then gamma / sqrt(var + eps).
struct BnApplyParams {
    const float* x;
    float* y;
    const float* mean;
    const float* coef;
    const float* beta;
    const float* var;
    long long total;
    int c, hw;
    float eps;
    int vec4;  // hw % 4 == 0: four consecutive elements share a channel
};
static_assert(sizeof(BnApplyParams) == 72, "BnApplyParams layout must match the Rust mirror");
LF_OFFSET(BnApplyParams, x, 0); LF_OFFSET(BnApplyParams, y, 8); LF_OFFSET(BnApplyParams, mean, 16);
LF_OFFSET(BnApplyParams, coef, 24); LF_OFFSET(BnApplyParams, beta, 32); LF_OFFSET(BnApplyParams, var, 40);
LF_OFFSET(BnApplyParams, total, 48); LF_OFFSET(BnApplyParams, c, 56); LF_OFFSET(BnApplyParams, hw, 60);
LF_OFFSET(BnApplyParams, eps, 64); LF_OFFSET(BnApplyParams, vec4, 68);

LF_DEVICE float bn_coef(const BnApplyParams& p, int c) {
    return p.var ? p.coef[c] / sqrtf(p.var[c] + p.eps) : p.coef[c];
}

extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_apply(const BnApplyParams p) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p.vec4) {
        const long long base = t * 4;
        if (base >= p.total) return;
        const int c = (int)((base / p.hw) % p.c);
        const float k = bn_coef(p, c), m = p.mean[c], b = p.beta[c];
        const float4 v = __ldg(reinterpret_cast<const float4*>(p.x + base));
        float4 r;
        r.x = fmaf(v.x - m, k, b);
        r.y = fmaf(v.y - m, k, b);
        r.z = fmaf(v.z - m, k, b);
        r.w = fmaf(v.w - m, k, b);
        *reinterpret_cast<float4*>(p.y + base) = r;
    } else {
        if (t >= p.total) return;
        const int c = (int)((t / p.hw) % p.c);
        p.y[t] = fmaf(p.x[t] - p.mean[c], bn_coef(p, c), p.beta[c]);
    }
}

// ---- backward -------------------------------------------------------------------------------------------
// dbeta = sum dy, dgamma = sum dy * xhat (xhat = (x - mean) * invstd), per channel, two-stage
// fixed order; then dx = gamma * invstd * (dy - dbeta / cnt - xhat * dgamma / cnt).
struct BnBwdPartialParams {
    const float* x;
    const float* dy;
    const float* mean;
    const float* invstd;
    float* partial;  // [c, splits, 2]: sum dy, sum dy * xhat
    int n, c, hw;
    int splits;
    int imgs_per_split;
    int _pad;
};
static_assert(sizeof(BnBwdPartialParams) == 64, "BnBwdPartialParams layout must match the Rust mirror");
LF_OFFSET(BnBwdPartialParams, x, 0); LF_OFFSET(BnBwdPartialParams, dy, 8);
LF_OFFSET(BnBwdPartialParams, mean, 16); LF_OFFSET(BnBwdPartialParams, invstd, 24);
LF_OFFSET(BnBwdPartialParams, partial, 32); LF_OFFSET(BnBwdPartialParams, n, 40);
LF_OFFSET(BnBwdPartialParams, c, 44); LF_OFFSET(BnBwdPartialParams, hw, 48);
LF_OFFSET(BnBwdPartialParams, splits, 52); LF_OFFSET(BnBwdPartialParams, imgs_per_split, 56);
LF_OFFSET(BnBwdPartialParams, _pad, 60);

extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_bwd_partial(const BnBwdPartialParams p) {
    __shared__ float scratch[32];
    const int c = blockIdx.x;
    const int s = blockIdx.y;
    const int img0 = s * p.imgs_per_split;
    const int img1 = min(p.n, img0 + p.imgs_per_split);
    const long long cnt = img1 > img0 ? (long long)(img1 - img0) * p.hw : 0;
    const float mean = p.mean[c];
    const float invstd = p.invstd[c];
    float sdy = 0.0f, sdyx = 0.0f;
    for (long long e = threadIdx.x; e < cnt; e += BN_THREADS) {
        const long long img = img0 + e / p.hw;
        const long long px = e % p.hw;
        const size_t o = (img * p.c + c) * p.hw + px;
        const float g = p.dy[o];
        sdy += g;
        sdyx += g * ((p.x[o] - mean) * invstd);
    }
    sdy = lf_block_sum<BN_THREADS>(sdy, scratch);
    sdyx = lf_block_sum<BN_THREADS>(sdyx, scratch);
    if (threadIdx.x == 0) {
        float* out = p.partial + ((size_t)c * p.splits + s) * 2;
        out[0] = sdy;
        out[1] = sdyx;
    }
}

struct BnBwdFinalizeParams {
    const float* partial;
    float* dgamma;
    float* dbeta;
    int c;
    int splits;
};
static_assert(sizeof(BnBwdFinalizeParams) == 32, "BnBwdFinalizeParams layout must match the Rust mirror");
LF_OFFSET(BnBwdFinalizeParams, partial, 0); LF_OFFSET(BnBwdFinalizeParams, dgamma, 8);
LF_OFFSET(BnBwdFinalizeParams, dbeta, 16); LF_OFFSET(BnBwdFinalizeParams, c, 24);
LF_OFFSET(BnBwdFinalizeParams, splits, 28);

extern "C" __global__ void __launch_bounds__(128) bn_bwd_finalize(const BnBwdFinalizeParams p) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= p.c) return;
    const float* part = p.partial + (size_t)c * p.splits * 2;
    float sdy = 0.0f, sdyx = 0.0f;
    for (int s = 0; s < p.splits; ++s) {
        sdy += part[s * 2 + 0];
        sdyx += part[s * 2 + 1];
    }
    p.dbeta[c] = sdy;
    p.dgamma[c] = sdyx;
}

struct BnBwdApplyParams {
    const float* x;
    const float* dy;
    const float* mean;
    const float* invstd;
    const float* gamma;
    const float* dgamma;
    const float* dbeta;
    float* dx;
    long long total;
    int c, hw;
    float inv_count;
    int _pad;
};
static_assert(sizeof(BnBwdApplyParams) == 88, "BnBwdApplyParams layout must match the Rust mirror");
LF_OFFSET(BnBwdApplyParams, x, 0); LF_OFFSET(BnBwdApplyParams, dy, 8); LF_OFFSET(BnBwdApplyParams, mean, 16);
LF_OFFSET(BnBwdApplyParams, invstd, 24); LF_OFFSET(BnBwdApplyParams, gamma, 32);
LF_OFFSET(BnBwdApplyParams, dgamma, 40); LF_OFFSET(BnBwdApplyParams, dbeta, 48);
LF_OFFSET(BnBwdApplyParams, dx, 56); LF_OFFSET(BnBwdApplyParams, total, 64);
LF_OFFSET(BnBwdApplyParams, c, 72); LF_OFFSET(BnBwdApplyParams, hw, 76);
LF_OFFSET(BnBwdApplyParams, inv_count, 80); LF_OFFSET(BnBwdApplyParams, _pad, 84);

extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_bwd_apply(const BnBwdApplyParams p) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= p.total) return;
    const int c = (int)((t / p.hw) % p.c);
    const float invstd = p.invstd[c];
    const float xhat = (p.x[t] - p.mean[c]) * invstd;
    const float k = p.gamma[c] * invstd;
    p.dx[t] = k * (p.dy[t] - p.dbeta[c] * p.inv_count - xhat * (p.dgamma[c] * p.inv_count));
}

// Folds inference batch norm into a per-channel affine for the conv epilogue:
// scale = gamma / sqrt(var + eps), shift = beta - mean * scale.
struct BnFoldParams {
    const float* gamma;
    const float* beta;
    const float* mean;
    const float* var;
    float* scale;
    float* shift;
    int c;
    float eps;
};
static_assert(sizeof(BnFoldParams) == 56, "BnFoldParams layout must match the Rust mirror");
LF_OFFSET(BnFoldParams, gamma, 0); LF_OFFSET(BnFoldParams, beta, 8); LF_OFFSET(BnFoldParams, mean, 16);
LF_OFFSET(BnFoldParams, var, 24); LF_OFFSET(BnFoldParams, scale, 32); LF_OFFSET(BnFoldParams, shift, 40);
LF_OFFSET(BnFoldParams, c, 48); LF_OFFSET(BnFoldParams, eps, 52);

extern "C" __global__ void __launch_bounds__(128) bn_fold(const BnFoldParams p) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= p.c) return;
    const float scale = p.gamma[c] / sqrtf(p.var[c] + p.eps);
    p.scale[c] = scale;
    p.shift[c] = p.beta[c] - p.mean[c] * scale;
}
