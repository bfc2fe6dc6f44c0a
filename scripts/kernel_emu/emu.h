// Host emulation of the CUDA kernel dialect used by lfgcl's kernels (test-only).
#pragma once
#include <cmath>
#include <cstring>
#include <cstddef>
#include <thread>
#include <barrier>
#include <vector>
#include <functional>
#include <algorithm>
using std::min; using std::max;
struct dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* g_bar = nullptr;
inline void __syncthreads() { g_bar->arrive_and_wait(); }
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
template <class T> inline T __ldg(const T* p) { return *p; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __shfl_down_sync(unsigned, float v, int) { return v; }
inline float __shfl_sync(unsigned, float v, int) { return v; }
inline float __shfl_xor_sync(unsigned, float v, int) { return v; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fadd_rn(float a, float b) { return a + b; }
template <class P>
void launch(void (*k)(const P), dim3 grid, unsigned nt, const P& p) {
    blockDim = {nt, 1, 1};
    gridDim = grid;
    std::barrier<> bar(nt);
    g_bar = &bar;
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < nt; ++t)
        ts.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            for (unsigned z = 0; z < grid.z; ++z)
                for (unsigned y = 0; y < grid.y; ++y)
                    for (unsigned x = 0; x < grid.x; ++x) {
                        blockIdx = {x, y, z};
                        k(p);
                        bar.arrive_and_wait();
                    }
        });
    for (auto& t : ts) t.join();
}
