"""MLASM scoring against an obviously-correct per-pair reference written from the spec.

The reference below loops over pairs, builds every attended context as a d-dim vector and
applies every projection to it, in float64: nothing is shared with mlasm.model's fast path.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlasm.config import MLASMConfig
from mlasm.loss import triplet_loss
from mlasm.blocks import _length_chunks
from mlasm.model import MLASM, CaptionEncoding, ImageEncoding
from mlasm.scan_model import cross_attention_scores

D = 12
LEVELS = ("t2i", "i2t", "local", "global", "final")


# --- the reference (spec sections 3 and 4, one pair at a time) -------------------------

def ref_l2norm(x):
    return x / (x.norm(dim=-1, keepdim=True) + 1e-8)


def ref_attend(queries, keys, lambda_softmax):
    """queries (Q, d), keys (K, d) -> weights (Q, K), contexts (Q, d), cos(query, context) (Q,)."""
    s = F.leaky_relu(keys @ queries.T, 0.1)                      # (K, Q)
    s = s / (s.norm(dim=1, keepdim=True) + 1e-8)                 # each key across the queries
    weights = torch.softmax(lambda_softmax * s.T, dim=1)         # (Q, K) over the keys
    contexts = weights @ keys
    cosines = (queries * contexts).sum(1) / (queries.norm(dim=1) * contexts.norm(dim=1)).clamp_min(1e-8)
    return weights, contexts, cosines


def ref_pool(values, pooling, lambda_lse):
    if pooling == "mean":
        return values.mean()
    return torch.logsumexp(lambda_lse * values, 0) / lambda_lse


def ref_pair(model, regions, glob, words, lambda_t2i=None, lambda_i2t=None):
    """regions (R, d) and words (L, d), real ones only; glob (d,) h. Everything about one pair."""
    config = model.config
    lambda_t2i = config.lambda_t2i if lambda_t2i is None else lambda_t2i
    lambda_i2t = config.lambda_i2t if lambda_i2t is None else lambda_i2t
    alpha, word_contexts, word_cosines = ref_attend(words, regions, lambda_t2i)
    beta, region_contexts, region_cosines = ref_attend(regions, words, lambda_i2t)
    t2i = ref_pool(word_cosines, config.pooling, config.lambda_lse)
    i2t = ref_pool(region_cosines, config.pooling, config.lambda_lse)
    local = (t2i + i2t) / 2
    x = model.image_context_proj(word_contexts.mean(0))
    gate = torch.sigmoid(model.gate(torch.cat([glob, x])))
    image_side = ref_l2norm(gate * glob + (1 - gate) * x)
    text_side = ref_l2norm(model.text_context_proj(region_contexts.mean(0)))
    glob_score = image_side @ text_side
    final = config.rho * local + (1 - config.rho) * glob_score
    return dict(t2i=t2i, i2t=i2t, local=local, final=final, alpha=alpha, beta=beta, gate=gate,
                word_cosines=word_cosines, region_cosines=region_cosines, **{"global": glob_score})


def real_parts(img, cap, i, j):
    return img.regions[i][img.mask[i]], img.glob[i], cap.words[j, :int(cap.lengths[j])]


def ref_levels(model, img, cap):
    n, m = img.regions.shape[0], cap.words.shape[0]
    out = {level: torch.empty(n, m, dtype=torch.float64) for level in LEVELS}
    with torch.no_grad():
        for i in range(n):
            for j in range(m):
                pair = ref_pair(model, *real_parts(img, cap, i, j))
                for level in LEVELS:
                    out[level][i, j] = pair[level]
    return out


# --- fixtures ---------------------------------------------------------------------------

def make_model(**overrides):
    settings = dict(region_dim=8, global_dim=6, vocab_size=30, embed_size=D, word_dim=10)
    settings.update(overrides)
    torch.manual_seed(0)
    return MLASM(MLASMConfig(**settings)).double().eval()


def random_gallery(n_images=4, n_captions=6, n_regions=5, n_words=6, seed=0):
    """Vectors of assorted lengths; masked regions and padded words hold large garbage."""
    g = torch.Generator().manual_seed(seed)

    def vectors(*shape):
        return torch.randn(*shape, D, generator=g, dtype=torch.float64) * (0.5 + torch.rand(*shape, 1, generator=g))

    mask = torch.rand(n_images, n_regions, generator=g) < 0.7
    mask[:, 0] = True
    mask[0] = True
    regions = torch.where(mask[..., None], vectors(n_images, n_regions), 100.0 * vectors(n_images, n_regions))
    lengths = torch.randint(1, n_words + 1, (n_captions,), generator=g)
    lengths[0] = n_words
    lengths[1] = 1
    real_word = torch.arange(n_words) < lengths[:, None]
    words = torch.where(real_word[..., None], vectors(n_captions, n_words), 100.0 * vectors(n_captions, n_words))
    return ImageEncoding(regions, mask, vectors(n_images)), CaptionEncoding(words, lengths)


def as_array(x):
    return x.detach().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


def assert_close(actual, expected, atol=1e-5):
    np.testing.assert_allclose(as_array(actual), as_array(expected), atol=atol, rtol=0)


# --- agreement with the reference -------------------------------------------------------

@pytest.mark.parametrize("lambda_softmax", [7.0, 60.0])
@pytest.mark.parametrize("pooling", ["mean", "lse"])
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_cross_attention_scores_match_reference(direction, pooling, lambda_softmax):
    img, cap = random_gallery()
    lambda_lse = 5.0
    scores = cross_attention_scores(img.regions, img.mask, cap.words, cap.lengths, direction,
                                    lambda_softmax, pooling, lambda_lse)
    for i in range(scores.shape[0]):
        for j in range(scores.shape[1]):
            regions, _, words = real_parts(img, cap, i, j)
            if direction == "t2i":
                cosines = ref_attend(words, regions, lambda_softmax)[2]
            else:
                cosines = ref_attend(regions, words, lambda_softmax)[2]
            assert_close(scores[i, j], ref_pool(cosines, pooling, lambda_lse))


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_sharp_attention_stays_finite_in_float32(direction):
    img, cap = random_gallery()
    lambda_softmax = 100.0  # exp(lambda) overflows float32: the softmax must shift by the max here
    scores = cross_attention_scores(img.regions.float(), img.mask, cap.words.float(), cap.lengths, direction,
                                    lambda_softmax)
    expected = cross_attention_scores(*img[:2], *cap, direction, lambda_softmax)
    assert_close(scores, expected, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "lse"])
def test_pair_levels_and_score_all_match_reference(pooling):
    model = make_model(pooling=pooling, lambda_lse=4.0)
    img, cap = random_gallery()
    expected = ref_levels(model, img, cap)
    with torch.no_grad():
        levels = model.pair_levels(img, cap)
    all_pairs = model.score_all(img, cap)
    for level in LEVELS:
        assert_close(levels[level], expected[level])
        assert_close(all_pairs[level], expected[level])
        assert all_pairs[level].device.type == "cpu"


@pytest.mark.parametrize("lambdas", [(None, None), (2.5, 11.0)])
def test_explain_matches_reference(lambdas):
    model = make_model()
    img, cap = random_gallery()
    i, j = 2, 3
    explanation = model.explain(img, cap, image_index=i, caption_index=j,
                                lambda_t2i=lambdas[0], lambda_i2t=lambdas[1])
    with torch.no_grad():
        expected = ref_pair(model, *real_parts(img, cap, i, j), *lambdas)
    n_words, kept = int(cap.lengths[j]), img.mask[i].nonzero().squeeze(1).numpy()
    np.testing.assert_array_equal(explanation.region_indices, kept)
    assert explanation.t2i_attention.shape == (n_words, len(kept))
    assert explanation.i2t_attention.shape == (len(kept), n_words)
    assert_close(explanation.t2i_attention, expected["alpha"])
    assert_close(explanation.i2t_attention, expected["beta"])
    assert_close(explanation.t2i_attention.sum(1), np.ones(n_words))
    assert_close(explanation.word_cosines, expected["word_cosines"])
    assert_close(explanation.region_cosines, expected["region_cosines"])
    assert_close(explanation.gate, expected["gate"])
    for level in LEVELS:
        assert explanation.scores[level] == pytest.approx(float(expected[level]), abs=1e-5)
    assert explanation.lambda_t2i == (lambdas[0] or model.config.lambda_t2i)
    if lambdas == (None, None):
        all_pairs = model.score_all(img, cap)
        for level in LEVELS:
            assert explanation.scores[level] == pytest.approx(float(all_pairs[level][i, j]), abs=1e-10)


def test_gradients_match_reference():
    """The Gram and weighted-row shortcuts must also be right backwards (training uses them)."""
    model = make_model()
    img, cap = random_gallery(n_images=3, n_captions=4)
    weights = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def gradients(score_fn):
        model.zero_grad()
        leaves = [t.clone().requires_grad_() for t in (img.regions, img.glob, cap.words)]
        fast_img, fast_cap = ImageEncoding(leaves[0], img.mask, leaves[1]), CaptionEncoding(leaves[2], cap.lengths)
        (score_fn(fast_img, fast_cap) * weights).sum().backward()
        return [t.grad for t in leaves] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    def reference(img, cap):
        return torch.stack([torch.stack([ref_pair(model, *real_parts(img, cap, i, j))["final"]
                                         for j in range(4)]) for i in range(3)])

    fast = gradients(lambda i, c: model.pair_levels(i, c)["final"])
    expected = gradients(reference)
    assert len(fast) == len(expected) == 3 + 6   # the inputs, then W_x, b_x, W_g, b_g, W_t, b_t
    for actual, wanted in zip(fast, expected):
        assert_close(actual, wanted, atol=1e-8)


def test_listed_pairs_score_as_in_the_whole_block_with_their_gradients():
    """pair_levels_at (the training step's positives and hardest negatives): each listed pair's levels
    and gradients are those of its place in the whole block, masked regions and padded words included."""
    model = make_model()
    img, cap = random_gallery(n_images=4, n_captions=6, seed=7)
    images, captions = torch.tensor([0, 3, 3, 1, 2, 0, 2]), torch.tensor([5, 0, 2, 2, 4, 0, 1])
    weights = torch.linspace(-1.0, 2.0, len(images), dtype=torch.float64)

    def levels_and_gradients(score):
        model.zero_grad()
        leaves = [t.clone().requires_grad_() for t in (img.regions, img.glob, cap.words)]
        levels = score(ImageEncoding(leaves[0], img.mask, leaves[1]), CaptionEncoding(leaves[2], cap.lengths))
        sum((levels[level] * weights).sum() for level in ("t2i", "i2t", "global", "final")).backward()
        return levels, [t.grad for t in leaves] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    listed, listed_grads = levels_and_gradients(lambda i, c: model.pair_levels_at(i, c, images, captions))
    whole, whole_grads = levels_and_gradients(
        lambda i, c: {level: value[images, captions] for level, value in model.pair_levels(i, c).items()})
    for level in LEVELS:
        assert_close(listed[level], whole[level], atol=1e-12)
    assert len(listed_grads) == len(whole_grads) == 3 + 6   # the inputs, then W_x, b_x, W_g, b_g, W_t, b_t
    for actual, wanted in zip(listed_grads, whole_grads):
        assert_close(actual, wanted, atol=1e-12)


def test_training_scores_in_length_groups_equal_one_padded_block_with_their_gradients():
    """pair_levels scores a batch's captions in groups of similar length: the same values and
    gradients as one block padded to the longest caption."""
    model = make_model()
    img, cap = random_gallery(n_images=5, n_captions=9, n_words=8, seed=3)
    assert len(set(cap.lengths.tolist())) >= 4  # lengths spread over the groups

    def levels_and_gradients(groups):
        model.zero_grad()
        words = cap.words.clone().requires_grad_()
        levels = model.pair_levels(img, CaptionEncoding(words, cap.lengths), length_groups=groups)
        weights = torch.arange(1.0, 46.0, dtype=torch.float64).view(5, 9).cos()
        sum((levels[level] * weights).sum() for level in ("t2i", "i2t", "global", "final")).backward()
        return levels, [words.grad] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    grouped, grouped_grads = levels_and_gradients(3)
    whole, whole_grads = levels_and_gradients(1)
    for level in LEVELS:
        assert_close(grouped[level], whole[level], atol=1e-12)
    assert len(grouped_grads) == len(whole_grads) > 1
    for actual, wanted in zip(grouped_grads, whole_grads):
        assert_close(actual, wanted, atol=1e-10)


# --- invariances ------------------------------------------------------------------------

def test_padding_never_changes_a_score():
    model = make_model()
    img, cap = random_gallery()
    g = torch.Generator().manual_seed(1)
    padded_img = ImageEncoding(torch.cat([img.regions, 50 * torch.randn(4, 3, D, generator=g, dtype=torch.float64)], 1),
                               torch.cat([img.mask, torch.zeros(4, 3, dtype=torch.bool)], 1), img.glob)
    padded_cap = CaptionEncoding(torch.cat([cap.words, 50 * torch.randn(6, 4, D, generator=g, dtype=torch.float64)], 1),
                                 cap.lengths)
    before, after = model.score_all(img, cap), model.score_all(padded_img, padded_cap)
    for level in LEVELS:
        assert_close(after[level], before[level], atol=1e-10)
    for direction in ("t2i", "i2t"):
        assert_close(cross_attention_scores(*padded_img[:2], *padded_cap, direction, 9.0),
                     cross_attention_scores(*img[:2], *cap, direction, 9.0), atol=1e-10)


def test_a_pair_scores_the_same_alone_in_a_gallery_and_shuffled():
    model = make_model()
    img, cap = random_gallery(n_images=5, n_captions=7)
    gallery = model.score_all(img, cap)
    image_order, caption_order = torch.randperm(5), torch.randperm(7)
    shuffled = model.score_all(ImageEncoding(*(t[image_order] for t in img)),
                               CaptionEncoding(*(t[caption_order] for t in cap)))
    for level in LEVELS:
        assert_close(shuffled[level], gallery[level][image_order][:, caption_order], atol=1e-10)
    for i, j in [(0, 0), (3, 5), (4, 1)]:
        alone = model.score_all(ImageEncoding(*(t[i:i + 1] for t in img)), CaptionEncoding(*(t[j:j + 1] for t in cap)))
        for level in LEVELS:
            assert float(alone[level]) == pytest.approx(float(gallery[level][i, j]), abs=1e-10)


def test_score_all_in_many_small_blocks_equals_one_block():
    model = make_model()
    img, cap = random_gallery(n_images=5, n_captions=7)
    one_block = model.score_all(img, cap, memory_budget_mb=1024)
    one_pair_per_block = model.score_all(img, cap, memory_budget_mb=1e-6, progress=True)
    for level in LEVELS:
        assert_close(one_pair_per_block[level], one_block[level], atol=1e-10)


def test_score_all_under_bfloat16_autocast_returns_the_float32_scores_roughly():
    """Mixed precision (torch.autocast) must run and keep the matrices' dtype; bfloat16 keeps about
    three digits, which is why the project does not score in it (README, Speed)."""
    model = make_model().float()
    img, cap = random_gallery(n_images=5, n_captions=7)
    img = ImageEncoding(img.regions.float(), img.mask, img.glob.float())
    cap = CaptionEncoding(cap.words.float(), cap.lengths)
    exact = model.score_all(img, cap)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.score_all(img, cap)
    for level in LEVELS:
        assert mixed[level].dtype == torch.float32
        assert_close(mixed[level], exact[level], atol=0.05)
        assert not torch.equal(mixed[level], exact[level])  # it did run in bfloat16


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-6)])
def test_captions_of_very_different_lengths_score_as_if_each_were_alone(dtype, atol):
    """score_all takes captions shortest first and trims each block to its longest caption."""
    model = make_model().to(dtype)
    img, cap = random_gallery(n_images=5, n_captions=12, n_words=60, seed=3)
    lengths = torch.tensor([1, 60, 3, 17, 2, 45, 8, 60, 5, 30, 1, 12])
    img = ImageEncoding(*(t.to(dtype) if t.is_floating_point() else t for t in img))
    cap = CaptionEncoding(cap.words.to(dtype), lengths)
    for budget in (1024, 2e-3):  # one block, or blocks of a few captions each
        gallery = model.score_all(img, cap, memory_budget_mb=budget)
        for j, length in enumerate(lengths.tolist()):
            with torch.no_grad():
                alone = model.pair_levels(img, CaptionEncoding(cap.words[j:j + 1, :length], lengths[j:j + 1]))
            for level in LEVELS:
                assert_close(gallery[level][:, j], alone[level][:, 0], atol=atol)


def test_length_chunks_cover_every_caption_once_within_the_budget():
    lengths = torch.tensor([1, 1, 2, 3, 3, 3, 8, 20, 20, 40])
    fitting = lambda length: max(1, 24 // length)  # noqa: E731  captions of this length that fit a block
    chunks = _length_chunks(lengths, fitting)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(lengths)
    assert all(stop == start for (_, stop), (start, _) in zip(chunks, chunks[1:]))
    assert all(stop - start <= fitting(int(lengths[stop - 1])) for start, stop in chunks)
    # 1,1,2,3,3,3 (6 x 3 <= 24; adding 8 makes 7 x 8 > 24), then 8 alone (2 x 20 > 24), then one by one
    assert chunks == [(0, 6), (6, 7), (7, 8), (8, 9), (9, 10)]


# --- hand-computed cases ----------------------------------------------------------------

def test_one_region_one_word_attends_fully():
    word, region = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.6, 0.8]]])
    lengths, mask = torch.tensor([1]), torch.tensor([[True]])
    # the only region gets weight 1, so the context is the region: cos = u . v = 0.6
    assert float(cross_attention_scores(region, mask, word, lengths, "t2i", 9.0)) == pytest.approx(0.6)
    assert float(cross_attention_scores(2 * word, mask, word, lengths, "t2i", 9.0)) == pytest.approx(1.0)
    model = make_model(embed_size=2)
    explanation = model.explain(ImageEncoding(region.double(), mask, torch.zeros(1, 2, dtype=torch.float64)),
                                CaptionEncoding(word.double(), lengths))
    assert explanation.t2i_attention.tolist() == [[1.0]]
    assert explanation.i2t_attention.tolist() == [[1.0]]
    assert explanation.word_cosines[0] == pytest.approx(0.6)


def test_two_regions_two_words_by_hand():
    # words u1 = (1, 0), u2 = (0.6, 0.8); regions v1 = (1, 0), v2 = (-0.6, 0.8)
    words = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]], dtype=torch.float64)
    regions = torch.tensor([[[1.0, 0.0], [-0.6, 0.8]]], dtype=torch.float64)
    lam = 9.0
    # raw s[r][l] = v_r . u_l: [[1, 0.6], [-0.6, 0.28]]; LeakyReLU 0.1 turns -0.6 into -0.06
    s = [[1.0, 0.6], [-0.06, 0.28]]
    norms = [math.sqrt(1.0 + 0.36), math.sqrt(0.0036 + 0.0784)]          # each region across the words
    s = [[value / (norms[r] + 1e-8) for value in s[r]] for r in range(2)]
    cosines = []
    for l in range(2):
        e1, e2 = math.exp(lam * s[0][l]), math.exp(lam * s[1][l])
        w1, w2 = e1 / (e1 + e2), e2 / (e1 + e2)
        context = (w1 * 1.0 + w2 * -0.6, w2 * 0.8)
        u = words[0, l].tolist()
        cosines.append((u[0] * context[0] + u[1] * context[1]) / math.hypot(*context))
    score = cross_attention_scores(regions, torch.tensor([[True, True]]), words, torch.tensor([2]), "t2i", lam)
    assert float(score) == pytest.approx(sum(cosines) / 2, abs=1e-12)


# --- training ---------------------------------------------------------------------------

def training_batch(model, batch_size=4, n_regions=5, n_words=7):
    g = torch.Generator().manual_seed(3)
    config = model.config
    regions = torch.randn(batch_size, n_regions, config.region_dim, generator=g, dtype=torch.float64)
    mask = torch.ones(batch_size, n_regions, dtype=torch.bool)
    mask[1, 3:] = False
    glob = torch.randn(batch_size, config.global_dim, generator=g, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5, 1])
    tokens = torch.randint(4, config.vocab_size, (batch_size, n_words), generator=g)
    tokens[torch.arange(n_words) >= lengths[:, None]] = 0
    return regions, mask, glob, tokens, lengths


@pytest.mark.parametrize("settings", [dict(rho=0.8), dict(rho=0.8, bidirectional=True), dict(rho=1.0)])
def test_one_adam_step_changes_every_parameter(settings):
    model = make_model(**settings).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = triplet_loss(model(*training_batch(model)), margin=10.0)   # a large margin: every pair violates
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    optimizer.step()
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged
    if settings["rho"] < 1:
        assert {"gate.weight", "image_context_proj.weight", "text_context_proj.weight"} <= set(before)


def test_local_only_model_skips_the_global_level():
    model = make_model(rho=1.0)
    assert not hasattr(model, "gate")
    img, cap = random_gallery()
    img = img._replace(glob=None)
    scores = model.score_all(img, cap)
    assert torch.isnan(scores["global"]).all()
    assert torch.equal(scores["final"], scores["local"])
    explanation = model.explain(img, cap, 1, 2)
    assert np.isnan(explanation.gate).all() and math.isnan(explanation.scores["global"])


# --- encoders ---------------------------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [False, True])
def test_caption_encoder_ignores_padding(bidirectional):
    model = make_model(bidirectional=bidirectional)
    tokens = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    cap = model.encode_captions(tokens, torch.tensor([3, 2]))
    longer = model.encode_captions(torch.cat([tokens, torch.zeros(2, 3, dtype=torch.long)], 1), torch.tensor([3, 2]))
    alone = model.encode_captions(tokens[1:, :2], torch.tensor([2]))
    assert cap.words.shape == (2, 4, D)
    assert_close(cap.words.norm(dim=-1), [[1, 1, 1, 0], [1, 1, 0, 0]])
    assert_close(longer.words[:, :4], cap.words, atol=1e-12)
    assert_close(alone.words[0], cap.words[1, :2], atol=1e-12)


def test_image_encoder_and_word_vectors():
    model = make_model()
    regions, mask, glob, _, _ = training_batch(model)
    img = model.encode_images(regions, mask, glob)
    assert img.regions.shape == (4, 5, D) and img.glob.shape == (4, D) and img.mask.dtype == torch.bool
    assert_close(img.regions.norm(dim=-1), np.ones((4, 5)))
    vectors = torch.randn(30, 10, dtype=torch.float64)
    model.init_word_embeddings(vectors)
    assert torch.equal(model.word_embedding.weight.detach(), vectors)
    with pytest.raises(ValueError, match="do not fit"):
        model.init_word_embeddings(torch.randn(30, 11))


def test_bad_inputs_are_refused():
    model = make_model()
    img, cap = random_gallery()
    with pytest.raises(ValueError, match="at least one unmasked region"):
        model.score_all(img._replace(mask=torch.zeros_like(img.mask)), cap)
    with pytest.raises(ValueError, match="caption lengths"):
        model.score_all(img, cap._replace(lengths=torch.zeros_like(cap.lengths)))
    with pytest.raises(ValueError, match="direction"):
        cross_attention_scores(*img[:2], *cap, "both", 9.0)
    with pytest.raises(IndexError):
        model.explain(img, cap, image_index=4)


# --- config -----------------------------------------------------------------------------

def test_config_round_trip_presets_and_validation():
    config = MLASMConfig.cpu(region_dim=2048, global_dim=2048, vocab_size=100, pooling="lse")
    assert MLASMConfig.from_dict(config.to_dict()) == config
    assert MLASMConfig.from_dict({"rho": 0.5}).rho == 0.5
    paper = MLASMConfig.paper()
    assert (paper.embed_size, paper.lambda_t2i, paper.lambda_i2t, paper.rho, paper.margin) == (1024, 9.0, 4.0, 0.8, 0.2)
    assert (paper.learning_rate, paper.lr_decay_epoch, paper.epochs, paper.batch_size) == (5e-4, 10, 20, 128)
    with pytest.raises(ValueError, match="unknown MLASMConfig keys: colour, embedsize"):
        MLASMConfig.from_dict({**config.to_dict(), "embedsize": 5, "colour": 1})
    for bad in (dict(pooling="max"), dict(rho=1.5), dict(lambda_t2i=0), dict(lambda_lse=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MLASMConfig(**bad)
    with pytest.raises(ValueError, match="region_dim, vocab_size"):
        MLASM(MLASMConfig(global_dim=6, embed_size=8))
    MLASM(dataclasses.replace(MLASMConfig(rho=1.0, embed_size=8), region_dim=4, vocab_size=10))  # no global_dim needed


def test_score_blocks_cover_every_pair_once_and_score_all_puts_them_in_place():
    """score_all is score_blocks' consumer: the same numbers bit for bit; a resumed run (from_image at a band's
    first image) yields the very blocks the whole run yields from there on."""
    model = make_model()
    img, cap = random_gallery(n_images=5, n_captions=12, n_words=60, seed=3)
    cap = CaptionEncoding(cap.words, torch.tensor([1, 60, 3, 17, 2, 45, 8, 60, 5, 30, 1, 12]))
    budget = 2e-3  # blocks of a few images x a few captions
    blocks = list(model.score_blocks(img, cap, memory_budget_mb=budget))
    seen = torch.zeros(5, 12, dtype=torch.long)
    assembled = {level: torch.full((5, 12), math.nan, dtype=torch.float64) for level in LEVELS}
    for rows, columns, levels in blocks:
        seen[rows, columns] += 1
        for level, value in levels.items():
            assembled[level][rows, columns] = value
    assert (seen == 1).all() and len({rows.start for rows, _, _ in blocks}) > 1
    gallery = model.score_all(img, cap, memory_budget_mb=budget)
    for level in LEVELS:
        assert torch.equal(gallery[level], assembled[level])
    second_band = sorted({rows.start for rows, _, _ in blocks})[1]
    resumed = list(model.score_blocks(img, cap, memory_budget_mb=budget, from_image=second_band))
    later = [block for block in blocks if block[0].start >= second_band]
    assert len(resumed) == len(later)
    for (rows, columns, levels), (rows2, columns2, levels2) in zip(resumed, later):
        assert rows == rows2 and torch.equal(columns, columns2)
        assert all(torch.equal(levels[level], levels2[level]) for level in LEVELS)
    with pytest.raises(ValueError, match="first image of a band"):
        next(model.score_blocks(img, cap, memory_budget_mb=1024, from_image=1))  # one band of 5 images
