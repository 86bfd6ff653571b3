#!/usr/bin/env bash
# Install the scripts that static notebook pages (mlasm export-notebooks) load from beside them:
# require.js and Jupyter's widget manager for static pages, pinned versions from the npm registry.
# An install step, run once (CI runs it before the tests); nothing is downloaded when exporting.
# Idempotent: does nothing when both files are there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

missing=$("$PYTHON" -c "from mlasm.export import missing_assets; print(' '.join(missing_assets()))")
if [[ -z "$missing" ]]; then
    echo "install_widget_assets: already present in $("$PYTHON" -c 'from mlasm.export import assets_dir; print(assets_dir())')"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    if [[ "$(id -u)" -eq 0 ]]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends npm
    else
        echo "install_widget_assets: npm is missing; as root run: apt-get install -y npm" >&2
        exit 1
    fi
fi
"$PYTHON" -m mlasm.export --install-assets
