#!/usr/bin/env bash
# Install the headless browser the browser tests drive: Debian's chromium plus a font
# (without one, text renders as boxes). Idempotent: does nothing when chromium is there.
# Never uses `playwright install`: it downloads a browser, and this machine is offline.
set -euo pipefail

CHROMIUM=/usr/lib/chromium/chromium
PACKAGES=(chromium fonts-dejavu-core)

if [[ -x "$CHROMIUM" ]]; then
    echo "install_browser: $CHROMIUM already present"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install_browser: $CHROMIUM is missing and we are not root." >&2
    echo "install_browser: as root run: apt-get install -y ${PACKAGES[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"

if [[ ! -x "$CHROMIUM" ]]; then
    echo "install_browser: apt-get finished but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
