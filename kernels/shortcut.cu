// Option-A shortcut of the CIFAR ResNets (He et al. 2016): strided subsampling plus a channel
// map (zero channels where the map says -1), forward and backward.
#include "common.cuh"

struct ShortcutParams {
    const float* x;   // forward input [n, c_in, h, w]
    const float* dy;  // backward: [n, c_out, oh, ow]
    float* out;
    const int* map;   // forward: src[c_out]; backward: CSR inverse map, see shortcut_bwd
    int n, c_in, h, w;
    int c_out, oh, ow;
    int stride;
};
static_assert(sizeof(ShortcutParams) == 64, "ShortcutParams layout must match the Rust mirror");
LF_OFFSET(ShortcutParams, x, 0); LF_OFFSET(ShortcutParams, dy, 8); LF_OFFSET(ShortcutParams, out, 16);
LF_OFFSET(ShortcutParams, map, 24); LF_OFFSET(ShortcutParams, n, 32); LF_OFFSET(ShortcutParams, c_in, 36);
LF_OFFSET(ShortcutParams, h, 40); LF_OFFSET(ShortcutParams, w, 44); LF_OFFSET(ShortcutParams, c_out, 48);
LF_OFFSET(ShortcutParams, oh, 52); LF_OFFSET(ShortcutParams, ow, 56); LF_OFFSET(ShortcutParams, stride, 60);

// y[n, o, i, j] = src[o] >= 0 ? x[n, src[o], i*stride, j*stride] : 0
extern "C" __global__ void __launch_bounds__(256) shortcut_fwd(const ShortcutParams p) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long total = (long long)p.n * p.c_out * p.oh * p.ow;
    if (idx >= total) return;
    const int j = (int)(idx % p.ow);
    long long t = idx / p.ow;
    const int i = (int)(t % p.oh);
    t /= p.oh;
    const int o = (int)(t % p.c_out);
    const long long img = t / p.c_out;
    const int src = p.map[o];
    float v = 0.0f;
    if (src >= 0) v = p.x[((img * p.c_in + src) * p.h + (long long)i * p.stride) * p.w + (long long)j * p.stride];
    p.out[idx] = v;
}

// dx[n, c, h, w] = sum over output channels o with src[o] == c (increasing o) of
// dy[n, o, h/stride, w/stride] when h and w are multiples of stride, else 0.
// map = [offsets (c_in + 1) | output channels grouped by source channel], built on the host.
extern "C" __global__ void __launch_bounds__(256) shortcut_bwd(const ShortcutParams p) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long total = (long long)p.n * p.c_in * p.h * p.w;
    if (idx >= total) return;
    const int ww = (int)(idx % p.w);
    long long t = idx / p.w;
    const int hh = (int)(t % p.h);
    t /= p.h;
    const int c = (int)(t % p.c_in);
    const long long img = t / p.c_in;
    float acc = 0.0f;
    if (hh % p.stride == 0 && ww % p.stride == 0) {
        const int i = hh / p.stride;
        const int j = ww / p.stride;
        const int* list = p.map + p.c_in + 1;
        for (int e = p.map[c]; e < p.map[c + 1]; ++e) {
            const int o = list[e];
            acc += p.dy[((img * p.c_out + o) * p.oh + i) * p.ow + j];
        }
    }
    p.out[idx] = acc;
}
