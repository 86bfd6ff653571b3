"""Encoding a split with a model: every image and caption once, for scoring, explaining and statistics."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from mlasm.data.dataset import RetrievalSplit, caption_tensors, image_tensors, release_read_features
from mlasm.data.vocab import Vocabulary
from mlasm.model import MLASM, CaptionEncoding, ImageEncoding, default_memory_budget_mb


@torch.no_grad()
def encode_split(model: MLASM, split: RetrievalSplit, vocab: Vocabulary, batch_size: int = 256,
                 progress: bool = False) -> tuple[ImageEncoding, CaptionEncoding]:
    """Every image and caption of ``split`` encoded on the model's device, in eval mode."""
    model.eval()
    device = model.device
    images = []
    # as many images a batch as the block budget holds: their features twice (as read, and the masked mean's
    # product when the split has no global vectors), and about three embeddings a region
    per_image = 4 * split.max_regions * (2 * split.region_dim + 3 * model.config.embed_size)
    image_batch = max(1, min(batch_size, int(default_memory_budget_mb(device) * 2**20) // per_image))
    for start in tqdm(range(0, split.n_images, image_batch), desc="encoding images", disable=not progress):
        batch = image_tensors(split, np.arange(start, min(start + image_batch, split.n_images)))
        images.append(model.encode_images(*(t.to(device) for t in batch)))
        release_read_features(split)  # the features read are copies: not kept beside the encodings
    img = ImageEncoding(torch.cat([e.regions for e in images]), torch.cat([e.mask for e in images]),
                        torch.cat([e.glob for e in images]) if images[0].glob is not None else None)

    tokens, lengths = caption_tensors(vocab, split.captions, f"of split {split.name!r} ")  # (M, L), (M,)
    words = torch.zeros(len(split.captions), tokens.shape[1], model.config.embed_size, device=device)
    for start in tqdm(range(0, len(split.captions), batch_size), desc="encoding captions", disable=not progress):
        stop = start + batch_size
        longest = int(lengths[start:stop].max())
        encoded = model.encode_captions(tokens[start:stop, :longest].to(device), lengths[start:stop].to(device))
        words[start:stop, :longest] = encoded.words
    return img, CaptionEncoding(words, lengths.to(device))
