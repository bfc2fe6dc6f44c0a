// Pooling: max pooling (no padding, floor mode) forward and backward, global average pooling
// forward and backward. One thread per output element (per input element for the backward
// passes): no atomics, fixed summation order.
#include "common.cuh"

struct PoolParams {
    const float* x;   // forward input [nc, h, w]
    const float* dy;  // backward: gradient of the output
    float* out;
    int nc;           // N * C planes
    int h, w;
    int oh, ow;
    int k, stride;
    int pad;          // max pool: -inf cells on each side
};
static_assert(sizeof(PoolParams) == 56, "PoolParams layout must match the Rust mirror");
LF_OFFSET(PoolParams, x, 0); LF_OFFSET(PoolParams, dy, 8); LF_OFFSET(PoolParams, out, 16);
LF_OFFSET(PoolParams, nc, 24); LF_OFFSET(PoolParams, h, 28); LF_OFFSET(PoolParams, w, 32);
LF_OFFSET(PoolParams, oh, 36); LF_OFFSET(PoolParams, ow, 40); LF_OFFSET(PoolParams, k, 44);
LF_OFFSET(PoolParams, stride, 48); LF_OFFSET(PoolParams, pad, 52);

// First maximum of window (oi, oj) in row-major order: the scan starts from -inf at the
// window's first element and only a strictly greater value replaces it (so NaNs are skipped and
// an all -inf / NaN window reports -inf at its first element, as the CPU backend does).
// Returns its flat index inside the plane.
LF_DEVICE int maxpool_argmax(const float* plane, const PoolParams& p, int oi, int oj, float& best) {
    // The window clipped to the plane: padding cells hold -inf and never win.
    const int i0 = oi * p.stride - p.pad;
    const int j0 = oj * p.stride - p.pad;
    const int ia = max(i0, 0), ib = min(i0 + p.k, p.h);
    const int ja = max(j0, 0), jb = min(j0 + p.k, p.w);
    int arg = ia * p.w + ja;
    best = -__int_as_float(0x7f800000);
    for (int i = ia; i < ib; ++i) {
        const float* row = plane + i * p.w;
        for (int j = ja; j < jb; ++j) {
            const float v = row[j];
            if (v > best) {
                best = v;
                arg = i * p.w + j;
            }
        }
    }
    return arg;
}

extern "C" __global__ void __launch_bounds__(256) maxpool_fwd(const PoolParams p) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long total = (long long)p.nc * p.oh * p.ow;
    if (idx >= total) return;
    const int oj = (int)(idx % p.ow);
    const long long t = idx / p.ow;
    const int oi = (int)(t % p.oh);
    const long long pl = t / p.oh;
    float best;
    maxpool_argmax(p.x + pl * p.h * p.w, p, oi, oj, best);
    p.out[idx] = best;
}

// dx[i, j] = sum, over the windows containing (i, j) whose first maximum is (i, j), of their dy,
// added in row-major window order (the order in which a serial loop over outputs would add them).
extern "C" __global__ void __launch_bounds__(256) maxpool_bwd(const PoolParams p) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long total = (long long)p.nc * p.h * p.w;
    if (idx >= total) return;
    const int j = (int)(idx % p.w);
    const long long t = idx / p.w;
    const int i = (int)(t % p.h);
    const long long pl = t / p.h;
    const float* plane = p.x + pl * p.h * p.w;
    const float* dyp = p.dy + pl * p.oh * p.ow;
    // Windows oi with oi*stride - pad <= i <= oi*stride - pad + k - 1.
    const int ip = i + p.pad, jp = j + p.pad;
    const int oi_lo = ip - p.k + 1 <= 0 ? 0 : (ip - p.k + 1 + p.stride - 1) / p.stride;
    const int oi_hi = min(ip / p.stride, p.oh - 1);
    const int oj_lo = jp - p.k + 1 <= 0 ? 0 : (jp - p.k + 1 + p.stride - 1) / p.stride;
    const int oj_hi = min(jp / p.stride, p.ow - 1);
    const int me = i * p.w + j;
    float acc = 0.0f;
    for (int oi = oi_lo; oi <= oi_hi; ++oi) {
        for (int oj = oj_lo; oj <= oj_hi; ++oj) {
            float best;
            if (maxpool_argmax(plane, p, oi, oj, best) == me) acc += dyp[oi * p.ow + oj];
        }
    }
    p.out[idx] = acc;
}

// [nc, h*w] -> [nc]: one warp per plane, lanes stride over the plane, fixed-order warp tree.
extern "C" __global__ void __launch_bounds__(256) avgpool_fwd(const PoolParams p) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (warp >= p.nc) return;  // whole warps exit together: the shuffles below see full warps
    const int hw = p.h * p.w;
    const float* plane = p.x + (size_t)warp * hw;
    float s = 0.0f;
    for (int e = lane; e < hw; e += 32) s += plane[e];
    s = lf_warp_sum_lane0(s);
    if (lane == 0) p.out[warp] = s / (float)hw;
}

extern "C" __global__ void __launch_bounds__(256) avgpool_bwd(const PoolParams p) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int hw = p.h * p.w;
    if (idx >= (long long)p.nc * hw) return;
    p.out[idx] = p.dy[idx / hw] / (float)hw;
}
