#!/usr/bin/env bash
# The GPU check, for the day a GPU machine is lent: a few minutes that prove the CUDA paths and write
# reports/gpu.md. It needs torch with CUDA and the data (MNIST via the usual lookup, e.g. $LIGHTNING_CNN_DATA);
# no TensorFlow and no package index (the checkout is put on PYTHONPATH, nothing is installed).
#
#   LIGHTNING_CNN_DATA=/path/to/data bash scripts/gpu_check.sh            # on the GPU machine
#   GPU_CHECK_ACCELERATOR=cpu GPU_CHECK_OUT=/tmp/gpu.md bash scripts/gpu_check.sh   # the script's own smoke test
#
# What it runs (mnist_cnn_small, the default model), each under a time limit so the whole stays under 8 minutes:
#   1. 1 epoch at 32-true, 16-mixed and bf16-mixed; test accuracy must reach 97% (1 epoch on CPU in float32
#      gives 97.99%; mixed precision may cost a few tenths, not two points).
#   2. Resume on the device: 1 epoch, then --resume last.ckpt to epoch 2; the resumed run must end at 2 epochs
#      and 2 epochs' optimizer steps.
#   3. The bench table, plain PyTorch vs Lightning (scripts/bench.py --contenders plain_torch lightning).
#   4. Converted twins (ResNet50 at 96 px, MobileNetV2-0.35 at 64 px) trained through the same run core
#      (train.py --keras-model FOLDER --data ARRAYS.npz) at each precision: images/s of epoch 2 and the ratio to
#      32-true. No TensorFlow there, so the folders are built from scripts/gpu_twins/*.graph.json (the converter's
#      graphs of those keras.applications models, 10 classes, written by keras_ref.convert.extract_graph) with
#      each stock module's own initialization, and the data are random 8-bit images.
#   5. DDP on 2 devices, when 2 are present.
set -euo pipefail
cd "$(dirname "$0")/.."
accelerator=${GPU_CHECK_ACCELERATOR:-gpu}
report=${GPU_CHECK_OUT:-reports/gpu.md}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
status=0
rows=()

devices=$("$python" - "$accelerator" <<'EOF'
import sys
import torch
if sys.argv[1] == "cpu":
    print(0)
elif not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (set GPU_CHECK_ACCELERATOR=cpu for the smoke test)")
else:
    print(torch.cuda.device_count())
EOF
)

# step NAME LIMIT_S COMMAND...: run it, keep its log, add a row to the report.
step() {
    local name=$1 limit=$2; shift 2
    local start=$SECONDS rc=0
    echo "+ $*" >&2
    timeout "$limit" "$@" >"$work/$name.log" 2>&1 || rc=$?
    local took=$((SECONDS - start)) verdict=ok shown="$*"
    shown=${shown//$work/TMP}
    [ "$rc" -eq 0 ] || { verdict="FAILED (exit $rc)"; status=1; tail -20 "$work/$name.log" >&2; }
    rows+=("| $name | \`${shown/#$python/python}\` | ${took} s | $verdict |")
}

# The CPU smoke test only proves the mechanics: 100 batches an epoch, a lower accuracy bar.
if [ "$accelerator" = cpu ]; then
    precisions=(32-true bf16-mixed) limit=(--limit-train-batches 100) steps_per_epoch=100 min_accuracy=0.5
else
    precisions=(32-true 16-mixed bf16-mixed) limit=() steps_per_epoch=1875 min_accuracy=0.97  # 60,000 / 32
fi
train=("$python" scripts/train.py --accelerator "$accelerator" --devices 1 "${limit[@]}")
for precision in "${precisions[@]}"; do
    step "train-$precision" 150 "${train[@]}" --epochs 1 --precision "$precision" --out "$work/$precision" \
        --metrics-json "$work/$precision.json"
    step "accuracy-$precision" 30 "$python" - "$work/$precision.json" "$min_accuracy" <<'EOF'
import json, sys
accuracy, minimum = json.load(open(sys.argv[1]))["test_accuracy"], float(sys.argv[2])
print(f"test accuracy {accuracy:.4f} (needs {minimum})")
sys.exit(0 if accuracy >= minimum else 1)
EOF
done

step resume-1-epoch 150 "${train[@]}" --epochs 1 --out "$work/resume"
step resume-to-2 150 "${train[@]}" --epochs 2 --out "$work/resume" \
    --resume "$work/resume/checkpoints/last.ckpt"
step resume-check 30 "$python" - "$work/resume/checkpoints/last.ckpt" "$steps_per_epoch" <<'EOF'
import sys
import torch
last = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
print("checkpoint epoch", last["epoch"], "global step", last["global_step"])
sys.exit(0 if last["epoch"] == 1 and last["global_step"] == 2 * int(sys.argv[2]) else 1)
EOF

bench_flags=(--contenders plain_torch lightning --accelerator "$accelerator" --repeats 2 --windows 5
             --out "$work/bench.md")
[ "$accelerator" = cpu ] && bench_flags+=(--smoke)
step bench 240 "$python" scripts/bench.py "${bench_flags[@]}"

# Converted twins: a folder per committed graph (own initialization) and an .npz of random 8-bit images.
twin_images=${GPU_CHECK_TWIN_IMAGES:-2048}
[ "$accelerator" = cpu ] && twin_images=64
step twin-folders 120 "$python" - "$work/twins" "$twin_images" scripts/gpu_twins/*.graph.json <<'EOF'
import json, sys
from pathlib import Path
import numpy as np, torch
from safetensors.torch import save_file
from lightning_cnn.converted.graph import build_twin, check_graph
out, n = Path(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
for path in map(Path, sys.argv[3:]):
    graph = check_graph(json.loads(path.read_text()), str(path))
    folder = out / path.name.removesuffix(".graph.json")
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    twin = build_twin(graph, str(path))
    (folder / "graph.json").write_text(json.dumps(graph))
    save_file({k: v.contiguous() for k, v in twin.state_dict().items()}, folder / "weights.safetensors")
    shape = graph["inputs"][0]["shape"][1:]
    np.savez(f"{folder}.npz", x_train=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
             y_train=rng.integers(0, 10, n))
    print(folder.name, sum(v.numel() for v in twin.state_dict().values()), "weights")
EOF
for graph in scripts/gpu_twins/*.graph.json; do
    twin=$(basename "$graph" .graph.json)
    for precision in "${precisions[@]}"; do
        step "twin-$twin-$precision" 300 "$python" scripts/train.py --accelerator "$accelerator" --devices 1 \
            --keras-model "$work/twins/$twin" --data "$work/twins/$twin.npz" --epochs 2 --batch-size 32 \
            --precision "$precision" --out "$work/twin-$twin-$precision" \
            --metrics-json "$work/twin-$twin-$precision.json"
    done
done

if [ "$devices" -ge 2 ]; then
    step ddp-2-devices 180 "$python" scripts/train.py --accelerator "$accelerator" --devices 2 --strategy ddp \
        --epochs 1 --out "$work/ddp" --metrics-json "$work/ddp.json"
else
    rows+=("| ddp-2-devices | (needs 2 devices; $devices present) | | not run |")
fi

machine=$("$python" - "$accelerator" <<'EOF'
import sys
import lightning
import torch
names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if sys.argv[1] != "cpu" else []
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), lightning {lightning.__version__}, "
      f"devices: {', '.join(names) or 'CPU only (smoke test)'}")
EOF
)
{
    echo "# GPU check"
    echo
    echo "\`bash scripts/gpu_check.sh\` on $(date -u +%Y-%m-%d): $machine."
    echo
    echo "| step | command | time | result |"
    echo "|---|---|---:|---|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "## Accuracy after 1 epoch"
    echo
    for precision in "${precisions[@]}"; do
        [ -f "$work/accuracy-$precision.log" ] && echo "- $precision: $(cat "$work/accuracy-$precision.log")"
    done
    echo
    echo "## Converted twins through train.py --keras-model (batch 32, images/s of epoch 2)"
    echo
    "$python" - "$work" "$twin_images" "${precisions[@]}" <<'EOF'
import json, sys
from pathlib import Path
work, n, precisions = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
print("| twin | precision | train images/s | vs 32-true |\n|---|---|---:|---:|")
for folder in sorted(p for p in (work / "twins").glob("*") if p.is_dir()):
    speed = {}
    for precision in precisions:
        path = work / f"twin-{folder.name}-{precision}.json"
        if not path.is_file():
            print(f"| {folder.name} | {precision} | failed | |")
            continue
        speed[precision] = n / json.loads(path.read_text())["seconds_per_epoch"][-1]
        ratio = f"{speed[precision] / speed['32-true']:.2f}x" if "32-true" in speed else ""
        print(f"| {folder.name} | {precision} | {speed[precision]:,.0f} | {ratio} |")
EOF
    echo
    echo "## Bench (plain PyTorch vs Lightning)"
    echo
    [ -f "$work/bench.md" ] && sed 's/^#/##/' "$work/bench.md"
} >"$work/report.md"
mkdir -p "$(dirname "$report")"
cp "$work/report.md" "$report.tmp" && mv "$report.tmp" "$report"  # never a half-written report
echo "wrote $report (status $status)"
exit "$status"
