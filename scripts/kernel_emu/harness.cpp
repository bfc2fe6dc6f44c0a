// Test harness for scripts/kernel_emu/run.sh: grouped, depthwise and dense conv kernels against a
// naive f64 grouped convolution (every grouped GEMM tile, the direct kernels with the ReLU6 +
// residual epilogue, split backward-weight + conv_splitk_reduce).
#include "emu.h"
#include <cstdio>
#include <cstdint>
#include <random>
#include "k/conv.cu"
#include "k/conv_dw.cu"

static std::mt19937 rng(1);
static std::vector<float> rnd(size_t n, float lo = -1, float hi = 1) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}
struct Shape { int n, c, h, w, k, r, stride, pad, g; int p() const { return (h + 2 * pad - r) / stride + 1; } int q() const { return (w + 2 * pad - r) / stride + 1; } };

static void ref(const Shape& s, const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& dy,
                std::vector<double>& y, std::vector<double>& dx, std::vector<double>& dw) {
    int cg = s.c / s.g, kg = s.k / s.g, P = s.p(), Q = s.q();
    y.assign((size_t)s.n * s.k * P * Q, 0); dx.assign(x.size(), 0); dw.assign(w.size(), 0);
    for (int i = 0; i < s.n; ++i) for (int k = 0; k < s.k; ++k) { int g = k / kg;
      for (int oh = 0; oh < P; ++oh) for (int ow = 0; ow < Q; ++ow) { size_t o = (((size_t)i * s.k + k) * P + oh) * Q + ow;
        for (int cl = 0; cl < cg; ++cl) { int c = g * cg + cl;
          for (int r = 0; r < s.r; ++r) { int ih = oh * s.stride - s.pad + r; if (ih < 0 || ih >= s.h) continue;
            for (int t = 0; t < s.r; ++t) { int iw = ow * s.stride - s.pad + t; if (iw < 0 || iw >= s.w) continue;
              size_t xi = (((size_t)i * s.c + c) * s.h + ih) * s.w + iw; size_t wi = (((size_t)k * cg + cl) * s.r + r) * s.r + t;
              y[o] += (double)x[xi] * w[wi]; dx[xi] += (double)dy[o] * w[wi]; dw[wi] += (double)dy[o] * x[xi]; } } } } }
}
static double relerr(const std::vector<float>& a, const std::vector<double>& b) {
    double d = 0, m = 0;
    for (size_t i = 0; i < a.size(); ++i) { d = std::max(d, std::fabs(a[i] - b[i])); m = std::max(m, std::fabs(b[i])); }
    if (a.size() != b.size()) return 1e9;
    return d / std::max(m, 1e-3);
}
static int fails = 0;
static void check(const char* what, const Shape& s, double e) {
    bool ok = e <= 1e-5;
    if (!ok) fails++;
    printf("%s %-10s n%d c%d h%d w%d k%d r%d s%d p%d g%d: rel %.2e\n", ok ? "ok  " : "FAIL", what, s.n, s.c, s.h, s.w, s.k, s.r, s.stride, s.pad, s.g, e);
}

typedef void (*GK)(const ConvGroupParams);
typedef void (*DK)(const ConvParams);
struct GT { GK f; GK b; int bm, bn, nt; };

int main() {
    std::vector<Shape> shapes = {
        {2, 8, 9, 9, 8, 3, 1, 1, 2}, {3, 16, 7, 7, 16, 3, 2, 1, 4}, {2, 16, 9, 9, 32, 1, 1, 0, 4},
        {2, 128, 9, 9, 128, 3, 1, 1, 32}, {2, 128, 10, 10, 128, 3, 2, 1, 32},
        {2, 64, 8, 8, 64, 3, 1, 1, 2}, {3, 48, 7, 7, 96, 3, 2, 1, 4}, {1, 512, 5, 5, 512, 3, 1, 1, 32},
        {2, 16, 9, 9, 32, 3, 1, 1, 2}, {1, 40, 7, 7, 40, 5, 1, 2, 2},
        {2, 32, 9, 9, 32, 3, 1, 1, 32}, {2, 24, 11, 11, 24, 3, 2, 1, 24}, {1, 13, 7, 7, 13, 3, 2, 1, 13},
        {1, 7, 6, 6, 7, 3, 2, 0, 7}, {2, 6, 9, 9, 12, 3, 1, 1, 6}, {1, 5, 8, 8, 5, 5, 2, 2, 5}, {1, 3, 1, 1, 3, 3, 1, 1, 3},
        {2, 5, 7, 7, 6, 3, 2, 1, 1}, {2, 16, 8, 8, 32, 3, 1, 1, 1},
    };
    GT gts[] = {
        {conv_fwd_f32g_128x64, conv_bwdd_f32g_128x64, 128, 64, 256}, {conv_fwd_f32g_64x64, conv_bwdd_f32g_64x64, 64, 64, 256},
        {conv_fwd_f32g_128x32, conv_bwdd_f32g_128x32, 128, 32, 256}, {conv_fwd_f32g_64x32, conv_bwdd_f32g_64x32, 64, 32, 256},
        {conv_fwd_f32g_128x16, conv_bwdd_f32g_128x16, 128, 16, 128}, {conv_fwd_f32g_32x32, conv_bwdd_f32g_32x32, 32, 32, 256},
    };
    for (const Shape& s : shapes) {
        const int cg = s.c / s.g, kg = s.k / s.g, P = s.p(), Q = s.q(), rs = s.r * s.r;
        auto x = rnd((size_t)s.n * s.c * s.h * s.w), w = rnd((size_t)s.k * cg * rs), dy = rnd((size_t)s.n * s.k * P * Q);
        auto scale = rnd(s.k, 0.5, 4), shift = rnd(s.k, -1, 3), res = rnd(dy.size(), -3, 3);
        std::vector<double> y, dx, dw;
        ref(s, x, w, dy, y, dx, dw);
        std::vector<double> yepi(y.size());
        for (size_t i = 0; i < y.size(); ++i) { int ch = (i / (P * Q)) % s.k; double v = y[i] * scale[ch] + shift[ch] + res[i]; yepi[i] = std::min(std::max(v, 0.0), 6.0); }
        std::vector<float> out(y.size()), gx(x.size()), gw(w.size());
        const bool direct = s.g > 1 && cg <= 8 && kg <= 8;
        if (s.g == 1) {
            // Dense kernels (regression check of the refactor).
            ConvParams p{x.data(), w.data(), out.data(), nullptr, nullptr, nullptr, s.n, s.c, s.h, s.w, s.k, P, Q, s.r, s.r, s.stride, s.pad, 0, s.c * rs, rs};
            launch(conv_fwd_f32_64x32, {(unsigned)((s.n * P * Q + 63) / 64), (unsigned)((s.k + 31) / 32), 1}, 256, p);
            check("dense fwd", s, relerr(out, y));
            ConvParams b{dy.data(), w.data(), gx.data(), nullptr, nullptr, nullptr, s.n, s.k, P, Q, s.c, s.h, s.w, s.r, s.r, s.stride, s.pad, 0, rs, s.c * rs};
            launch(conv_bwdd_f32_128x16, {(unsigned)((s.n * s.h * s.w + 127) / 128), (unsigned)((s.c + 15) / 16), 1}, 128, b);
            check("dense bwdd", s, relerr(gx, dx));
            int J = s.n * P * Q, tiles = (J + 15) / 16, per = std::max(1, tiles / 3), splits = (tiles + per - 1) / per;
            std::vector<float> parts((size_t)splits * w.size());
            ConvBwdWParams q{x.data(), dy.data(), parts.data(), s.n, s.c, s.h, s.w, s.k, P, Q, s.r, s.r, s.stride, s.pad, per};
            launch(conv_bwdw_f32_32x64, {(unsigned)((s.k + 31) / 32), (unsigned)((s.c * rs + 63) / 64), (unsigned)splits}, 256, q);
            SplitKReduceParams rp{parts.data(), gw.data(), (long long)w.size(), splits, 0};
            launch(conv_splitk_reduce, {(unsigned)((w.size() + 255) / 256), 1, 1}, 256, rp);
            check("dense bwdw", s, relerr(gw, dw));
            continue;
        }
        if (direct) {
            DwParams p{};
            p.n = s.n; p.c = s.c; p.h = s.h; p.w = s.w; p.k = s.k; p.p = P; p.q = Q; p.r = s.r; p.s = s.r; p.stride = s.stride; p.pad = s.pad; p.cg = cg; p.kg = kg;
            DwParams f = p; f.x = x.data(); f.wgt = w.data(); f.out = out.data();
            auto fk = s.r == 3 ? dw_fwd_3x3 : dw_fwd_any;
            launch(fk, {(unsigned)((out.size() + 255) / 256), 1, 1}, 256, f);
            check("dw fwd", s, relerr(out, y));
            f.scale = scale.data(); f.shift = shift.data(); f.residual = res.data(); f.act = 2;
            launch(fk, {(unsigned)((out.size() + 255) / 256), 1, 1}, 256, f);
            check("dw fwd epi", s, relerr(out, yepi));
            DwParams b = p; b.dy = dy.data(); b.wgt = w.data(); b.out = gx.data();
            launch(s.r == 3 ? dw_bwdd_3x3 : dw_bwdd_any, {(unsigned)((gx.size() + 255) / 256), 1, 1}, 256, b);
            check("dw bwdd", s, relerr(gx, dx));
            int J = s.n * P * Q, per = std::max(1, J / 3), splits = (J + per - 1) / per;
            std::vector<float> parts((size_t)splits * w.size());
            DwParams q = p; q.x = x.data(); q.dy = dy.data(); q.out = parts.data(); q.pix_per_split = per;
            launch(dw_bwdw, {(unsigned)(s.k * cg), (unsigned)((rs + 8) / 9), (unsigned)splits}, 256, q);
            SplitKReduceParams rp{parts.data(), gw.data(), (long long)w.size(), splits, 0};
            launch(conv_splitk_reduce, {(unsigned)((w.size() + 255) / 256), 1, 1}, 256, rp);
            check("dw bwdw", s, relerr(gw, dw));
        } else {
            for (const GT& t : gts) {
                ConvParams c{x.data(), w.data(), out.data(), scale.data(), shift.data(), res.data(), s.n, cg, s.h, s.w, kg, P, Q, s.r, s.r, s.stride, s.pad, 2, cg * rs, rs};
                ConvGroupParams gp{c, s.c, s.k, kg * cg * rs, 0};
                launch(t.f, {(unsigned)((s.n * P * Q + t.bm - 1) / t.bm), (unsigned)((kg + t.bn - 1) / t.bn), (unsigned)s.g}, t.nt, gp);
                check("g fwd epi", s, relerr(out, yepi));
                ConvParams b{dy.data(), w.data(), gx.data(), nullptr, nullptr, nullptr, s.n, kg, P, Q, cg, s.h, s.w, s.r, s.r, s.stride, s.pad, 0, rs, cg * rs};
                ConvGroupParams bp{b, s.k, s.c, kg * cg * rs, 0};
                launch(t.b, {(unsigned)((s.n * s.h * s.w + t.bm - 1) / t.bm), (unsigned)((cg + t.bn - 1) / t.bn), (unsigned)s.g}, t.nt, bp);
                check("g bwdd", s, relerr(gx, dx));
            }
            ConvParams c{x.data(), w.data(), out.data(), nullptr, nullptr, nullptr, s.n, cg, s.h, s.w, kg, P, Q, s.r, s.r, s.stride, s.pad, 0, cg * rs, rs};
            ConvGroupParams gp{c, s.c, s.k, kg * cg * rs, 0};
            launch(conv_fwd_f32g_64x32, {(unsigned)((s.n * P * Q + 63) / 64), (unsigned)((kg + 31) / 32), (unsigned)s.g}, 256, gp);
            check("g fwd", s, relerr(out, y));
            int J = s.n * P * Q, tiles = (J + 15) / 16, per = std::max(1, tiles / 3), splits = (tiles + per - 1) / per;
            std::vector<float> parts((size_t)splits * w.size());
            ConvBwdWParams b{x.data(), dy.data(), parts.data(), s.n, cg, s.h, s.w, kg, P, Q, s.r, s.r, s.stride, s.pad, per};
            ConvBwdWGroupParams q{b, s.c, s.k, splits, 0};
            launch(conv_bwdw_f32g_16x64, {(unsigned)((kg + 15) / 16), (unsigned)((cg * rs + 63) / 64), (unsigned)(s.g * splits)}, 256, q);
            SplitKReduceParams rp{parts.data(), gw.data(), (long long)w.size(), splits, 0};
            launch(conv_splitk_reduce, {(unsigned)((w.size() + 255) / 256), 1, 1}, 256, rp);
            check("g bwdw", s, relerr(gw, dw));
        }
    }
    printf("%d failures\n", fails);
    return fails != 0;
}
