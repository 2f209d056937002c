#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py says what it measures).
#
#   bash benchmarks/gpu_check.sh             on a GPU machine with no internet: installs the
#                                            wheels carried in .whl/ (tools/gpu_wheels.sh
#                                            prepares them), then runs the check into $OUT
#   bash benchmarks/gpu_check.sh --dry-run   the same steps on this CPU at tiny sizes (CI)
#
# Files go to $OUT (default runs/gpu_check): at most 8.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-runs/gpu_check}
mkdir -p "$OUT_DIR"
if [[ " $* " == *" --dry-run "* ]]; then
  PY=${PYTHON:-.venv/bin/python}
  export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
else
  PY=${PYTHON:-python3}
  ls .whl/*.whl >/dev/null 2>&1 || { echo "error: no wheels in .whl/ (run tools/gpu_wheels.sh where pip works)"; exit 2; }
  # the package's dependencies the GPU image lacks, offline, beside its own torch
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site:src${PYTHONPATH:+:$PYTHONPATH}
fi
PYTHONUNBUFFERED=1 $PY benchmarks/gpu_check.py --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
