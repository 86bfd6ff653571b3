"""The scorer's per-pair memory estimate against what a block of pairs really holds at once.

``_bytes_per_pair`` sizes every block of ``score_all`` to its memory budget. Here every tensor a
block makes is followed from its allocation to its release (a dispatch mode sees each operator's
outputs, internal copies included), and the most bytes alive at once are compared with the estimate
at normal shapes (36 and 100 regions, 5 to 60 words) and at many regions (2,000 and 10,000, where
the Gram matrix is left out), for a narrow and a paper-wide embedding.
"""
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import mlasm.blocks as blocks
from mlasm.config import MLASMConfig
from mlasm.model import MLASM, CaptionEncoding, ImageEncoding


class PeakBytes(TorchDispatchMode):
    """The most bytes of storage made inside the mode and alive at once (a storage counts until the
    last tensor on it is freed; views of tensors made before the mode are not counted)."""

    def __init__(self):
        super().__init__()
        self.holders, self.sizes, self.now, self.peak = {}, {}, 0, 0

    def _release(self, key):
        self.holders[key] -= 1
        if not self.holders[key]:
            del self.holders[key]
            self.now -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                 if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or (key in given and key not in self.holders):  # empty, or made before the mode
                continue
            if key not in self.holders:
                self.holders[key], self.sizes[key] = 0, storage.nbytes()
                self.now += storage.nbytes()
                self.peak = max(self.peak, self.now)
            self.holders[key] += 1
            weakref.finalize(tensor, self._release, key)
        return out


def _block_peak(d: int, n_regions: int, n_words: int, n_images: int = 3, n_captions: int = 4) -> int:
    torch.manual_seed(0)
    model = MLASM(MLASMConfig.cpu(embed_size=d, vocab_size=10, word_dim=8, region_dim=d, global_dim=d)).eval()
    img = ImageEncoding(F.normalize(torch.randn(n_images, n_regions, d), dim=-1),
                        torch.ones(n_images, n_regions, dtype=torch.bool), F.normalize(torch.randn(n_images, d), dim=-1))
    cap = CaptionEncoding(F.normalize(torch.randn(n_captions, n_words, d), dim=-1), torch.full((n_captions,), n_words))
    gram = blocks._gram_fits(n_regions, 4, int(blocks.default_memory_budget_mb("cpu") * 2**20))
    with torch.no_grad():
        regions, words = model._image_terms(img, gram), model._caption_terms(cap)
        with PeakBytes() as counted:
            block = model._score_block(regions, words, model.config.lambda_t2i, model.config.lambda_i2t)
            del block
    return counted.peak


@pytest.mark.parametrize("d", [32, 1024])
@pytest.mark.parametrize("n_regions, n_words", [(36, 5), (36, 12), (36, 60), (100, 30), (2000, 12)])
def test_the_estimate_covers_a_block_and_no_more_than_a_tenth_beyond(d, n_regions, n_words):
    n_images, n_captions = 3, 4
    peak = _block_peak(d, n_regions, n_words, n_images, n_captions)
    estimate = n_images * n_captions * blocks._bytes_per_pair(n_regions, n_words, d, 4)
    assert peak <= estimate <= 1.1 * peak, (peak, estimate)


def test_ten_thousand_regions_a_block_within_its_estimate():
    """The worst input of docs/bad-inputs.md (10,000 regions an image), one image x a few captions."""
    peak = _block_peak(32, 10_000, 12, n_images=1, n_captions=5)
    estimate = 5 * blocks._bytes_per_pair(10_000, 12, 32, 4)
    assert peak <= estimate <= 1.1 * peak, (peak, estimate)


def test_the_block_shapes_it_gives_score_as_one_block():
    """Another estimate gives other blocks; the scores stay those of every pair in one block, to float32
    rounding."""
    torch.manual_seed(0)
    d = 32
    model = MLASM(MLASMConfig.cpu(embed_size=d, vocab_size=10, word_dim=8, region_dim=d, global_dim=d)).eval()
    n_images, n_regions, n_captions = 12, 36, 40
    mask = torch.ones(n_images, n_regions, dtype=torch.bool)
    mask[::3, 30:] = False
    img = ImageEncoding(F.normalize(torch.randn(n_images, n_regions, d), dim=-1), mask,
                        F.normalize(torch.randn(n_images, d), dim=-1))
    lengths = torch.randint(3, 31, (n_captions,))
    real = (torch.arange(30) < lengths[:, None])[..., None]
    cap = CaptionEncoding(F.normalize(torch.randn(n_captions, 30, d), dim=-1) * real, lengths)
    one_block = model.score_all(img, cap, memory_budget_mb=1024)
    small = model.score_all(img, cap, memory_budget_mb=0.05)  # blocks of a few pairs
    for level in ("t2i", "i2t", "local", "global", "final"):
        torch.testing.assert_close(small[level], one_block[level], rtol=0, atol=1e-6)


def test_a_rare_long_caption_gets_a_block_within_the_budget_and_common_shapes_keep_theirs():
    """Images per block are chosen for the typical caption; a chunk holds at least one caption, so one
    100-word caption among short ones must not make its block several times the budget."""
    from mlasm.blocks import plan_blocks

    budget = 64 * 2**20
    lengths = torch.tensor([12] * 49 + [100])
    plan = plan_blocks(10, 10_000, 32, lengths, 4, 64)
    terms = plan.rows * 4 * 10_000 * (3 * 32 + 2)  # its images' vectors, context and gate rows, norms and mask
    for start, stop in plan.chunks:  # every block, its longest caption and its images' terms, within the budget
        pairs = plan.rows * (stop - start) * blocks._bytes_per_pair(10_000, int(lengths[stop - 1]), 32, 4)
        assert terms + pairs <= budget
    # at real shapes (36 regions, d = 1,024, captions of up to 60 words) the longest caption binds nothing
    real = torch.arange(5, 61).repeat_interleave(90)
    shaped = plan_blocks(1_000, 36, 1024, real, 4, 64)
    assert shaped.rows < budget // blocks._bytes_per_pair(36, 60, 1024, 4)


def test_ten_thousand_regions_a_band_of_blocks_and_its_image_terms_within_the_budget():
    """score_all over 8 images of 10,000 regions (two bands of images) and captions of 5 to 12 words under a
    64 MB budget: every block made inside it, with the image terms of its band (the masked vectors and the
    global level's context and gate rows, 3.8 MB an image at d = 32), the last band's terms while the next
    are made, and the caption terms and score matrices (under 0.1 MB here) stays within the budget."""
    torch.manual_seed(0)
    d, n_images, n_regions, n_captions, budget = 32, 8, 10_000, 10, 64 * 2**20
    model = MLASM(MLASMConfig.cpu(embed_size=d, vocab_size=10, word_dim=8, region_dim=d, global_dim=d)).eval()
    img = ImageEncoding(F.normalize(torch.randn(n_images, n_regions, d), dim=-1), torch.ones(
        n_images, n_regions, dtype=torch.bool), F.normalize(torch.randn(n_images, d), dim=-1))
    lengths = torch.arange(n_captions) % 8 + 5
    real = (torch.arange(12) < lengths[:, None])[..., None]
    cap = CaptionEncoding(F.normalize(torch.randn(n_captions, 12, d), dim=-1) * real, lengths)
    plan = blocks.plan_gallery(img.regions, cap.lengths, 64)[1]
    assert plan.rows < n_images and not plan.gram  # several bands, no (R, R) Gram matrix
    with PeakBytes() as counted:
        model.score_all(img, cap, memory_budget_mb=64)
    assert counted.peak <= budget, counted.peak / 2**20
