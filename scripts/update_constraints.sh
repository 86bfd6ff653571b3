#!/usr/bin/env bash
# Rewrite constraints.txt: the newest releases of every dependency, kept only if the whole test
# suite passes with them.
#   bash scripts/update_constraints.sh            fresh venv, newest releases, tests, then write
#   bash scripts/update_constraints.sh --no-tests  write without running the tests (not for commits)
# It installs every extra into a new virtual environment in a temporary folder (nothing of this
# machine's Python is visible there), runs `python -m pytest` in it and, when that passes, writes
# the environment's versions (torch and its CUDA libraries left out: setup.sh keeps the user's
# own torch) with a header saying when, on which Python and with what result.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=dev,extract,eccv
run_tests=1
[[ "${1:-}" == "--no-tests" ]] && run_tests=0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
PYTHON="$work/venv/bin/python" bash scripts/setup.sh "$EXTRAS" --latest

result="tests not run"
if [[ "$run_tests" == 1 ]]; then
    log="$work/pytest.log"
    if ! "$work/venv/bin/python" -m pytest 2>&1 | tee "$log"; then
        echo "update_constraints: the tests failed with the newest releases; constraints.txt is unchanged" >&2
        exit 1
    fi
    result=$(grep -E '^=+ .*(passed|failed).* =+$' "$log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')
fi

"$work/venv/bin/python" - "$result" "$EXTRAS" > "$work/constraints.txt" <<'PY'
import datetime, importlib.metadata as metadata, platform, re, sys

result, extras = sys.argv[1], sys.argv[2]
left_out = re.compile(r"^(torch|triton|nvidia-.*|mlasm-workbench|pip|setuptools|wheel)$")
pins = sorted({(d.metadata["Name"].lower().replace("_", "-"), d.version) for d in metadata.distributions()
               if d.metadata["Name"] and not left_out.match(d.metadata["Name"].lower().replace("_", "-"))})
print("# The versions the test suite passed with: scripts/setup.sh installs these unless --latest.")
print(f"# Written by scripts/update_constraints.sh on {datetime.date.today()}, Python {platform.python_version()} "
      f"({platform.system()} {platform.machine()}), extras {extras}: {result}.")
print("# torch is left out on purpose: setup.sh keeps the user's own build (CUDA or CPU).")
for name, version in pins:
    print(f"{name}=={version}")
PY
mv "$work/constraints.txt" constraints.txt
echo "update_constraints: wrote constraints.txt ($(grep -c '==' constraints.txt) packages; $result)"
