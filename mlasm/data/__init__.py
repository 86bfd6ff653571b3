"""Datasets for image-text retrieval: one RetrievalSplit for every source.

Sources: SCAN precomp folders (``read_split``), bottom-up-attention TSV (``read_tsv``), COCO and
Karpathy caption JSON (``read_coco_captions``, ``read_karpathy_split``) and the generated
ShapeScenes (``load_shapescenes``). Every loader raises ``DataError`` on bad input.
"""
from mlasm.data.coco import CaptionedImage, read_coco_captions, read_karpathy_split
from mlasm.data.dataset import RetrievalSplit, caption_tensors, image_tensors
from mlasm.data.errors import DataError
from mlasm.data.precomp import list_splits, read_meta, read_split, write_split
from mlasm.data.shapescenes import (bag_of_words_scores, build_shapescenes, load_shapescenes, render_scene,
                                    shapescenes_folder)
from mlasm.data.tsv import TsvFeatures, TsvRecord, iter_tsv, read_tsv, write_tsv
from mlasm.data.vocab import EncodedCaption, Vocabulary, tokenize

__all__ = [
    "CaptionedImage", "DataError", "EncodedCaption", "RetrievalSplit", "TsvFeatures", "TsvRecord", "Vocabulary",
    "bag_of_words_scores", "build_shapescenes", "caption_tensors", "image_tensors", "iter_tsv", "list_splits",
    "load_shapescenes", "read_coco_captions", "read_karpathy_split", "read_meta", "read_split", "read_tsv",
    "render_scene", "shapescenes_folder", "tokenize", "write_split", "write_tsv",
]
