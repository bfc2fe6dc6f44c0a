// Element-wise ops: ReLU and ReLU6 forward/backward, add, fused add+ReLU, add-assign, scale.
//
// Memory bound. Each thread handles 4 consecutive elements: one 16-byte load per operand when
// `vec4` is set (element count divisible by 4; buffers are whole allocations, hence 16-byte
// aligned), a scalar tail loop otherwise. 256-thread blocks, one pass, no grid-stride loop.
#include "common.cuh"

struct EwParams {
    const float* a;
    const float* b;
    float* out;
    long long n;
    float s;
    int vec4;
};
static_assert(sizeof(EwParams) == 40, "EwParams layout must match the Rust mirror");
LF_OFFSET(EwParams, a, 0); LF_OFFSET(EwParams, b, 8); LF_OFFSET(EwParams, out, 16);
LF_OFFSET(EwParams, n, 24); LF_OFFSET(EwParams, s, 32); LF_OFFSET(EwParams, vec4, 36);

#define EW_RELU 0
#define EW_RELU_BWD 1   // a = dy, b = y (forward output)
#define EW_ADD 2
#define EW_ADD_RELU 3
#define EW_ADD_ASSIGN 4  // out += a
#define EW_SCALE 5       // out *= s
#define EW_RELU6 6
#define EW_RELU6_BWD 7  // a = dy, b = y (forward output)

template <int OP>
LF_DEVICE float ew_op(float a, float b, float o, float s) {
    if (OP == EW_RELU) return lf_relu(a);
    if (OP == EW_RELU_BWD) return b > 0.0f ? a : 0.0f;
    if (OP == EW_ADD) return a + b;
    if (OP == EW_ADD_RELU) return lf_relu(a + b);
    if (OP == EW_ADD_ASSIGN) return o + a;
    if (OP == EW_RELU6) return fminf(fmaxf(a, 0.0f), 6.0f);  // fmaxf: NaN -> 0, as the CPU's f32::max
    if (OP == EW_RELU6_BWD) return (b > 0.0f && b < 6.0f) ? a : 0.0f;
    return o * s;  // EW_SCALE
}

template <int OP>
LF_DEVICE void ew_kernel(const EwParams& p) {
    constexpr bool READS_A = OP != EW_SCALE;
    constexpr bool READS_B = OP == EW_RELU_BWD || OP == EW_RELU6_BWD || OP == EW_ADD || OP == EW_ADD_RELU;
    constexpr bool READS_OUT = OP == EW_ADD_ASSIGN || OP == EW_SCALE;
    const long long base = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (base >= p.n) return;
    if (p.vec4) {
        float4 a = make_float4(0.f, 0.f, 0.f, 0.f), b = a, o = a;
        if (READS_A) a = __ldg(reinterpret_cast<const float4*>(p.a + base));
        if (READS_B) b = __ldg(reinterpret_cast<const float4*>(p.b + base));
        if (READS_OUT) o = *reinterpret_cast<const float4*>(p.out + base);
        float4 r;
        r.x = ew_op<OP>(a.x, b.x, o.x, p.s);
        r.y = ew_op<OP>(a.y, b.y, o.y, p.s);
        r.z = ew_op<OP>(a.z, b.z, o.z, p.s);
        r.w = ew_op<OP>(a.w, b.w, o.w, p.s);
        *reinterpret_cast<float4*>(p.out + base) = r;
    } else {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const long long i = base + k;
            if (i < p.n) {
                const float a = READS_A ? p.a[i] : 0.0f;
                const float b = READS_B ? p.b[i] : 0.0f;
                const float o = READS_OUT ? p.out[i] : 0.0f;
                p.out[i] = ew_op<OP>(a, b, o, p.s);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) ew_relu(const EwParams p) { ew_kernel<EW_RELU>(p); }
extern "C" __global__ void __launch_bounds__(256) ew_relu_bwd(const EwParams p) { ew_kernel<EW_RELU_BWD>(p); }
extern "C" __global__ void __launch_bounds__(256) ew_add(const EwParams p) { ew_kernel<EW_ADD>(p); }
extern "C" __global__ void __launch_bounds__(256) ew_add_relu(const EwParams p) { ew_kernel<EW_ADD_RELU>(p); }
extern "C" __global__ void __launch_bounds__(256) ew_add_assign(const EwParams p) { ew_kernel<EW_ADD_ASSIGN>(p); }
extern "C" __global__ void __launch_bounds__(256) ew_scale(const EwParams p) { ew_kernel<EW_SCALE>(p); }
extern "C" __global__ void __launch_bounds__(256) ew_relu6(const EwParams p) { ew_kernel<EW_RELU6>(p); }
extern "C" __global__ void __launch_bounds__(256) ew_relu6_bwd(const EwParams p) { ew_kernel<EW_RELU6_BWD>(p); }
