"""Evaluation: encode a split, score every level of every pair, and apply the protocol.

Each level (t2i, i2t, local, global, final) is scored and reported on its own, and the
per-query ranks are kept so that error analysis can find the failed queries later.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mlasm.data.dataset import RetrievalSplit, caption_tensors, image_tensors
from mlasm.data.vocab import Vocabulary
from mlasm.io import atomic_path, write_json
from mlasm.metrics import (
    RECALL_KS,
    folded_retrieval_metrics,
    i2t_ranks,
    pointing_accuracy,
    retrieval_metrics,
    t2i_ranks,
)
from mlasm.model import MLASM, CaptionEncoding, ImageEncoding

PROTOCOLS = {
    "full": "the whole split is one gallery (Flickr30K 1K test, COCO 5K on testall, ShapeScenes test)",
    "5fold": "average over 5 folds of consecutive images (COCO 1K on testall)",
}
TOP_K_SAVED = 5


@torch.no_grad()
def encode_split(model: MLASM, split: RetrievalSplit, vocab: Vocabulary, batch_size: int = 256,
                 progress: bool = False) -> tuple[ImageEncoding, CaptionEncoding]:
    """Every image and caption of ``split`` encoded on the model's device, in eval mode."""
    model.eval()
    device = model.device
    images = []
    for start in tqdm(range(0, split.n_images, batch_size), desc="encoding images", disable=not progress):
        batch = image_tensors(split, np.arange(start, min(start + batch_size, split.n_images)))
        images.append(model.encode_images(*(t.to(device) for t in batch)))
    img = ImageEncoding(torch.cat([e.regions for e in images]), torch.cat([e.mask for e in images]),
                        torch.cat([e.glob for e in images]) if images[0].glob is not None else None)

    tokens, lengths = caption_tensors(vocab, split.captions)                     # (M, L), (M,)
    words = torch.zeros(len(split.captions), tokens.shape[1], model.config.embed_size, device=device)
    for start in tqdm(range(0, len(split.captions), batch_size), desc="encoding captions", disable=not progress):
        stop = start + batch_size
        longest = int(lengths[start:stop].max())
        encoded = model.encode_captions(tokens[start:stop, :longest].to(device), lengths[start:stop].to(device))
        words[start:stop, :longest] = encoded.words
    return img, CaptionEncoding(words, lengths.to(device))


def score_split(model: MLASM, split: RetrievalSplit, vocab: Vocabulary, memory_budget_mb: float = 512,
                progress: bool = False) -> dict[str, torch.Tensor]:
    """Every level's (N, M) score matrix for one model."""
    img, cap = encode_split(model, split, vocab, progress=progress)
    return model.score_all(img, cap, memory_budget_mb=memory_budget_mb, progress=progress)


def average_levels(per_model: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """An ensemble: the mean of several models' score matrices, level by level (as SCAN's t2i + i2t)."""
    return {level: torch.stack([scores[level] for scores in per_model]).mean(0) for level in per_model[0]}


def level_metrics(level_scores: dict[str, torch.Tensor], caption_to_image: np.ndarray,
                  protocol: str = "full") -> dict:
    """The protocol on the final level (top-level fields) and on every level alone (``levels``)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    measure = retrieval_metrics if protocol == "full" else folded_retrieval_metrics
    levels = {level: measure(scores, caption_to_image) for level, scores in level_scores.items()
              if not torch.isnan(scores).all()}  # a local-only model has no global level
    return {"protocol": protocol, **levels["final"], "levels": levels}


def level_ranks(level_scores: dict[str, torch.Tensor], caption_to_image: np.ndarray) -> dict[str, np.ndarray]:
    """Per level and direction: each query's rank and its top results, for error analysis."""
    arrays = {}
    for level, scores in level_scores.items():
        if torch.isnan(scores).all():
            continue
        k = min(TOP_K_SAVED, scores.shape[0], scores.shape[1])
        arrays[f"{level}_i2t_rank"] = i2t_ranks(scores, caption_to_image)
        arrays[f"{level}_t2i_rank"] = t2i_ranks(scores, caption_to_image)
        arrays[f"{level}_i2t_top"] = scores.topk(k, dim=1).indices.numpy()       # (N, k) caption indices
        arrays[f"{level}_t2i_top"] = scores.topk(k, dim=0).indices.T.numpy()     # (M, k) image indices
    return arrays


@torch.no_grad()
def grounding_accuracy(model: MLASM, split: RetrievalSplit, vocab: Vocabulary,
                       img: ImageEncoding | None = None, cap: CaptionEncoding | None = None) -> dict | None:
    """Pointing game on the matching pairs: does each object-naming word attend most to its object's box?

    None when the split does not know which words name which regions.
    """
    if split.grounding is None:
        return None
    if img is None or cap is None:
        img, cap = encode_split(model, split, vocab)
    top_regions = []
    for c, words in enumerate(split.grounding):
        if not words:
            top_regions.append([])
            continue
        explanation = model.explain(img, cap, int(split.caption_to_image[c]), c)
        top = explanation.t2i_attention.argmax(axis=1)                           # (L,) among kept regions
        top_regions.append(explanation.region_indices[top].tolist())
    n_regions = split.region_mask.sum(axis=1)[split.caption_to_image]
    return pointing_accuracy(top_regions, split.grounding, n_regions)


def evaluate_model(model: MLASM, split: RetrievalSplit, vocab: Vocabulary, protocol: str = "full",
                   levels_only: Iterable[str] | None = None, memory_budget_mb: float = 512,
                   progress: bool = True) -> dict:
    """Metrics of one model on one split (``levels_only`` trims the result, e.g. for validation)."""
    scores = score_split(model, split, vocab, memory_budget_mb=memory_budget_mb, progress=progress)
    if levels_only is not None:
        scores = {level: scores[level] for level in levels_only}
    return level_metrics(scores, split.caption_to_image, protocol)


def evaluate_checkpoints(checkpoints: Sequence[str | Path], split: RetrievalSplit, protocol: str = "full",
                         out_dir: str | Path | None = None, device: str | torch.device | None = None,
                         memory_budget_mb: float = 512, progress: bool = True) -> dict:
    """Evaluate one checkpoint, or the ensemble of several; write ``metrics.json`` and ``ranks.npz``."""
    from mlasm.train import check_model_fits, load_model  # train imports this module

    per_model, grounding = [], []
    for path in checkpoints:
        model, vocab, _ = load_model(path, device)
        check_model_fits(model, split, str(path))
        img, cap = encode_split(model, split, vocab, progress=progress)
        per_model.append(model.score_all(img, cap, memory_budget_mb=memory_budget_mb, progress=progress))
        grounding.append(grounding_accuracy(model, split, vocab, img, cap))
    scores = per_model[0] if len(per_model) == 1 else average_levels(per_model)
    result = {
        "split": split.name,
        "n_images": split.n_images,
        "n_captions": split.n_captions,
        "checkpoints": [str(p) for p in checkpoints],
        **level_metrics(scores, split.caption_to_image, protocol),
        "chance": chance_metrics(split.n_images, split.caption_to_image),
    }
    if grounding[0] is not None:
        result["grounding"] = grounding[0] if len(grounding) == 1 else grounding
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_json(out_dir / "metrics.json", result)
        with atomic_path(out_dir / "ranks.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, caption_to_image=split.caption_to_image,
                                    **level_ranks(scores, split.caption_to_image))
    return result


def chance_metrics(n_images: int, caption_to_image: np.ndarray) -> dict:
    """Expected recall of a scorer that ranks at random, the baseline a tiny dataset is read against."""
    n_captions = len(caption_to_image)
    per_image = np.bincount(caption_to_image, minlength=n_images)
    per_image = per_image[per_image > 0]

    def i2t_chance(k: int) -> float:
        # probability that none of an image's c captions lands in the top k of M, averaged over images
        miss = np.ones(len(per_image))
        for j in range(min(k, n_captions)):
            miss *= np.clip((n_captions - per_image - j) / (n_captions - j), 0, 1)
        return float(100 * np.mean(1 - miss))

    i2t = {f"r{k}": i2t_chance(k) for k in RECALL_KS}
    t2i = {f"r{k}": float(100 * min(k, n_images) / n_images) for k in RECALL_KS}
    return {"rsum": sum(i2t.values()) + sum(t2i.values()), "i2t": i2t, "t2i": t2i}
