"""A tiny SCAN trained by the project's own code, for the notebooks and tests: a checkpoint in SCAN's layout.

``train_scan`` trains a ``SCANModel`` (mlasm.scan_model) as SCAN's train.py does, in small;
``tiny_scan_checkpoint`` writes one in SCAN's own layout, cached, to open where a real
``model_best.pth.tar`` would be.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import mlasm.scan_model
from mlasm.scan_model import SCANConfig, SCANModel, random_scan_model, write_scan_checkpoint

def train_scan(model: SCANModel, split, vocab, epochs: int = 2, batch_size: int = 64, learning_rate: float = 1e-3,
               margin: float = 0.2, seed: int = 0, hardest: bool = False) -> list[float]:
    """Train ``model`` on ``split`` as SCAN's train.py does in small: Adam, gradient clipping at 2, the hinge
    loss of SCAN's ContrastiveLoss, captions in a seeded random order. ``hardest``: SCAN's max_violation;
    off by default, as a run of a few epochs ranks only with the sum over all negatives (the hardest ones
    are noise that early; docs/architecture.md, "Tests that fail when learning fails"). Returns the mean
    loss of each epoch. SCAN's own training (its schedule, sizes and data) is not the point: a model whose
    attention means something, made in seconds."""
    from mlasm.data.dataset import encode_captions, image_tensors
    from mlasm.loss import triplet_loss

    captions = encode_captions(vocab.with_boundaries(True), split.captions)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    generator = np.random.default_rng(seed)
    losses = []
    model.train()
    for _ in range(epochs):
        order, total = generator.permutation(split.n_captions), 0.0
        for start in range(0, len(order) - 1, batch_size):
            batch = order[start:start + batch_size]
            if len(batch) < 2:
                continue
            images = split.caption_to_image[batch]
            regions, mask, _ = image_tensors(split, images)
            tokens, lengths = captions.batch(batch)
            scores = model.pair_levels(model.encode_images(regions, mask), model.encode_captions(tokens, lengths))
            same_image = torch.from_numpy(images[:, None] == images[None, :])
            loss = triplet_loss(scores["final"], margin, hardest=hardest, positive_mask=same_image)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            optimizer.step()
            total += float(loss.detach())
        losses.append(total / max(1, len(order) // batch_size))
    model.eval()
    return losses


def tiny_scan_checkpoint(direction: str = "t2i", legacy: bool = True, progress: bool = False,
                         epochs: int = 3) -> tuple[Path, Path]:
    """A tiny SCAN model of SCAN's README setting for ``direction`` (bi-GRU, LogSumExp, SCAN's lambdas),
    trained on fast ShapeScenes by ``train_scan`` (the sum over negatives) and written in SCAN's layout: (checkpoint, SCAN vocabulary
    JSON). Cached, keyed by its settings and this module's code; what the notebooks open in place of a
    real ``model_best.pth.tar``."""
    import hashlib
    import json

    from mlasm.data.vocab import Vocabulary
    from mlasm.paths import cache_dir
    from mlasm.sources import EMBEDDED, open_split

    lambdas = {"t2i": dict(lambda_softmax=9.0, lambda_lse=6.0), "i2t": dict(lambda_softmax=4.0, lambda_lse=5.0)}
    settings = dict(cross_attn=direction, agg_func="LogSumExp", raw_feature_norm="clipped_l2norm",
                    precomp_enc_type="basic", bi_gru=True, no_imgnorm=False, no_txtnorm=False, embed_size=64,
                    word_dim=64, num_layers=1, **lambdas[direction])
    digest = hashlib.sha256(json.dumps([settings, epochs, legacy]).encode())
    for module in (__file__, mlasm.scan_model.__file__):  # the training and the model it trains
        digest.update(Path(module).read_bytes())
    folder = cache_dir() / f"tiny-scan-{direction}-{digest.hexdigest()[:10]}"
    checkpoint, vocab_file = folder / "model_best.pth.tar", folder / "shapescenes_precomp_vocab.json"
    if checkpoint.is_file() and vocab_file.is_file():
        return checkpoint, vocab_file
    train_split = open_split(EMBEDDED, "train", fast=True, progress=progress)
    vocab = Vocabulary.build(train_split.captions)
    folder.mkdir(parents=True, exist_ok=True)
    vocab.save(vocab_file, file_format="scan")
    config = SCANConfig(img_dim=train_split.region_dim, vocab_size=len(vocab), **settings)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = random_scan_model(config, seed=0)
        train_scan(model, train_split, vocab, epochs=epochs)
    write_scan_checkpoint(checkpoint, model, legacy=legacy, epoch=epochs, data_name="shapescenes_precomp",
                          max_violation=False, learning_rate=1e-3, num_epochs=epochs, batch_size=64)
    return checkpoint, vocab_file
