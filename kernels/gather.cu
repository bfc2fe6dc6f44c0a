// Masked channel gather.
//
// index_select: x viewed as [outer, dim, inner], y[o, j, i] = x[o, idx[j], i]. One thread per
// output element (per 4 elements, 16-byte accesses, when inner % 4 == 0).
//
// gather_batched: the same source gathered for K candidates in one launch. x is viewed as
// [outer, d0, d1, inner]; candidate c keeps rows R_c of d0 and columns C_c of d1 and gets the
// compact tensor [outer, |R_c|, |C_c|, inner], written at out + out_off[c] (all candidates packed
// back to back). Conv weights [K, C, R, S] use outer = 1, d0 = K, d1 = C, inner = R*S (output and
// input channels at once); BN parameters [C] use d0 = C, d1 = 1; activations [N, C, H, W] use
// outer = N, d0 = C, d1 = 1, inner = H*W. Grid (x: elements of the largest candidate, y: K).
#include "common.cuh"

struct IndexSelectParams {
    const float* x;
    const u32* idx;   // [nidx], each < dim (checked on the host)
    float* out;
    long long total;  // outer * nidx * inner
    long long inner;
    int outer;
    int dim;
    int nidx;
    int vec4;         // inner % 4 == 0
};
static_assert(sizeof(IndexSelectParams) == 56, "IndexSelectParams layout must match the Rust mirror");
LF_OFFSET(IndexSelectParams, x, 0); LF_OFFSET(IndexSelectParams, idx, 8);
LF_OFFSET(IndexSelectParams, out, 16); LF_OFFSET(IndexSelectParams, total, 24);
LF_OFFSET(IndexSelectParams, inner, 32); LF_OFFSET(IndexSelectParams, outer, 40);
LF_OFFSET(IndexSelectParams, dim, 44); LF_OFFSET(IndexSelectParams, nidx, 48);
LF_OFFSET(IndexSelectParams, vec4, 52);

extern "C" __global__ void __launch_bounds__(256) index_select(const IndexSelectParams p) {
    const long long t0 = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p.vec4) {
        const long long inner4 = p.inner / 4;
        if (t0 >= p.total / 4) return;
        const long long i = t0 % inner4;
        const long long t = t0 / inner4;
        const long long j = t % p.nidx;
        const long long o = t / p.nidx;
        const float4* src = reinterpret_cast<const float4*>(p.x) + (o * p.dim + p.idx[j]) * inner4 + i;
        reinterpret_cast<float4*>(p.out)[t0] = __ldg(src);
    } else {
        if (t0 >= p.total) return;
        const long long i = t0 % p.inner;
        const long long t = t0 / p.inner;
        const long long j = t % p.nidx;
        const long long o = t / p.nidx;
        p.out[t0] = __ldg(p.x + (o * p.dim + p.idx[j]) * p.inner + i);
    }
}

// meta[c * 5 + {0..4}] = row list offset, row count, column list offset, column count, output
// offset (elements); list offsets index `lists`. Everything is checked on the host.
struct GatherBatchParams {
    const float* x;
    const u32* meta;
    const u32* lists;
    float* out;
    long long inner;
    int outer;
    int d0;
    int d1;
    int k;
};
static_assert(sizeof(GatherBatchParams) == 56, "GatherBatchParams layout must match the Rust mirror");
LF_OFFSET(GatherBatchParams, x, 0); LF_OFFSET(GatherBatchParams, meta, 8);
LF_OFFSET(GatherBatchParams, lists, 16); LF_OFFSET(GatherBatchParams, out, 24);
LF_OFFSET(GatherBatchParams, inner, 32); LF_OFFSET(GatherBatchParams, outer, 40);
LF_OFFSET(GatherBatchParams, d0, 44); LF_OFFSET(GatherBatchParams, d1, 48);
LF_OFFSET(GatherBatchParams, k, 52);

extern "C" __global__ void __launch_bounds__(256) gather_batched(const GatherBatchParams p) {
    const int c = blockIdx.y;
    const u32* m = p.meta + (size_t)c * 5;
    const long long rows = m[1], cols = m[3];
    const long long size = (long long)p.outer * rows * cols * p.inner;
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= size) return;
    const long long i = e % p.inner;
    long long t = e / p.inner;
    const long long cc = t % cols;
    t /= cols;
    const long long rr = t % rows;
    const long long o = t / rows;
    const long long src_row = p.lists[m[0] + rr];
    const long long src_col = p.lists[m[2] + cc];
    p.out[(long long)m[4] + e] = __ldg(p.x + ((o * p.d0 + src_row) * p.d1 + src_col) * p.inner + i);
}
