// SGD with momentum, Nesterov and weight decay, PyTorch semantics (dampening 0):
//   g = grad + wd*p;  buf = momentum*buf + g;  step = nesterov ? g + momentum*buf : buf;
//   p -= lr*step      (momentum == 0: step = g, buffer untouched)
// Every operation is written with the explicitly rounded intrinsics so the compiler does not
// contract it into an FMA: the result is the same f32 arithmetic, in the same order, as the
// formula above (and as the CPU backend).
#include "common.cuh"

struct SgdParams {
    float* param;
    const float* grad;
    float* buf;
    long long n;
    float lr;
    float momentum;
    float weight_decay;
    int nesterov;
    int vec4;
    int _pad;
};
static_assert(sizeof(SgdParams) == 56, "SgdParams layout must match the Rust mirror");
LF_OFFSET(SgdParams, param, 0); LF_OFFSET(SgdParams, grad, 8); LF_OFFSET(SgdParams, buf, 16);
LF_OFFSET(SgdParams, n, 24); LF_OFFSET(SgdParams, lr, 32); LF_OFFSET(SgdParams, momentum, 36);
LF_OFFSET(SgdParams, weight_decay, 40); LF_OFFSET(SgdParams, nesterov, 44); LF_OFFSET(SgdParams, vec4, 48);
LF_OFFSET(SgdParams, _pad, 52);

// With momentum == 0 the buffer is neither read nor updated (PyTorch keeps no buffer then).
LF_DEVICE void sgd_one(const SgdParams& p, float& w, float g, float& m) {
    g = __fadd_rn(g, __fmul_rn(p.weight_decay, w));
    float step = g;
    if (p.momentum != 0.0f) {
        m = __fadd_rn(__fmul_rn(p.momentum, m), g);
        step = p.nesterov ? __fadd_rn(g, __fmul_rn(p.momentum, m)) : m;
    }
    w = __fsub_rn(w, __fmul_rn(p.lr, step));
}

extern "C" __global__ void __launch_bounds__(256) sgd_step(const SgdParams p) {
    const long long base = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (base >= p.n) return;
    if (p.vec4) {
        float4 w = *reinterpret_cast<const float4*>(p.param + base);
        const float4 g = __ldg(reinterpret_cast<const float4*>(p.grad + base));
        float4 m = *reinterpret_cast<const float4*>(p.buf + base);
        sgd_one(p, w.x, g.x, m.x);
        sgd_one(p, w.y, g.y, m.y);
        sgd_one(p, w.z, g.z, m.z);
        sgd_one(p, w.w, g.w, m.w);
        *reinterpret_cast<float4*>(p.param + base) = w;
        *reinterpret_cast<float4*>(p.buf + base) = m;
    } else {
        for (int k = 0; k < 4; ++k) {
            const long long i = base + k;
            if (i < p.n) {
                float w = p.param[i];
                float m = p.buf[i];
                sgd_one(p, w, p.grad[i], m);
                p.param[i] = w;
                p.buf[i] = m;
            }
        }
    }
}
