#!/usr/bin/env bash
# Install mlasm-workbench into the current Python environment.
#   bash scripts/setup.sh            the library, the CLI and the notebooks' needs
#   bash scripts/setup.sh dev        ... plus the test tools
#   bash scripts/setup.sh dev,extract  ... plus real-photo feature extraction
# A torch that is already installed (your own CUDA build, say) is kept as it is. Where there
# is none, a CPU-only build is installed on machines without an NVIDIA GPU, so that a laptop
# does not download gigabytes of CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=${1:-}

if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "setup: keeping the installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PYTHON" -m pip install torch
else
    # A local CPU wheel where the machine provides one, else PyTorch's CPU index.
    "$PYTHON" -m pip install "torch==2.13.0+cpu" 2>/dev/null \
        || "$PYTHON" -m pip install torch --index-url https://download.pytorch.org/whl/cpu
fi

if [ -n "$extras" ]; then
    "$PYTHON" -m pip install -e ".[$extras]"
else
    "$PYTHON" -m pip install -e .
fi
