// Losses over [rows, classes] logits: softmax cross-entropy and distillation KL. One warp per
// row; per-row results are written to a small buffer that the host reads back and sums in row
// order (the batch mean needs the host anyway, and this keeps the sum order fixed).
#include "common.cuh"

struct XentParams {
    const float* logits;  // [n, classes]
    const u32* labels;    // [n], checked < classes on the host
    float* dlogits;       // [n, classes]
    float* stats;         // [2 * n]: loss of row i at i, 1.0 at n + i when row i is correct
    int n;
    int classes;
    float inv_n;
    int _pad;
};
static_assert(sizeof(XentParams) == 48, "XentParams layout must match the Rust mirror");
LF_OFFSET(XentParams, logits, 0); LF_OFFSET(XentParams, labels, 8); LF_OFFSET(XentParams, dlogits, 16);
LF_OFFSET(XentParams, stats, 24); LF_OFFSET(XentParams, n, 32); LF_OFFSET(XentParams, classes, 36);
LF_OFFSET(XentParams, inv_n, 40); LF_OFFSET(XentParams, _pad, 44);

extern "C" __global__ void __launch_bounds__(256) softmax_xent(const XentParams p) {
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= p.n) return;  // whole warps exit together
    const float* x = p.logits + (size_t)row * p.classes;
    float* g = p.dlogits + (size_t)row * p.classes;
    const int label = (int)p.labels[row];

    // Maximum and its first index (ties go to the lowest index, as a serial scan with `>`).
    float best = -__int_as_float(0x7f800000);
    int arg = 0x7fffffff;
    for (int j = lane; j < p.classes; j += 32) {
        const float v = x[j];
        if (v > best || arg == 0x7fffffff) {
            best = v;
            arg = j;
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, off);
        const int oa = __shfl_xor_sync(0xffffffffu, arg, off);
        if (ov > best || (ov == best && oa < arg)) {
            best = ov;
            arg = oa;
        }
    }
    float sum = 0.0f;
    for (int j = lane; j < p.classes; j += 32) sum += expf(x[j] - best);
    sum = lf_warp_sum(sum);
    const float inv_sum = 1.0f / sum;
    for (int j = lane; j < p.classes; j += 32) {
        const float prob = expf(x[j] - best) * inv_sum;
        g[j] = (prob - (j == label ? 1.0f : 0.0f)) * p.inv_n;
    }
    if (lane == 0) {
        p.stats[row] = logf(sum) - (x[label] - best);
        p.stats[p.n + row] = arg == label ? 1.0f : 0.0f;
    }
}

// Per row: KL(softmax(t/T) || softmax(s/T)) and the gradient of T^2 * mean_rows(KL) with respect
// to the student logits, (softmax(s/T) - softmax(t/T)) * T / n (grad_scale = T / n).
struct KlParams {
    const float* student;
    const float* teacher;
    float* grad;
    float* row_kl;
    int n;
    int classes;
    float inv_t;
    float grad_scale;
};
static_assert(sizeof(KlParams) == 48, "KlParams layout must match the Rust mirror");
LF_OFFSET(KlParams, student, 0); LF_OFFSET(KlParams, teacher, 8); LF_OFFSET(KlParams, grad, 16);
LF_OFFSET(KlParams, row_kl, 24); LF_OFFSET(KlParams, n, 32); LF_OFFSET(KlParams, classes, 36);
LF_OFFSET(KlParams, inv_t, 40); LF_OFFSET(KlParams, grad_scale, 44);

extern "C" __global__ void __launch_bounds__(256) distill_kl(const KlParams p) {
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= p.n) return;
    const float* s = p.student + (size_t)row * p.classes;
    const float* t = p.teacher + (size_t)row * p.classes;
    float* g = p.grad + (size_t)row * p.classes;
    const float neg_inf = -__int_as_float(0x7f800000);
    float ms = neg_inf, mt = neg_inf;
    for (int j = lane; j < p.classes; j += 32) {
        ms = fmaxf(ms, s[j] * p.inv_t);
        mt = fmaxf(mt, t[j] * p.inv_t);
    }
    ms = lf_warp_max(ms);
    mt = lf_warp_max(mt);
    float zs = 0.0f, zt = 0.0f;
    for (int j = lane; j < p.classes; j += 32) {
        zs += expf(s[j] * p.inv_t - ms);
        zt += expf(t[j] * p.inv_t - mt);
    }
    zs = lf_warp_sum(zs);
    zt = lf_warp_sum(zt);
    const float lzs = logf(zs), lzt = logf(zt);
    float kl = 0.0f;
    for (int j = lane; j < p.classes; j += 32) {
        const float lps = s[j] * p.inv_t - ms - lzs;
        const float lpt = t[j] * p.inv_t - mt - lzt;
        const float pt = expf(lpt);
        const float ps = expf(lps);
        kl += pt * (lpt - lps);
        g[j] = (ps - pt) * p.grad_scale;
    }
    kl = lf_warp_sum_lane0(kl);
    if (lane == 0) p.row_kl[row] = kl;
}
