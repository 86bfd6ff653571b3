"""FailureExplorer: the queries an evaluation got wrong, and what went wrong with each.

A query fails when nothing true of it ranks within the top k under the final level (the same
ranks as evaluate's ranks.npz). Where the split knows every image a caption is true of, a
query whose own item ranks k or worse but another item true of it is in the top k is a
*valid alternative*, not a failure: hidden by default, listed (and marked) with "include valid
alternatives". Without complete positives every miss of the ground truth is a failure. The
table can be cut by direction, by rank and by which other level would have ranked the query
right; choosing a row selects it everywhere, lists what is true of the query, and draws the
ground truth beside the result the model preferred.
"""
from __future__ import annotations

import base64
import html
import textwrap

import ipywidgets as widgets
import numpy as np
import pandas as pd

from widgets.base import LinkedView, row_selection
from widgets.contributions import NOT_SPLIT_HTML, difference_html
from widgets.drawing import PictureView, draw_pair_attention, png_thumbnail, regions_for_words
from widgets.ranking import ALSO_TRUE_TEXT, TRUTH
from widgets.selection import Selection, toggle_buttons
from mlasm.session import DIRECTIONS, FAILURE, VALID_ALTERNATIVE, WorkbenchSession

DEFAULT_K = 5     # as notebook 05 and R@5: a query fails when nothing true of it is in the top 5
SHOWN_ROWS = 500  # the list shows the worst rows first; the full table is ``table``
EVERY_WORD = -1
VALID_SHOWN = 8   # the detail shows the first few items true of the query, and how many there are
VALID_THUMBNAIL = 72
OWN_COLOUR, ALSO_TRUE_COLOUR, FAILURE_COLOUR = TRUTH, ALSO_TRUE_TEXT, "#b00"
ROW_STYLE = "<style>.mlasm-failure-rows select {font-family: monospace; font-size: 12px}</style>"


class FailureExplorer(LinkedView):
    """Failed queries, filterable, each opened in the shared selection and compared with what won.

    ``table``: the rows passing the filters (WorkbenchSession.failures columns), worst first.
    ``row``: the chosen row or None. ``valid``: what is true of the chosen query
    (WorkbenchSession.valid_items), or None. ``figure``: the last comparison picture (closed).
    ``include_valid``: the toggle that lists the valid alternatives too (off by default).
    ``why``: the chosen row's true and preferred pairs side by side, word by word (a caption query)
    or region by region (an image query), on the level chosen in ``why_level`` (final first);
    ``difference`` the mlasm.explain.Difference shown, or None.
    It writes to the selection and does not follow it: its list is of failures, not of the selection.
    """

    def __init__(self, session: WorkbenchSession, selection: Selection | None = None, controls: bool = True,
                 k: int = DEFAULT_K, include_valid: bool = False):
        self.valid: pd.DataFrame | None = None
        self._failures = session.failures(k, include_valid=include_valid)
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
        self.include_valid = widgets.Checkbox(
            value=include_valid, description="include valid alternatives", indent=False,
            layout=widgets.Layout(width="220px"),
            tooltip="also list the queries whose top k holds another item true of them, not their own")
        # "right under" reads each level as a retriever: say so when the levels were not trained as one
        self.level_caveat = widgets.HTML(
            f"<div style='color:#a60;font-size:12px'>⚠ “right under” asks each level alone. "
            f"{html.escape(session.level_caveat)}</div>" if session.level_caveat else "")
        self.summary = widgets.HTML()
        self.rows = widgets.Select(rows=12, layout=widgets.Layout(width="100%"))
        self.rows.add_class("mlasm-failure-rows")
        self.detail = widgets.HTML()
        self.word_choice = widgets.Dropdown(description="word", layout=widgets.Layout(width="260px"))
        self.why_level = widgets.Dropdown(options=list(session.levels)[::-1], value="final",
                                          description="why, on", layout=widgets.Layout(width="200px"))
        self.why = widgets.HTML()
        self.difference = None
        self.comparison = PictureView(width=760, save_as="failure")
        self.row: pd.Series | None = None
        super().__init__(session, selection, controls, [
            widgets.HTML(ROW_STYLE),
            widgets.HBox([self.k, self.direction, self.include_valid]),
            widgets.HBox([self.right_under, self.ranks]),
            self.level_caveat, self.summary, self.rows, self.detail, self.why_level, self.why,
            self.word_choice, self.comparison,
        ])
        self.k.observe(self._k_changed, names="value")
        self.include_valid.observe(self._k_changed, names="value")
        for control in (self.direction, self.right_under, self.ranks):
            control.observe(lambda change: self._list_rows(), names="value")
        self.on_user_change(self.rows, self._row_chosen)
        self.release_rows_left(self.rows, lambda label: tuple(row_selection(self._failures.loc[label]).values()))
        self.on_user_change(self.word_choice, lambda value: self._draw_comparison())
        self.on_user_change(self.why_level, lambda value: self._show_why())
        self._list_rows()

    def selection_key(self):
        return None  # the list does not follow the selection

    @property
    def figure(self):
        """The last comparison picture drawn, or None."""
        return self.comparison.figure

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
            keep &= failures[f"valid_rank_{level}"].to_numpy() < self.k.value
        low, high = self.ranks.value
        keep &= (failures["rank"].to_numpy() >= low) & (failures["rank"].to_numpy() <= high)
        return failures[keep]

    def open_row(self, label) -> None:
        """Choose the row with this index label of ``table`` (as a click in the list does)."""
        self.rows.value = label

    def _k_changed(self, change) -> None:
        """k or the valid-alternatives toggle changed: fetch the list again."""
        self._failures = self.session.failures(self.k.value, include_valid=self.include_valid.value)
        self._list_rows()

    def _list_rows(self) -> None:
        table, k = self.table, self.k.value
        queries = self.session.query_table(k)
        failed = queries[queries["outcome"] == FAILURE]["direction"].value_counts()
        totals = queries["direction"].value_counts()
        alternatives = int((queries["outcome"] == VALID_ALTERNATIVE).sum())
        if self.session.complete_positives:
            what = f"nothing true of the query in the top {k} under final"
            valid = (f" <b>{alternatives}</b> more are valid alternatives (their own item at rank ≥ {k}, "
                     f"but another item true of them in the top {k}): "
                     + ("listed, marked <i>valid alternative</i>." if self.include_valid.value else "not listed."))
        else:
            what = f"ground truth at rank ≥ {k} under final; the split knows one image per caption"
            valid = ""
        self.summary.value = (
            f"<b>{int(failed.sum())}</b> failed queries at k = {k} ({what}): "
            f"t2i {failed.get('t2i', 0)} of {totals.get('t2i', 0)} captions, "
            f"i2t {failed.get('i2t', 0)} of {totals.get('i2t', 0)} images.{valid} "
            f"<b>{len(table)}</b> rows pass the filters"
            + (f"; the list shows the worst {SHOWN_ROWS}." if len(table) > SHOWN_ROWS else "."))
        shown = table.head(SHOWN_ROWS)
        chosen = self.rows.value
        with self.quietly():  # a Select given new options jumps to the first one unless its value is None
            self.rows.value = None
            self.rows.options = [(_row_label(row), label) for label, row in shown.iterrows()]
            if chosen in shown.index:
                self.rows.value = chosen
        if self.row is not None and chosen not in shown.index:
            self.row, self.valid = None, None
            self.detail.value = self.why.value = ""
            self.difference = None
            self.comparison.show_message("")

    def _row_chosen(self, label) -> None:
        row = self._failures.loc[label]
        self.row = row
        self.valid = self.session.valid_items(row["direction"], int(row["query"]))
        self.selection.select(**row_selection(row))
        words = self.session.tokens(int(row["caption"]))
        with self.quietly():
            self.word_choice.options = [("every word (mean)", EVERY_WORD)] + [(f"{p}: {w}", p)
                                                                             for p, w in enumerate(words)]
            self.word_choice.value = EVERY_WORD
        self.word_choice.layout.display = None if row["direction"] == "t2i" else "none"
        self.detail.value = self._detail_html(row)
        self._show_why()
        self._draw_comparison()

    def _show_why(self) -> None:
        """The chosen row's true and preferred pairs side by side on the chosen level, and what made the difference."""
        if self.row is None:
            return
        self.difference, self.why.value = (difference_html(self.session, *self.pairs(), self.why_level.value)
                                           if self.session.explains_scores else (None, NOT_SPLIT_HTML))

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
        complete = session.complete_positives
        preferred_colour = ALSO_TRUE_COLOUR if row["preferred_valid"] else FAILURE_COLOUR
        cells = []
        for level in session.levels:
            a, b = float(scores[level][truth]), float(scores[level][preferred])
            mark = (f"<b style='color:{OWN_COLOUR}'>truth</b>" if a > b
                    else f"<b style='color:{preferred_colour}'>preferred</b>")
            suffix = "" if level == "final" else f"_{level}"
            valid_cell = f"<td style='text-align:right'>{row['valid_rank' + suffix]}</td>" if complete else ""
            cells.append(f"<tr><td>{level}</td><td style='text-align:right'>{a:.3f}</td>"
                         f"<td style='text-align:right'>{b:.3f}</td><td>{mark}</td>"
                         f"<td style='text-align:right'>{row['rank' + suffix]}</td>{valid_cell}</tr>")
        also = (" — <b style='color:%s'>also true</b> of the query (a valid alternative)" % ALSO_TRUE_COLOUR
                if row["preferred_valid"] else "")
        if row["direction"] == "t2i":
            query = f"caption {row['query']}: “{html.escape(row['query_text'])}”"
            versus = f"its image {truth[0]} vs image {preferred[0]}, which the model ranked first{also}"
        else:
            query = f"image {row['query']} ({html.escape(row['query_text'])})"
            versus = (f"its caption {truth[1]} “{html.escape(session.split.captions[truth[1]])}” vs caption "
                      f"{preferred[1]} “{html.escape(session.split.captions[preferred[1]])}”, ranked first{also}")
        outcome = row["outcome"]
        colour = ALSO_TRUE_COLOUR if outcome == VALID_ALTERNATIVE else FAILURE_COLOUR
        return (f"<div style='font-size:15px;margin-top:8px'><b>{row['direction']}</b> query {query} "
                f"<b style='color:{colour}'>{outcome}</b></div>"
                f"<div>{versus}</div>" + self._valid_html(row) +
                "<table style='margin-top:4px;border-spacing:14px 0'><tr><th>level</th><th>truth pair</th>"
                "<th>preferred pair</th><th>higher</th><th>truth's rank</th>"
                + ("<th>first valid's rank</th>" if complete else "") + "</tr>" + "".join(cells) + "</table>")

    def _valid_html(self, row: pd.Series) -> str:
        """What is true of the query: the first VALID_SHOWN items (best-ranked first), and how many there are."""
        session, valid = self.session, self.valid
        shown = valid.head(VALID_SHOWN)
        more = f", the best-ranked {len(shown)} shown" if len(valid) > len(shown) else ""
        first = f"the first at rank <b>{int(valid['rank'].min())}</b> under final" if len(valid) else ""
        if row["direction"] == "t2i":
            title = f"This caption is true of <b>{len(valid)}</b> image{'s' if len(valid) != 1 else ''}"
            tiles = [self._image_tile(int(item["index"]), bool(item["own"]), int(item["rank"]))
                     for _, item in shown.iterrows()]
            body = "<div style='display:flex;flex-wrap:wrap;gap:6px'>" + "".join(tiles) + "</div>"
        else:
            title = f"<b>{len(valid)}</b> caption{'s are' if len(valid) != 1 else ' is'} true of this image"
            lines = [f"<li>{_mark(bool(item['own']))} rank {int(item['rank'])} · caption {int(item['index'])} "
                     f"“{html.escape(session.split.captions[int(item['index'])])}”</li>"
                     for _, item in shown.iterrows()]
            body = "<ul style='margin:2px 0'>" + "".join(lines) + "</ul>"
        if not session.complete_positives:
            first += " (the split knows only each caption's own image)"
        return f"<div style='margin-top:6px'>{title}{more}; {first}:</div>{body}"

    def _image_tile(self, image: int, own: bool, rank: int) -> str:
        picture = self.session.picture(image)
        colour = OWN_COLOUR if own else ALSO_TRUE_COLOUR
        if picture is not None:
            data = base64.b64encode(png_thumbnail(picture, VALID_THUMBNAIL)).decode("ascii")
            face = (f"<img src='data:image/png;base64,{data}' width='{VALID_THUMBNAIL}' "
                    f"height='{VALID_THUMBNAIL}' style='display:block'>")
        else:
            face = (f"<div style='width:{VALID_THUMBNAIL}px;height:{VALID_THUMBNAIL}px;background:#eee;display:flex;"
                    f"align-items:center;justify-content:center;font-size:11px'>"
                    f"{html.escape(self.session.split.image_ids[image])}</div>")
        return (f"<div style='border:3px solid {colour};padding:2px;font-size:11px;text-align:center'>{face}"
                f"image {image}<br>{_mark(own)} rank {rank}</div>")

    def _draw_comparison(self) -> None:
        """Two attention pictures: the ground-truth pair and the preferred pair (regions by t2i weight)."""
        if self.row is None:
            return
        session = self.session
        if session.split.boxes is None:
            self.comparison.show_message("This split has no region boxes: no pictures to compare.")
            return
        self.comparison.draw((7.4, 4.0), self._paint_comparison, columns=2)

    def _paint_comparison(self, *axes) -> None:
        session, word = self.session, self.word_choice.value
        for ax, (image, caption), role in zip(axes, self.pairs(), ("ground truth", "preferred instead")):
            explanation = session.explain(image, caption)
            also = " (also true)" if role != "ground truth" and self.row["preferred_valid"] else ""
            if word == EVERY_WORD or self.row["direction"] == "i2t":
                (weights, looked), about = regions_for_words(explanation), "every word"
            else:
                (weights, looked), about = regions_for_words(explanation, word), f"“{session.tokens(caption)[word]}”"
            title = f"{role}: image {image}{also}, final {session.scores['final'][image, caption]:.3f}\n"
            if self.row["direction"] == "i2t":
                title += textwrap.fill(f"“{session.split.captions[caption]}”", 48) + "\n"
            draw_pair_attention(session, image, explanation.region_indices, weights, ax,
                                title + f"regions {looked} {about}")


def _mark(own: bool) -> str:
    return (f"<b style='color:{OWN_COLOUR}'>own</b>" if own
            else f"<b style='color:{ALSO_TRUE_COLOUR}'>also true</b>")


def _row_label(row: pd.Series) -> str:
    right = row["right_under"] or "—"
    text = row["query_text"] if len(row["query_text"]) <= 60 else row["query_text"][:57] + "..."
    outcome = "✓ valid alternative" if row["outcome"] == VALID_ALTERNATIVE else "✗ failure"
    label = (f"{row['direction']} #{row['query']:<5} {outcome:<19} rank {row['rank']:>4}  "
             f"first valid {row['valid_rank']:>4}  right under: {right:<22} {text}")
    return label.replace(" ", "\u00a0")  # keep the columns aligned: a browser collapses runs of spaces
