#!/usr/bin/env bash
# Sweep throughput on one GPU, packed against solo (issue 17), in under 10 minutes of one
# H200. The same 8 paper-preset trials (EnD, rho 0.997, 80 epochs, seed 42, a grid of
# alpha in {0.03, 0.1, 0.3, 1} x beta in {0.1, 1}), trained three ways, each for as many
# epochs as its share of the budget allows; 80-epoch times are extrapolated from the
# epochs measured (the first epoch, with its warm-up and compilation, counted once):
#
#   1. solo: one trial alone (`sweep agent --count 1`); 8 trials cost 8 such runs;
#   2. `sweep agent --pack 8`: the 8 trials as one packed model;
#   3. `sweep agent --pack 4` x 2 processes sharing the GPU.
#
# It prints trials per hour for each and the ratios to solo, and writes the report and one
# archive of the run records (config, metrics, best; no checkpoints) into $RESULTS.
#
#   bash benchmarks/gpu_sweep_check.sh              # RESULTS defaults to $OUT or gpu-results
#   BUDGET=540 PY=python3 ENDEBIAS_DATA=/path/to/mnist bash benchmarks/gpu_sweep_check.sh
#   # the flow on CPU, tiny synthetic trials (about a minute; tests/test_gpu_sweep_check.py):
#   DEVICE=cpu BUDGET=120 PY=.venv/bin/python TINY=1 bash benchmarks/gpu_sweep_check.sh
#
# Needs what benchmarks/gpu_paper_run.sh needs (a CUDA torch, numpy, pyyaml, tqdm, pillow,
# optuna, sqlalchemy; MNIST in $ENDEBIAS_DATA or .gpu-data/mnist; nothing is downloaded).
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-540}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-80}
TINY=${TINY:-0}
RESULTS=${RESULTS:-${OUT:-gpu-results}}
DATA=${ENDEBIAS_DATA:-$( [ -d .gpu-data/mnist ] && echo .gpu-data/mnist || echo ../shared/data/mnist )}
WORK=$(mktemp -d)
RUNS="$WORK/runs"
STORAGE="sqlite:///$RUNS/sweeps.db"
REPORT="$RESULTS/gpu_sweep_check.txt"
mkdir -p "$RESULTS" "$RUNS"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ENDEBIAS_DATA="$DATA"

say() { echo "$*" | tee -a "$REPORT"; }
# A step's time limit: its share of the budget as a percentage, never past what is left.
share() { local t=$(( BUDGET * $1 / 100 )) left=$(( BUDGET - SECONDS - 15 ));
          (( t > left )) && t=$left; (( t < 5 )) && t=5; echo "$t"; }

: > "$REPORT"
say "# gpu_sweep_check.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), budget ${BUDGET}s, device $DEVICE"
command -v nvidia-smi > /dev/null && say "$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader)"
$PY - "$WORK/sweep.yaml" "$EPOCHS" "$DEVICE" "$TINY" <<'EOF' 2>&1 | tee -a "$REPORT" || exit 1
import sys, torch, yaml
path, epochs, device, tiny = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
print("torch", torch.__version__, "cuda", torch.version.cuda)
parameters = {
    "alpha": {"values": [0.03, 0.1, 0.3, 1.0]}, "beta": {"values": [0.1, 1.0]},
    "method": {"value": "end"}, "preset": {"value": "paper"}, "rho": {"value": 0.997},
    "epochs": {"value": epochs}, "seed": {"value": 42}, "device": {"value": device},
}
if tiny:  # the flow only: a synthetic benchmark and a small network
    parameters.update({"dataset": {"value": "synthetic"}, "rho": {"value": 0.9},
                       "preset": {"value": "quick"}, "train_size": {"value": 256},
                       "eval_size": {"value": 128}, "model_options.channels": {"value": [8, 16]}})
sweep = {"name": "gpu sweep check", "method": "grid", "metric": {"name": "valid_acc",
         "goal": "maximize"}, "parameters": parameters}
open(path, "w").write(yaml.safe_dump(sweep))
EOF
[ "$TINY" = 1 ] || [ -f "$DATA/train-images-idx3-ubyte.gz" ] || { say "no MNIST in $DATA"; exit 1; }

create() {
    "${PYTHON[@]}" -m endebias sweep create "$WORK/sweep.yaml" --storage "$STORAGE" --id "$1" \
        > /dev/null 2>> "$WORK/create.log" || { say "sweep create failed"; cat "$WORK/create.log"; exit 1; }
}
read -r -a PYTHON <<< "$PY"
AGENT=("${PYTHON[@]}" -m endebias sweep agent --storage "$STORAGE" --runs "$RUNS")

say ""; say "## 1. one trial alone"
create solo
timeout "$(share 20)" "${AGENT[@]}" solo --count 1 > "$WORK/solo.log" 2>&1
say "step 1 done at ${SECONDS}s"

say ""; say "## 2. --pack 8"
create pack8
timeout "$(share 35)" "${AGENT[@]}" pack8 --pack 8 > "$WORK/pack8.log" 2>&1
say "step 2 done at ${SECONDS}s"

say ""; say "## 3. --pack 4 x 2 processes"
create pack4x2
limit=$(share 35)
for id in 0 1; do
    timeout "$limit" "${AGENT[@]}" pack4x2 --pack 4 --count 4 --agent-id "$id" \
        > "$WORK/pack4x2-$id.log" 2>&1 &
done
wait
say "step 3 done at ${SECONDS}s"

$PY benchmarks/sweep_check_summary.py "$RUNS" --epochs "$EPOCHS" 2>&1 | tee -a "$REPORT"
tar -czf "$RESULTS/gpu_sweep_check_records.tar.gz" -C "$WORK" --exclude='*.pt' runs \
    $(cd "$WORK" && ls ./*.log)
say "records: $RESULTS/gpu_sweep_check_records.tar.gz"
say "total ${SECONDS}s"
rm -rf "$WORK"
