"""``--compile``: the compiled training scorer gives eager's scores and gradients, and falls back to eager."""
import shutil

import pytest
import torch

from mlasm.compiled import CompiledOrEager, compile_training_scorer
from mlasm.config import MLASMConfig
from mlasm.model import MLASM, CaptionEncoding, ImageEncoding

D = 16


def _model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = MLASM(MLASMConfig(region_dim=8, global_dim=6, vocab_size=30, embed_size=D, word_dim=10))
    g = torch.Generator().manual_seed(seed)
    n_images, n_regions, n_captions, n_words = 6, 7, 12, 9
    mask = torch.rand(n_images, n_regions, generator=g) < 0.6  # masked regions hold large garbage
    mask[:, 0] = True
    regions = torch.where(mask[..., None], torch.randn(n_images, n_regions, D, generator=g),
                          100 * torch.randn(n_images, n_regions, D, generator=g)).requires_grad_()
    lengths = torch.randint(1, n_words + 1, (n_captions,), generator=g)
    lengths[:2] = torch.tensor([n_words, 1])
    words = torch.randn(n_captions, n_words, D, generator=g).requires_grad_()  # padded words too
    glob = torch.randn(n_images, D, generator=g).requires_grad_()
    weights = torch.randn(n_images, n_captions, generator=g)
    return model, (regions, mask, glob), (words, lengths), weights


def _levels_and_gradients(model, image, caption, weights):
    regions, mask, glob = image
    words, lengths = caption
    model.zero_grad(set_to_none=True)
    for leaf in (regions, words, glob):
        leaf.grad = None
    levels = model.pair_levels(ImageEncoding(regions, mask, glob), CaptionEncoding(words, lengths))
    sum((weights * levels[name]).sum() for name in levels).backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    gradients.update(regions=regions.grad.clone(), words=words.grad.clone(), glob=glob.grad.clone())
    return {name: value.detach().clone() for name, value in levels.items()}, gradients


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on the CPU needs a C compiler, and none is on PATH")
def test_compiled_scores_and_gradients_are_eager_ones_at_varying_lengths_and_masked_regions():
    model, image, caption, weights = _model_and_batch()
    eager_levels, eager_gradients = _levels_and_gradients(model, image, caption, weights)
    scorer = compile_training_scorer(model)
    for _ in range(2):  # the first call compiles; the second runs what was compiled
        levels, gradients = _levels_and_gradients(model, image, caption, weights)
        assert scorer.compiled_in_use, scorer.failure
        for name in eager_levels:
            torch.testing.assert_close(levels[name], eager_levels[name], rtol=1e-5, atol=1e-5, msg=name)
        assert gradients.keys() == eager_gradients.keys()
        for name in gradients:
            torch.testing.assert_close(gradients[name], eager_gradients[name], rtol=1e-4, atol=1e-5, msg=name)
    assert eager_gradients["words"][caption[1] == 1, 1:].abs().max() == 0  # padded words get no gradient


def test_a_failing_compile_falls_back_to_eager_once_with_one_line(capsys):
    calls = []

    def eager(x):
        calls.append("eager")
        return x + 1

    def broken(x):
        calls.append("compiled")
        raise RuntimeError("InductorError: no working C compiler\nmore detail")

    scorer = CompiledOrEager(eager)
    scorer.compiled = broken
    with torch.no_grad():  # without gradients (validation, evaluation): eager, the compiled path untouched
        assert scorer(torch.tensor(1.0)) == 2
    assert calls == ["eager"] and scorer.compiled_in_use
    assert scorer(torch.tensor(1.0)) == 2 and scorer(torch.tensor(2.0)) == 3
    assert calls == ["eager", "compiled", "eager", "eager"]  # tried once, then eager for good
    assert not scorer.compiled_in_use
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1
    assert "compiling the training scorer failed (RuntimeError: InductorError: no working C compiler)" in printed


def test_training_with_compile_says_what_ran(tiny_data, tmp_path, monkeypatch):
    import mlasm.train as training
    from cli_support import TINY

    made = []

    def fake_compile(model):  # the plumbing only: compiling itself is tested above
        scorer = CompiledOrEager(model._score_block)
        scorer.compiled = scorer.eager
        model._score_block = scorer
        made.append(scorer)
        return scorer

    monkeypatch.setattr(training, "compile_training_scorer", fake_compile)
    config = MLASMConfig.cpu(**{**TINY, "epochs": 1})
    summary = training.train(config, tiny_data["train"], tiny_data["dev"], tmp_path / "run", progress=False,
                             compile_scorer=True)
    assert len(made) == 1 and summary["compiled"] is True
    plain = training.train(config, tiny_data["train"], tiny_data["dev"], tmp_path / "plain", progress=False)
    assert plain["compiled"] is False and len(made) == 1
    assert summary["log"][0]["loss"] == plain["log"][0]["loss"]  # the same steps, through the wrapper
