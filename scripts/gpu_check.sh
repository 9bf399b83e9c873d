#!/usr/bin/env bash
# The GPU path in one prepared script: one verdict line per item (PASS / FAIL / SKIP), exit 1 if
# any item failed. Under 8 minutes on one GPU.
#
#   bash scripts/gpu_check.sh                 # --device cuda: paper preset at CIFAR-10 size
#   bash scripts/gpu_check.sh --device cpu    # the same items, CPU-sized (CI runs this)
#
# Items: (1) the tests with a CUDA variant (pytest -m cuda) on the device; (2) bench conv and
# (3) bench complete on the device; (4) cached == naive completion in float64 on the device (part
# of 1, reported on its own line); (5) a 2-process torchrun training step (NCCL on 2+ GPUs, gloo
# on CPU; skipped with one GPU); (6) training throughput in images/s. Figures are written to
# $OUT (default: a temporary folder) as JSON, and the last lines print them.
set -uo pipefail
cd "$(dirname "$0")/.."

device=cuda
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --device=*) device="${1#--device=}"; shift ;;
        *) echo "usage: $0 [--device cuda|cpu]" >&2; exit 2 ;;
    esac
done
out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
failed=0
verdict() {  # verdict NAME STATUS DETAIL
    echo "$2 $1: $3"
    [ "$2" = FAIL ] && failed=1
    return 0
}

if [ "$device" = cpu ]; then
    preset=tiny; complete_preset=tiny; shape=mnist; rounds=1; batches=4; steps=6; batch=8
    export CUDA_VISIBLE_DEVICES=""
else
    preset=paper; complete_preset=paper; shape=cifar10; rounds=5; batches=1,16; steps=20; batch=16
fi
echo "gpu_check: device $device, preset $preset at $shape size, output in $out"
python - "$device" <<'EOF' || exit 2
import sys, torch
dev = sys.argv[1]
if dev.startswith("cuda") and not torch.cuda.is_available():
    print("gpu_check: --device cuda but CUDA is not available; pass --device cpu", file=sys.stderr)
    sys.exit(2)
print("gpu_check: torch", torch.__version__, "|", torch.cuda.get_device_name(0) if dev.startswith("cuda") else "CPU")
EOF

# (1) + (4) the CUDA-variant tests
if LMCONV_BENCH_TEST_DEVICE="$device" python -m pytest -q -rA -m cuda -p no:cacheprovider tests/test_device.py >"$out/pytest.log" 2>&1; then
    verdict "pytest -m cuda" PASS "$(tail -1 "$out/pytest.log")"
else
    verdict "pytest -m cuda" FAIL "$(tail -1 "$out/pytest.log") (see $out/pytest.log)"
fi
if [ "$(grep -c "^PASSED .*test_cached_completion_equals_naive_in_float64_on_the_device" "$out/pytest.log")" -eq 2 ]; then
    verdict "cached == naive (float64)" PASS "lmconv and pixelcnnpp, identical samples on $device"
else
    verdict "cached == naive (float64)" FAIL "see $out/pytest.log"
fi

# (2) bench conv
if python -m lmconv_bench bench conv --device "$device" --preset "$preset" --shape "$shape" --rounds "$rounds" \
        --no-memory --json >"$out/bench_conv.log" 2>&1; then
    tail -1 "$out/bench_conv.log" >"$out/bench_conv.json"
    verdict "bench conv" PASS "$(python -c "import json,sys; r=json.load(open(sys.argv[1])); v=r['train_step_ratio_vs']['footprint']; print('train step / same footprint: ' + ', '.join(f'{k} {x[\"median\"]:.2f}' for k, x in v.items()))" "$out/bench_conv.json")"
else
    verdict "bench conv" FAIL "see $out/bench_conv.log"
fi

# (3) bench complete
if python -m lmconv_bench bench complete --device "$device" --preset "$complete_preset" --shape "$shape" \
        --batches "$batches" --no-flips --json >"$out/bench_complete.log" 2>&1; then
    tail -1 "$out/bench_complete.log" >"$out/bench_complete.json"
    verdict "bench complete" PASS "$(python -c "import json,sys; r=json.load(open(sys.argv[1])); print('forward passes per completion: ' + ', '.join(f'batch {k}: {v:.1f}' for k, v in r['forward_equivalents'].items()))" "$out/bench_complete.json")"
else
    verdict "bench complete" FAIL "see $out/bench_complete.log"
fi

# (5) 2-process torchrun training step
n_gpu=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$device" != cpu ] && [ "$n_gpu" -lt 2 ]; then
    verdict "torchrun 2 processes" SKIP "this machine has $n_gpu GPU (NCCL needs 2)"
else
    if torchrun --standalone --nproc_per_node 2 -m lmconv_bench train --preset tiny --max-steps 2 --batch-size 4 \
            --eval-images 4 --train-limit 64 --device "$device" --out "$out/ddp" --no-progress >"$out/ddp.log" 2>&1; then
        verdict "torchrun 2 processes" PASS "$(python -c "
import sys
from lmconv_bench.checkpoints import read_meta
m = read_meta(sys.argv[1] + '/last.safetensors')
h = m['rank_weight_sha256']
print(f'{len(h)} ranks, step {m[\"step\"]}, identical weights: {len(set(h)) == 1}')
" "$out/ddp")"
    else
        verdict "torchrun 2 processes" FAIL "see $out/ddp.log"
    fi
fi

# (6) training throughput
start=$(date +%s.%N)
if python -m lmconv_bench train --dataset "$shape" --preset "$preset" --max-steps "$steps" --batch-size "$batch" \
        --eval-images 8 --eval-every 100000 --device "$device" --out "$out/throughput" --no-progress >"$out/train.log" 2>&1; then
    verdict "training throughput" PASS "$(python -c "
import sys
from lmconv_bench.checkpoints import load_train_state
ts = load_train_state(sys.argv[1] + '/last.safetensors')
print(f'{int(sys.argv[2]) * int(sys.argv[3]) / ts[\"elapsed_s\"]:.1f} images/s ({sys.argv[4]} preset, {sys.argv[2]} steps of {sys.argv[3]}, evaluation included)')
" "$out/throughput" "$steps" "$batch" "$preset")"
else
    verdict "training throughput" FAIL "see $out/train.log"
fi

if [ "$failed" -ne 0 ]; then
    echo "gpu_check: FAILED"
    exit 1
fi
echo "gpu_check: all items passed or skipped"
