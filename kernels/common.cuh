// Shared definitions for every lfgcl kernel file.
//
// Compiled by NVRTC at run time without the CUDA toolkit's include directory, so nothing here may
// include a system header (<cstdint>, <mma.h>, <cuda_fp16.h>, <cuda_bf16.h>, ...). Tensor-core
// instructions and the tf32/bf16 conversions are written as inline PTX (sm_80 and newer).
//
// Conventions:
// - every kernel takes exactly one parameter: a struct passed by value whose layout is mirrored by
//   a `#[repr(C)]` struct on the Rust side (src/backend/cuda/); both sides assert its size;
// - pointers first, then 64-bit integers, then 32-bit integers and floats, so neither side adds
//   padding between fields;
// - reductions run in a fixed order (no atomics), so results are bit-identical run to run.
#pragma once

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;
typedef long long i64;

#define LF_DEVICE __device__ __forceinline__

// Field offset of a kernel parameter struct, asserted equal to its Rust mirror's
// (`assert_layout!` in src/backend/cuda/mod.rs checks the same numbers on the Rust side).
// NVRTC has neither <cstddef> nor __builtin_offsetof; __INTADDR__ is the constant-address
// intrinsic of its (EDG) front end, on which that front end's own offsetof is built.
#if defined(__CUDACC_RTC__)
#define LF_OFFSET_OF(T, F) __INTADDR__(&(((T*)0)->F))
#else
#define LF_OFFSET_OF(T, F) __builtin_offsetof(T, F)
#endif
#define LF_OFFSET(T, F, OFF) static_assert(LF_OFFSET_OF(T, F) == (OFF), #T "." #F " offset must match the Rust mirror")

// ---- tensor-core helpers (sm_80+) -----------------------------------------------------------------

// f32 -> tf32 (round to nearest, ties away from zero), result in a 32-bit register.
LF_DEVICE u32 lf_tf32(float x) {
    u32 r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// Two f32 -> packed bf16x2 (round to nearest even). `lo` lands in bits 0..15, `hi` in 16..31,
// which is the element order the mma fragments expect (lower column / row index in the low half).
LF_DEVICE u32 lf_pack_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// D = A(16x8, row) * B(8x8, col) + D, tf32 inputs, f32 accumulators.
LF_DEVICE void lf_mma_tf32_m16n8k8(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// D = A(16x16, row) * B(16x8, col) + D, bf16 inputs, f32 accumulators.
LF_DEVICE void lf_mma_bf16_m16n8k16(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ---- deterministic reductions -----------------------------------------------------------------------

// Tree sum over the warp; the result is valid in lane 0 only (fixed order: the same bits every run).
LF_DEVICE float lf_warp_sum_lane0(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;
}

// Same value in every lane: lane 0's fixed-order sum, broadcast.
LF_DEVICE float lf_warp_sum(float v) {
    return __shfl_sync(0xffffffffu, lf_warp_sum_lane0(v), 0);
}

LF_DEVICE float lf_warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;  // max is order independent: identical in every lane
}

// Block-wide sum for blockDim.x == NT (a multiple of 32, at most 1024). Fixed order: each warp
// sums its lanes with a shuffle tree, then warp 0 sums the per-warp results the same way.
// Returns the total in every thread. `scratch` must hold 32 floats; the call synchronises the
// block twice, so it must be reached by every thread.
template <int NT>
LF_DEVICE float lf_block_sum(float v, float* scratch) {
    static_assert(NT % 32 == 0 && NT <= 1024, "block size must be a multiple of 32, at most 1024");
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = lf_warp_sum_lane0(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = 0.0f;
    if (warp == 0) {
        t = lane < NT / 32 ? scratch[lane] : 0.0f;
        t = lf_warp_sum_lane0(t);
        if (lane == 0) scratch[0] = t;
    }
    __syncthreads();
    t = scratch[0];
    __syncthreads();  // scratch may be reused by the caller right after
    return t;
}

// Compensated (Kahan) accumulator. The intrinsics keep the compiler from contracting or
// re-associating the compensation away.
struct LfKahan {
    float sum;
    float c;
};
LF_DEVICE void lf_kahan_init(LfKahan& k) {
    k.sum = 0.0f;
    k.c = 0.0f;
}
LF_DEVICE void lf_kahan_add(LfKahan& k, float v) {
    const float y = __fsub_rn(v, k.c);
    const float t = __fadd_rn(k.sum, y);
    k.c = __fsub_rn(__fsub_rn(t, k.sum), y);
    k.sum = t;
}

LF_DEVICE float lf_relu(float v) { return v > 0.0f ? v : 0.0f; }
