"""``mlasm first-stage``: a trained first stage (mlasm.shortlist.FirstStage) from a checkpoint, no Python needed.

The frozen model encodes the first N images of a split and their captions, ``train_first_stage``
fits a first stage to those encodings on the CPU, and ``FirstStage.save`` writes it atomically with
what it was made from (``about``). N is bounded (``--images``, DEFAULT_IMAGES) because the
encodings are held in memory: all of COCO's train split would take 16 GB for its images' region
vectors alone (113k x 36 x 1,024 float32). The images are encoded ENCODE_IMAGES at a time and each
caption's word vectors are kept without padding (``UnpaddedWords``): at COCO's sizes (36 regions,
d = 1,024, 5 captions of about 12 tokens) about 0.4 MB an image, 8 GB for 20,000 images.

Afterwards the first stage's recall (how often a query's true item is among its K candidates) is
measured on the first HELD_OUT_IMAGES images of a held-out split (dev by default), against the
model's own mean vectors (the untrained default of ``mlasm evaluate --shortlist``).
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mlasm.checkpoint import check_model_fits, load_model
from mlasm.data.dataset import RetrievalSplit, caption_tensors
from mlasm.data.errors import DataError
from mlasm.encoding import encode_split
from mlasm.io import check_output_folder
from mlasm.model import MLASM, CaptionEncoding, ImageEncoding, lengths_to_mask
from mlasm.shortlist import FirstStage, caption_vectors, image_vectors, shortlists, train_first_stage
from mlasm.sources import open_split, split_names

DEFAULT_IMAGES = 20_000      # images trained on by default: about 8 GB of encodings at COCO's sizes
ENCODE_IMAGES = 2_000        # images (with their captions) encoded at once
HELD_OUT_IMAGES = 1_000      # images of the held-out split whose recall is measured
SUGGESTED_K = 100            # the shortlist of the evaluate command printed at the end


class UnpaddedWords:
    """Every caption's word vectors without padding, read back as a padded batch: ``words[index]``
    is the (B, L, d) tensor a padded (M, L, d) one would give at every real word, zero beyond (which
    the first stage masks), so ``train_first_stage`` learns the same weights from either."""

    def __init__(self, flat: Tensor, lengths: Tensor):
        """``flat``: (sum of lengths, d) the captions' real words, caption after caption."""
        self.flat, self.lengths = flat, lengths.long()
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])
        self.shape = torch.Size((len(lengths), int(lengths.max()), flat.shape[1]))

    def __getitem__(self, index: Tensor) -> Tensor:
        index = torch.as_tensor(index, dtype=torch.long)
        position = torch.arange(self.shape[1])
        real = position[None, :] < self.lengths[index, None]                             # (B, L)
        rows = torch.where(real, self.offsets[index, None] + position[None, :], 0)
        return self.flat[rows].masked_fill(~real[..., None], 0.0)


def encode_first_images(model: MLASM, split: RetrievalSplit, vocab, n_images: int, progress: bool = False
                        ) -> tuple[ImageEncoding, CaptionEncoding, np.ndarray]:
    """The first ``n_images`` images of ``split`` and their captions encoded by the model, ENCODE_IMAGES at a
    time, into tensors on the CPU made once at their full size: images, captions (``UnpaddedWords``) and
    caption_to_image, as ``encode_split(model, split.subset(range(n_images)), vocab)`` would give them."""
    kept = np.flatnonzero(split.caption_to_image < n_images)  # their captions in split.subset's order:
    captions = kept[np.argsort(split.caption_to_image[kept], kind="stable")]  # by image, then as listed
    owner = split.caption_to_image[captions]
    described = np.unique(owner).size
    if described < 2:
        raise DataError(f"split {split.name!r}: the captions of its first {n_images:,} image{'s' * (n_images != 1)} "
                        f"describe {described}; a first stage learns from the captions of at least 2 images")
    lengths = caption_tensors(vocab, [split.captions[c] for c in captions], f"of split {split.name!r} ")[1]
    flat = torch.empty(int(lengths.sum()), model.config.embed_size)
    img, filled = None, 0
    with tqdm(total=n_images, unit="image", desc="encoding images and their captions", disable=not progress) as bar:
        for start in range(0, n_images, ENCODE_IMAGES):
            stop = min(start + ENCODE_IMAGES, n_images)
            part_img, part_cap = encode_split(model, split.subset(np.arange(start, stop)), vocab)
            if img is None:  # as the model encodes them: dtypes, and no global vector for some models
                img = ImageEncoding(*(None if t is None else t.new_empty((n_images, *t.shape[1:]), device="cpu")
                                      for t in part_img))
            for whole, part in zip(img, part_img):
                if whole is not None:
                    whole[start:stop] = part.cpu()
            words = part_cap.words[lengths_to_mask(part_cap.lengths, part_cap.words.shape[1])]
            flat[filled:filled + len(words)] = words.cpu()
            filled += len(words)
            bar.update(stop - start)
    return img, CaptionEncoding(UnpaddedWords(flat, lengths), lengths), owner


@dataclass
class FirstStageJob:
    """What ``mlasm first-stage`` was asked for."""

    checkpoint: str
    data: str
    out: str
    split: str = "train"
    epochs: int = 20
    seed: int = 0
    images: int = DEFAULT_IMAGES
    held_out: str | None = None      # None: dev, when the data has it and it is not ``split``
    device: str | None = None
    vocab: str | None = None
    overwrite: bool = False


def check_out_file(out: str, overwrite: bool) -> Path:
    """--out refused before any work: a folder, a file already there (without --overwrite), a folder that
    cannot hold it."""
    if not str(out).strip():
        raise ValueError("--out '': an empty name, expected a file (e.g. first_stage.pt)")
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {path}: is a folder, expected a file (e.g. {path / 'first_stage.pt'})")
    if path.exists() and not overwrite:
        raise ValueError(f"--out {path}: already exists; give --overwrite to replace it, or another --out")
    check_output_folder(path.parent, "--out's folder")
    return path


def train_first_stage_file(job: FirstStageJob, say=print, progress: bool = True) -> dict:
    """``mlasm first-stage``: encode, train, save; the summary (what ``about`` records, and the times)."""
    out = check_out_file(job.out, job.overwrite)
    model, vocab, _ = load_model(job.checkpoint, job.device, vocab=job.vocab)
    split = open_split(job.data, job.split, progress=progress)
    check_model_fits(model, split, str(job.checkpoint))
    n_images = min(job.images, split.n_images)
    if n_images < split.n_images:
        say(f"training on the first {n_images:,} of the {split.n_images:,} {job.split} images and their captions "
            f"(--images {job.images:,}; their encodings are held in memory)")
    started = time.perf_counter()
    img, cap, owner = encode_first_images(model, split, vocab, n_images, progress)
    encoded = time.perf_counter()
    with tqdm(total=job.epochs, unit="epoch", desc="training the first stage", disable=not progress) as bar:
        def on_epoch(epoch: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)

        stage = train_first_stage(img, cap, owner, epochs=job.epochs, seed=job.seed, on_epoch=on_epoch)
    trained = time.perf_counter()
    del img, cap
    summary = {"checkpoint": str(job.checkpoint), "data": str(job.data), "split": job.split, "epochs": job.epochs,
               "seed": job.seed, "images": n_images, "captions": int(len(owner)), "of_images": split.n_images,
               "encoding_seconds": round(encoded - started, 3), "training_seconds": round(trained - encoded, 3)}
    if job.vocab is not None:
        summary["vocab"] = str(job.vocab)
    summary["held_out"] = held_out_recall(model, stage, job, vocab, progress)
    stage.save(out, summary)
    return {**summary, "out": str(out), "bytes": out.stat().st_size}


def held_out_recall(model: MLASM, stage: FirstStage, job: FirstStageJob, vocab, progress: bool) -> dict | None:
    """Recall at K (a tenth of the gallery, at most SUGGESTED_K) on the first HELD_OUT_IMAGES images of the
    held-out split: the trained first stage's and the model's mean vectors', per direction; None without one."""
    name = job.held_out if job.held_out is not None else (
        "dev" if job.split != "dev" and "dev" in split_names(job.data) else None)
    if name is None:
        return None
    split = open_split(job.data, name, progress=progress)
    check_model_fits(model, split, str(job.checkpoint))
    if split.n_images > HELD_OUT_IMAGES:
        split = split.subset(np.arange(HELD_OUT_IMAGES))
    k = min(SUGGESTED_K, max(1, split.n_images // 10))
    img, cap = encode_split(model, split, vocab)
    found = {"mean": shortlists(image_vectors(model, img).cpu(), caption_vectors(model, cap).cpu(),
                                split.caption_to_image, k)}
    img, cap = ImageEncoding(*(None if t is None else t.cpu() for t in img)), CaptionEncoding(*(t.cpu() for t in cap))
    found["trained"] = shortlists(image_vectors(model, img, stage), caption_vectors(model, cap, stage),
                                  split.caption_to_image, k)
    return {"split": name, "images": split.n_images, "k": k,
            **{kind: {d: round(found[kind][d].first_stage_recall(), 2) for d in ("i2t", "t2i")} for kind in found}}


def describe(summary: dict) -> str:
    """The one line after ``mlasm first-stage``: the file, the times, the held-out recall, how to use it."""
    trained = (f"trained on {summary['images']:,} {summary['split']} images and {summary['captions']:,} captions "
               f"(encoding {summary['encoding_seconds']:.1f} s, training {summary['training_seconds']:.1f} s)")
    held = summary["held_out"]
    if held is None:
        recall = "no held-out split to measure its recall on (--held-out SPLIT)"
    else:
        recall = (f"recall@{held['k']} on the first {held['images']:,} {held['split']} images: i2t "
                  f"{held['trained']['i2t']:.1f} %, t2i {held['trained']['t2i']:.1f} % (the model's mean vectors: "
                  f"{held['mean']['i2t']:.1f} %, {held['mean']['t2i']:.1f} %)")
    split = "test" if "test" in split_names(summary["data"]) else "SPLIT"  # where the data has a test split
    command = ["mlasm", "evaluate", "--checkpoint", summary["checkpoint"], "--data", summary["data"], "--split",
               split, "--shortlist", str(SUGGESTED_K), "--first-stage", summary["out"]]
    if summary.get("vocab"):
        command[4:4] = ["--vocab", summary["vocab"]]
    return (f"wrote {summary['out']} ({summary['bytes'] / 2**20:.1f} MB), a first stage {trained}; {recall}; "
            f"use it with: {shlex.join(command)}")
