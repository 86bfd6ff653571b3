"""A SCAN checkpoint scores every pair as SCAN's similarity function does, for every option value.

The reference below is written from SCAN's equations (Lee et al., ECCV 2018, section 3, and the
options of its released train.py), one pair at a time in float64 NumPy, on encodings made by torch's
own layers (nn.Linear or torch's weight_norm, nn.Embedding, nn.GRU run on each caption alone, without
padding). It shares no code with mlasm.scan_model: the checkpoint is written from those layers'
state dicts in SCAN's layout and read back by mlasm.checkpoint.load_model.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mlasm.checkpoint import load_model
from mlasm.data.vocab import SPECIAL_TOKENS, Vocabulary
from mlasm.model import ImageEncoding

VOCAB = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(9)]
N_IMAGES, N_REGIONS, IMG_DIM, WORD_DIM, EMBED = 3, 5, 7, 6, 4
CAPTIONS = [[1, 4, 5, 2], [1, 6, 7, 8, 9, 10, 2], [1, 11, 2], [1, 5, 5, 12, 3, 2]]  # <start> ... <end>
DEFAULTS = dict(cross_attn="t2i", agg_func="LogSumExp", raw_feature_norm="clipped_l2norm", precomp_enc_type="basic",
                bi_gru=False, no_imgnorm=False, no_txtnorm=False, num_layers=1, lambda_softmax=9.0, lambda_lse=6.0)
TOLERANCE = 1e-6


# ------------------------------------------------------------------ the reference, from the equations

def _l2norm(x):
    return x / (np.sqrt((x ** 2).sum(-1, keepdims=True)) + 1e-8)


def _raw_norm(s, method):
    """Each key's raw similarities s[key, query], normalised across the queries."""
    if method.startswith("clipped"):
        s = np.where(s > 0, s, 0.1 * s)
    if method.endswith("l2norm"):
        return s / (np.sqrt((s ** 2).sum(1, keepdims=True)) + 1e-8)
    if method.endswith("l1norm"):
        return s / (np.abs(s).sum(1, keepdims=True) + 1e-8)
    if method == "softmax":
        e = np.exp(s - s.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    assert method in ("clipped", "no_norm")
    return s


def _cosines_of_queries(queries, keys, opt):
    """cos(q, sum_k a_qk key_k) for every query q, a_q. = softmax_k(lambda * normalised s[k, q])."""
    s = keys @ queries.T                                                     # (keys, queries)
    logits = opt["lambda_softmax"] * _raw_norm(s, opt["raw_feature_norm"])
    cosines = []
    for q in range(queries.shape[0]):
        weights = np.exp(logits[:, q] - logits[:, q].max())
        weights /= weights.sum()
        context = weights @ keys
        cosines.append(queries[q] @ context / max(np.linalg.norm(queries[q]) * np.linalg.norm(context), 1e-8))
    return np.array(cosines)


def _aggregate(values, opt):
    if opt["agg_func"] == "LogSumExp":
        return np.log(np.exp(opt["lambda_lse"] * values).sum()) / opt["lambda_lse"]
    return {"Mean": np.mean, "Max": np.max, "Sum": np.sum}[opt["agg_func"]](values)


def reference_score(regions, words, opt):
    """SCAN's similarity of one image (regions, R x d) and one caption (words, L x d)."""
    if opt["cross_attn"] == "t2i":                                           # words attend to regions
        return _aggregate(_cosines_of_queries(words, regions, opt), opt)
    return _aggregate(_cosines_of_queries(regions, words, opt), opt)        # regions attend to words


# ------------------------------------------------------------------ SCAN's encoders from torch's layers

def scan_layers(opt, seed=0):
    torch.manual_seed(seed)
    fc = nn.Linear(IMG_DIM, EMBED)
    if opt["precomp_enc_type"] == "weight_norm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            fc = torch.nn.utils.weight_norm(fc, dim=None)                   # SCAN's EncoderImageWeightNormPrecomp
            with torch.no_grad():
                fc.weight_g.fill_(1.7)
    embed = nn.Embedding(len(VOCAB), WORD_DIM)
    rnn = nn.GRU(WORD_DIM, EMBED, opt["num_layers"], batch_first=True, bidirectional=opt["bi_gru"])
    return fc.double(), embed.double(), rnn.double()


def reference_encodings(layers, regions, opt):
    fc, embed, rnn = layers
    with torch.no_grad():
        images = fc(torch.from_numpy(regions)).numpy()
        if not opt["no_imgnorm"]:
            images = _l2norm(images)
        captions = []
        for ids in CAPTIONS:                                                 # one caption alone: no padding
            out = rnn(embed(torch.tensor([ids])))[0][0].numpy()
            if opt["bi_gru"]:
                out = (out[:, :EMBED] + out[:, EMBED:]) / 2
            captions.append(out if opt["no_txtnorm"] else _l2norm(out))
    return images, captions


def write_scan_layout(path, layers, opt):
    fc, embed, rnn = layers
    image_state = {f"fc.{k}": v for k, v in fc.state_dict().items()}
    text_state = {**{f"embed.{k}": v for k, v in embed.state_dict().items()},
                  **{f"rnn.{k}": v for k, v in rnn.state_dict().items()}}
    options = argparse.Namespace(**opt, img_dim=IMG_DIM, embed_size=EMBED, word_dim=WORD_DIM, vocab_size=len(VOCAB),
                                 data_name="f30k_precomp", margin=0.2, max_violation=True, grad_clip=2.0)
    torch.save({"model": [image_state, text_state], "opt": options, "epoch": 1, "Eiters": 10, "best_rsum": 0.0},
               path, _use_new_zipfile_serialization=False)


def scores_both_ways(tmp_path, **options):
    """(model's (N, M) scores, reference (N, M), the model, its encodings) for one setting."""
    opt = {**DEFAULTS, **options}
    layers = scan_layers(opt)
    rng = np.random.default_rng(1)
    regions = rng.normal(size=(N_IMAGES, N_REGIONS, IMG_DIM))
    path, vocab_path = tmp_path / "model_best.pth.tar", tmp_path / "vocab.json"
    write_scan_layout(path, layers, opt)
    Vocabulary(VOCAB).save(vocab_path, file_format="scan")
    model, _, _ = load_model(path, "cpu", vocab=vocab_path)
    lengths = torch.tensor([len(c) for c in CAPTIONS])
    tokens = torch.zeros(len(CAPTIONS), int(lengths.max()), dtype=torch.long)
    for i, ids in enumerate(CAPTIONS):
        tokens[i, :len(ids)] = torch.tensor(ids)
    with torch.no_grad():
        img = model.encode_images(torch.from_numpy(regions), torch.ones(N_IMAGES, N_REGIONS, dtype=torch.bool))
        cap = model.encode_captions(tokens, lengths)
    scores = model.score_all(img, cap, progress=False)
    images, captions = reference_encodings(layers, regions, opt)
    reference = np.array([[reference_score(images[i], captions[c], opt) for c in range(len(CAPTIONS))]
                          for i in range(N_IMAGES)])
    return scores, reference, model, (img, cap)


def assert_scores_as_scan(tmp_path, **options):
    scores, reference, model, (img, cap) = scores_both_ways(tmp_path, **options)
    direction = {**DEFAULTS, **options}["cross_attn"]
    assert set(scores) == {direction, "final"}                              # the levels it has, no others
    assert scores["final"].dtype == torch.float64
    np.testing.assert_allclose(scores["final"].numpy(), reference, rtol=0, atol=TOLERANCE)
    assert torch.equal(scores[direction], scores["final"])
    explained = model.explain(img, cap, 2, 1)
    assert abs(explained.scores["final"] - reference[2, 1]) < TOLERANCE
    return scores, reference


# ------------------------------------------------------------------ one test per option value

OPTION_VALUES = [("agg_func", v) for v in ("LogSumExp", "Mean", "Max", "Sum")] + \
    [("raw_feature_norm", v) for v in ("softmax", "l2norm", "clipped_l2norm", "l1norm", "clipped_l1norm", "clipped",
                                       "no_norm")] + \
    [("precomp_enc_type", v) for v in ("basic", "weight_norm")] + \
    [(flag, v) for flag in ("bi_gru", "no_imgnorm", "no_txtnorm") for v in (False, True)] + \
    [("num_layers", 1), ("num_layers", 2), ("lambda_softmax", 4.0), ("lambda_softmax", 20.0),
     ("lambda_lse", 5.0), ("lambda_lse", 20.0)]


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("option, value", OPTION_VALUES, ids=[f"{o}={v}" for o, v in OPTION_VALUES])
def test_every_option_value_scores_as_scan(tmp_path, option, value, direction):
    assert_scores_as_scan(tmp_path, cross_attn=direction, **{option: value})


# ------------------------------------------------------------------ SCAN's README settings

README_SETTINGS = {  # SCAN's README, "Arguments used to train Flickr30K / MS-COCO models" (scoring options)
    "f30k t-i LSE": dict(cross_attn="t2i", agg_func="LogSumExp", lambda_lse=6.0, lambda_softmax=9.0),
    "f30k t-i AVG": dict(cross_attn="t2i", agg_func="Mean", lambda_softmax=9.0),
    "f30k i-t LSE": dict(cross_attn="i2t", agg_func="LogSumExp", lambda_lse=5.0, lambda_softmax=4.0),
    "f30k i-t AVG": dict(cross_attn="i2t", agg_func="Mean", lambda_softmax=4.0),
    "coco t-i LSE": dict(cross_attn="t2i", agg_func="LogSumExp", lambda_lse=6.0, lambda_softmax=9.0),
    "coco t-i AVG": dict(cross_attn="t2i", agg_func="Mean", lambda_softmax=9.0),
    "coco i-t LSE": dict(cross_attn="i2t", agg_func="LogSumExp", lambda_lse=20.0, lambda_softmax=4.0),
    "coco i-t AVG": dict(cross_attn="i2t", agg_func="Mean", lambda_softmax=4.0),
}


@pytest.mark.parametrize("setting", list(README_SETTINGS))
def test_scan_readme_settings_score_as_scan(tmp_path, setting):
    # every README row trains with --bi_gru and the default raw_feature_norm (clipped_l2norm)
    assert_scores_as_scan(tmp_path, bi_gru=True, raw_feature_norm="clipped_l2norm", **README_SETTINGS[setting])


def test_the_reference_is_not_blind_to_the_options(tmp_path):
    """The options change the scores (else the tests above would prove little)."""
    base, _ = assert_scores_as_scan(tmp_path)
    for options in (dict(cross_attn="i2t"), dict(agg_func="Mean"), dict(raw_feature_norm="softmax"),
                    dict(bi_gru=True), dict(lambda_softmax=4.0)):
        other, _ = assert_scores_as_scan(tmp_path, **options)
        assert np.abs(other["final"].numpy() - base["final"].numpy()).max() > 1e-3, options


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_a_masked_region_takes_part_in_nothing(tmp_path, direction):
    """SCAN's features have no padding; where a split has some, a masked region scores as an absent one."""
    _, _, model, (img, cap) = scores_both_ways(tmp_path, cross_attn=direction, raw_feature_norm="softmax")
    mask = torch.ones(N_IMAGES, N_REGIONS, dtype=torch.bool)
    mask[0, 3:] = False
    masked = model.score_all(ImageEncoding(img.regions, mask, None), cap, progress=False)["final"][0]
    cut = model.score_all(ImageEncoding(img.regions[:1, :3], mask[:1, :3], None), cap, progress=False)["final"][0]
    np.testing.assert_allclose(masked.numpy(), cut.numpy(), rtol=0, atol=1e-12)


def test_explain_shows_only_the_direction_the_model_has(tmp_path):
    _, _, model, (img, cap) = scores_both_ways(tmp_path, cross_attn="t2i")
    explained = model.explain(img, cap, 0, 1)
    assert explained.t2i_attention.shape == (N_REGIONS, len(CAPTIONS[1]))[::-1]
    np.testing.assert_allclose(explained.t2i_attention.sum(1), 1.0)
    assert np.isnan(explained.i2t_attention).all() and np.isnan(explained.region_cosines).all()
    assert set(explained.scores) == {"t2i", "final"}
