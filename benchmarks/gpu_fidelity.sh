#!/usr/bin/env bash
# The paper's protocol on one GPU, four runs at once (rho 0.997, seed 42, 80 epochs each),
# in under 10 minutes of one H200 (four concurrent paper-preset runs took about 8.5
# minutes there on 2026-12-04; one alone 173 s):
#
#   end           EnD at the paper preset's defaults (alpha = beta = 0.1, official pairs)
#   end-fp32      the same with the fast path off (fp32, no compile, no channels_last):
#                 what bf16 autocast and torch.compile do to accuracy
#   vanilla       the official EnD code's model (classifier on normalised features)
#   vanilla-rebias  ReBias's model (classifier on raw pooled features), Table 1's vanilla
#
# It prints one table (best-by-valid unbiased / biased / conflicting accuracy, epochs
# reached, seconds per epoch) beside the paper's numbers, into $RESULTS/gpu_fidelity.txt,
# and packs every run's records (config, metrics, best, log; no checkpoints) into
# $RESULTS/gpu_fidelity_records.tar.gz. A run cut by the budget keeps its finished epochs
# and the table says how many it reached.
#
#   bash benchmarks/gpu_fidelity.sh                    # RESULTS defaults to $OUT or gpu-results
#   BUDGET=570 PY=python3 ENDEBIAS_DATA=/path/to/mnist bash benchmarks/gpu_fidelity.sh
#   # the script's flow on CPU with tiny subsets (about a minute; tests/test_gpu_scripts.py):
#   DEVICE=cpu BUDGET=300 PY=.venv/bin/python DATASET_ARGS="--dataset synthetic" \
#     TRAIN_ARGS="--epochs 2 --model-option channels=[8,16]" bash benchmarks/gpu_fidelity.sh
#
# Needs: a CUDA torch, numpy, pyyaml, tqdm (the package runs from src/, no install) and the
# four MNIST files in $ENDEBIAS_DATA, or in .gpu-data/mnist (nothing is downloaded). On a
# machine that only sees the repository, copy them in first and carry that ignored folder:
#   mkdir -p .gpu-data && cp -r ../shared/data/mnist .gpu-data/ && echo /.gpu-data/ >> .git/info/exclude
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-570}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
read -r -a DATASET <<< "${DATASET_ARGS:---dataset biased-mnist --rho 0.997}"
read -r -a EXTRA <<< "${TRAIN_ARGS:-}"
RESULTS=${RESULTS:-${OUT:-gpu-results}}
DATA=${ENDEBIAS_DATA:-$( [ -d .gpu-data/mnist ] && echo .gpu-data/mnist || echo ../shared/data/mnist )}
RUNS=$(mktemp -d)
REPORT="$RESULTS/gpu_fidelity.txt"
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
COMMON=(train --preset paper "${DATASET[@]}" --seed 42 --device "$DEVICE" --data-dir "$DATA"
        --no-progress)
EAGER=(--amp off --compile off --channels-last off)
declare -A OPTIONS=(
    [end]="--method end"
    [end-fp32]="--method end ${EAGER[*]}"
    [vanilla]="--method vanilla"
    [vanilla-rebias]="--method vanilla --model-option normalize_features=false"
)
NAMES=(end end-fp32 vanilla vanilla-rebias)

say() { echo "$*" | tee -a "$REPORT"; }
: > "$REPORT"
say "# gpu_fidelity.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), budget ${BUDGET}s, device $DEVICE"
command -v nvidia-smi > /dev/null && say "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    2>&1 | tee -a "$REPORT" || exit 1

# Every run gets the same deadline: the budget less a minute for the summary and archive.
DEADLINE=$(( BUDGET - 45 ))
for name in "${NAMES[@]}"; do
    read -r -a options <<< "${OPTIONS[$name]}"
    say "run $name: endebias ${COMMON[*]} ${options[*]} ${EXTRA[*]}"
    timeout "$DEADLINE" $PY -m endebias "${COMMON[@]}" "${options[@]}" "${EXTRA[@]}" \
        --out "$RUNS/$name" > "$RUNS/$name.log" 2>&1 &
done
wait
say "runs stopped at ${SECONDS}s"

$PY - "$RUNS" "${NAMES[@]}" <<'EOF' 2>&1 | tee -a "$REPORT"
import json, sys
from pathlib import Path

runs, names = Path(sys.argv[1]), sys.argv[2:]
PAPER = {"end": "83.70 ± 1.03 (EnD, Table 1)", "end-fp32": "83.70 ± 1.03 (EnD, Table 1)",
         "vanilla": "33.4 (Vanilla, Table 1, ReBias's model)",
         "vanilla-rebias": "33.4 (Vanilla, Table 1, ReBias's model)"}
print("\n| run | method options | unbiased % | biased % | conflicting % | best epoch | "
      "epochs reached | s/epoch | paper unbiased % |")
print("|---|---|---:|---:|---:|---:|---:|---:|---|")
for name in names:
    metrics = runs / name / "metrics.jsonl"
    history = [json.loads(l) for l in metrics.read_text().splitlines()] if metrics.exists() else []
    if not history:
        tail = (runs / f"{name}.log").read_text().strip().splitlines()[-1:] or ["no output"]
        print(f"| {name} | - | - | - | - | - | 0 | - | {PAPER[name]} |  ({tail[0]})")
        continue
    config = json.loads((runs / name / "config.json").read_text())
    options = " ".join(f"{k}={v}" for k, v in sorted(config["method_options"].items()))
    best = max(history, key=lambda r: (r["valid_acc"], -r["epoch"]))
    steady = [r["seconds"] for r in history[1:]] or [history[0]["seconds"]]
    conflicting = best.get("unbiased_test_acc_conflicting")
    print(f"| {name} | {options or '-'} | {100 * best['unbiased_test_acc']:.2f} | "
          f"{100 * best['biased_test_acc']:.2f} | "
          f"{'-' if conflicting is None else f'{100 * conflicting:.2f}'} | {best['epoch']} | "
          f"{len(history)} of {config['epochs']} | {sum(steady) / len(steady):.2f} | "
          f"{PAPER[name]} |")
print("\ns/epoch: the mean after the first epoch (compilation), evaluation included, with"
      " the four runs sharing one device.")
EOF
# The records as one archive (checkpoints left out: they are large and rebuildable).
tar -czf "$RESULTS/gpu_fidelity_records.tar.gz" -C "$RUNS" --exclude='checkpoint*' \
    --exclude='*.pt' --exclude='*.tmp' . && say "records: $RESULTS/gpu_fidelity_records.tar.gz"
say "total ${SECONDS}s"
