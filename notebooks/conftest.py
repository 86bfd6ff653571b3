"""nbval runs every notebook in fast mode (tiny data, a tiny model trained in seconds).

Outputs that vary from run to run (pictures, widgets, HTML tables, progress on stderr) are not
compared; printed text is, unless its cell says ``# NBVAL_IGNORE_OUTPUT``.
"""
import os

os.environ.setdefault("MLASM_FAST", "1")
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

UNCOMPARED = ("stderr", "text/html", "image/png", "application/vnd.jupyter.widget-view+json",
              "application/vnd.plotly.v1+json", "text/plain")


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += UNCOMPARED
