#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, in one go that fits in 8 minutes of one H100:
#
#   1. training speed, original-style pipeline vs ours (fast path off, then on), whole
#      epochs of the paper preset (benchmarks/bench_train.py --device cuda);
#   2. a full-protocol EnD run (paper preset, rho 0.997, 80 epochs, evaluation every
#      epoch) with the fast path on, for as many epochs as the budget allows;
#   3. the accuracy smoke check of the fast path: the same seed with every option off,
#      for the first epochs, side by side with run 2's records;
#   4. if time is left: three trials at once on the one GPU (parallel processes), to show
#      how several trials share a GPU that one small model cannot fill.
#
# Every number lands in $RESULTS/gpu_paper_run.txt (plus the raw JSON / metrics files).
#
#   bash benchmarks/gpu_paper_run.sh                   # RESULTS defaults to $OUT or gpu-results
#   BUDGET=480 PY=python3 ENDEBIAS_DATA=/path/to/mnist bash benchmarks/gpu_paper_run.sh
#   # a dry run of the script's flow on CPU, tiny subsets (about 3 minutes):
#   DEVICE=cpu BUDGET=480 PY=.venv/bin/python BENCH_ARGS="--batches 1 --rounds 1" \
#     TRAIN_ARGS="--epochs 2 --train-subset 512 --eval-subset 256" bash benchmarks/gpu_paper_run.sh
#
# Needs: a CUDA torch, numpy, pyyaml, tqdm, pillow (the package runs from src/, no install)
# and the four MNIST files in $ENDEBIAS_DATA (nothing is downloaded). On a machine that
# only sees the repository, copy them in first and carry that ignored folder along:
#   mkdir -p .gpu-data && cp -r ../shared/data/mnist .gpu-data/ && echo /.gpu-data/ >> .git/info/exclude
#
# The accuracy check, stated: with the same seed the fast path (bf16 autocast,
# channels_last, torch.compile, fused Adam) changes the rounding, so runs drift apart
# rather than match bit for bit. Step 3 prints both runs' per-epoch valid and unbiased
# accuracy; they must stay within 3 points of each other after the first two epochs.
# The full check, for a longer GPU session: 3 seeds x 80 epochs with and without the fast
# path; the best-by-valid unbiased test accuracy (mean +- std over seeds) must agree
# within 2 standard errors of the difference (and within 1 point at rho 0.997).
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-480}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
read -r -a BENCH <<< "${BENCH_ARGS:---batches 0 --rounds 2}"
read -r -a EXTRA <<< "${TRAIN_ARGS:-}"
RESULTS=${RESULTS:-${OUT:-gpu-results}}
DATA=${ENDEBIAS_DATA:-$( [ -d .gpu-data/mnist ] && echo .gpu-data/mnist || echo ../shared/data/mnist )}
RUNS=$(mktemp -d)
REPORT="$RESULTS/gpu_paper_run.txt"
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
COMMON=(--preset paper --dataset biased-mnist --rho 0.997 --method end --alpha 1 --beta 1
        --seed 42 --device "$DEVICE" --data-dir "$DATA" --no-progress)

say() { echo "$*" | tee -a "$REPORT"; }
left() { echo $((BUDGET - SECONDS)); }
# timeout for a step: at most $1 seconds, and never past the budget minus $2 seconds kept
cap() { local t=$(( $(left) - $2 )); (( t > $1 )) && t=$1; (( t < 1 )) && t=1; echo "$t"; }

: > "$REPORT"
say "# gpu_paper_run.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), budget ${BUDGET}s"
say "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
$PY - <<'EOF' 2>&1 | tee -a "$REPORT" || exit 1
import importlib, torch
cuda = torch.cuda.is_available()
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name() if cuda else "cpu only")
for name in ("numpy", "yaml", "tqdm", "PIL"):
    importlib.import_module(name)
EOF
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || { say "no MNIST in $DATA (set ENDEBIAS_DATA)"; exit 1; }

say ""; say "## 1. training step: original-style vs ours (whole epochs, training only)"
timeout "$(cap 170 300)" $PY benchmarks/bench_train.py --device "$DEVICE" "${BENCH[@]}" \
    --data-dir "$DATA" --json "$RESULTS/bench_train_$DEVICE.json" 2>&1 | tee -a "$REPORT"
say "step 1 done at ${SECONDS}s"

say ""; say "## 2. full protocol, fast path on (80 epochs at most)"
timeout "$(cap 230 70)" $PY -m endebias train "${COMMON[@]}" --epochs 80 --out "$RUNS/fast" \
    "${EXTRA[@]}" 2>&1 | tail -n 5 | tee -a "$REPORT"
say "step 2 done at ${SECONDS}s"

say ""; say "## 3. accuracy smoke check: fast path off, same seed"
timeout "$(cap 60 5)" $PY -m endebias train "${COMMON[@]}" --epochs 80 --out "$RUNS/eager" \
    --amp off --compile off --channels-last off "${EXTRA[@]}" 2>&1 | tail -n 2 | tee -a "$REPORT"
say "step 3 done at ${SECONDS}s"

if (( $(left) > 100 )); then
    say ""; say "## 4. three trials at once on one GPU (seeds 1-3, 3 epochs each)"
    for seed in 1 2 3; do
        timeout "$(cap 90 5)" $PY -m endebias train "${COMMON[@]}" --seed "$seed" --epochs 3 \
            --out "$RUNS/shared-$seed" "${EXTRA[@]}" > "$RUNS/shared-$seed.log" 2>&1 &
    done
    wait
    say "step 4 done at ${SECONDS}s"
fi

$PY - "$RUNS" <<'EOF' 2>&1 | tee -a "$REPORT"
import json, sys
from pathlib import Path

runs = Path(sys.argv[1])
def history(name):
    path = runs / name / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []

print("\n## summary")
for name in ("fast", "eager"):
    h = history(name)
    if not h:
        print(f"{name}: no finished epoch"); continue
    total = sum(r["seconds"] for r in h)
    steady = [r["seconds"] for r in h[1:]] or [h[0]["seconds"]]
    best = max(h, key=lambda r: (r["valid_acc"], -r["epoch"]))
    print(f"{name}: {len(h)} epochs in {total:.1f} s (first {h[0]['seconds']:.1f} s incl. "
          f"compile/warm-up; then {sum(steady)/len(steady):.2f} s/epoch with evaluation, "
          f"{sum(r['train_seconds'] for r in h[1:] or h)/len(h[1:] or h):.2f} s training) -> "
          f"80 epochs ~ {h[0]['seconds'] + 79 * sum(steady)/len(steady):.0f} s; best-by-valid "
          f"epoch {best['epoch']}: valid {100*best['valid_acc']:.2f}, biased "
          f"{100*best['biased_test_acc']:.2f}, unbiased {100*best['unbiased_test_acc']:.2f}")
fast, eager = history("fast"), history("eager")
print("\nepoch | valid fast / eager | unbiased fast / eager")
for a, b in zip(fast, eager):
    print(f"{a['epoch']:5d} | {100*a['valid_acc']:.2f} / {100*b['valid_acc']:.2f} | "
          f"{100*a['unbiased_test_acc']:.2f} / {100*b['unbiased_test_acc']:.2f}")
shared = [history(f"shared-{s}") for s in (1, 2, 3)]
if any(shared):
    done = [h for h in shared if h]
    epochs = sum(len(h) for h in done)
    wall = max(sum(r["seconds"] for r in h) for h in done)
    print(f"\n3 trials on one GPU: {epochs} epochs in {wall:.1f} s wall "
          f"({epochs / wall:.3f} epochs/s together, first epochs include compilation)")
for name in ("fast", "eager"):
    if (runs / name / "metrics.jsonl").exists():
        print(f"(records: {name}/metrics.jsonl copied next to this report)")
EOF
for name in fast eager; do
    [ -f "$RUNS/$name/metrics.jsonl" ] && cp "$RUNS/$name/metrics.jsonl" "$RESULTS/metrics_$name.jsonl"
done
say "total ${SECONDS}s"
