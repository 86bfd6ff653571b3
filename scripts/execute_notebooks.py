"""Refresh the stored outputs of the notebooks: sync each pair, run it in fast mode, save it.

    python scripts/execute_notebooks.py [notebooks/04_attention_maps.py ...]

nbval compares a fresh run with these outputs, so run this after changing a notebook. Widget
state is not saved (plotly's widget bundle would add megabytes to every notebook); the
widgets render again when the notebook runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def refresh(source: Path, timeout: int = 600) -> None:
    notebook = jupytext.read(source)
    ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(
        notebook, {"metadata": {"path": str(source.parent)}})
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, source.with_suffix(".ipynb"))
    subprocess.run([sys.executable, "-m", "jupytext", "--sync", "--quiet", str(source)], check=True)


def main(paths: list[str]) -> None:
    os.environ.setdefault("MLASM_FAST", "1")
    sources = [Path(p).with_suffix(".py") for p in paths] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    for source in sources:
        print(f"running {source.name}", flush=True)
        refresh(source)


if __name__ == "__main__":
    main(sys.argv[1:])
