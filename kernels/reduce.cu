// Feature MSE of K candidates against one baseline, in one launch for all K, deterministic:
//
//   stage 1 (sqdiff_partial), grid (B, K): block b of candidate k sums (c - base)^2 over its own
//   contiguous chunk [b*chunk, (b+1)*chunk) of the M features: each thread keeps a Kahan sum over
//   a fixed stride pattern, then the block adds the per-thread sums in a fixed tree. The block
//   writes partial[k * B + b]. B and chunk depend on M only (chosen on the host), never on the
//   device, so the result is the same on every GPU.
//   stage 2 (sqdiff_final), grid K: Kahan over the B partials in a fixed stride pattern, fixed
//   tree across the block, divided by M.
//
// With Kahan sums at the leaves and pairwise trees above them, the rounding error stays at a
// few ulps of the total for M up to ~1e7 and beyond. The same kernels give the MSE loss (K = 1),
// which also needs the gradient: when `grad` is set, stage 1 writes grad = grad_scale * (c - base).
#include "common.cuh"

struct SqDiffParams {
    const float* cand;  // [k, m]
    const float* base;  // [m]
    float* partial;     // [k, blocks]
    float* grad;        // [k, m] or null
    long long m;
    long long chunk;    // multiple of 4
    int k;
    int blocks;         // B, blocks per candidate
    float grad_scale;
    int vec4;           // m % 4 == 0: 16-byte loads
};
static_assert(sizeof(SqDiffParams) == 64, "SqDiffParams layout must match the Rust mirror");
LF_OFFSET(SqDiffParams, cand, 0); LF_OFFSET(SqDiffParams, base, 8); LF_OFFSET(SqDiffParams, partial, 16);
LF_OFFSET(SqDiffParams, grad, 24); LF_OFFSET(SqDiffParams, m, 32); LF_OFFSET(SqDiffParams, chunk, 40);
LF_OFFSET(SqDiffParams, k, 48); LF_OFFSET(SqDiffParams, blocks, 52); LF_OFFSET(SqDiffParams, grad_scale, 56);
LF_OFFSET(SqDiffParams, vec4, 60);

#define SQ_THREADS 256

extern "C" __global__ void __launch_bounds__(SQ_THREADS) sqdiff_partial(const SqDiffParams p) {
    __shared__ float scratch[32];
    const int b = blockIdx.x;
    const int kc = blockIdx.y;
    const long long begin = (long long)b * p.chunk;
    const long long end = min(p.m, begin + p.chunk);
    const float* c = p.cand + (size_t)kc * p.m;
    float* g = p.grad ? p.grad + (size_t)kc * p.m : nullptr;
    LfKahan acc;
    lf_kahan_init(acc);
    if (p.vec4) {
        // begin and end are multiples of 4 (chunk is, and so is m), rows are 16-byte aligned.
        for (long long i = begin + 4 * (long long)threadIdx.x; i < end; i += 4 * SQ_THREADS) {
            const float4 cv = __ldg(reinterpret_cast<const float4*>(c + i));
            const float4 bv = __ldg(reinterpret_cast<const float4*>(p.base + i));
            const float d0 = cv.x - bv.x, d1 = cv.y - bv.y, d2 = cv.z - bv.z, d3 = cv.w - bv.w;
            lf_kahan_add(acc, __fmul_rn(d0, d0));
            lf_kahan_add(acc, __fmul_rn(d1, d1));
            lf_kahan_add(acc, __fmul_rn(d2, d2));
            lf_kahan_add(acc, __fmul_rn(d3, d3));
            if (g) {
                *reinterpret_cast<float4*>(g + i) =
                    make_float4(p.grad_scale * d0, p.grad_scale * d1, p.grad_scale * d2, p.grad_scale * d3);
            }
        }
    } else {
        for (long long i = begin + threadIdx.x; i < end; i += SQ_THREADS) {
            const float d = c[i] - p.base[i];
            lf_kahan_add(acc, __fmul_rn(d, d));
            if (g) g[i] = p.grad_scale * d;
        }
    }
    const float total = lf_block_sum<SQ_THREADS>(__fsub_rn(acc.sum, acc.c), scratch);
    if (threadIdx.x == 0) p.partial[(size_t)kc * p.blocks + b] = total;
}

struct SqDiffFinalParams {
    const float* partial;  // [k, blocks]
    float* out;            // [k]
    long long m;
    int k;
    int blocks;
};
static_assert(sizeof(SqDiffFinalParams) == 32, "SqDiffFinalParams layout must match the Rust mirror");
LF_OFFSET(SqDiffFinalParams, partial, 0); LF_OFFSET(SqDiffFinalParams, out, 8);
LF_OFFSET(SqDiffFinalParams, m, 16); LF_OFFSET(SqDiffFinalParams, k, 24);
LF_OFFSET(SqDiffFinalParams, blocks, 28);

extern "C" __global__ void __launch_bounds__(SQ_THREADS) sqdiff_final(const SqDiffFinalParams p) {
    __shared__ float scratch[32];
    const int kc = blockIdx.x;
    const float* part = p.partial + (size_t)kc * p.blocks;
    LfKahan acc;
    lf_kahan_init(acc);
    for (int i = threadIdx.x; i < p.blocks; i += SQ_THREADS) lf_kahan_add(acc, part[i]);
    const float total = lf_block_sum<SQ_THREADS>(__fsub_rn(acc.sum, acc.c), scratch);
    if (threadIdx.x == 0) p.out[kc] = p.m > 0 ? total / (float)p.m : 0.0f;
}
