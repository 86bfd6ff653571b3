"""Where generated data and run outputs live.

A checkout keeps its caches under ``data/cache`` (gitignored) so that a user can see and
delete them; an installed package uses ``~/.cache/mlasm``. ``MLASM_CACHE_DIR`` overrides both.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def in_checkout() -> bool:
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "mlasm").is_dir()


def cache_dir() -> Path:
    if os.environ.get("MLASM_CACHE_DIR"):
        return Path(os.environ["MLASM_CACHE_DIR"]).expanduser()
    if in_checkout():
        return REPO_ROOT / "data" / "cache"
    return Path.home() / ".cache" / "mlasm"


def runs_dir() -> Path:
    """Where ``mlasm demo`` writes by default and where notebooks look for its run."""
    return REPO_ROOT / "runs" if in_checkout() else Path.cwd() / "runs"
