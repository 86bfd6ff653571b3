"""The fused pair loop (mlasm/fused.py, mlasm/kernels/pair_levels.c) against torch's scorer and the
float64 per-pair reference of test_model.py, and its fallbacks."""
from __future__ import annotations

import pytest
import torch

from mlasm import fused
from mlasm.model import CaptionEncoding, ImageEncoding, _similarities
from mlasm.scan_model import SCANConfig, random_scan_model
from test_model import LEVELS, assert_close, make_model, random_gallery, ref_levels

pytestmark = pytest.mark.skipif(fused.library() is None, reason="no C compiler: the fused loop is not built here")


def as_float32(img: ImageEncoding, cap: CaptionEncoding):
    return (ImageEncoding(img.regions.float(), img.mask, img.glob.float()),
            CaptionEncoding(cap.words.float(), cap.lengths))


def torch_scores(model, img, cap, monkeypatch, **kwargs):
    with monkeypatch.context() as patch:
        patch.setattr(fused, "library", lambda: None)
        return model.score_all(img, cap, **kwargs)


@pytest.mark.parametrize("settings", [
    dict(),                                              # mean pooling, rho 0.8
    dict(pooling="lse", lambda_lse=6.0),
    dict(rho=1.0),                                       # local-only: no semantic weights
    dict(lambda_t2i=55.0, lambda_i2t=45.0),              # past the bound-shifted softmax of _attend
    dict(lambda_t2i=1.0, lambda_i2t=0.5, pooling="lse", lambda_lse=20.0),
])
def test_fused_scores_equal_torch_and_the_reference(settings, monkeypatch):
    model64 = make_model(**settings)
    # lengths 1 to 40: the loop's zero-padded rows change length from pair to pair
    img64, cap64 = random_gallery(n_images=7, n_captions=11, n_regions=9, n_words=40, seed=3)
    # the local levels read only the encodings: a local-only model's are a full model's
    reference = ref_levels(make_model(**{**settings, "rho": 0.8}), img64, cap64)
    model, (img, cap) = model64.float(), as_float32(img64, cap64)
    calls = []
    local_terms = fused.local_terms
    monkeypatch.setattr(fused, "local_terms", lambda sim, *args: calls.append(sim.shape) or local_terms(sim, *args))
    # a small budget: several bands and caption runs, each trimmed to its own longest caption
    fast = model.score_all(img, cap, memory_budget_mb=0.05)
    assert len(calls) > 2 and sum(n * m for n, _, m, _ in calls) == 7 * 11  # every pair, through the loop
    assert len({length for *_, length in calls}) > 1
    one_block = model.score_all(img, cap, memory_budget_mb=1024)  # every length in one block
    eager = torch_scores(model, img, cap, monkeypatch, memory_budget_mb=0.05)
    local_only = settings.get("rho") == 1.0
    for level in LEVELS:
        if local_only and level == "global":
            assert fast[level].isnan().all()
            continue
        assert_close(fast[level], eager[level], atol=1e-5)
        assert_close(one_block[level], eager[level], atol=1e-5)
        assert_close(fast[level], reference["local" if local_only and level == "final" else level], atol=1e-5)


def test_padding_and_masked_regions_never_change_a_fused_score():
    model = make_model().float()
    img, cap = as_float32(*random_gallery(n_images=5, n_captions=9, n_regions=6, n_words=7, seed=5))
    base = model.score_all(img, cap)
    # four more padded word positions and two more masked regions, all holding garbage
    words = torch.cat([cap.words, 1e3 * torch.randn(9, 4, cap.words.shape[2])], dim=1)
    regions = torch.cat([img.regions, 1e3 * torch.randn(5, 2, img.regions.shape[2])], dim=1)
    mask = torch.cat([img.mask, torch.zeros(5, 2, dtype=torch.bool)], dim=1)
    padded = model.score_all(ImageEncoding(regions, mask, img.glob), CaptionEncoding(words, cap.lengths))
    for level in LEVELS:
        assert_close(padded[level], base[level], atol=1e-6)


def test_threads_split_the_pairs_without_changing_a_score(monkeypatch):
    model = make_model().float()
    img, cap = as_float32(*random_gallery(n_images=6, n_captions=40, n_regions=5, n_words=6, seed=7))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = model.score_all(img, cap)
        torch.set_num_threads(3)
        monkeypatch.setattr(fused, "PAIRS_PER_THREAD", 1)  # 240 pairs in three ranges
        three = model.score_all(img, cap)
    finally:
        torch.set_num_threads(threads)
    for level in LEVELS:
        assert torch.equal(one[level], three[level])  # each pair is computed alone: bit for bit


def test_a_compiler_without_openmp_gets_python_threads_and_the_same_scores(monkeypatch, tmp_path):
    """The build retried without -fopenmp (a flag this compiler refuses stands in for a compiler
    without OpenMP): the pairs and images then go to a pool of Python threads, bit for bit the same."""
    model = make_model().float()
    img, cap = as_float32(*random_gallery(n_images=6, n_captions=40, n_regions=5, n_words=6, seed=8))
    threads = torch.get_num_threads()
    monkeypatch.setattr(fused, "PAIRS_PER_THREAD", 1)
    try:
        torch.set_num_threads(3)
        with_openmp = model.score_all(img, cap)
        monkeypatch.setenv("MLASM_CACHE_DIR", str(tmp_path))
        monkeypatch.setattr(fused, "OPENMP", ("-fno-such-flag-for-openmp",))
        fused.library.cache_clear()
        without = model.score_all(img, cap)
        assert not fused.library().uses_openmp() and "no OpenMP" in fused.status()
    finally:
        torch.set_num_threads(threads)
        fused.library.cache_clear()
    for level in LEVELS:
        assert torch.equal(with_openmp[level], without[level])


def test_not_used_with_gradients_other_dtypes_or_without_gram():
    model = make_model().float()
    img, cap = as_float32(*random_gallery())
    with torch.no_grad():
        regions, words = model._image_terms(img), model._caption_terms(cap)
        sim = _similarities(regions, words)
        assert fused.usable(regions.vectors, regions.gram)
        assert not fused.usable(regions.vectors.double(), regions.gram)
        assert not fused.usable(regions.vectors, None)  # many regions: the attended vectors are built instead
        assert not fused.usable(torch.zeros(4, fused.MAX_REGIONS + 1, 12), regions.gram)  # torch sums those
        with pytest.raises(ValueError, match=r"similarities is .*bfloat16"):  # what autocast makes: refused
            fused.local_terms(sim.bfloat16(), regions, words, model.config, 0.1)
        with pytest.raises(ValueError, match=r"word Gram matrices is \(6, 5, 6\) .* expected \(6, 6, 6\)"):
            fused.local_terms(sim, regions, words._replace(gram=words.gram[:, :-1]), model.config, 0.1)
        with pytest.raises(ValueError, match="region Gram matrices is .*float64"):
            fused.local_terms(sim, regions._replace(gram=regions.gram.double()), words, model.config, 0.1)
        local = fused.local_terms(sim, regions, words, model.config, 0.1)
        with pytest.raises(ValueError, match=r"gate rows is \(4, 4, 12\) .* expected \(4, 5, 12\)"):
            fused.semantic_scores(regions._replace(gate_rows=regions.gate_rows[:, :-1]), words,
                                  local.region_weights, local.word_weights)
        with pytest.raises(ValueError, match=r"region weights is \(4, 6, 4\) .* expected \(4, 6, 5\)"):
            fused.semantic_scores(regions, words, local.region_weights[..., :-1], local.word_weights)
    with torch.enable_grad():
        assert not fused.usable(regions.vectors, regions.gram)


def test_without_a_compiler_it_says_so_once_and_scores_in_torch(monkeypatch, capsys, tmp_path):
    model = make_model().float()
    img, cap = as_float32(*random_gallery())
    expected = model.score_all(img, cap)
    monkeypatch.setenv("MLASM_CACHE_DIR", str(tmp_path))
    for compiler, says in (("/nonexistent/cc", "did not build"), ("false", "did not build")):
        monkeypatch.setenv("CC", compiler)
        fused.library.cache_clear()
        try:
            first, second = model.score_all(img, cap), model.score_all(img, cap)
            assert fused.library() is None and fused.status().startswith("torch (the fused pair loop did not build")
        finally:
            fused.library.cache_clear()
        printed = capsys.readouterr().out
        assert printed.count("mlasm: the fused pair loop") == 1 and says in printed and "scoring in torch" in printed
        for level in LEVELS:
            assert_close(first[level], expected[level], atol=1e-5)
            assert torch.equal(first[level], second[level])
    monkeypatch.delenv("CC")
    monkeypatch.setenv("MLASM_FUSED", "0")
    assert fused.library() is None and capsys.readouterr().out == ""  # turned off: nothing to say
    assert fused.status() == "torch (MLASM_FUSED=0)"
    fused.library.cache_clear()
    monkeypatch.delenv("MLASM_FUSED")
    assert fused.status().startswith("fused pair loop (") and "built in" in fused.status()  # a new cache folder
    fused.library.cache_clear()


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_a_scan_model_keeps_its_own_scorer(direction):
    """A SCAN checkpoint's options (here clipped_l2norm and max pooling) are not MLASM's attention:
    its float32 scores come from its own scorer, never from the fused loop."""
    config = SCANConfig(cross_attn=direction, agg_func="Max", raw_feature_norm="clipped_l2norm",
                        precomp_enc_type="basic", bi_gru=False, no_imgnorm=False, no_txtnorm=False, img_dim=8,
                        embed_size=12, word_dim=10, num_layers=1, vocab_size=30, lambda_softmax=9.0, lambda_lse=6.0)
    model = random_scan_model(config)
    img, cap = as_float32(*random_gallery(n_images=5, n_captions=8))
    img = img._replace(glob=None)
    scores = model.score_all(img, cap)
    with torch.no_grad():
        expected = model._score_block(model._image_terms(img), model._caption_terms(cap), 9.0, 9.0).levels
    assert scores["final"].dtype == torch.float32
    assert_close(scores["final"], expected["final"], atol=1e-6)
