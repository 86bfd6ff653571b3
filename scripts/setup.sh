#!/usr/bin/env bash
# Install mlasm-workbench into the checkout's virtual environment, .venv (made when absent).
#   bash scripts/setup.sh                    the library, the CLI and the notebooks' needs
#   bash scripts/setup.sh dev                ... plus the test tools
#   bash scripts/setup.sh dev,extract        ... plus real-photo feature extraction
#   bash scripts/setup.sh dev,extract --latest   the newest releases instead of the tested ones
# Then: .venv/bin/python -m mlasm demo   (or `. .venv/bin/activate` once, then python3 ...).
#
# Versions: every package is installed at the version in constraints.txt, the set the test suite
# last passed with (scripts/update_constraints.sh writes it), so that a new release elsewhere
# (OpenCV 5 dropped the detector's importer) cannot break a fresh install. --latest, or
# MLASM_LATEST=1, ignores it.
# Where: a virtual environment, because Debian's, Ubuntu's and Homebrew's Pythons refuse pip
# installs into themselves (PEP 668). PYTHON=/path/to/python installs into that interpreter's
# environment instead (your own venv or conda env).
# torch: one that is already installed (your own CUDA build, say) is kept as it is. Where there is
# none, a CPU-only build is installed on machines without an NVIDIA GPU, so that a laptop does not
# download gigabytes of CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
latest=${MLASM_LATEST:-0}
for argument in "$@"; do
    case "$argument" in
        --latest) latest=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "setup: unknown option $argument (expected EXTRAS and/or --latest)" >&2; exit 2 ;;
        *) extras=$argument ;;
    esac
done

if [[ -n "${PYTHON:-}" ]]; then
    echo "setup: installing into $("$PYTHON" -c 'import sys; print(sys.prefix)') (PYTHON=$PYTHON)"
else
    if [[ ! -x .venv/bin/python ]]; then
        base=$(command -v python3 || true)
        if [[ -z "$base" ]]; then
            echo "setup: no python3 found; install Python 3.10 or newer" >&2; exit 1
        fi
        if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
            echo "setup: $base is Python $("$base" -c 'import platform; print(platform.python_version())'); mlasm needs 3.10 or newer" >&2
            exit 1
        fi
        if ! "$base" -m venv .venv; then
            rm -rf .venv
            echo "setup: $base could not make a virtual environment; on Debian or Ubuntu: sudo apt-get install python3-venv" >&2
            exit 1
        fi
        echo "setup: made the virtual environment .venv ($("$base" --version))"
        # a current pip: older ones (Debian 12 ships 23.0) backtrack for many minutes where a pin cannot be met
        .venv/bin/python -m pip install --disable-pip-version-check -q --upgrade pip
    fi
    PYTHON=.venv/bin/python
fi

pip_install() {
    "$PYTHON" -m pip install --disable-pip-version-check "$@"
}

if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "setup: keeping the installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip_install torch
else
    # A local CPU wheel where the machine provides one, else PyTorch's CPU index.
    pip_install "torch==2.13.0+cpu" 2>/dev/null \
        || pip_install torch --index-url https://download.pytorch.org/whl/cpu
fi

target="."
[[ -n "$extras" ]] && target=".[$extras]"
if [[ "$latest" == 1 ]]; then
    echo "setup: the newest releases (constraints.txt ignored)"
    pip_install -e "$target"
else
    if ! pip_install -c constraints.txt -e "$target"; then
        echo "setup: the tested versions (constraints.txt) did not install on $("$PYTHON" --version);" \
             "try the newest ones: bash scripts/setup.sh ${extras:+$extras }--latest" >&2
        exit 1
    fi
fi
echo "setup: done in $("$PYTHON" -c 'import sys; print(sys.prefix)')"
