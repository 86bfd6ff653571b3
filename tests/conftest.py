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
