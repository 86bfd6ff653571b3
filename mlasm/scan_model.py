"""SCAN (Lee et al., ECCV 2018) as its released code scores: a checkpoint of kuanghuei/SCAN, opened as it is.

SCAN's ``train.py`` saves ``{"model": [image encoder state, text encoder state], "opt": argparse.Namespace,
"epoch", "Eiters", "best_rsum"}``; its vocabulary is a separate JSON file. Every option that changes a
score is read from ``opt`` and reproduced here; a value this module does not reproduce is refused with
a line naming the option and the value (``SCANConfig.from_options``), never scored approximately.

One SCAN model has one direction (``cross_attn``): a t2i model lets words attend to regions and pools
over words, an i2t model the reverse. Its levels are that direction and ``final`` (the same scores):
no ``local`` mix of two directions and no semantic (global) level. SCAN's published results average
the score matrices of a t2i and an i2t model (``mlasm evaluate --checkpoint T2I --checkpoint I2T``).

The scorer is MLASM's (``mlasm.model``): the same blocks of pairs, the same similarity matrix product
and the same cosines against an attended context; what differs is SCAN's choice of normalisation of
the raw similarities (``raw_feature_norm``), its pooling (``agg_func``) and its encoders. SCAN's
equations, for one image (regions v_r) and one caption (words u_l), t2i:

    s_rl  = v_r . u_l                     raw similarity
    s'_rl = norm over the words l of s_r.  (raw_feature_norm, per region r)
    a_lr  = softmax over regions r of lambda_softmax * s'_rl
    R(l)  = cos(u_l, sum_r a_lr v_r)      then agg_func over the words
i2t swaps the roles of regions and words. Masked regions (never present in SCAN's own 36-region
features) take part in nothing: neither as keys, nor as queries, nor in a normalisation.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mlasm.model import (
    EPS,
    LEAKY_SLOPE,
    MAX_BOUND_SHIFTED_LAMBDA,
    MLASM,
    CaptionEncoding,
    ImageEncoding,
    _BlockScores,
    _image_to_text,
    _pool,
    _RegionTerms,
    _region_terms,
    _similarities,
    _text_to_image,
    _word_terms,
    _WordTerms,
    l2norm,
    masked_logsumexp,
    masked_mean,
    region_context_cosines,
    word_context_cosines,
)

# The options that change a score, with every value SCAN's code accepts.
CHOICES = {
    "cross_attn": ("t2i", "i2t"),
    "agg_func": ("LogSumExp", "Mean", "Max", "Sum"),
    "raw_feature_norm": ("softmax", "l2norm", "clipped_l2norm", "l1norm", "clipped_l1norm", "clipped", "no_norm"),
    "precomp_enc_type": ("basic", "weight_norm"),
}
FLAGS = ("bi_gru", "no_imgnorm", "no_txtnorm")
SIZES = ("img_dim", "embed_size", "word_dim", "num_layers", "vocab_size")
TEMPERATURES = ("lambda_softmax", "lambda_lse")
SCORE_OPTIONS = tuple(CHOICES) + FLAGS + SIZES + TEMPERATURES
# SCAN train.py's defaults for the options that only training reads: a checkpoint written by
# write_scan_checkpoint carries them, as SCAN's own do
TRAINING_DEFAULTS = dict(data_path="./data/", data_name="precomp", vocab_path="./vocab/", margin=0.2,
                         num_epochs=30, batch_size=128, grad_clip=2.0, learning_rate=0.0002, lr_update=15,
                         workers=10, log_step=10, val_step=500, logger_name="./runs/runX/log",
                         model_name="./runs/runX/checkpoint", resume="", max_violation=False)
SCAN_OBJECTIVE = ("a SCAN model: its one direction is its final score, trained as such; it has no local mix "
                  "of two directions and no semantic level")


class SCANOptionError(ValueError):
    """An option of a SCAN checkpoint that this module does not reproduce (named, with its value)."""


@dataclass(frozen=True)
class SCANConfig:
    """The options of a SCAN checkpoint that change a score, and what the workbench asks of a model's config."""

    cross_attn: str
    agg_func: str
    raw_feature_norm: str
    precomp_enc_type: str
    bi_gru: bool
    no_imgnorm: bool
    no_txtnorm: bool
    img_dim: int
    embed_size: int
    word_dim: int
    num_layers: int
    vocab_size: int
    lambda_softmax: float
    lambda_lse: float

    # --- what the workbench reads from every model's config (as MLASMConfig's) ---
    start_end_tokens = True     # SCAN's data loader puts <start> and <end> around every caption
    global_dim = 0
    rho = 1.0
    uses_global_level = False
    levels_trained_alone = True  # the one level a SCAN model has is the score it was trained on
    objective = "scan"

    @property
    def region_dim(self) -> int:
        return self.img_dim

    @property
    def lambda_t2i(self) -> float:
        """The attention temperature of the model's direction (SCAN has one, ``lambda_softmax``)."""
        return self.lambda_softmax

    @property
    def lambda_i2t(self) -> float:
        return self.lambda_softmax

    @property
    def levels(self) -> tuple[str, ...]:
        return (self.cross_attn, "final")

    def describe_objective(self) -> str:
        return SCAN_OBJECTIVE

    def describe(self) -> str:
        """One line: SCAN's own name for the setting (its README's) and every option that scores."""
        pooling = {"LogSumExp": f"LSE, lambda_lse={self.lambda_lse:g}", "Mean": "AVG"}.get(self.agg_func,
                                                                                         self.agg_func)
        return (f"SCAN {self.cross_attn[0]}-{self.cross_attn[-1]} {pooling}, lambda_softmax="
                f"{self.lambda_softmax:g}, {self.raw_feature_norm}, {'bi-GRU' if self.bi_gru else 'GRU'} x "
                f"{self.num_layers}, {self.precomp_enc_type} image encoder, d={self.embed_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_options(cls, opt: argparse.Namespace | Mapping[str, Any], source: str = "SCAN options") -> "SCANConfig":
        """Read SCAN's ``opt``; a missing option, a value of the wrong type or one not reproduced here is a
        SCANOptionError naming ``source``, the option and the value."""
        values = vars(opt) if isinstance(opt, argparse.Namespace) else dict(opt)
        missing = [name for name in SCORE_OPTIONS if name not in values]
        if missing:
            raise SCANOptionError(f"{source}: the SCAN options lack {', '.join(missing)}; every option that changes "
                                  f"a score must be known ({', '.join(SCORE_OPTIONS)})")
        fields: dict[str, Any] = {}
        for name in SCORE_OPTIONS:  # choices, flags, sizes, then temperatures
            value = values[name]
            if name in CHOICES:
                wrong, expected = value not in CHOICES[name], f"one of {', '.join(CHOICES[name])}"
            elif name in FLAGS:
                wrong, expected = not isinstance(value, bool), "True or False"
            elif name in SIZES:
                wrong = isinstance(value, bool) or not isinstance(value, int) or value < 1
                expected = "a whole number >= 1"
            else:  # a temperature: only those the scores use must be finite and positive
                used = name == "lambda_softmax" or fields["agg_func"] == "LogSumExp"
                wrong = isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    used and not (math.isfinite(value) and value > 0))
                expected = "a finite number > 0"
            if wrong:
                raise SCANOptionError(f"{source}: SCAN option {name}={value!r} cannot be reproduced here; "
                                      f"expected {expected}")
            fields[name] = float(value) if name in TEMPERATURES else value
        return cls(**fields)


# ---------------------------------------------------------------------------------------
# SCAN's attention and pooling, on the blocks of pairs of mlasm.model's scorer

def _normalise_raw(sim: Tensor, method: str, query_dim: int, query_mask: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """SCAN's ``raw_feature_norm`` of each key's similarities across the queries (padded queries are zero
    similarities, which add nothing to a norm; the softmax leaves them out), as (values, scale): the
    normalised similarities are values x scale, the scale (one per key) None where there is none.
    Kept apart, the scale multiplies in the same pass as lambda (no full-size division)."""
    if method.startswith("clipped"):
        sim = F.leaky_relu(sim, LEAKY_SLOPE)
    if method in ("l2norm", "clipped_l2norm"):
        # 1 / (sqrt(sum) + eps) as SCAN; a key whose similarities are all zero (a padded region) has norm 0,
        # whose square root would give a NaN gradient in training: its norm is set to 0 without one
        squares = sim.square().sum(query_dim, keepdim=True)
        nonzero = squares > 0
        norms = torch.where(nonzero, squares, torch.ones_like(squares)).sqrt().masked_fill(~nonzero, 0.0)
        return sim, 1.0 / (norms + EPS)
    if method in ("l1norm", "clipped_l1norm"):
        return sim, 1.0 / (sim.abs().sum(query_dim, keepdim=True) + EPS)
    if method == "softmax":
        return torch.softmax(sim.masked_fill(~query_mask, -math.inf), dim=query_dim), None
    if method in ("clipped", "no_norm"):
        return sim, None
    raise SCANOptionError(f"SCAN option raw_feature_norm={method!r} cannot be reproduced here")


BOUNDED_NORMS = ("softmax", "l2norm", "clipped_l2norm", "l1norm", "clipped_l1norm")  # values in [-1, 1]


def scan_attention(sim: Tensor, key_dim: int, query_dim: int, key_mask: Tensor, query_mask: Tensor,
                   raw_feature_norm: str, lambda_softmax: float) -> Tensor:
    """SCAN's ``func_attention``: normalise, sharpen by lambda, softmax over the valid keys.

    The softmax is spelled out, as mlasm.model._attend's (torch's is several times slower along a
    short or non-last dimension on the CPU). Its shift, which changes no weight, is lambda where the
    normalised similarities lie in [-1, 1] (no pass to find the max, exp stays a normal float up to
    lambda = 40), else the max over the keys.
    """
    values, scale = _normalise_raw(sim, raw_feature_norm, query_dim, query_mask)
    bounded = raw_feature_norm in BOUNDED_NORMS and lambda_softmax <= MAX_BOUND_SHIFTED_LAMBDA
    key_bias = torch.full(key_mask.shape, -lambda_softmax if bounded else 0.0, dtype=sim.dtype, device=sim.device)
    key_bias.masked_fill_(~key_mask, -math.inf)                                # padded keys get no weight
    factor = lambda_softmax * scale if scale is not None else torch.tensor(lambda_softmax, dtype=sim.dtype,
                                                                           device=sim.device)
    logits = torch.addcmul(key_bias, values, factor)
    if not bounded:
        logits = logits - logits.amax(key_dim, keepdim=True)
    weights = logits.exp()
    return weights / weights.sum(key_dim, keepdim=True)


def scan_pool(cosines: Tensor, mask: Tensor, dim: int, agg_func: str, lambda_lse: float) -> Tensor:
    """SCAN's ``agg_func`` over the valid queries of each pair."""
    if agg_func == "LogSumExp":
        return masked_logsumexp(lambda_lse * cosines, mask, dim) / lambda_lse
    if agg_func == "Mean":
        return masked_mean(cosines, mask, dim)
    if agg_func == "Max":
        return cosines.masked_fill(~mask, -math.inf).amax(dim)
    if agg_func == "Sum":
        return (cosines * mask).sum(dim)
    raise SCANOptionError(f"SCAN option agg_func={agg_func!r} cannot be reproduced here")


def cross_attention_scores(regions: Tensor, region_mask: Tensor, words: Tensor, lengths: Tensor,
                           direction: str, lambda_softmax: float, pooling: str = "mean",
                           lambda_lse: float = 6.0) -> Tensor:
    """SCAN cross-attention score of every image against every caption, one direction: (N, M), with
    MLASM's attention (SCAN's default options: softmax over LeakyReLU'd similarities, L2-normalised
    across the queries).

    regions (N, R, d), region_mask (N, R) bool, words (M, L, d), lengths (M,).
    direction "t2i": words attend to regions, pooled over words; "i2t": the reverse.
    Not chunked: the (N, R, M, L) similarities must fit in memory (MLASM.score_all chunks).
    """
    region_terms, word_terms = _region_terms(regions, region_mask), _word_terms(words, lengths)
    sim = _similarities(region_terms, word_terms)
    rectified = F.leaky_relu(sim, LEAKY_SLOPE)
    if direction == "t2i":
        _, cosines = _text_to_image(sim, rectified, region_terms, word_terms, lambda_softmax)
        return _pool(cosines, word_terms.mask[None], 2, pooling, lambda_lse)
    if direction == "i2t":
        _, cosines = _image_to_text(sim, rectified, region_terms, word_terms, lambda_softmax)
        return _pool(cosines, region_terms.mask[:, :, None], 1, pooling, lambda_lse)
    raise ValueError(f"direction must be 't2i' or 'i2t', got {direction!r}")


class _WeightNormLinear(nn.Module):
    """SCAN's ``weight_norm(nn.Linear(img_dim, embed_size), dim=None)``: W = g V / ||V|| (one g for all of V).

    Its parameters carry the names torch's weight_norm gives them (fc.weight_g, fc.weight_v, fc.bias).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(()))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.xavier_uniform_(self.weight_v)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_g * self.weight_v / torch.linalg.vector_norm(self.weight_v), self.bias)


class _ImageEncoder(nn.Module):
    """SCAN's EncoderImagePrecomp / EncoderImageWeightNormPrecomp: one linear layer, then l2norm."""

    def __init__(self, config: SCANConfig):
        super().__init__()
        self.fc = (nn.Linear(config.img_dim, config.embed_size) if config.precomp_enc_type == "basic"
                   else _WeightNormLinear(config.img_dim, config.embed_size))


class _TextEncoder(nn.Module):
    """SCAN's EncoderText: word embedding, GRU (bidirectional with bi_gru, its halves averaged), l2norm."""

    def __init__(self, config: SCANConfig):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.word_dim)
        self.rnn = nn.GRU(config.word_dim, config.embed_size, config.num_layers, batch_first=True,
                          bidirectional=config.bi_gru)


class SCANModel(MLASM):
    """A SCAN model behind MLASM's interface: encoders, ``score_all``, ``explain``.

    ``score_all`` returns the levels the model has (``levels``: its direction and ``final``);
    ``explain`` fills the direction it lacks with NaN (no such attention exists).
    """

    def __init__(self, config: SCANConfig):
        nn.Module.__init__(self)  # MLASM's layers are not built: SCAN's are
        self.config = config
        self.img_enc = _ImageEncoder(config)
        self.txt_enc = _TextEncoder(config)

    @property
    def levels(self) -> tuple[str, ...]:
        return self.config.levels

    @property
    def device(self) -> torch.device:
        return self.txt_enc.embed.weight.device

    def scan_state_dict(self) -> list[dict[str, Tensor]]:
        """The weights as SCAN's ``SCAN.state_dict()``: [image encoder's, text encoder's]."""
        return [self.img_enc.state_dict(), self.txt_enc.state_dict()]

    def load_scan_state_dict(self, state: list[Mapping[str, Tensor]]) -> None:
        """SCAN's ``load_state_dict``: the image encoder takes the keys it knows (as SCAN's does), the
        text encoder all of them. A g of weight norm saved with shape (1,) (torch 0.3) is read as a scalar."""
        image = {key: value for key, value in state[0].items() if key in self.img_enc.state_dict()}
        if "fc.weight_g" in image and image["fc.weight_g"].numel() == 1:
            image["fc.weight_g"] = image["fc.weight_g"].reshape(())
        self.img_enc.load_state_dict(image)
        self.txt_enc.load_state_dict(state[1])

    # --- encoders ----------------------------------------------------------------------

    def encode_images(self, regions: Tensor, region_mask: Tensor, global_features: Optional[Tensor] = None
                      ) -> ImageEncoding:
        vectors = self.img_enc.fc(regions.to(self.txt_enc.embed.weight.dtype))
        if not self.config.no_imgnorm:
            vectors = l2norm(vectors)
        return ImageEncoding(vectors, region_mask.bool(), None)

    def encode_captions(self, tokens: Tensor, lengths: Tensor) -> CaptionEncoding:
        embedded = self.txt_enc.embed(tokens)
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.txt_enc.rnn(packed)[0], batch_first=True, total_length=tokens.shape[1])
        if self.config.bi_gru:
            forward_states, backward_states = states.chunk(2, dim=-1)
            states = (forward_states + backward_states) / 2
        if not self.config.no_txtnorm:
            states = l2norm(states)
        return CaptionEncoding(states, lengths.to(tokens.device))

    # --- the scorer: MLASM's blocks of pairs, SCAN's attention -----------------------------

    def _image_terms(self, img: ImageEncoding, gram: bool = True) -> _RegionTerms:
        return _region_terms(img.regions, img.mask, gram)

    def _caption_terms(self, cap: CaptionEncoding) -> _WordTerms:
        return _word_terms(cap.words, cap.lengths)

    def _score_block(self, regions: _RegionTerms, words: _WordTerms,
                     lambda_t2i: float, lambda_i2t: float) -> _BlockScores:
        config = self.config
        sim = _similarities(regions, words)                                        # (n, R, m, L)
        word_mask = words.mask[None]                                               # (1, m, L)
        region_mask = regions.mask[:, :, None]                                     # (n, R, 1)
        missing = sim.new_full((1, 1, 1, 1), math.nan)
        if config.cross_attn == "t2i":                                             # words attend to regions
            alpha = scan_attention(sim, key_dim=1, query_dim=3, key_mask=regions.mask[:, :, None, None],
                                   query_mask=words.mask[None, None], raw_feature_norm=config.raw_feature_norm,
                                   lambda_softmax=lambda_t2i)
            word_cosines = word_context_cosines(alpha, sim, regions, words)       # (n, m, L)
            score = scan_pool(word_cosines, word_mask, 2, config.agg_func, config.lambda_lse)
            beta, region_cosines = missing.expand_as(sim), missing[0].expand(sim.shape[:3])
        else:                                                                      # regions attend to words
            beta = scan_attention(sim, key_dim=3, query_dim=1, key_mask=words.mask[None, None],
                                  query_mask=regions.mask[:, :, None, None],
                                  raw_feature_norm=config.raw_feature_norm, lambda_softmax=lambda_i2t)
            region_cosines = region_context_cosines(beta, sim, regions, words)    # (n, R, m)
            score = scan_pool(region_cosines, region_mask, 1, config.agg_func, config.lambda_lse)
            alpha = missing.expand_as(sim)
            word_cosines = missing[0].expand(sim.shape[0], sim.shape[2], sim.shape[3])
        return _BlockScores({config.cross_attn: score, "final": score}, alpha, beta, word_cosines,
                            region_cosines, None)

    def _block_levels(self, regions: _RegionTerms, words: _WordTerms) -> dict[str, Tensor]:
        """SCAN's options have no fused loop (mlasm.fused is MLASM's attention): always its own scorer."""
        return self._score_block(regions, words, self.config.lambda_t2i, self.config.lambda_i2t).levels

    @torch.no_grad()
    def score_all(self, img: ImageEncoding, cap: CaptionEncoding, memory_budget_mb: Optional[float] = None,
                  progress: Optional[bool] = None, device=None,
                  blocks: Optional[tuple[int, int]] = None) -> dict[str, Tensor]:
        """MLASM.score_all, trimmed to the levels this model has (its direction and ``final``)."""
        scores = super().score_all(img, cap, memory_budget_mb=memory_budget_mb, progress=progress, device=device,
                                   blocks=blocks)
        return {level: scores[level] for level in self.levels}


# ---------------------------------------------------------------------------------------
# Checkpoints in SCAN's layout

def scan_model_from_state(state: Mapping[str, Any], source: str) -> SCANModel:
    """The model of a checkpoint in SCAN's layout (``mlasm.checkpoint.is_scan_checkpoint``), in eval mode."""
    config = SCANConfig.from_options(state["opt"], source)
    model = SCANModel(config)
    weights = state["model"]
    first = next((t for part in weights for t in part.values() if torch.is_tensor(t) and t.is_floating_point()), None)
    if first is not None:
        model.to(first.dtype)
    model.load_scan_state_dict(weights)
    return model.eval()


def scan_options(config: SCANConfig, **training: Any) -> argparse.Namespace:
    """An ``opt`` as SCAN's train.py makes it: every option, scoring ones from ``config``."""
    return argparse.Namespace(**{**TRAINING_DEFAULTS, **{name: getattr(config, name) for name in SCORE_OPTIONS},
                                 **training})


def write_scan_checkpoint(path: str | Path, model: SCANModel, legacy: bool = True, epoch: int = 0,
                          eiters: int = 0, best_rsum: float = 0.0, **training: Any) -> None:
    """Write ``model`` exactly in SCAN's layout (train.py's save_checkpoint), for tests and the notebooks.

    ``legacy``: torch's pre-1.6 format, as the checkpoints of SCAN's time (``torch.save(...,
    _use_new_zipfile_serialization=False)``); else a zip archive, as a rerun with a newer torch writes.
    """
    from mlasm.io import atomic_path

    state = {"epoch": epoch, "model": model.scan_state_dict(), "best_rsum": best_rsum,
             "opt": scan_options(model.config, **training), "Eiters": eiters}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f, _use_new_zipfile_serialization=not legacy)


def random_scan_model(config: SCANConfig, seed: int = 0) -> SCANModel:
    """A SCAN model with SCAN's initialisation (Xavier uniform fc, bias 0; embedding uniform +-0.1), seeded."""
    generator = torch.Generator().manual_seed(seed)
    model = SCANModel(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name == "txt_enc.embed.weight":
                parameter.uniform_(-0.1, 0.1, generator=generator)
            elif name.endswith("bias") and name.startswith("img_enc"):
                parameter.zero_()
            elif name.endswith("weight_g"):
                parameter.fill_(1.0)
            else:
                bound = math.sqrt(6.0 / sum(parameter.shape[:2])) if parameter.dim() >= 2 else 0.1
                parameter.uniform_(-bound, bound, generator=generator)
    return model.eval()
