"""Shared fixtures. Real-data tests read coco-mini from outside the repo.

``MLASM_COCO_MINI`` points at the folder (default ``../shared/data/coco-mini`` beside the
checkout). When it is absent the tests skip with a reason, unless ``MLASM_REQUIRE_DATA=1``
(as in ``.ci/run``) turns the absence into a failure.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _coco_mini_path() -> Path:
    default = REPO_ROOT.parent / "shared" / "data" / "coco-mini"
    return Path(os.environ.get("MLASM_COCO_MINI", default)).expanduser()


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    path = _coco_mini_path()
    if not (path / "annotations" / "captions_train2017.json").is_file():
        message = f"coco-mini not found at {path} (set MLASM_COCO_MINI to its folder)"
        if os.environ.get("MLASM_REQUIRE_DATA") == "1":
            pytest.fail(message + "; MLASM_REQUIRE_DATA=1 makes it required")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny trainings: they gain nothing from a second, and lose
    much when the other core is busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """Tiny ShapeScenes train and dev splits (tests/cli_support.py)."""
    from cli_support import tiny_splits

    return tiny_splits(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A ShapeScenes cache folder for a module's tiny splits."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny_data(tiny_cache):
    """Tiny ShapeScenes train, dev and test splits (tests/cli_support.py TINY_SIZES)."""
    from cli_support import tiny_splits

    return tiny_splits(tiny_cache, ("train", "dev", "test"))


@pytest.fixture(scope="module")
def data_folder(splits, tmp_path_factory):
    """The tiny splits as a precomp folder, for the command line's --data."""
    from cli_support import tiny_folder

    return tiny_folder(splits, tmp_path_factory.mktemp("data"))


@pytest.fixture
def short_tmp():
    """A temporary folder with a short path, for the browser tests: Chromium's singleton socket
    path must fit in 108 bytes, which pytest's tmp_path can exceed."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mlasm-browser-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
