"""FailureExplorer: the queries an evaluation got wrong, and what went wrong with each.

A query fails when its ground truth ranks k or worse under the final level (the same
ranks as evaluate's ranks.npz). The table can be cut by direction, by rank and by which
other level would have ranked the query right; choosing a row selects it everywhere and
draws the ground truth beside the result the model preferred.
"""
from __future__ import annotations

import html
import textwrap

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from widgets.drawing import draw_pair_attention, show_figure, show_message
from widgets.selection import Selection, toggle_buttons
from widgets.session import DIRECTIONS, WorkbenchSession

SHOWN_ROWS = 500  # the list shows the worst rows first; the full table is ``table``
EVERY_WORD = -1
ROW_STYLE = "<style>.mlasm-failure-rows select {font-family: monospace; font-size: 12px}</style>"


class FailureExplorer(widgets.VBox):
    """Failed queries, filterable, each opened in the shared selection and compared with what won.

    ``table``: the rows passing the filters (WorkbenchSession.failures columns), worst first.
    ``row``: the chosen row or None. ``figure``: the last comparison picture (closed).
    """

    def __init__(self, session: WorkbenchSession, selection: Selection | None = None, k: int = 1):
        self.session = session
        self.selection = selection if selection is not None else Selection.start(session)
        self.figure = None
        self._failures = session.failures(k)
        others = [level for level in session.levels if level != "final"]
        max_rank = int(session.query_table()["rank"].max())

        self.k = widgets.IntSlider(value=k, min=1, max=max(1, min(50, max_rank)), description="fails at rank ≥",
                                   style={"description_width": "100px"}, layout=widgets.Layout(width="360px"))
        self.direction = toggle_buttons(["both", "t2i", "i2t"], "direction", "60px",
                                        tooltips=["both directions", DIRECTIONS["t2i"], DIRECTIONS["i2t"]])
        self.right_under = widgets.Dropdown(
            options=[("any level or none", "all"), ("no other level", "none")]
            + [(f"{level} level", level) for level in others],
            description="right under", layout=widgets.Layout(width="260px"),
            tooltip="keep the failed queries that this level alone ranks within the top k")
        self.ranks = widgets.IntRangeSlider(value=(0, max_rank), min=0, max=max_rank, description="rank",
                                            layout=widgets.Layout(width="360px"))
        self.summary = widgets.HTML()
        self.rows = widgets.Select(rows=12, layout=widgets.Layout(width="100%"))
        self.rows.add_class("mlasm-failure-rows")
        self.detail = widgets.HTML()
        self.word_choice = widgets.Dropdown(description="word", layout=widgets.Layout(width="260px"))
        self.comparison = widgets.Output()
        self.row: pd.Series | None = None
        self._quiet = False  # True while the list and the word menu are refilled
        super().__init__([
            widgets.HTML(ROW_STYLE),
            widgets.HBox([self.k, self.direction]),
            widgets.HBox([self.right_under, self.ranks]),
            self.summary, self.rows, self.detail, self.word_choice, self.comparison,
        ])
        self.k.observe(self._k_changed, names="value")
        for control in (self.direction, self.right_under, self.ranks):
            control.observe(lambda change: self._list_rows(), names="value")
        self.rows.observe(self._row_chosen, names="value")
        self.word_choice.observe(self._word_chosen, names="value")
        self._list_rows()

    @property
    def table(self) -> pd.DataFrame:
        """The failed queries at the chosen k that pass the direction, level and rank filters, worst first."""
        failures = self._failures
        keep = np.ones(len(failures), bool)
        if self.direction.value != "both":
            keep &= failures["direction"].to_numpy() == self.direction.value
        level = self.right_under.value
        if level == "none":
            keep &= failures["right_under"].to_numpy() == ""
        elif level != "all":
            keep &= failures[f"rank_{level}"].to_numpy() < self.k.value
        low, high = self.ranks.value
        keep &= (failures["rank"].to_numpy() >= low) & (failures["rank"].to_numpy() <= high)
        return failures[keep]

    def open_row(self, label) -> None:
        """Choose the row with this index label of ``table`` (as a click in the list does)."""
        self.rows.value = label

    def _k_changed(self, change) -> None:
        self._failures = self.session.failures(change["new"])
        self._list_rows()

    def _list_rows(self) -> None:
        table, k = self.table, self.k.value
        counts = self._failures["direction"].value_counts()
        queries = self.session.query_table()["direction"].value_counts()
        self.summary.value = (
            f"<b>{len(self._failures)}</b> failed queries at k = {k} (ground truth at rank ≥ {k} under final): "
            f"t2i {counts.get('t2i', 0)} of {queries.get('t2i', 0)} captions, "
            f"i2t {counts.get('i2t', 0)} of {queries.get('i2t', 0)} images. "
            f"<b>{len(table)}</b> pass the filters"
            + (f"; the list shows the worst {SHOWN_ROWS}." if len(table) > SHOWN_ROWS else "."))
        shown = table.head(SHOWN_ROWS)
        chosen = self.rows.value
        self._quiet = True
        try:  # a Select given new options jumps to the first one unless its value is None
            self.rows.value = None
            self.rows.options = [(_row_label(row), label) for label, row in shown.iterrows()]
            if chosen in shown.index:
                self.rows.value = chosen
        finally:
            self._quiet = False
        if self.row is not None and chosen not in shown.index:
            self.row = None
            self.detail.value = ""
            show_message(self.comparison, "")

    def _row_chosen(self, change) -> None:
        if self._quiet or change["new"] is None:
            return
        row = self._failures.loc[change["new"]]
        self.row = row
        self.selection.select(image=int(row["image"]), caption=int(row["caption"]),
                              query="caption" if row["direction"] == "t2i" else "image")
        words = self.session.tokens(int(row["caption"]))
        self._quiet = True
        try:
            self.word_choice.options = [("every word (mean)", EVERY_WORD)] + [(f"{p}: {w}", p)
                                                                             for p, w in enumerate(words)]
            self.word_choice.value = EVERY_WORD
        finally:
            self._quiet = False
        self.word_choice.layout.display = None if row["direction"] == "t2i" else "none"
        self.detail.value = self._detail_html(row)
        self._draw_comparison()

    def pairs(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The chosen row's (image, caption) pairs: the ground truth, and the one the model preferred."""
        row = self.row
        truth = (int(row["image"]), int(row["caption"]))
        if row["direction"] == "t2i":
            return truth, (int(row["preferred"]), int(row["caption"]))
        return truth, (int(row["image"]), int(row["preferred"]))

    def _detail_html(self, row: pd.Series) -> str:
        session = self.session
        scores = session.scores
        truth, preferred = self.pairs()
        cells = []
        for level in session.levels:
            a, b = float(scores[level][truth]), float(scores[level][preferred])
            mark = "<b style='color:#2ca02c'>truth</b>" if a > b else "<b style='color:#b00'>preferred</b>"
            rank = row["rank" if level == "final" else f"rank_{level}"]
            cells.append(f"<tr><td>{level}</td><td style='text-align:right'>{a:.3f}</td>"
                         f"<td style='text-align:right'>{b:.3f}</td><td>{mark}</td>"
                         f"<td style='text-align:right'>{rank}</td></tr>")
        if row["direction"] == "t2i":
            query = f"caption {row['query']}: “{html.escape(row['query_text'])}”"
            versus = f"its image {truth[0]} vs image {preferred[0]}, which the model ranked first"
        else:
            query = f"image {row['query']} ({html.escape(row['query_text'])})"
            versus = (f"its caption {truth[1]} “{html.escape(session.split.captions[truth[1]])}” vs caption "
                      f"{preferred[1]} “{html.escape(session.split.captions[preferred[1]])}”, ranked first")
        return (f"<div style='font-size:15px;margin-top:8px'><b>{row['direction']}</b> query {query}</div>"
                f"<div>{versus}</div>"
                "<table style='margin-top:4px;border-spacing:14px 0'><tr><th>level</th><th>truth pair</th>"
                "<th>preferred pair</th><th>higher</th><th>truth's rank</th></tr>" + "".join(cells) + "</table>")

    def _word_chosen(self, change) -> None:
        if not self._quiet:
            self._draw_comparison()

    def _draw_comparison(self) -> None:
        """Two attention pictures: the ground-truth pair and the preferred pair (regions by t2i weight)."""
        if self.row is None:
            return
        session, word = self.session, self.word_choice.value
        if session.split.boxes is None:
            self.figure = None
            show_message(self.comparison, "This split has no region boxes: no pictures to compare.")
            return
        fig, axes = plt.subplots(1, 2, figsize=(7.2, 4.0))
        for ax, (image, caption), role in zip(axes, self.pairs(), ("ground truth", "preferred instead")):
            explanation = session.explain(image, caption)
            if word == EVERY_WORD or self.row["direction"] == "i2t":
                weights, about = explanation.t2i_attention.mean(axis=0), "every word"
            else:
                weights, about = explanation.t2i_attention[word], f"“{session.tokens(caption)[word]}”"
            title = f"{role}: image {image}, final {session.scores['final'][image, caption]:.3f}\n"
            if self.row["direction"] == "i2t":
                title += textwrap.fill(f"“{session.split.captions[caption]}”", 48) + "\n"
            draw_pair_attention(session, image, explanation.region_indices, weights, ax,
                                title + f"regions looked at by {about}")
        fig.tight_layout()
        self.figure = fig
        show_figure(self.comparison, fig)


def _row_label(row: pd.Series) -> str:
    right = row["right_under"] or "—"
    text = row["query_text"] if len(row["query_text"]) <= 60 else row["query_text"][:57] + "..."
    label = f"{row['direction']} #{row['query']:<5} rank {row['rank']:>4}  right under: {right:<22} {text}"
    return label.replace(" ", "\u00a0")  # keep the columns aligned: a browser collapses runs of spaces
