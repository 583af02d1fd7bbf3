#!/usr/bin/env bash
# Evaluate one checkpoint or export on a suite in one process, then print the paper's table.
# Usage: eval/scripts/eval_one_process.sh MODEL [SUITE] [run_suite.py options...]
#   MODEL   an export directory or a run checkpoint (local or gs://)
#   SUITE   a name in eval/suites/ (default: paper) or a suite file
# Environment: DATA_ROOT (the suites' --data-root; else $CAMBRIAN_EVAL_DATA, else data/eval),
#   OUT (default eval_results/<model name>), DEVICE (cpu|cuda; default: cuda when available),
#   PYTHON (default python3).
# Example: DATA_ROOT=/data/eval eval/scripts/eval_one_process.sh runs/demo/export quick --paper
set -euo pipefail

usage="usage: $0 MODEL [SUITE] [run_suite.py options...]"
model=${1:?$usage}
shift
suite=paper
if [[ $# -gt 0 && $1 != -* ]]; then
  suite=$1
  shift
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

args=(--model "$model" --suite "$suite")
if [[ -n ${DATA_ROOT:-} ]]; then args+=(--data-root "$DATA_ROOT"); fi
if [[ -n ${OUT:-} ]]; then args+=(--out "$OUT"); fi
if [[ -n ${DEVICE:-} ]]; then args+=(--device "$DEVICE"); fi

exec "${PYTHON:-python3}" "$here/../run_suite.py" "${args[@]}" "$@"
