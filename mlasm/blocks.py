"""How MLASM.score_blocks cuts a gallery into blocks of images x captions under a memory budget.

Pure arithmetic on sizes and caption lengths: no model, no tensors but the lengths. A plan is
a number of images per block (``rows``) and runs of length-sorted captions (``chunks``), each as
wide as its longest caption allows, so that a block's pairs and its images' own terms together
take at most the budget (the terms at most half of it). The plan depends only on the gallery's
sizes, its caption lengths, the element size and the budget, so a resumed evaluation
(mlasm.score_store) finds the same blocks again. Also the cutting of per-item terms (NamedTuples
of tensors) into blocks: ``_slice``, ``_take``, ``_trim``, ``_to``.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor


def _slice(items: NamedTuple, start: int, stop: int) -> NamedTuple:
    return type(items)._make(None if t is None else t[start:stop] for t in items)


def _take(items: NamedTuple, index: Tensor) -> NamedTuple:
    # index_select, not t[index]: its gradient (index_add_) is several times faster on the CPU than
    # advanced indexing's (index_put_ with accumulation), which MLASM.pair_levels_at backpropagates
    return type(items)._make(None if t is None else t.index_select(0, index.to(t.device)) for t in items)


def _trim(words: NamedTuple, length: int) -> NamedTuple:
    """Word terms cut to their first ``length`` positions (the block's longest caption)."""
    return type(words)._make(None if t is None else
                             t[:, :length, :length] if name.endswith("gram") else t[:, :length]
                             for name, t in zip(type(words)._fields, words))


def _to(items: NamedTuple, device: torch.device) -> NamedTuple:
    return type(items)._make(None if t is None else t.to(device) for t in items)


def default_memory_budget_mb(device: torch.device | str) -> float:
    """Memory for one block of pairs in score_all. On the CPU a block that stays near the caches
    is faster: 64 MB scored 1.2x faster than 512 MB on 2 idle cores and 1.5-2x on busy ones
    (benchmarks/bench_scorer.py --budgets); a GPU needs large blocks to stay busy."""
    return 1024.0 if torch.device(device).type == "cuda" else 64.0


def _gram_fits(n_regions: int, element_size: int, budget_bytes: int) -> bool:
    """Whether one image's (R, R) Gram matrix takes at most an eighth of the block budget: it makes
    |a_l|^2 cheap for tens of regions, but an image of 10,000 regions would need 400 MB for it."""
    return element_size * n_regions * n_regions <= budget_bytes // 8


def _length_chunks(sorted_lengths: Tensor, captions_fitting: Callable[[int], int]) -> list[tuple[int, int]]:
    """Consecutive [start, stop) runs of length-sorted captions, each as wide as its longest caption allows."""
    chunks, start, n = [], 0, len(sorted_lengths)
    lengths = sorted_lengths.tolist()
    while start < n:
        stop = start + 1
        # the run's longest caption is its last; widen while the run still fits at that length
        while stop < n and stop - start < captions_fitting(lengths[stop]):
            stop += 1
        chunks.append((start, stop))
        start = stop
    return chunks


def _bytes_per_pair(n_regions: int, n_words: int, d: int, element_size: int) -> int:
    """What one pair of a block holds at the block's peak, as measured (tests/test_block_memory.py).

    With R regions and L words: in the image-to-text attention six (R, L) grids at once (the
    similarities, their LeakyReLU, the text-to-image weights, and the logits, exponentials and
    weights of the regions' softmax over the words); at the global level five grids and three
    d-vectors (the attended context, its gate and the gated image vector), the larger share when d
    outweighs R x L (few regions, wide embeddings); about two R-vectors and three L-vectors besides.
    Without the Gram matrix (many regions) the attended contexts are built, two (L, d) grids a
    pair, within the six grids when R >= 2 d / 3 (at d = 1024, wherever the Gram matrix does not fit
    a budget of 16 MB or more)."""
    grid = n_regions * n_words
    return element_size * (max(6 * grid, 5 * grid + 3 * d) + 2 * n_regions + 3 * n_words)


def _bytes_per_image(n_regions: int, d: int, element_size: int, gram: bool) -> int:
    """What one image's own terms hold beside its blocks (``MLASM._image_terms``): its vectors (a masked
    copy, where a region is masked), the context and gate rows of the global level (three (R, d) grids in
    all), the Gram matrix where it fits, the norms and mask (counted as two R-vectors), the global vector."""
    return element_size * (n_regions * ((n_regions if gram else 0) + 3 * d + 2) + d)


def _block_rows(n_images: int, n_captions: int, per_image: int, per_pair: int, budget: int) -> int:
    """Images per block so that n images' terms and their near-square block of n x n pairs take about the
    budget (n per_image + n^2 per_pair <= budget); with fewer captions than that, every caption and as many
    images as fit. Near square keeps the similarity matrix product efficient."""
    side = int((math.sqrt(per_image**2 + 4 * per_pair * budget) - per_image) / (2 * per_pair))
    if side >= n_captions:
        side = budget // (per_image + n_captions * per_pair)
    return min(n_images, max(1, side))


class BlockPlan(NamedTuple):
    rows: int                        # images per block
    gram: bool                       # whether the images' Gram matrices are kept (``_gram_fits``)
    chunks: list[tuple[int, int]]    # [start, stop) runs of the length-sorted captions


def plan_blocks(n_images: int, n_regions: int, d: int, sorted_lengths: Tensor, element_size: int,
                memory_budget_mb: float) -> BlockPlan:
    """The blocks of an all-pairs scoring: see the module's docstring."""
    n_captions = len(sorted_lengths)
    budget = int(memory_budget_mb * 2**20)
    gram = _gram_fits(n_regions, element_size, budget)
    per_image = _bytes_per_image(n_regions, d, element_size, gram)

    def per_pair(length: int) -> int:
        return _bytes_per_pair(n_regions, length, d, element_size)

    typical = int(sorted_lengths.float().mean().ceil())
    rows = _block_rows(n_images, n_captions, per_image, per_pair(typical), budget)
    # the images' own terms count inside the budget, and take at most half of it: the region count bounds
    # the block too; and one caption of the longest length fits beside them (a chunk holds at least one
    # caption, so a rare long caption would otherwise get a block sized for the typical length)
    longest = int(sorted_lengths[-1]) if n_captions else 1
    rows = max(1, min(rows, budget // (2 * per_image), budget // (per_image + per_pair(longest))))
    left = max(0, budget - rows * per_image)  # for the block's pairs
    chunks = _length_chunks(sorted_lengths, lambda length: max(1, left // (rows * per_pair(length))))
    return BlockPlan(rows, gram, chunks)


def plan_gallery(regions: Tensor, lengths: Tensor, memory_budget_mb: float) -> tuple[Tensor, BlockPlan]:
    """The captions' order (shortest first) and the plan for images ``regions`` (N, R, d) x captions of ``lengths``."""
    order = torch.argsort(lengths.cpu(), stable=True)
    n_images, n_regions, d = regions.shape
    return order, plan_blocks(n_images, n_regions, d, lengths.cpu()[order], regions.element_size(), memory_budget_mb)
