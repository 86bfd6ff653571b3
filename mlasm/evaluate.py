"""Evaluation: encode a split, score every level of every pair, and apply the protocol.

Each level (t2i, i2t, local, global, final) is scored and reported on its own, and the
per-query ranks are kept so that error analysis can find the failed queries later.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from mlasm import distributed
from mlasm.attention_stats import (
    attention_statistics_and_records,
    knows_word_and_region_kinds,
    model_records,
    reader_signature,
    statistics_captions,
    top_regions_after,
)
from mlasm.checkpoint import check_model_fits, load_model
from mlasm.data.dataset import RetrievalSplit
from mlasm.data.errors import DataError
from mlasm.data.positives import PositiveSets
from mlasm.data.vocab import Vocabulary, rows_before_words
from mlasm.io import check_output_folder, write_together
from mlasm.metrics import (
    RECALL_KS,
    average_metrics,
    check_finite,
    complete_positive_metrics,
    complete_positive_ranks,
    fold_indices,
    folded_retrieval_metrics,
    summarize_complete_ranks,
    i2t_ranks,
    pointing_accuracy,
    retrieval_metrics,
    scored_levels,
    t2i_ranks,
)
from mlasm.encoding import encode_split
from mlasm.levels import LEVELS
from mlasm.model import MLASM, CaptionEncoding, ImageEncoding
from mlasm.saved_scores import RECORDS_FILE, SCORES_FILE, scores_fingerprint, write_records, write_scores
from mlasm.score_store import StoredScores, score_into_store
from mlasm.store_measures import measure_store, separation_in_chunks

PROTOCOLS = {
    "full": "the whole split is one gallery (Flickr30K 1K test, COCO 5K on testall, ShapeScenes test)",
    "5fold": "average over 5 folds of consecutive images (COCO 1K on testall)",
}
TOP_K_SAVED = 5
COCO_5K_IMAGES, COCO_5K_CAPTIONS = 5000, 25000  # the Karpathy 5K test, where ECCV Caption and CxC apply
STORE_FROM_PAIRS = 25_000_000  # from here on (500 MB a level) scores go to a score store, not scores.npz


def score_split(model: MLASM, split: RetrievalSplit, vocab: Vocabulary, memory_budget_mb: float | None = None,
                progress: bool = False) -> dict[str, torch.Tensor]:
    """Every level's (N, M) score matrix for one model (in a process group: the ranks share the
    blocks of pairs; rank 0 gets the matrices, the other ranks None)."""
    progress = progress and distributed.is_main()  # one set of progress bars
    img, cap = encode_split(model, split, vocab, progress=progress)
    return distributed.score_all(model, img, cap, memory_budget_mb=memory_budget_mb, progress=progress)


def average_levels(per_model: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """An ensemble: the mean of several models' score matrices, level by level (as SCAN's t2i + i2t).

    ``final`` is the mean of every model's final scores. A level only some models have (a SCAN
    t2i model and a SCAN i2t model have one direction each) is the mean over the models that have it:
    SCAN's "t-i + i-t" ensemble keeps the t2i model's scores as its t2i level, the i2t model's as its i2t.
    """
    levels = [level for level in LEVELS if any(level in scores for scores in per_model)]
    return {level: torch.stack([scores[level] for scores in per_model if level in scores]).mean(0)
            for level in levels}


def describe_model(path: str | Path, model: MLASM) -> dict:
    """What metrics.json says of one checkpoint: its kind, its levels and, for SCAN, its options."""
    config = model.config
    if config.objective == "scan":
        return {"checkpoint": str(path), "kind": "SCAN", "description": config.describe(),
                "levels": list(model.levels), "options": config.to_dict()}
    return {"checkpoint": str(path), "kind": "MLASM", "objective": config.objective,
            "levels": list(model.levels)}


def _complete_metrics(scores, caption_to_image: np.ndarray, positives: PositiveSets, protocol: str) -> dict:
    """Complete-positive metrics under a protocol (per fold, then averaged, for ``5fold``)."""
    if protocol == "full":
        return complete_positive_metrics(scores, positives)
    per_fold = [complete_positive_metrics(scores[np.ix_(images, captions)], positives.subset(images, captions))
                for images, captions in fold_indices(scores.shape[0], caption_to_image, 5)]
    return average_metrics(per_fold)


def level_metrics(level_scores: dict[str, torch.Tensor], caption_to_image: np.ndarray,
                  protocol: str = "full", positives: PositiveSets | None = None,
                  complete_ranks: dict[str, dict] | None = None) -> dict:
    """The protocol on the final level (top-level fields) and on every level alone (``levels``).

    With ``positives`` (the split's complete positive sets), every level also gets ``complete``:
    recall where any image a caption is true of counts (and, for an image, any caption true of
    it), R-Precision and mAP@R; the top-level ``complete`` is the final level's. ``complete_ranks``
    (level -> ``complete_positive_ranks``, under the full protocol) saves sorting the scores again.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    measure = retrieval_metrics if protocol == "full" else folded_retrieval_metrics
    levels = {}
    for level, scores in scored_levels(level_scores).items():
        check_finite(scores, f"level {level!r}")
        levels[level] = measure(scores, caption_to_image)
        if positives is not None and complete_ranks is not None and protocol == "full":
            levels[level]["complete"] = summarize_complete_ranks(complete_ranks[level])
        elif positives is not None:
            levels[level]["complete"] = _complete_metrics(scores.numpy(), caption_to_image, positives, protocol)
    return {"protocol": protocol, **levels["final"], "levels": levels}


def level_ranks(level_scores: dict[str, torch.Tensor], caption_to_image: np.ndarray,
                positives: PositiveSets | None = None,
                complete_ranks: dict[str, dict] | None = None) -> dict[str, np.ndarray]:
    """Per level and direction: each query's rank and its top results, for error analysis.

    With ``positives``, also the rank of the first item the query is true of
    (``{level}_{direction}_first_valid_rank``), and for the final level its R-Precision and mAP@R
    and the number of valid items per query (from ``complete_ranks`` where given, as in level_metrics).
    """
    arrays = {}
    for level, scores in scored_levels(level_scores).items():
        k = min(TOP_K_SAVED, scores.shape[0], scores.shape[1])
        arrays[f"{level}_i2t_rank"] = i2t_ranks(scores, caption_to_image)
        arrays[f"{level}_t2i_rank"] = t2i_ranks(scores, caption_to_image)
        arrays[f"{level}_i2t_top"] = scores.topk(k, dim=1).indices.numpy()       # (N, k) caption indices
        arrays[f"{level}_t2i_top"] = scores.topk(k, dim=0).indices.T.numpy()     # (M, k) image indices
        if positives is not None:
            complete = complete_ranks[level] if complete_ranks else complete_positive_ranks(scores.numpy(), positives)
            for direction in ("i2t", "t2i"):
                arrays[f"{level}_{direction}_first_valid_rank"] = complete[f"{direction}_first_rank"]
                if level == "final":
                    for key in ("r_precision", "map_at_r", "n_positives"):
                        arrays[f"{direction}_{key}"] = complete[f"{direction}_{key}"]
    return arrays


@torch.no_grad()
def grounding_accuracy(model: MLASM, split: RetrievalSplit, vocab: Vocabulary,
                       img: ImageEncoding | None = None, cap: CaptionEncoding | None = None,
                       records: pd.DataFrame | None = None) -> dict | None:
    """Pointing game on the matching pairs: does each object-naming word attend most to its object's box?

    Read off the attention records (``mlasm.attention_stats.model_records``: each word's most-attended
    region): ``records`` made over every grounded caption or more (evaluate's one pass, which the attention
    statistics read too), else made here over the grounded captions.
    None when the split does not know which words name which regions.
    """
    if split.grounding is None or "t2i" not in model.directions:  # an i2t SCAN model: no word looks
        return None
    if records is None:
        if img is None or cap is None:
            img, cap = encode_split(model, split, vocab)
        records = model_records(model, split, vocab, img, cap, _grounded_captions(split))
    first_word = rows_before_words(model.config.start_end_tokens)
    top_regions = top_regions_after(records, split.n_captions, first_word)
    n_regions = split.region_mask.sum(axis=1)[split.caption_to_image]
    return pointing_accuracy(top_regions, split.grounding, n_regions)


def _grounded_captions(split: RetrievalSplit) -> list[int]:
    return [c for c, words in enumerate(split.grounding or ()) if words]


def _pointing_and_statistics(model: MLASM, split: RetrievalSplit, vocab: Vocabulary, img: ImageEncoding,
                             cap: CaptionEncoding) -> tuple[dict | None, dict | None, pd.DataFrame | None]:
    """The pointing game and the attention statistics of one model, from one pass over the pairs (one
    explanation a caption, over the captions either reads): (grounding, statistics, records), None for
    what the model or the split cannot say."""
    if "t2i" not in model.directions or not knows_word_and_region_kinds(split):
        return None, None, None  # no word looks (an i2t SCAN model), or nothing is known of the words
    sampled = statistics_captions(split.n_captions)
    captions = None if sampled is None else sorted(set(sampled.tolist()) | set(_grounded_captions(split)))
    records = model_records(model, split, vocab, img, cap, captions)
    stats, made = attention_statistics_and_records(model, split, vocab, img, cap, records=records)
    return grounding_accuracy(model, split, vocab, records=records), stats, made


def evaluate_model(model: MLASM, split: RetrievalSplit, vocab: Vocabulary, protocol: str = "full",
                   levels_only: Iterable[str] | None = None, memory_budget_mb: float | None = None,
                   progress: bool = True) -> dict:
    """Metrics of one model on one split (``levels_only`` trims the result, e.g. for validation).

    In a process group every rank scores its share and returns the same metrics (rank 0's)."""
    scores = score_split(model, split, vocab, memory_budget_mb=memory_budget_mb, progress=progress)

    def measure() -> dict:
        kept = scores if levels_only is None else {level: scores[level] for level in levels_only}
        return level_metrics(kept, split.caption_to_image, protocol, positives=split.positives)

    return distributed.on_rank_zero(measure)


def check_rankable(split: RetrievalSplit) -> None:
    """Retrieval needs captions of two images at least: with one, every image-to-text rank is over one image
    and no false pair exists for the gap. Refused in one line rather than reported as numbers."""
    described = int(np.unique(np.asarray(split.caption_to_image)).size)
    if described < 2:
        where = f"split {split.name!r}" + (f" ({Path(split.regions_file).parent})" if split.regions_file else "")
        raise DataError(f"{where}: its {split.n_captions:,} captions describe {described} of its {split.n_images:,} "
                        f"images; ranking needs captions of at least 2 images (image-to-text recall and the gap "
                        f"between true and false pairs are undefined here)")


def evaluate_checkpoints(checkpoints: Sequence[str | Path], split: RetrievalSplit, protocol: str = "full",
                         out_dir: str | Path | None = None, device: str | torch.device | None = None,
                         memory_budget_mb: float | None = None, progress: bool = True,
                         vocab: str | Path | Vocabulary | None = None, score_store: bool | None = None) -> dict:
    """Evaluate one checkpoint, or the ensemble of several; write ``metrics.json``, ``ranks.npz`` and
    ``scores.npz`` (every level's score matrix, which the workbench reuses: mlasm.saved_scores).

    The files are written as one unit (all or none; metrics.json last, so its presence means the
    files beside it are its own), after the output folder was found usable.

    ``vocab``: SCAN's vocabulary file, for SCAN checkpoints (``model_best.pth.tar``), which keep it
    apart; mlasm checkpoints carry their own. Two SCAN checkpoints, a t2i and an i2t model, make
    SCAN's published "t-i + i-t" ensemble (the mean of their score matrices).

    In a process group (torchrun) the ranks share the scoring of every pair; rank 0 alone then
    measures, writes and returns the result (the same numbers as one process: ``world_size``
    records how many scored), the other ranks return None once their share is done.

    ``score_store``: write the matrices as a score store (mlasm.score_store: one memory-mappable .npy
    per level, written band by band, resumed after an interrupt, measured in chunks) instead of
    scores.npz; None (default): from STORE_FROM_PAIRS pairs on, for one checkpoint in one process.
    """
    if memory_budget_mb is not None and not (isinstance(memory_budget_mb, (int, float))
                                             and np.isfinite(memory_budget_mb) and memory_budget_mb > 0):
        raise ValueError(f"memory_budget_mb must be a finite number > 0, got {memory_budget_mb!r}")
    check_rankable(split)
    progress = progress and distributed.is_main()  # one set of progress bars
    if out_dir is not None:  # before every pair is scored, not after; rank 0's, which writes there
        out_dir = distributed.on_rank_zero(lambda: check_output_folder(out_dir, "out_dir", clean=True))
    if protocol == "5fold":
        return _evaluate_folds(checkpoints, split, out_dir, device, memory_budget_mb, progress, vocab)
    into = None
    if out_dir is not None and protocol == "full" and len(checkpoints) == 1 and distributed.world_size() == 1 and (
            score_store if score_store is not None else split.n_images * split.n_captions >= STORE_FROM_PAIRS):
        fingerprint = scores_fingerprint(checkpoints, split)
        into = lambda model, img, cap: score_into_store(model, img, cap, out_dir, fingerprint,  # noqa: E731
                                                         memory_budget_mb, progress)
    scored = _score_models(checkpoints, split, device, memory_budget_mb, progress, vocab, into)
    if scored is None:  # another rank: its share of the pairs is scored
        return None
    per_model, models, grounding, attention, records = scored
    scores = per_model[0] if len(per_model) == 1 else average_levels(per_model)
    result = {
        "split": split.name,
        "n_images": split.n_images,
        "n_captions": split.n_captions,
        "checkpoints": [str(p) for p in checkpoints],
        # per checkpoint: "paper" (final score only), "level-wise" or "scan"
        "objectives": [model.get("objective", "scan") for model in models],
        "models": models,  # per checkpoint: MLASM or SCAN, its levels, and a SCAN model's options
        "world_size": distributed.world_size(),  # the processes that scored it (torchrun); 1 alone
    }
    if into is not None:  # memory-mapped matrices, measured in chunks
        metrics, ranks = measure_store(scores, split.caption_to_image, split.positives, TOP_K_SAVED)
        result.update(_measures(scores, split, protocol, None, metrics,
                                separation_in_chunks(scores["final"], split.positive_sets())))
    else:
        complete = _complete_ranks(scores, split)
        result.update(_measures(scores, split, protocol, complete))
    if any(g is not None for g in grounding):
        result["grounding"] = grounding[0] if len(grounding) == 1 else grounding
    if attention:
        result["attention_statistics"] = attention[0] if len(attention) == 1 else attention
    if into is not None:
        _write_outputs(out_dir, result, None, ranks, fingerprint, split, records, store=per_model[0])
    elif out_dir is not None:
        _write_outputs(out_dir, result, scores, level_ranks(scores, split.caption_to_image, split.positives, complete),
                       scores_fingerprint(checkpoints, split), split,
                       records if len(checkpoints) == 1 else None)  # and the statistics tab opens at once
    return result


def _score_models(checkpoints, split: RetrievalSplit, device, memory_budget_mb, progress: bool, vocab, into=None):
    """Every level of every pair for each checkpoint, with what metrics.json says of the model, its
    pointing game and attention statistics: (per_model, models, grounding, attention, records: every
    word's attention record when made over every caption); None on the ranks other than 0 of a
    process group, once their share is scored. ``into(model, img, cap)``: scores them elsewhere (a score store)."""
    per_model, models, grounding, attention, records = [], [], [], [], None
    for path in checkpoints:
        model, model_vocab, _ = load_model(path, device, vocab=vocab)
        models.append(describe_model(path, model))
        check_model_fits(model, split, str(path))
        img, cap = encode_split(model, split, model_vocab, progress=progress)
        per_model.append(into(model, img, cap) if into is not None else
                         distributed.score_all(model, img, cap, memory_budget_mb=memory_budget_mb, progress=progress))
        if not distributed.is_main():
            continue
        pointing, stats, made = _pointing_and_statistics(model, split, model_vocab, img, cap)
        grounding.append(pointing)
        if stats is not None:  # per word kind
            attention.append(stats)
            records = made if stats["captions"] == split.n_captions else None
    return (per_model, models, grounding, attention, records) if distributed.is_main() else None


def _complete_ranks(scores: dict[str, torch.Tensor], split: RetrievalSplit) -> dict | None:
    """The complete-positive ranks of every level, sorted once for the metrics and ranks.npz."""
    if split.positives is None:
        return None
    complete = {}
    for level, level_scores in scored_levels(scores).items():
        check_finite(level_scores, f"level {level!r}")
        complete[level] = complete_positive_ranks(level_scores.numpy(), split.positives)
    return complete


def _measures(scores: dict[str, torch.Tensor], split: RetrievalSplit, protocol: str, complete: dict | None,
              metrics: dict | None = None, separation: dict | None = None) -> dict:
    """The levels' metrics, chance, score separation and what the split's positives are (``metrics``
    and ``separation``: computed already, from a score store)."""
    result = {
        **(metrics or level_metrics(scores, split.caption_to_image, protocol, positives=split.positives,
                                    complete_ranks=complete)),
        "chance": chance_metrics(split.n_images, split.caption_to_image, split.positives),
        "score_separation": separation or score_separation(scores["final"], split.positive_sets()),
    }
    if (split.n_images, split.n_captions) == (COCO_5K_IMAGES, COCO_5K_CAPTIONS):
        result["eccv_caption"] = _eccv_caption(scores["final"], split)
    if split.positives is not None:
        sizes = split.positives.sizes()
        result["positive_sets"] = {"mean_images_per_caption": float(sizes.mean()),
                                   "captions_true_of_one_image": int((sizes == 1).sum())}
    return result


def _write_outputs(out_dir: Path, result: dict, scores: dict | None, ranks: dict, fingerprint: dict,
                   split: RetrievalSplit, records=None, store: StoredScores | None = None) -> None:
    """metrics.json, ranks.npz, scores.npz (which the workbench reuses: mlasm.saved_scores) or the finished
    score ``store`` (mlasm.score_store) and the attention records when given, as one unit."""
    def write_ranks(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, caption_to_image=split.caption_to_image, **ranks)

    def write_metrics(tmp: Path) -> None:
        tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    files = {out_dir / "ranks.npz": write_ranks}
    if store is None:
        files[out_dir / SCORES_FILE] = lambda tmp: write_scores(tmp, scores, fingerprint)
    else:  # checksums first: a failure here leaves the partial store to finish from
        files.update(store.writer.writers(store.writer.finish()))
    if records is not None:
        files[out_dir / RECORDS_FILE] = lambda tmp: write_records(
            tmp, records, {**fingerprint, "reader": reader_signature(split)})
    files[out_dir / "metrics.json"] = write_metrics  # last: its presence means the files beside it are its own
    write_together(files)
    if store is not None:
        store.writer.remove()  # its files are the store's now (hard links)


def _evaluate_folds(checkpoints: Sequence[str | Path], split: RetrievalSplit, out_dir: Path | None,
                    device, memory_budget_mb: float | None, progress: bool, vocab=None) -> dict | None:
    """COCO 1K: each fold of images is evaluated alone with its own captions, so only the five
    fold blocks are scored (a fifth of the 5K x 25K pairs); every metric is the mean over folds,
    every count (words, captions) their sum.

    Each fold's files go to ``OUT/fold1`` ... ``fold5``; OUT/metrics.json holds the means and,
    under ``folds``, each fold's metrics.
    """
    folds = [evaluate_checkpoints(checkpoints, split.subset(images), "full", None if out_dir is None else
                                  out_dir / f"fold{k}", device, memory_budget_mb, progress, vocab)
             for k, (images, _) in enumerate(fold_indices(split.n_images, split.caption_to_image, FOLDS), start=1)]
    if not distributed.is_main():
        return None
    result = {**_mean_over_folds(folds), "protocol": "5fold", "split": split.name, "n_images": split.n_images,
              "n_captions": split.n_captions, "folds": folds}
    if out_dir is not None:
        write_together({out_dir / "metrics.json": lambda tmp: tmp.write_text(
            json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")})
    return result


def _mean_over_folds(values: Sequence):
    """Measures (floats) averaged, counts (ints) summed, nested dicts key by key; what is not a
    number is kept where every fold agrees on it (a checkpoint path) and left out where not."""
    first = values[0]
    if isinstance(first, dict):
        if not all(isinstance(v, dict) and v.keys() == first.keys() for v in values):
            return _DIFFERS
        means = {key: _mean_over_folds([v[key] for v in values]) for key in first}
        return {key: mean for key, mean in means.items() if mean is not _DIFFERS}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return int(sum(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return float(np.mean(values))
    return first if all(v == first for v in values) else _DIFFERS


_DIFFERS = object()

FOLDS = 5


def _eccv_caption(scores: torch.Tensor, split: RetrievalSplit) -> dict:
    """ECCV Caption and CxC metrics of a COCO 5K test split, where the optional eccv-caption package
    is installed; else a note saying why not.

    Images are matched by their COCO ids where the split has them (``{split}_ids.txt``, captions
    five per image in row order), else taken to be in SCAN's ``testall`` order (which nothing in a
    score matrix can confirm). The package's own COCO 5K recalls must equal ours, or captions do
    not belong to the images the package thinks, and nothing is reported.
    """
    from mlasm.eccv import EccvCaptionMissing, eccv_caption_metrics

    ids = split.image_ids
    default_ids = ids == [str(i) for i in range(split.n_images)]
    if not default_ids and not all(i.isdigit() for i in ids):
        return {"skipped": f"split {split.name!r}: its image ids are not COCO ids"}
    try:
        result = eccv_caption_metrics(scores, image_ids=None if default_ids else np.array(ids, dtype=np.int64))
    except EccvCaptionMissing as e:
        return {"skipped": str(e)}
    except DataError as e:  # ids that are not those of the Karpathy 5K test
        return {"skipped": f"split {split.name!r} is not the COCO 5K test ({e})"}
    ours = retrieval_metrics(scores, split.caption_to_image)
    if any(abs(result["coco_5k"][d][f"r{k}"] - ours[d][f"r{k}"]) > 1e-6 for d in ("i2t", "t2i") for k in RECALL_KS):
        return {"skipped": f"split {split.name!r}: its images or captions are not in the COCO 5K test order "
                           f"(the package's COCO recalls differ from ours)"}
    return result


def score_separation(scores, positives: PositiveSets) -> dict:
    """Mean score of the pairs that are true (by ``positives``) and of those that are false.

    A model can rank well by tiny differences while every score sits at one value; the gap says
    whether a score a user reads carries meaning. Read from the sparse sets: no (N, M) mask.
    """
    scores = scores.numpy() if hasattr(scores, "numpy") else np.asarray(scores)
    captions = np.repeat(np.arange(positives.n_captions), positives.sizes())
    true_sum = float(scores[positives.indices, captions].astype(np.float64).sum())
    n_true = positives.indices.size
    false_sum = float(scores.sum(dtype=np.float64)) - true_sum
    positive, negative = true_sum / n_true, false_sum / max(scores.size - n_true, 1)
    return {"positive": positive, "negative": negative, "gap": positive - negative}


def _chance_recall(n_items: int, positives_per_query: np.ndarray, k: int) -> float:
    """Expected R@k (percent) of a random ranking: the chance that none of a query's R positives
    lands in the top k of n_items is prod_{j<k} (n - R - j) / (n - j); averaged over queries."""
    counts = positives_per_query[positives_per_query > 0]
    miss = np.ones(len(counts))
    for j in range(min(k, n_items)):
        miss *= np.clip((n_items - counts - j) / (n_items - j), 0, 1)
    return float(100 * np.mean(1 - miss))


def chance_metrics(n_images: int, caption_to_image: np.ndarray, positives: PositiveSets | None = None) -> dict:
    """Expected recall of a scorer that ranks at random, the baseline a tiny dataset is read against.

    With ``positives``, also ``complete``: the same under complete positives (a caption true of
    many images is found by chance more often), with R-Precision's expectation, R / n.
    """
    n_captions = len(caption_to_image)
    strict = PositiveSets.strict(caption_to_image, n_images)

    def recalls(sets: PositiveSets) -> dict:
        i2t = {f"r{k}": _chance_recall(n_captions, sets.transpose().sizes(), k) for k in RECALL_KS}
        t2i = {f"r{k}": _chance_recall(n_images, sets.sizes(), k) for k in RECALL_KS}
        return {"rsum": sum(i2t.values()) + sum(t2i.values()), "i2t": i2t, "t2i": t2i}

    result = recalls(strict)
    if positives is not None:
        complete = recalls(positives)
        for direction, sizes, n_items in (("i2t", positives.transpose().sizes(), n_captions),
                                          ("t2i", positives.sizes(), n_images)):
            complete[direction]["r_precision"] = float(100 * np.mean(sizes[sizes > 0] / n_items))
        result["complete"] = complete
    return result
