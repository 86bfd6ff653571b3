"""``mlasm demo``: the whole job on the embedded dataset, in minutes on a laptop CPU.

Builds ShapeScenes, trains MLASM with the CPU preset, evaluates every level on the
1,000-image test split (with the pointing game), and writes an output folder:

    OUT/mlasm/best.pt, last.pt, train_log.jsonl, vocab.json, config.json   the run
    OUT/metrics.json, OUT/ranks.npz                                         the test evaluation
    OUT/figures/attention.png, recall_per_level.png, training.png           what to look at
    OUT/comparison.json                                                     with --compare
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from mlasm.config import MLASMConfig
from mlasm.data.errors import load_json
from mlasm.data.shapescenes import bag_of_words_scores
from mlasm.data.vocab import rows_before_words, tokenize
from mlasm.encoding import encode_split
from mlasm.evaluate import evaluate_checkpoints
from mlasm.io import atomic_path, write_json
from mlasm.metrics import complete_positive_metrics, retrieval_metrics
from mlasm.paths import cache_dir, runs_dir
from mlasm.plots import draw_attention, draw_level_recalls, draw_training_log
from mlasm.report import complete_table, format_result, recall_table
from mlasm.sources import EMBEDDED, FAST_SIZES, fast_mode, open_split
from mlasm.checkpoint import load_model, resolve_device
from mlasm.run_folder import RunFolderError, holds_run, read_log
from mlasm.train import native_bfloat16, train

# Tiny settings that still learn: 3 epochs at twice the learning rate, every one summing the hinge over
# all negatives. Hardest negatives need more steps than a tiny run has to climb out of the collapse
# (every score near one value); see docs/architecture.md, "Tests that fail when learning fails".
FAST_OVERRIDES = dict(embed_size=64, word_dim=64, epochs=3, warmup_epochs=3, learning_rate=1e-3, batch_size=64)


def demo_config(fast: bool = False, epochs: int | None = None, **overrides) -> MLASMConfig:
    """The CPU preset (or a tiny one for smoke tests), with an optional number of epochs."""
    settings = dict(FAST_OVERRIDES) if fast else {}
    if epochs is not None:
        settings["epochs"] = epochs
    settings.update(overrides)
    return MLASMConfig.cpu(**settings)


def local_only_config(config: MLASMConfig) -> MLASMConfig:
    """The same model with only its local level: rho = 1 (the final score is the local level alone,
    as SCAN) and no level-wise loss; the baseline that ``mlasm demo --compare`` and notebook 08 use."""
    return dataclasses.replace(config, rho=1.0, level_weight=0.0)


def attention_figure(checkpoint: Path, split, image_index: int = 0, max_words: int = 4):
    """A test picture with the regions that its first caption's object words attend to."""
    model, vocab, _ = load_model(checkpoint, "cpu")
    one_image = split.subset([image_index])  # the image and its captions
    img, cap = encode_split(model, one_image, vocab)
    explanation = model.explain(img, cap, 0, 0)
    caption = one_image.captions[0]
    tokens = tokenize(caption)
    grounded = [position for position, _ in one_image.grounding[0]] if one_image.grounding else []
    positions = (grounded or list(range(len(tokens))))[:max_words]
    first_word = rows_before_words(model.config.start_end_tokens)  # attention row of the first word
    boxes = one_image.boxes[0][explanation.region_indices]
    picture = one_image.get_image(0)
    fig, axes = plt.subplots(1, len(positions), figsize=(3 * len(positions), 3.4))
    for n, (ax, position) in enumerate(zip(np.atleast_1d(axes), positions)):
        draw_attention(picture, boxes, explanation.t2i_attention[position + first_word], ax=ax, top_k=3,
                       title=f"\u201c{tokens[position]}\u201d", legend=n == 0)  # one legend for the row
    fig.suptitle(f"{caption}  (final score {explanation.scores['final']:.3f})", fontsize=9)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:  # a full disk leaves the earlier figure whole
        # bbox "tight": legends placed outside their axes (attention) stay whole
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip("."), bbox_inches="tight")
    plt.close(fig)


def _train_and_evaluate(config: MLASMConfig, splits: dict, run_dir: Path, eval_dir: Path,
                        device, seed: int, amp: bool, compile_scorer: bool) -> dict:
    started = time.time()
    summary = train(config, splits["train"], splits["dev"], run_dir, device=device, seed=seed, amp=amp,
                    compile_scorer=compile_scorer)
    trained = time.time()
    result = evaluate_checkpoints([summary["best"]], splits["test"], out_dir=eval_dir, device=device)
    validation = sum(row.get("validation_seconds", 0.0) for row in summary["log"])
    seconds = {"training steps": trained - started - validation, "validation": validation,
               "test evaluation": time.time() - trained}
    return {"train": summary, "result": result, "seconds": seconds}


def demo_checkpoint(fast: bool | None = None, progress: bool = False, local_only: bool = False) -> Path:
    """The demo's best checkpoint, for notebooks: ``runs/demo`` where ``mlasm demo`` ran,
    else (and always in fast mode) a tiny model trained now in seconds and cached.

    ``local_only``: the demo's local-only baseline instead (``mlasm demo --compare``; rho = 1), to compare with.
    """
    fast = fast_mode() if fast is None else fast
    demo_best = runs_dir() / "demo" / ("local_only" if local_only else "mlasm") / "best.pt"
    if not fast and demo_best.is_file():
        return demo_best
    config = demo_config(fast=True)
    if local_only:  # as run_demo's comparison
        config = local_only_config(config)
    # keyed by the settings and by the code that makes the model: an edit of any of it retrains
    digest = hashlib.sha256(json.dumps([config.to_dict(), FAST_SIZES]).encode())
    package = Path(__file__).parent
    for path in sorted([*package.glob("*.py"), *package.glob("data/**/*.py")]):
        digest.update(path.read_bytes())
    key = digest.hexdigest()[:10]
    tiny_run = cache_dir() / f"tiny-model-{key}"
    if not (tiny_run / "best.pt").is_file():
        splits = {name: open_split(EMBEDDED, name, fast=True, progress=progress) for name in ("train", "dev")}
        train(config, splits["train"], splits["dev"], tiny_run, progress=progress)
    return tiny_run / "best.pt"


def demo_pair(fast: bool | None = None, progress: bool = False) -> dict[str, Path]:
    """Two models that differ in one thing, for comparing: {"local-only": ..., "MLASM": ...}.

    Both from ``runs/demo`` where ``mlasm demo --compare`` wrote them, else both tiny (never one of
    each, which would compare sizes, not objectives).
    """
    fast = fast_mode() if fast is None else fast
    demo = runs_dir() / "demo"
    if not fast and (demo / "mlasm" / "best.pt").is_file() and not (demo / "local_only" / "best.pt").is_file():
        train_missing_baseline(demo, progress=True)
    both_run = all((demo / name / "best.pt").is_file() for name in ("mlasm", "local_only"))
    tiny = fast or not both_run
    return {"local-only": demo_checkpoint(tiny, progress, local_only=True), "MLASM": demo_checkpoint(tiny, progress)}


def train_missing_baseline(demo: Path, progress: bool = True, splits: dict | None = None) -> Path:
    """The local-only baseline of a demo run without ``--compare``, trained once with that run's own
    settings and seed into DEMO/local_only, so that a comparison after the README's two commands
    compares two real models (not two tiny ones). Says beforehand about how long it will take."""
    config = MLASMConfig.from_dict(load_json(demo / "mlasm" / "config.json", "the demo's config"))
    record = demo / "demo.json"
    earlier = load_json(record, "the demo's record") if record.is_file() else {}
    took = earlier.get("main_job_breakdown", {})
    minutes = (took.get("training steps", 0.0) + took.get("validation", 0.0)) / 60
    print(f"{demo} holds MLASM but not its local-only baseline (`mlasm demo --compare` trains both): "
          f"training it now with the demo's settings, once"
          + (f"; the demo's own training took {minutes:.0f} min on this machine" if minutes else ""))
    if splits is None:
        splits = {name: open_split(EMBEDDED, name, progress=progress) for name in ("train", "dev")}
    summary = train(local_only_config(config), splits["train"], splits["dev"], demo / "local_only",
                    device=resolve_device(None), seed=int(earlier.get("seed", 0)), progress=progress,
                    amp=bool(earlier.get("mixed_precision", False)),
                    compile_scorer=bool(earlier.get("compiled", False)))
    return Path(summary["best"])


def check_demo_folder(out: str | Path, compare: bool = False, overwrite: bool = False) -> None:
    """Refuse to replace an earlier demo's trained models unless ``overwrite``: a RunFolderError
    naming the folder and the files, before any work."""
    out = Path(out)
    for run in [out / "mlasm"] + ([out / "local_only"] if compare else []):
        existing = holds_run(run)
        if existing and not overwrite:
            raise RunFolderError(f"{run}: already holds a demo's trained model ({', '.join(existing)}); replace it "
                                 f"with --overwrite, or choose another --out")


def run_demo(out: str | Path = "runs/demo", fast: bool = False, compare: bool = False,
             epochs: int | None = None, device: str | None = None, seed: int = 0, overwrite: bool = False,
             amp: bool = False, compile_scorer: bool = False) -> dict:
    """Run the main job; return the test result (also written to OUT/metrics.json). A folder that
    holds an earlier demo's models is replaced only with ``overwrite``."""
    out = Path(out)
    check_demo_folder(out, compare, overwrite)
    device = resolve_device(device)
    started = time.time()
    n_threads = torch.get_num_threads()
    threads = f", {n_threads} thread{'s' if n_threads != 1 else ''}" if device.type == "cpu" else ""
    precision = (", training in bfloat16 mixed precision" if amp and native_bfloat16(device) else "") + \
        (", training steps compiled (the first step compiles)" if compile_scorer else "")
    print(f"mlasm demo: ShapeScenes{' (fast, tiny)' if fast else ''} on {device}{threads}{precision}; output in {out}")
    splits = {name: open_split(EMBEDDED, name, fast=fast) for name in ("train", "dev", "test")}
    seconds = {"data": time.time() - started}
    print(", ".join(f"{name} {s.n_images} images / {s.n_captions} captions" for name, s in splits.items())
          + f" ({seconds['data']:.0f} s)")

    config = demo_config(fast, epochs)
    mlasm_run = _train_and_evaluate(config, splits, out / "mlasm", out, device, seed, amp, compile_scorer)
    result = mlasm_run["result"]
    seconds.update(mlasm_run["seconds"])
    drawing_started = time.time()
    test = splits["test"]
    _save(draw_training_log(read_log(out / "mlasm" / "train_log.jsonl")), out / "figures" / "training.png")
    _save(draw_level_recalls(result, title="ShapeScenes test: recall per level"), out / "figures" / "recall_per_level.png")
    _save(attention_figure(Path(mlasm_run["train"]["best"]), test), out / "figures" / "attention.png")
    seconds["figures"] = time.time() - drawing_started

    main_seconds = time.time() - started
    print()
    print(format_result(result))
    total = sum(seconds.values())  # where the demo's time went
    print("time: " + ", ".join(f"{name} {value:.0f} s ({100 * value / total:.0f} %)" for name, value in seconds.items()))
    if compare:
        local_run = _train_and_evaluate(local_only_config(config), splits, out / "local_only", out / "local_only",
                                        device, seed, amp, compile_scorer)
        bag_of_words = bag_of_words_scores(test)
        rows = {
            "MLASM (final)": result,
            "MLASM local level": result["levels"]["local"],
            "MLASM global level": result["levels"]["global"],
            "local-only model": local_run["result"],
            "bag-of-words oracle": {**retrieval_metrics(bag_of_words, test.caption_to_image),
                                    "complete": complete_positive_metrics(bag_of_words, test.positive_sets())},
            "chance": result["chance"],
        }
        comparison = {name: {k: row[k] for k in ("rsum", "i2t", "t2i", "complete") if k in row}
                      for name, row in rows.items()}
        comparison["grounding"] = {"MLASM": result.get("grounding"), "local-only": local_run["result"].get("grounding")}
        comparison["score_separation"] = {"MLASM": result["score_separation"],
                                          "local-only": local_run["result"]["score_separation"]}
        write_json(out / "comparison.json", comparison)
        print("\nside by side on the test split, standard protocol:")
        print(recall_table(rows))
        print("complete positives:")
        print(complete_table({name: row["complete"] for name, row in rows.items() if "complete" in row}))
    elapsed = time.time() - started
    write_json(out / "demo.json", {"seconds": round(elapsed, 1), "main_job_seconds": round(main_seconds, 1),
                                   "main_job_breakdown": {name: round(value, 1) for name, value in seconds.items()},
                                   "threads": torch.get_num_threads(), "device": str(device), "fast": fast, "seed": seed,
                                   "mixed_precision": mlasm_run["train"]["mixed_precision"],
                                   "compiled": mlasm_run["train"]["compiled"],
                                   "config": config.to_dict()})
    print(f"\ndone in {elapsed / 60:.1f} min: {out}/metrics.json, {out}/figures/, checkpoint {mlasm_run['train']['best']}")
    return result
