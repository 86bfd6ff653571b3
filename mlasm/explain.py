"""Why a pair scores what it scores: every level's score split into contributions of words and regions.

For one image and one caption, ``explain_scores`` returns, per level (t2i, i2t, local, global,
final), a (L, R) table ``joint`` of word x region contributions (real words and kept regions
only) and, for the semantic level, a column ``joint_whole`` (L,) for the whole-image vector h,
which belongs to no region. Everything sums to the level's score:

    score = joint.sum() + joint_whole.sum(),   words = joint.sum(1) + joint_whole,
    regions = joint.sum(0),                     whole_image = joint_whole.sum().

Notation as in the spec (sections 3-4): u_l the words, v_r the regions, alpha_lr the t2i
attention of word l over regions, beta_rl the i2t attention of region r over words,
a_l = sum_r alpha_lr v_r and b_r = sum_l beta_rl u_l the attended contexts,
R_t2i(l) = cos(u_l, a_l), R_i2t(r) = cos(v_r, b_r).

t2i, mean pooling (exact). s = (1/L) sum_l R_t2i(l), and
    R_t2i(l) = u_l . a_l / (|u_l| |a_l|) = sum_r alpha_lr (u_l . v_r) / (|u_l| |a_l|),
so joint[l, r] = alpha_lr (u_l . v_r) / (L |u_l| |a_l|). The norm |a_l| depends on every region;
it is taken at the pair's value (a region's entry is its term in the dot product).

i2t, mean pooling (exact), with the roles swapped:
    joint[l, r] = beta_rl (v_r . u_l) / (R |v_r| |b_r|).

LogSumExp pooling (either direction; exact by construction). s = (1/lam) log sum_q exp(lam R(q)).
With w = softmax(lam R) over the valid queries q, log w_q = lam R(q) - lam s, hence
    s = sum_q w_q s = sum_q w_q [R(q) + (s - R(q))]:
query q takes the share w_q of the score. Within it, its cosine R(q) splits over its keys as
under mean pooling, and its pooling term s - R(q) (what LSE adds beyond the cosine) splits over
the keys in proportion to the query's attention weights (which sum to 1).

Semantic (global) level (exact by construction). With w_r = mean_l alpha_lr and
w_l = mean_r beta_rl (each summing to 1), the gate t at the pair's value,
    image side  v = t * h + sum_r w_r (1 - t) * (W_x v_r + b_x),
    text side   q = sum_l w_l (W_t u_l + b_t),
    s_global = v . q / (|v| |q|)        (+ the model's 1e-8 in each norm),
a bilinear form, so joint[l, r] = w_l ((1 - t) * w_r (W_x v_r + b_x)) . (W_t u_l + b_t) / (|v| |q|)
and joint_whole[l] = w_l (t * h) . (W_t u_l + b_t) / (|v| |q|). The gate and the norms depend on
the regions and words too; that dependence is not apportioned (they are held at the pair's values).

local = 0.5 t2i + 0.5 i2t and final = rho local + (1 - rho) global combine the tables linearly.

What a "word" and a "region" are: a word's entries are those of its encoded state u_l, which the
GRU computed from that word and the words before it (after it too, when bidirectional), so a word
carries some of its context; a region's are those of its projected feature v_r. The split is exact
for these states, not for the raw tokens or pixels.

Padding words and masked regions never appear: the tables cover the real words and the
kept regions (``region_indices``), and neither changes any entry (tests/test_explain.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mlasm.levels import LEVELS
from mlasm.model import EPS, MLASM, CaptionEncoding, ImageEncoding, PairExplanation

SHARE_OF_DIFFERENCE = 0.8  # "these words gave 80 % of the difference"

METHODS = {
    "t2i mean": "exact: mean over words of cos(word, attended regions); a region's part is its term "
                "α·(u·v)/(|u||a|) of each word's cosine",
    "i2t mean": "exact: mean over regions of cos(region, attended words); a word's part is its term "
                "β·(v·u)/(|v||b|) of each region's cosine",
    "t2i lse": "LogSumExp over words: word l takes the share softmax(λ·R)_l of the score (exact); within it, "
               "regions split its cosine by term and its pooling part by attention",
    "i2t lse": "LogSumExp over regions: region r takes the share softmax(λ·R)_r of the score (exact); within "
               "it, words split its cosine by term and its pooling part by attention",
    "local": "½ t2i + ½ i2t (exact)",
    "global": "exact bilinear split of the gated image vector (regions and the whole-image vector h) against "
              "the text vector (words), gate and norms held at the pair's values",
    "final": "ρ local + (1 − ρ) global (exact)",
}


@dataclass
class LevelContributions:
    """One level's score of one pair as contributions of words and regions (see the module docstring)."""
    level: str
    score: float                  # the level's score as the model computes it
    joint: np.ndarray             # (L, R) word x region contributions
    joint_whole: np.ndarray       # (L,) word x whole-image vector h (zero but on the semantic level)
    method: str                   # how the split is made, one line

    @property
    def words(self) -> np.ndarray:
        """(L,) each real word's contribution."""
        return self.joint.sum(axis=1) + self.joint_whole

    @property
    def regions(self) -> np.ndarray:
        """(R,) each kept region's contribution."""
        return self.joint.sum(axis=0)

    @property
    def whole_image(self) -> float:
        """The contribution of the whole-image vector h (semantic level; 0 elsewhere)."""
        return float(self.joint_whole.sum())

    @property
    def total(self) -> float:
        """The sum of every contribution: the score, up to float rounding."""
        return float(self.joint.sum() + self.joint_whole.sum())


@dataclass
class ScoreExplanation:
    """Every level of one pair, explained. ``levels`` maps level names to LevelContributions."""
    levels: dict
    region_indices: np.ndarray    # (R,) the kept regions' positions in the image
    pair: PairExplanation         # the attention, cosines and gate they come from


def _pool_split(cosines: np.ndarray, terms: np.ndarray, attention: np.ndarray, pooling: str,
                lambda_lse: float) -> np.ndarray:
    """Split the pooled score over (query, key): ``terms[q, k]`` sum over k to ``cosines[q]``;
    ``attention[q, k]`` sum over k to 1. Returns (queries, keys) summing to the pooled score."""
    if pooling == "mean":
        return terms / len(cosines)
    if pooling == "lse":
        logits = lambda_lse * cosines
        top = logits.max()
        score = (top + np.log(np.exp(logits - top).sum())) / lambda_lse
        shares = np.exp(logits - lambda_lse * score)                       # softmax(lam R), sums to 1
        return shares[:, None] * (terms + attention * (score - cosines)[:, None])
    raise ValueError(f"pooling must be 'mean' or 'lse', got {pooling!r}")


@torch.no_grad()
def explain_scores(model: MLASM, img: ImageEncoding, cap: CaptionEncoding, image_index: int = 0,
                   caption_index: int = 0, pair: PairExplanation | None = None) -> ScoreExplanation:
    """Every level's score of (image ``image_index``, caption ``caption_index``) as word and region contributions.

    ``pair``: the model's explanation of that pair if already made (``MLASM.explain`` with the
    model's own lambdas), so it is not made again. Contributions are computed in float64 from
    the encodings; each level's entries sum to its score (the model's float32 value) to ~1e-6.
    """
    config = model.config
    if pair is None:
        pair = model.explain(img, cap, image_index, caption_index)
    if (pair.lambda_t2i, pair.lambda_i2t) != (config.lambda_t2i, config.lambda_i2t):
        raise ValueError("explain_scores needs the model's own lambdas: the pair was explained with "
                         f"lambda_t2i={pair.lambda_t2i}, lambda_i2t={pair.lambda_i2t}")
    kept = torch.as_tensor(pair.region_indices, dtype=torch.long)
    n_words = len(pair.word_cosines)
    regions = img.regions[image_index].detach().cpu().double()[kept]            # (R, d)
    words = cap.words[caption_index].detach().cpu().double()[:n_words]          # (L, d)
    alpha = torch.as_tensor(pair.t2i_attention, dtype=torch.float64)            # (L, R)
    beta = torch.as_tensor(pair.i2t_attention, dtype=torch.float64)             # (R, L)
    sim = words @ regions.T                                                     # (L, R) u_l . v_r
    word_norms, region_norms = words.norm(dim=1), regions.norm(dim=1)
    word_context = (alpha @ regions).norm(dim=1)                                # |a_l|
    region_context = (beta @ words).norm(dim=1)                                 # |b_r|
    t2i_terms = alpha * sim / (word_norms * word_context).clamp_min(EPS)[:, None]
    i2t_terms = beta * sim.T / (region_norms * region_context).clamp_min(EPS)[:, None]
    t2i_cos, i2t_cos = t2i_terms.sum(1).numpy(), i2t_terms.sum(1).numpy()

    t2i = _pool_split(t2i_cos, t2i_terms.numpy(), alpha.numpy(), config.pooling, config.lambda_lse)
    i2t = _pool_split(i2t_cos, i2t_terms.numpy(), beta.numpy(), config.pooling, config.lambda_lse).T
    zeros = np.zeros(n_words)
    joints = {"t2i": (t2i, zeros), "i2t": (i2t, zeros), "local": (0.5 * t2i + 0.5 * i2t, zeros)}
    methods = {"t2i": METHODS[f"t2i {config.pooling}"], "i2t": METHODS[f"i2t {config.pooling}"],
               "local": METHODS["local"]}

    if config.uses_global_level:
        gate = torch.as_tensor(pair.gate, dtype=torch.float64)                  # (d,)
        h = img.glob[image_index].detach().cpu().double()
        proj_x, proj_t = model.image_context_proj, model.text_context_proj
        x_rows = regions @ proj_x.weight.detach().cpu().double().T + proj_x.bias.detach().cpu().double()
        t_rows = words @ proj_t.weight.detach().cpu().double().T + proj_t.bias.detach().cpu().double()
        region_weights, word_weights = alpha.mean(0), beta.mean(0)               # w_r, w_l
        image_parts = region_weights[:, None] * (1 - gate) * x_rows             # (R, d)
        whole_part = gate * h                                                   # (d,)
        text_parts = word_weights[:, None] * t_rows                             # (L, d)
        denominator = ((image_parts.sum(0) + whole_part).norm() + EPS) * (text_parts.sum(0).norm() + EPS)
        glob = (text_parts @ image_parts.T / denominator).numpy()               # (L, R)
        glob_whole = (text_parts @ whole_part / denominator).numpy()            # (L,)
        rho = config.rho
        joints["global"] = (glob, glob_whole)
        joints["final"] = (rho * joints["local"][0] + (1 - rho) * glob, (1 - rho) * glob_whole)
        methods.update(**{"global": METHODS["global"], "final": METHODS["final"]})
    else:
        joints["final"] = joints["local"]
        methods["final"] = "the local level (a local-only model)"
    levels = {level: LevelContributions(level, pair.scores[level], *joints[level], methods[level])
              for level in LEVELS if level in joints}
    return ScoreExplanation(levels, pair.region_indices, pair)


# ---------------------------------------------------------------------------------------
# Two pairs side by side: why the model preferred the other item.

@dataclass
class Difference:
    """What made ``preferred`` score above (or below) ``truth`` on one level, item by item.

    ``items``: the names of what both pairs share (the caption's words when the two pairs share
    the caption, the image's regions when they share the image); ``deltas``: per item, its
    contribution to the preferred pair minus its contribution to the true one (they sum to
    ``difference`` when everything else is shared; see ``rest``). ``top``: the positions of the
    fewest items whose deltas make up at least ``share`` of the difference, largest first.
    """
    level: str
    kind: str                     # "words" or "regions"
    items: list
    deltas: np.ndarray
    difference: float             # preferred score - true score
    rest: float                   # what the items do not cover (the whole-image vector h when regions are shared)
    top: list
    covered: float                # the share of the difference the top items give

    def sentence(self) -> str:
        """E.g. "These three words (“red”, “circle”, “two”) gave 82 % of the final difference (+0.412 for
        the preferred item).", naming the items of ``top``."""
        if not self.difference > 0:
            return (f"The true item scores higher on the {self.level} level "
                    f"({-self.difference:.3f} ahead): no difference to explain.")
        names = ", ".join(f"“{self.items[i]}”" for i in self.top)
        unit = self.kind if len(self.top) != 1 else self.kind[:-1]
        back = f"; the other {self.kind} took some back" if self.covered > 1.005 else ""
        count = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}.get(len(self.top), str(len(self.top)))
        these = f"One {unit}" if len(self.top) == 1 else f"These {count} {unit}"
        return (f"{these} ({names}) gave {100 * self.covered:.0f} % of the {self.level} difference "
                f"(+{self.difference:.3f} for the preferred item{back}).")


def compare_contributions(truth: LevelContributions, preferred: LevelContributions, kind: str,
                          items: list, share: float = SHARE_OF_DIFFERENCE) -> Difference:
    """Item-by-item difference of one level between the true pair and the pair the model preferred.

    ``kind`` "words": the two pairs share the caption (a caption query), ``items`` its words;
    "regions": they share the image (an image query), ``items`` the names of its kept regions.
    """
    if truth.level != preferred.level:
        raise ValueError(f"cannot compare the {truth.level} level with the {preferred.level} level")
    if kind == "words":
        deltas, rest = preferred.words - truth.words, 0.0
    elif kind == "regions":
        deltas, rest = preferred.regions - truth.regions, preferred.whole_image - truth.whole_image
    else:
        raise ValueError(f"kind must be 'words' or 'regions', got {kind!r}")
    if len(items) != len(deltas):
        raise ValueError(f"{len(items)} names for {len(deltas)} {kind}")
    difference = preferred.score - truth.score
    top, covered = [], 0.0
    if difference > 0:
        running = 0.0
        for i in np.argsort(-deltas, kind="stable"):
            if deltas[i] <= 0:
                break
            top.append(int(i))
            running += float(deltas[i])
            if running >= share * difference:
                break
        covered = running / difference
    return Difference(truth.level, kind, list(items), deltas, float(difference), float(rest), top, covered)


# ---------------------------------------------------------------------------------------
# What to show first: the model working, then one failure to explain.

def _own_and_best_other(scores: np.ndarray, caption_to_image: np.ndarray, positives) -> tuple[np.ndarray, ...]:
    """Per caption: its own image's score, the best score of an image it is not true of, and that image."""
    scores = np.asarray(scores, dtype=np.float64)
    n_images, n_captions = scores.shape
    columns = np.arange(n_captions)
    own = scores[caption_to_image, columns]
    others = scores.copy()
    if positives is not None:
        others[positives.dense()] = -np.inf          # (N, M) True where the caption is true of the image
    others[caption_to_image, columns] = -np.inf
    best_other = others.argmax(axis=0)
    return own, others[best_other, columns], best_other


def showcase_pairs(scores: np.ndarray, caption_to_image: np.ndarray, positives=None, count: int = 3,
                   unique: bool = True) -> list[int]:
    """Captions to show a newcomer first: ones the model gets right, by the clearest margin.

    ``scores`` (N, M) final scores, ``caption_to_image`` (M,), ``positives`` the split's
    PositiveSets (or None: one image per caption). A caption qualifies when its own image scores
    above every image it is not true of and, with ``unique``, it is true of its own image alone
    (so the picture its text promises is the one found). Returns up to ``count`` caption indices,
    the largest margin (own score minus the best false image's) first.
    """
    caption_to_image = np.asarray(caption_to_image)
    own, best_other, _ = _own_and_best_other(scores, caption_to_image, positives)
    margin = own - best_other
    good = margin > 0
    if unique and positives is not None:
        good &= positives.sizes() == 1
    order = np.argsort(-np.where(good, margin, -np.inf), kind="stable")
    return [int(c) for c in order[:count] if good[c]]


def showcase_failure(scores: np.ndarray, caption_to_image: np.ndarray, positives=None) -> tuple[int, int] | None:
    """A failure worth explaining: (caption, the false image the model put above every true one), or None.

    Among the captions whose best-scored image is one they are not true of, the one whose own
    image comes closest (a near miss, where a few words tip the balance) is chosen, ties going to
    the lowest caption index.
    """
    caption_to_image = np.asarray(caption_to_image)
    own, best_other, other = _own_and_best_other(scores, caption_to_image, positives)
    best_true = own
    if positives is not None:
        truth = positives.dense()
        best_true = np.where(truth, np.asarray(scores, dtype=np.float64), -np.inf).max(axis=0)
    gap = best_other - best_true
    failed = np.flatnonzero(gap > 0)
    if not len(failed):
        return None
    caption = int(failed[np.argmin(gap[failed])])  # argmin takes the first of equal gaps
    return caption, int(other[caption])
