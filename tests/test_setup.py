"""The install: scripts/setup.sh uses the tested versions (constraints.txt) unless asked for the
newest, installs into .venv or the PYTHON it is given, and constraints.txt covers and satisfies
every dependency that pyproject.toml declares."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")

REPO = Path(__file__).resolve().parent.parent

# A stand-in interpreter: it answers setup.sh's questions and records every pip command.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/calls.log"
case "$*" in
  *"import torch"*) exit 0 ;;
  *"print(torch.__version__)"*) echo 2.13.0+cpu ;;
  *"sys.prefix"*) echo /fake/prefix ;;
esac
exit 0
"""


def _checkout_copy(tmp_path: Path, venv: bool) -> tuple[Path, Path]:
    """scripts/setup.sh and constraints.txt in a folder of their own, with a stand-in python."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts")
    shutil.copy(REPO / "constraints.txt", tmp_path)
    bin_dir = tmp_path / (".venv/bin" if venv else "elsewhere")
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return python, bin_dir / "calls.log"


def _pip_installs(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("-m pip install")]


@pytest.mark.parametrize("venv", [True, False], ids=["into .venv", "into PYTHON"])
def test_setup_installs_the_tested_versions_unless_asked_for_the_newest(tmp_path, venv):
    python, log = _checkout_copy(tmp_path, venv)
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "MLASM_LATEST")}
    if not venv:
        environment["PYTHON"] = str(python)
    script = str(tmp_path / "scripts" / "setup.sh")

    subprocess.run(["bash", script, "dev,extract"], check=True, env=environment, capture_output=True)
    assert _pip_installs(log) == ["-m pip install --disable-pip-version-check -c constraints.txt -e .[dev,extract]"]

    log.unlink()
    subprocess.run(["bash", script, "dev", "--latest"], check=True, env=environment, capture_output=True)
    assert _pip_installs(log) == ["-m pip install --disable-pip-version-check -e .[dev]"]

    log.unlink()
    subprocess.run(["bash", script], check=True, env={**environment, "MLASM_LATEST": "1"}, capture_output=True)
    assert _pip_installs(log) == ["-m pip install --disable-pip-version-check -e ."]

    bad = subprocess.run(["bash", script, "--newest"], env=environment, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --newest" in bad.stderr


def _constraints() -> dict[str, Requirement]:
    lines = [line for line in (REPO / "constraints.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    pins = {}
    for line in lines:
        requirement = Requirement(line)
        assert re.fullmatch(r"==[^,*]+", str(requirement.specifier)), f"not an exact pin: {line}"
        pins[requirement.name.lower().replace("_", "-")] = requirement
    return pins


def test_the_constraints_pin_and_satisfy_every_declared_dependency_but_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pins = _constraints()
    assert "torch" not in pins and not any(name.startswith("nvidia-") for name in pins)  # the user's own build
    for requirement in declared:
        name = requirement.name.lower().replace("_", "-")
        if name == "torch":
            continue
        assert name in pins, f"constraints.txt has no pin for {name}"
        pinned = pins[name]
        version = str(pinned.specifier)[2:]
        assert requirement.specifier.contains(version, prereleases=True), f"{name} {version} breaks {requirement}"
    # the reason this file exists: a new OpenCV 5 cannot run the detector's graph
    assert str(pins["opencv-python-headless"].specifier).startswith("==4.")


def test_a_pin_for_newer_pythons_only_says_so():
    """soupsieve 4 needs Python 3.11.5: Debian 12's 3.11.2 must not be asked for it."""
    for requirement in _constraints().values():
        if requirement.marker is not None:
            assert "python_full_version" in str(requirement.marker)
            assert not requirement.marker.evaluate({"python_full_version": "3.10.0", "python_version": "3.10"})


def test_conda_installs_the_tested_versions_too():
    pip_lines = (REPO / "environment.yml").read_text()
    assert "- -c constraints.txt" in pip_lines and "- -e .[dev]" in pip_lines
