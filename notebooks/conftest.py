"""nbval runs every notebook in fast mode (tiny data, a tiny model trained in seconds).

Outputs that vary from run to run (pictures, widgets, HTML tables, progress on stderr) are not
compared; printed text is, unless its cell carries the tag ``nbval-ignore-output`` (a cell tag,
hidden from readers). Such cells print a trained model's numbers, which differ from machine to
machine; each of them asserts the range its numbers must fall in, so a model that stopped
learning fails the notebook.
"""
import os

os.environ.setdefault("MLASM_FAST", "1")
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

UNCOMPARED = ("stderr", "text/html", "image/png", "application/vnd.jupyter.widget-view+json",
              "application/vnd.plotly.v1+json", "text/plain")


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += UNCOMPARED
