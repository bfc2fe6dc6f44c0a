#!/usr/bin/env bash
# What a session with a GPU runs to validate the grouped / depthwise convolution kernels
# (kernels/conv.cu grouped tiles, kernels/conv_dw.cu), the ReLU6 epilogue and ops, and padded
# max pooling (issue 20, item 3). None of these kernels has run on a GPU yet: they were compiled
# with NVRTC for sm_80 / sm_90 and checked on a host emulation of the CUDA dialect only
# (scripts/kernel_emu/run.sh).
#
# On the GPU machine (no Rust toolchain there): build the bundle here with
# `bash ../shared/gpu/bundle.sh`, copy .gpu beside the repository there, then from its root
#   bash .gpu/run.sh bash scripts/gpu_check_grouped.sh     # about 3-5 minutes on an H100 / H200
# run.sh first runs every test binary with the GPU required (tests/cuda_parity.rs included:
# the new grouped / depthwise / ReLU6 / padded max-pool tests and the dense ones, whose kernels
# were refactored and must still pass); this script then reruns the new tests verbosely,
# once under compute-sanitizer, and times the bench rows next to PyTorch. Where cargo and a GPU
# are both present, `bash scripts/gpu_check_grouped.sh` alone does the same.
# Logs go to $OUT (default ./gpu-bench/grouped). Exit status: 1 if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu-bench/grouped}
mkdir -p "$out"
export LFGCL_REQUIRE_GPU=1  # a missing device fails instead of skipping
fail=0
step() { # step NAME SECONDS CMD...
  local name=$1 limit=$2
  shift 2
  echo "## $name: $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$out/$name.log"
  echo "## $name: exit $rc"
  [ "$rc" -eq 0 ] || fail=1
}

# The cuda_parity test executable: the bundle's (unpacked by .gpu/run.sh), else cargo's.
bin=$(ls "${TMPDIR:-/tmp}"/gpu-bundle/tests/cuda_parity-* 2>/dev/null | head -n 1)
if [ -z "$bin" ] && command -v cargo >/dev/null; then
  bin=$(cargo test --release --test cuda_parity --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys; [print(m["executable"]) for m in map(json.loads, sys.stdin) if m.get("executable")]' | tail -n 1)
fi
[ -n "$bin" ] || { echo "no cuda_parity test executable (run through .gpu/run.sh, or install cargo)"; exit 1; }

# 1. Parity against the naive f64 grouped conv and the CPU (the new tests by name).
step parity_grouped 300 "$bin" --test-threads 1 grouped_ conv_fused_epilogue_relu6_residual \
  relu6_forward_backward maxpool_padded_first_max_rule conv_fused_bn_residual_relu conv_backward_weight_f32

# 2. Once under compute-sanitizer: indexing of the new kernels (memcheck), and the shared-memory
#    reductions of dw_bwdw and the grouped backward-weight (racecheck).
if command -v compute-sanitizer >/dev/null; then
  step sanitizer_memcheck 300 compute-sanitizer --tool memcheck --error-exitcode 1 "$bin" --test-threads 1 \
    grouped_conv_forward_backward conv_fused_epilogue_relu6_residual
  step sanitizer_racecheck 300 compute-sanitizer --tool racecheck --error-exitcode 1 "$bin" --test-threads 1 \
    grouped_conv_backward_weight_split_k
fi

# 3. The bench rows: MobileNetV2 depthwise 112x112x96 s2 and 56x56x144 s1, ResNeXt-50 32x4d
#    layer 1 (32 groups of 4, direct kernels) and layer 3 (32 groups of 16, grouped GEMM); keys
#    end in _g<groups>. Put them next to PyTorch (cudnn.benchmark) on the same shapes.
if command -v lfgcl >/dev/null; then lf=lfgcl; else lf="cargo run --release --quiet --"; fi
step bench_grouped 180 $lf --quiet bench kernels --filter p1_g --reps 50 --json "$out/lfgcl_grouped.json"
step torch_grouped 120 python3 - "$out/torch_grouped.json" <<'PY'
import json, sys, torch
torch.backends.cudnn.benchmark = True
rows = []
# (n, c, h, w, k, groups, stride): the same shapes as grouped_conv_shapes() at 32 images.
for n, c, h, w, k, g, s in [(32, 96, 112, 112, 96, 96, 2), (32, 144, 56, 56, 144, 144, 1),
                            (32, 128, 56, 56, 128, 32, 1), (32, 512, 14, 14, 512, 32, 1)]:
    x = torch.randn(n, c, h, w, device="cuda", requires_grad=True)
    conv = torch.nn.Conv2d(c, k, 3, s, 1, groups=g, bias=False).cuda()
    y = conv(x); dy = torch.randn_like(y)
    def t(f, reps=50):
        for _ in range(10): f()
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for a, b in ev: a.record(); f(); b.record()
        torch.cuda.synchronize()
        v = sorted(a.elapsed_time(b) * 1e3 for a, b in ev); return v[len(v) // 2]
    key = f"n{n}_c{c}_h{h}_w{w}_k{k}_r3_s{s}_p1_g{g}"
    rows.append({"key": "conv_fwd_f32/" + key, "median_us": t(lambda: conv(x))})
    rows.append({"key": "conv_fwd_bwd_f32/" + key, "median_us": t(lambda: torch.autograd.grad(conv(x), (x, conv.weight), dy))})
print(json.dumps(rows, indent=1)); json.dump(rows, open(sys.argv[1], "w"), indent=1)
PY
exit $fail
