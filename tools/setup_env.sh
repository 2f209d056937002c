#!/usr/bin/env bash
# Create or refresh .venv/ with everything diffdass needs, without ever replacing the
# CPU torch by a CUDA build. Re-running is cheap: a stamp records what was installed.
#
#   bash tools/setup_env.sh          # CPU machine (developers, CI)
#
# On a machine that already has a CUDA torch (e.g. the GPU box with torch 2.11 and
# torchvision 0.26), do not use this script: `pip install -e .` next to that torch
# installs nothing torch-related, because pyproject.toml's ranges admit it.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.diffdass-setup
want=$(cat pyproject.toml tools/constraints-cpu.txt tools/torchvision_cpu_shim.py tools/setup_env.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import diffdass, torch, torchvision" 2>/dev/null; then
  exit 0  # complete and up to date
fi

echo "[setup] preparing $VENV (torch 2.13.0 CPU, pinned dependencies)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

# 1. torch: the local CPU wheel (pip's find-links has it); never an unpinned torch.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "${pip[@]}" install "torch==2.13.0"
fi
cuda_torch=$("$VENV/bin/python" -c "import torch; print(int(torch.version.cuda is not None))")

# 2. torchvision: the PyPI wheel is CUDA-built; --no-deps keeps it from pulling a CUDA torch.
if [ "$cuda_torch" = 0 ]; then
  "${pip[@]}" install --no-deps "torchvision==0.28.0"
  # Isolated environment fix (see the file's docstring): declares torchvision's operator
  # schemas so that `import torchvision` works under the CPU torch.
  cp tools/torchvision_cpu_shim.py "$site/_diffdass_torchvision_cpu_shim.py"
  echo "import _diffdass_torchvision_cpu_shim" > "$site/_diffdass_torchvision_cpu_shim.pth"
fi

# 3. the package and its pinned dependencies (accelerate==1.15.0 among them, pinned in
#    pyproject.toml: multi-process runs); the constraints pin torch to what is installed.
"${pip[@]}" install -c tools/constraints-cpu.txt -e ".[dev]" 2>&1 | grep -v "is ignored" >&2 || true
"$VENV/bin/python" -c "import diffdass, torch, torchvision, diffusers, timm, segmentation_models_pytorch, accelerate, torch.utils.tensorboard" \
  || { echo "[setup] FAILED: imports do not work" >&2; exit 1; }
"$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') or torch.version.cuda else 1)" \
  || { echo "[setup] FAILED: torch was replaced" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)')" >&2
