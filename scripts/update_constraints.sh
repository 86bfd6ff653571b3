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
EXTRAS=dev,extract,eccv,serve
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
from packaging.specifiers import SpecifierSet

result, extras = sys.argv[1], sys.argv[2]
oldest_python = "3.10.0"  # pyproject.toml's requires-python
left_out = re.compile(r"^(torch|triton|nvidia-.*|mlasm-workbench|pip|setuptools|wheel)$")


def pin(dist) -> str:
    """name==version, for the Pythons that release can run on (soupsieve 4 needs 3.11.5, Debian 12
    has 3.11.2): elsewhere pip takes the newest release that runs."""
    name = dist.metadata["Name"].lower().replace("_", "-")
    requires = (dist.metadata["Requires-Python"] or "").strip()
    if not requires or SpecifierSet(requires).contains(oldest_python):
        return f"{name}=={dist.version}"
    marker = " and ".join(f'python_full_version {s.operator} "{s.version}"' for s in SpecifierSet(requires))
    return f"{name}=={dist.version}; {marker}"


dists = {d.metadata["Name"].lower().replace("_", "-"): d for d in metadata.distributions() if d.metadata["Name"]}
print("# The versions the test suite passed with: scripts/setup.sh installs these unless --latest.")
print(f"# Written by scripts/update_constraints.sh on {datetime.date.today()}, Python {platform.python_version()} "
      f"({platform.system()} {platform.machine()}), extras {extras}: {result}.")
print("# torch is left out on purpose: setup.sh keeps the user's own build (CUDA or CPU). A pin with a")
print("# Python condition applies where that release runs; on other Pythons pip takes the newest that does.")
for name in sorted(dists):
    if not left_out.match(name):
        print(pin(dists[name]))
PY
mv "$work/constraints.txt" constraints.txt
echo "update_constraints: wrote constraints.txt ($(grep -c '==' constraints.txt) packages; $result)"
