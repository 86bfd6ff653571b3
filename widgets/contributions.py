"""Score explanations as HTML: which words and regions push each level's score up or down.

The numbers come from ``mlasm.explain`` (through ``WorkbenchSession.contributions``); this
module only lays them out: words in a row, each shaded green when it raises the score and
red when it lowers it (by its share of the largest), its contribution under it; the regions
that matter most; for two pairs, their contributions side by side and the sentence that says
which few items made the difference.
"""
from __future__ import annotations

import html

import numpy as np

from mlasm.explain import Difference, LevelContributions, compare_contributions
from mlasm.levels import LEVEL_COLOURS
from widgets.drawing import region_names
from mlasm.session import CaptionRef, WorkbenchSession

UP, DOWN = (44, 160, 44), (214, 39, 40)   # green raises the score, red lowers it
TOP_REGIONS = 3


def signed_items_html(items: list[str], values: np.ndarray, scale: float | None = None) -> str:
    """Items in a row, green for a positive value and red for a negative one, shaded by |value| / ``scale``."""
    values = np.asarray(values, dtype=float)
    scale = scale if scale else float(np.abs(values).max()) if values.size and np.abs(values).max() > 0 else 1.0
    spans = []
    for item, value in zip(items, values):
        red, green, blue = UP if value >= 0 else DOWN
        strength = min(1.0, abs(value) / scale)
        spans.append(
            f"<span class='mlasm-contribution' title='{html.escape(item)}: {value:+.4f}' style='background:"
            f"rgba({red},{green},{blue},{0.06 + 0.6 * strength:.2f});padding:2px 4px;margin:1px;border-radius:3px;"
            f"display:inline-block;text-align:center;line-height:1.2'>{html.escape(item)}"
            f"<br><span style='font-size:10px;color:#333'>{value:+.3f}</span></span>")
    return "".join(spans)


def _top_regions(parts: LevelContributions, names: list[str]) -> tuple[list[str], np.ndarray]:
    order = np.argsort(-np.abs(parts.regions), kind="stable")[:TOP_REGIONS]
    items, values = [names[r] for r in order], parts.regions[order]
    if parts.whole_image != 0.0:
        items, values = items + ["whole image h"], np.append(values, parts.whole_image)
    return items, values


NOT_SPLIT_HTML = ("<div style='color:#555;margin-top:8px'>Contributions of words and regions are worked out "
                  "for MLASM's levels; this SCAN model's scores are not split into them.</div>")


def level_contributions_html(session: WorkbenchSession, image: int, caption: CaptionRef) -> str:
    """Every level of the pair: its score, each word's contribution and the regions that count most."""
    if not session.explains_scores:
        return NOT_SPLIT_HTML
    explained = session.contributions(image, caption)
    words = session.tokens(caption)
    names = region_names(session, image, explained.region_indices)
    rows, methods = [], []
    for level, parts in explained.levels.items():
        colour = LEVEL_COLOURS.get(level, "#333")
        items, values = _top_regions(parts, names)
        rows.append(
            f"<tr><td style='color:{colour};font-weight:bold;vertical-align:top' title='{html.escape(parts.method)}'>"
            f"{level}</td><td style='text-align:right;vertical-align:top'>{parts.score:.3f}</td>"
            f"<td>{signed_items_html(words, parts.words)}</td><td>{signed_items_html(items, values)}</td></tr>")
        methods.append(f"<li><b>{level}</b>: {html.escape(parts.method)}</li>")
    return ("<div style='margin-top:8px;font-weight:bold'>Why these scores: each word's and region's "
            "contribution (green raises the score, red lowers it; each row sums to the score)</div>"
            "<table class='mlasm-contributions' style='border-spacing:10px 3px;margin-left:-10px'>"
            "<tr><th style='text-align:left'>level</th><th>score</th><th style='text-align:left'>words</th>"
            f"<th style='text-align:left'>regions (the {TOP_REGIONS} largest)</th></tr>" + "".join(rows) +
            "</table><details style='color:#555;font-size:12px'><summary>how each level is split</summary><ul>"
            + "".join(methods) + "</ul></details>")


def pair_difference(session: WorkbenchSession, truth: tuple[int, int], preferred: tuple[int, int],
                    level: str) -> Difference:
    """The level's difference between the true pair and the preferred one, item by item: by word when
    they share the caption (a caption query), by region when they share the image (an image query)."""
    true_parts = session.contributions(*truth).levels[level]
    preferred_parts = session.contributions(*preferred).levels[level]
    if truth[1] == preferred[1]:
        return compare_contributions(true_parts, preferred_parts, "words", session.tokens(truth[1]))
    if truth[0] != preferred[0]:
        raise ValueError(f"the pairs {truth} and {preferred} share neither the image nor the caption")
    names = region_names(session, truth[0], session.contributions(*truth).region_indices)
    return compare_contributions(true_parts, preferred_parts, "regions", names)


def difference_html(session: WorkbenchSession, truth: tuple[int, int], preferred: tuple[int, int],
                    level: str) -> tuple[Difference, str]:
    """The two pairs' contributions on one level side by side, the difference item by item, and the sentence."""
    diff = pair_difference(session, truth, preferred, level)  # its items: the shared words, or regions
    t, p = (session.contributions(*pair).levels[level] for pair in (truth, preferred))
    true_values, preferred_values = (t.words, p.words) if diff.kind == "words" else (t.regions, p.regions)
    scale = float(max(np.abs(true_values).max(initial=0), np.abs(preferred_values).max(initial=0))) or 1.0
    extra = (f" <span style='color:#555'>(whole image h: truth {t.whole_image:+.3f}, preferred "
             f"{p.whole_image:+.3f})</span>") if level in ("global", "final") and diff.kind == "regions" else ""
    sentence = html.escape(diff.sentence())
    return diff, (
        f"<div class='mlasm-difference' style='margin-top:6px'><b>{sentence}</b></div>"
        "<table style='border-spacing:10px 3px;margin-left:-10px'>"
        f"<tr><td style='vertical-align:top'>truth<br><b>{t.score:.3f}</b></td>"
        f"<td>{signed_items_html(diff.items, true_values, scale)}</td></tr>"
        f"<tr><td style='vertical-align:top'>preferred<br><b>{p.score:.3f}</b></td>"
        f"<td>{signed_items_html(diff.items, preferred_values, scale)}</td></tr>"
        f"<tr><td style='vertical-align:top'>preferred − truth<br><b>{diff.difference:+.3f}</b></td>"
        f"<td>{signed_items_html(diff.items, diff.deltas)}</td></tr></table>{extra}"
        f"<div style='color:#555;font-size:12px'>{level}: {html.escape(t.method)}</div>")
