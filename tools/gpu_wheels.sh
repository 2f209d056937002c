#!/usr/bin/env bash
# Prepare the wheels the GPU check carries (run where pip reaches PyPI): the package's
# dependencies that a CUDA image with torch, torchvision and timm lacks, for its Python 3.12,
# pure-Python wheels only (about 6.3 MiB, measured with du) into .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 segmentation-models-pytorch==0.6.0 importlib_metadata==8.7.0
du -sh .whl
