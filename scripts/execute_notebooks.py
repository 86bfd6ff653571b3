"""Refresh the stored outputs of the notebooks: sync each pair, run it, save it, say how long it took.

    python scripts/execute_notebooks.py [notebooks/04_attention_maps.py ...]          # fast mode
    python scripts/execute_notebooks.py --full [notebooks/04_attention_maps.py ...]   # the demo's model

The committed outputs are a full run's (``--full``, after ``python -m mlasm demo``): what a reader
sees is the trained model at work. nbval runs the notebooks in fast mode and compares their printed
text with these outputs, except in cells tagged ``nbval-ignore-output``, which print a model's
numbers and assert the ranges they must fall in (notebooks/conftest.py); a cell whose printed text
differs between the two modes needs that tag. Widget state is not saved (plotly's widget bundle
would add megabytes to every notebook); the widgets render again when the notebook runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
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


def main(arguments: list[str]) -> int:
    full = "--full" in arguments
    paths = [a for a in arguments if a != "--full"]
    if full:
        from mlasm.paths import runs_dir  # noqa: PLC0415 (only the full run needs the library)
        demo = runs_dir() / "demo" / "mlasm" / "best.pt"
        if not demo.is_file():
            print(f"--full runs the notebooks on the demo's model: run `python -m mlasm demo` first "
                  f"({demo} is missing)", file=sys.stderr)
            return 2
    os.environ["MLASM_FAST"] = "0" if full else "1"
    sources = [Path(p).with_suffix(".py") for p in paths] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    for source in sources:
        started = time.perf_counter()
        refresh(source)
        print(f"{source.name}: {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
