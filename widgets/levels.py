"""LevelPanel: every level's score of the selected pair, where it ranks under each, and the gate.

MLASM's final score is built in steps (spec sections 3-4): text-to-image and image-to-text
attention make the local level, a gated semantic match makes the global level, and the
final score mixes the two. This panel shows each step for one pair, so that one sees
which level carries (or sinks) it.
"""
from __future__ import annotations

import html

import ipywidgets as widgets
import pandas as pd

from mlasm.levels import LEVEL_COLOURS, level_meanings
from widgets.base import LinkedView
from widgets.contributions import level_contributions_html
from widgets.drawing import PictureView, draw_gate
from widgets.selection import Selection
from mlasm.session import WorkbenchSession


SCAN_POOLING = {"LogSumExp": "LogSumExp (λ_lse {lse:g})", "Mean": "mean", "Max": "max", "Sum": "sum"}


def scan_level_meanings(config) -> dict[str, str]:
    """What the levels of a SCAN model (mlasm.scan_model.SCANConfig) are: its one direction, and final."""
    pooling = SCAN_POOLING[config.agg_func].format(lse=config.lambda_lse)
    meaning = {"t2i": f"words attend to regions ({config.raw_feature_norm}, λ {config.lambda_softmax:g}); "
                      f"{pooling} over words of cos(word, its attended regions)",
               "i2t": f"regions attend to words ({config.raw_feature_norm}, λ {config.lambda_softmax:g}); "
                      f"{pooling} over regions of cos(region, its attended words)"}[config.cross_attn]
    return {config.cross_attn: meaning, "final": f"= {config.cross_attn}: SCAN's score (its one direction)"}


def describe_missing_levels(session: WorkbenchSession) -> str:
    """One sentence on the levels a model does not have; empty when it has every one."""
    config = session.model.config
    if config.objective == "scan":
        other = "i2t" if config.cross_attn == "t2i" else "t2i"
        return (f"This SCAN model scores one direction ({config.cross_attn}): it has no {other} attention, no "
                f"local mix of the two, no semantic level and no gate.")
    if "global" not in session.levels:
        return "This model is local only (ρ = 1): it has no semantic level and no gate."
    return ""


class LevelPanel(LinkedView):
    """The selected pair under every level; ``table`` holds what is shown (WorkbenchSession.pair_levels).

    ``gate_plot`` shows the gate's histogram, ``gate_mean`` its mean (None without a semantic level).
    ``why`` shows each level's score as word and region contributions; ``explained`` holds them
    (WorkbenchSession.contributions, None for a query with no words).
    """

    def __init__(self, session: WorkbenchSession, selection: Selection | None = None, controls: bool = True):
        self.table: pd.DataFrame | None = None
        self.gate_mean: float | None = None
        self.explained = None
        self.summary = widgets.HTML()
        self.why = widgets.HTML()
        self.gate_plot = PictureView(width=440, save_as="gate")
        super().__init__(session, selection, controls, [self.summary, self.why, self.gate_plot])
        self.refresh()

    def show_selection(self) -> None:
        image, text_side = self.pair
        try:
            self.table = self.session.pair_levels(image, text_side)
        except ValueError as error:  # a typed query with no words
            self.table, self.gate_mean, self.explained = None, None, None
            self.summary.value = f"<span style='color:#b00'>{html.escape(str(error))}</span>"
            self.why.value = ""
            self.gate_plot.show_message("")
            return
        self.summary.value = self._table_html(image, text_side)
        self.explained = self.session.contributions(image, text_side) if self.session.explains_scores else None
        self.why.value = level_contributions_html(self.session, image, text_side)
        self._draw_gate(image, text_side)

    def _table_html(self, image: int, text_side) -> str:
        session, split = self.session, self.session.split
        config = session.model.config
        meanings = scan_level_meanings(config) if config.objective == "scan" else level_meanings(config.rho)
        n_images, n_captions = split.n_images, split.n_captions
        rows = [f"<tr><td style='color:{LEVEL_COLOURS.get(row.Index, '#333')};font-weight:bold'>{row.Index}</td>"
                f"<td style='text-align:right'>{row.score:.3f}</td>"
                f"<td style='text-align:right'>{_rank_html(row.image_rank)}</td>"
                f"<td style='text-align:right'>{_rank_html(row.caption_rank)}</td>"
                f"<td style='color:#666;font-size:12px'>{meanings[row.Index]}</td></tr>"
                for row in self.table.itertuples()]  # Index: the level
        caption = html.escape(session.caption_text(text_side))
        if isinstance(text_side, str):
            pairing = "a typed query"
        elif split.caption_to_image[text_side] == image:
            pairing = f"caption {text_side}, a matching pair"
        else:
            pairing = f"caption {text_side} of image {split.caption_to_image[text_side]}, not a matching pair"
        missing = describe_missing_levels(session) and \
            f"<div style='color:#666'>{html.escape(describe_missing_levels(session))}</div>"
        caveat = session.level_caveat and \
            f"<div class='mlasm-level-caveat' style='color:#a60'>⚠ {html.escape(session.level_caveat)}</div>"
        return (
            f"<div style='font-size:15px'><b>“{caption}”</b> with image {image} "
            f"({html.escape(split.image_ids[image])})</div><div style='color:#555'>{pairing}</div>"
            "<table style='border-spacing:14px 2px;margin-top:6px;margin-left:-14px'>"
            "<tr><th style='text-align:left'>level</th><th>score</th>"
            f"<th title='rank of this image among the {n_images} images for this text'>image rank /{n_images}</th>"
            f"<th title='rank of this text among the {n_captions} captions for this image'>"
            f"text rank /{n_captions}</th><th style='text-align:left'>what it is</th></tr>"
            + "".join(rows) + "</table>"
            "<div style='color:#666;font-size:12px;margin-top:4px'>Ranks count from 0 (0 = retrieved first; "
            "R@k counts rank &lt; k). Image rank: the text as a query among all images. Text rank: the image "
            "as a query among all captions (other captions of the image count too).</div>" + missing + caveat)

    def _draw_gate(self, image: int, text_side) -> None:
        if "global" not in self.session.levels:
            self.gate_mean = None
            self.gate_plot.show_message("No gate: the model has no semantic level.")
            return
        gate = self.session.explain(image, text_side).gate
        self.gate_mean = float(gate.mean())
        self.gate_plot.draw((4.4, 2.8), lambda ax: draw_gate(gate, ax), key=(image, text_side))


def _rank_html(rank: int) -> str:
    """A rank, green when retrieved first, amber within the top 10."""
    colour = "#2a7" if rank == 0 else "#c80" if rank < 10 else "#b00"
    return f"<span style='color:{colour};font-weight:bold'>{rank}</span>"
