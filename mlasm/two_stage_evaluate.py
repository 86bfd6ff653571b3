"""``mlasm evaluate --shortlist K``: two-stage evaluation of galleries beyond all pairs (mlasm.shortlist).

metrics.json (with ``two_stage``: K, the first stage and its recall) and ranks.npz (with each query's
shortlist) under the shortlist's rank convention, complete-positive measures included where the split
has complete positive sets; no score matrices are written.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlasm import distributed
from mlasm.checkpoint import check_model_fits, load_model
from mlasm.data.dataset import RetrievalSplit
from mlasm.encoding import encode_split
from mlasm.evaluate import TOP_K_SAVED, chance_metrics, check_rankable, describe_model
from mlasm.io import check_output_folder, write_together
from mlasm.metrics import scored_levels
from mlasm.shortlist import DEFAULT_FIRST_STAGE, FirstStage, check_shortlist, two_stage


def evaluate_two_stage(checkpoints, split: RetrievalSplit, k: int, protocol: str = "full", out_dir: str | Path | None = None,
                       device=None, progress: bool = True, vocab=None, first_stage: str | Path | None = None) -> dict:
    """``mlasm evaluate --shortlist K``: the first stage shortlists K items per query, the full model
    scores those pairs (mlasm.shortlist); writes metrics.json (with ``two_stage``) and ranks.npz."""
    k = check_shortlist(k)
    check_rankable(split)
    if len(checkpoints) != 1 or protocol != "full" or distributed.world_size() > 1:
        raise ValueError(f"--shortlist {k}: two-stage evaluation takes one checkpoint, the full protocol and one "
                         f"process (got {len(checkpoints)} checkpoints, protocol {protocol!r}, "
                         f"{distributed.world_size()} processes)")
    model, model_vocab, _ = load_model(checkpoints[0], device, vocab=vocab)
    check_model_fits(model, split, str(checkpoints[0]))
    img, cap = encode_split(model, split, model_vocab, progress=progress)
    stage = DEFAULT_FIRST_STAGE if first_stage is None else FirstStage.load(first_stage, model)
    found = two_stage(model, img, cap, split.caption_to_image, k, stage)
    complete = None if split.positives is None else {
        level: found.complete_ranks(level, split.positives) for level in scored_levels(found.scores["t2i"])}
    described = describe_model(checkpoints[0], model)
    result = {"split": split.name, "n_images": split.n_images, "n_captions": split.n_captions,
              "checkpoints": [str(checkpoints[0])], "objectives": [described.get("objective", "scan")],
              "models": [described], "world_size": 1, **found.metrics(complete),
              "chance": chance_metrics(split.n_images, split.caption_to_image)}
    if first_stage is not None:
        result["two_stage"]["first_stage_file"] = str(first_stage)
    if out_dir is not None:
        out_dir = check_output_folder(out_dir, "out_dir", clean=True)
        ranks = {}
        for level in result["levels"]:
            for direction in ("i2t", "t2i"):
                ranks[f"{level}_{direction}_rank"] = found.ranks(level, direction)
                ranks[f"{level}_{direction}_top"] = found.directions[direction].top(
                    found.scores[direction][level], min(TOP_K_SAVED, found.directions[direction].k))
                if complete is not None:  # the names of mlasm.evaluate.level_ranks
                    ranks[f"{level}_{direction}_first_valid_rank"] = complete[level][f"{direction}_first_rank"]
                    if level == "final":
                        for key in ("r_precision", "map_at_r", "n_positives"):
                            ranks[f"{direction}_{key}"] = complete[level][f"{direction}_{key}"]
        for direction in ("i2t", "t2i"):  # each query's shortlist, best first-stage score first
            ranks[f"shortlist_{direction}"] = found.directions[direction].candidates.numpy().astype(np.int32)

        def write_ranks(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, caption_to_image=split.caption_to_image, **ranks)

        write_together({out_dir / "ranks.npz": write_ranks, out_dir / "metrics.json": lambda tmp: tmp.write_text(
            json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")})
    return result
