"""The GPU path: scoring, a training step, training and a checkpoint's way back to the CPU, on CUDA
against the CPU. Marked ``cuda``; without a CUDA device they skip and say so.

``benchmarks/gpu_check.py`` runs them first on a GPU machine. ``MLASM_CUDA_TESTS_DEVICE=cpu`` runs
them on the CPU instead (the script's ``--rehearsal``): the comparisons are then trivial, but every
line of the tests runs, so a GPU session's few minutes are not lost to a mistake in a test.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cli_support import TINY, tiny_splits
from mlasm.checkpoint import load_model
from mlasm.config import MLASMConfig
from mlasm.data.dataset import encode_captions, image_tensors
from mlasm.data.vocab import Vocabulary
from mlasm.encoding import encode_split
from mlasm.loss import rows_and_columns_loss
from mlasm.model import MLASM, CaptionEncoding, ImageEncoding
from mlasm.train import train
from test_model import D, LEVELS, random_gallery

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def device() -> torch.device:
    forced = os.environ.get("MLASM_CUDA_TESTS_DEVICE")
    if forced:
        return torch.device(forced)
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here (torch.cuda.is_available() is False); "
                    "benchmarks/gpu_check.py runs these tests on a GPU machine")
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def full_float32():
    """TF32 would round the products to 10 bits: the comparisons below are of float32 to float32."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


def _on(device, img: ImageEncoding, cap: CaptionEncoding):
    return (ImageEncoding(img.regions.float().to(device), img.mask.to(device), img.glob.float().to(device)),
            CaptionEncoding(cap.words.float().to(device), cap.lengths.to(device)))


def _tiny_model(**overrides) -> MLASM:
    torch.manual_seed(0)
    return MLASM(MLASMConfig(region_dim=8, global_dim=6, vocab_size=30, embed_size=D, word_dim=10,
                             word_dropout=0.0, **overrides)).eval()


@pytest.mark.parametrize("pooling", ["mean", "lse"])
def test_every_level_scored_on_cuda_equals_the_cpu(device, pooling):
    model = _tiny_model(pooling=pooling)
    # lengths 1 to 30, masked regions and padded words holding garbage; a small budget makes many blocks
    img, cap = random_gallery(n_images=9, n_captions=23, n_regions=7, n_words=30, seed=11)
    on_cpu = model.score_all(*_on("cpu", img, cap), memory_budget_mb=0.05)
    on_device = model.to(device).score_all(*_on(device, img, cap), memory_budget_mb=0.05, device=device)
    for level in LEVELS:
        assert on_device[level].device.type == "cpu"  # score_all hands back CPU matrices
        np.testing.assert_allclose(on_device[level].numpy(), on_cpu[level].numpy(), atol=1e-5, rtol=0)


def test_padding_never_changes_a_score_on_cuda(device):
    model = _tiny_model().to(device)
    img, cap = _on(device, *random_gallery(n_images=4, n_captions=6, n_regions=5, n_words=6, seed=5))
    base = model.score_all(img, cap, device=device)
    words = torch.cat([cap.words, 1e3 * torch.randn(6, 3, cap.words.shape[2], device=device)], dim=1)
    regions = torch.cat([img.regions, 1e3 * torch.randn(4, 2, img.regions.shape[2], device=device)], dim=1)
    mask = torch.cat([img.mask, torch.zeros(4, 2, dtype=torch.bool, device=device)], dim=1)
    padded = model.score_all(ImageEncoding(regions, mask, img.glob), CaptionEncoding(words, cap.lengths),
                             device=device)
    for level in LEVELS:
        np.testing.assert_allclose(padded[level].numpy(), base[level].numpy(), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_splits(tmp_path_factory.mktemp("cache"), ("train", "dev"))


def test_a_training_step_on_cuda_gives_the_cpu_loss_and_gradients(device, tiny):
    split = tiny["train"]
    vocab = Vocabulary.build(split.captions)
    config = MLASMConfig.cpu(region_dim=split.region_dim, global_dim=split.global_dim, vocab_size=len(vocab),
                             embed_size=32, word_dim=16, word_dropout=0.0)
    ids = np.arange(16)
    regions, mask, global_features = image_tensors(split, split.caption_to_image[ids])
    tokens, lengths = encode_captions(vocab, [split.captions[c] for c in ids]).batch(np.arange(16))
    positives = torch.as_tensor(split.caption_to_image[ids][:, None] == split.caption_to_image[ids][None, :])

    def loss_and_gradients(where):
        torch.manual_seed(0)
        model = MLASM(config).to(where).train()
        levels = model(regions.to(where), mask.to(where), global_features.to(where), tokens.to(where),
                       lengths, all_levels=True)
        on = positives.to(where)
        loss = rows_and_columns_loss(levels["final"], levels["final"], 0, config.margin, True, on, on)
        for level in ("t2i", "i2t", "global"):
            loss = loss + config.level_weight * rows_and_columns_loss(levels[level], levels[level], 0,
                                                                      config.margin, True, on, on)
        loss.backward()
        return loss.item(), {name: p.grad.cpu() for name, p in model.named_parameters() if p.grad is not None}

    cpu_loss, cpu_gradients = loss_and_gradients(torch.device("cpu"))
    device_loss, device_gradients = loss_and_gradients(device)
    assert np.isfinite(cpu_loss) and cpu_loss > 0
    assert device_loss == pytest.approx(cpu_loss, rel=1e-4)
    assert device_gradients.keys() == cpu_gradients.keys() and len(cpu_gradients) > 10
    for name, gradient in cpu_gradients.items():
        scale = float(gradient.abs().max()) + 1e-6
        np.testing.assert_allclose(device_gradients[name].numpy(), gradient.numpy(), atol=1e-3 * scale, rtol=0,
                                   err_msg=name)


@pytest.mark.parametrize("amp", [False, True])
def test_a_model_trained_on_cuda_scores_the_same_on_the_cpu(device, tiny, tmp_path, amp):
    config = MLASMConfig.cpu(**{**TINY, "epochs": 1})
    summary = train(config, tiny["train"], tiny["dev"], tmp_path / "run", device=device, seed=0, amp=amp,
                    progress=False)
    assert np.isfinite(summary["best_rsum"])
    on_device, vocab, _ = load_model(summary["best"], device=device)
    on_cpu, _, _ = load_model(summary["best"], device="cpu")  # weights_only, map_location
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in on_cpu.parameters())
    dev = tiny["dev"]
    with torch.no_grad():
        device_scores = on_device.score_all(*encode_split(on_device, dev, vocab, progress=False), device=device)
        cpu_scores = on_cpu.score_all(*encode_split(on_cpu, dev, vocab, progress=False))
    for level in LEVELS:
        np.testing.assert_allclose(device_scores[level].numpy(), cpu_scores[level].numpy(), atol=1e-4, rtol=0)
