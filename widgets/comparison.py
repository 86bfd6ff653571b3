"""Two (or more) models on one split, query by query: what model B fixed and what it broke.

``mlasm.compare.ModelComparison`` holds one WorkbenchSession per model (an ensemble can be one of
them: ``ensemble_session``) and answers with tables; ``ComparisonView`` shows them:
per query, the rank under A against the rank under B (click a point to select that query in every
linked view), the lists "fixed by B" and "broken by B" under the strict or complete-positive
protocol, narrowed by caption kind or words, and for the selected pair both models' attention on
the same picture and both models' level scores.
"""
from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go

from mlasm.attention_stats import CAPTION_KINDS
from mlasm.compare import BOTH_RIGHT, BOTH_WRONG, BROKEN, CHANGES, FIXED, PROTOCOLS, ModelComparison, changed, \
    filter_queries
from widgets.base import LinkedView, row_selection
from widgets.drawing import PictureView, draw_pair_attention, keep_plotly_state, regions_for_words
from widgets.saving import SaveButtons, save_figure
from widgets.selection import Selection, toggle_buttons

CHANGE_COLOURS = {FIXED: "#2ca02c", BROKEN: "#d62728", BOTH_RIGHT: "#9ecae1", BOTH_WRONG: "#bbbbbb"}
EVERY_WORD = -1
LISTED = 200  # rows shown in each list


class ComparisonView(LinkedView):
    """Ranks under A against ranks under B, the fixed and broken lists, and the selected pair under both.

    State a program can read: ``table`` (the comparison at the chosen k), ``shown`` (the rows in
    the scatter: the chosen direction, kind and words), ``fixed_rows`` / ``broken_rows`` (the lists),
    ``levels`` (both models' levels of the pair in view), ``figure`` (the attention picture),
    ``scatter_figure()`` (the scatter as a matplotlib Figure, for saving).
    """

    def __init__(self, comparison: ModelComparison, selection: Selection | None = None, controls: bool = True,
                 k: int = 1):
        self.comparison = comparison
        names = comparison.names
        self.model_a = widgets.Dropdown(options=names, value=comparison.a, description="model A",
                                        layout=widgets.Layout(width="240px"))
        self.model_b = widgets.Dropdown(options=names, value=comparison.b, description="model B",
                                        layout=widgets.Layout(width="240px"))
        self.k = widgets.IntSlider(value=k, min=1, max=10, description="right at rank <",
                                   style={"description_width": "100px"}, layout=widgets.Layout(width="320px"))
        self.protocol = toggle_buttons(list(PROTOCOLS), "protocol", "100px", tooltips=list(PROTOCOLS.values()))
        self.direction = toggle_buttons(["t2i", "i2t"], "direction", "60px",
                                        tooltips=["caption queries, images ranked", "image queries, captions ranked"])
        self.kind = widgets.Dropdown(options=[("any caption", "")] + [(kind, kind) for kind in CAPTION_KINDS],
                                     description="speaks of", layout=widgets.Layout(width="240px"))
        self.words = widgets.Text(placeholder="words, all of them", description="words", continuous_update=False,
                                  layout=widgets.Layout(width="260px"))
        self.summary = widgets.HTML()
        self.scatter = go.FigureWidget(go.Scatter(x=[], y=[], mode="markers", marker=dict(size=7, opacity=0.75)))
        self.scatter.update_layout(width=460, height=420, margin=dict(l=60, r=10, t=40, b=50),
                                   xaxis=dict(type="log", title="rank under A + 1"),
                                   yaxis=dict(type="log", title="rank under B + 1"),
                                   title=dict(text="each point a query; below the diagonal: B ranks it better",
                                              font=dict(size=11)))
        self.fixed_list = widgets.Select(rows=9, layout=widgets.Layout(width="100%"))
        self.broken_list = widgets.Select(rows=9, layout=widgets.Layout(width="100%"))
        self.word_choice = widgets.Dropdown(description="word", layout=widgets.Layout(width="240px"))
        self.levels_html = widgets.HTML()
        self.picture = PictureView(width=760, save_as="comparison-attention")
        self.save_scatter = SaveButtons(self.scatter_figure, "figures/comparison-ranks")
        self.table: pd.DataFrame | None = None
        self.shown: pd.DataFrame | None = None
        self.levels: pd.DataFrame | None = None
        lists = widgets.VBox([widgets.HTML("<b>fixed by B</b>"), self.fixed_list,
                              widgets.HTML("<b>broken by B</b>"), self.broken_list],
                             layout=widgets.Layout(width="520px"))
        super().__init__(comparison.sessions[comparison.a], selection, controls, [
            widgets.HBox([self.model_a, self.model_b, self.k]),
            widgets.HBox([self.protocol, self.direction]),
            widgets.HBox([self.kind, self.words]),
            self.summary, widgets.HBox([self.scatter, lists]), self.save_scatter,
            self.word_choice, self.levels_html, self.picture])
        for control in (self.model_a, self.model_b):
            self.on_user_change(control, lambda value: self._models_changed())
        for control in (self.k, self.protocol, self.direction, self.kind, self.words):
            self.on_user_change(control, lambda value: self.update_lists())
        for control in (self.fixed_list, self.broken_list):
            self.on_user_change(control, self.open_query)
            self.release_rows_left(control, lambda label: tuple(row_selection(self.table.loc[label]).values()))
        self.on_user_change(self.word_choice, lambda value: self._draw_attention())
        self.scatter.data[0].on_click(self._point_clicked)
        self.update_lists()
        self.refresh()

    # --- lists and scatter -------------------------------------------------------------

    @property
    def figure(self):
        return self.picture.figure

    @property
    def fixed_rows(self) -> pd.DataFrame:
        return changed(self.shown, FIXED, self.protocol.value)

    @property
    def broken_rows(self) -> pd.DataFrame:
        return changed(self.shown, BROKEN, self.protocol.value)

    def _models_changed(self) -> None:
        try:
            self.comparison.choose(self.model_a.value, self.model_b.value)
        except ValueError as error:
            self.summary.value = f"<span style='color:#b00'>{html.escape(str(error))}</span>"
            return
        self.update_lists()
        self.refresh()

    def update_lists(self) -> None:
        """Recompute the table at k, the rows that pass the filters, the scatter and both lists."""
        comparison, protocol = self.comparison, self.protocol.value
        self.table = comparison.table(self.k.value)
        self.shown = filter_queries(self.table, direction=self.direction.value, kind=self.kind.value or None,
                                    words=self.words.value)
        column = "rank" if protocol == "strict" else "valid_rank"
        colours = [CHANGE_COLOURS[change] for change in self.shown[protocol]]
        hover = [f"{row.direction} #{row.query}: {html.escape(row.query_text[:70])}<br>A {row[f'{column}_a']} · "
                 f"B {row[f'{column}_b']} · {row[protocol]}" for _, row in self.shown.iterrows()]
        with self.scatter.batch_update():
            trace = self.scatter.data[0]
            trace.x = (self.shown[f"{column}_a"] + 1).tolist()
            trace.y = (self.shown[f"{column}_b"] + 1).tolist()
            trace.marker.color, trace.text, trace.hovertemplate = colours, hover, "%{text}<extra></extra>"
        keep_plotly_state(self.scatter)  # a reloaded page, or an exported one, shows these points
        fixed, broken = self.fixed_rows, self.broken_rows
        with self.quietly():
            for box, rows in ((self.fixed_list, fixed), (self.broken_list, broken)):
                box.value = None
                box.options = [(_row_label(row, column), label) for label, row in rows.head(LISTED).iterrows()]
        counts = self.shown[protocol].value_counts()
        self.summary.value = (
            f"<b>{comparison.b}</b> against <b>{comparison.a}</b>, {PROTOCOLS[protocol]}, right = rank &lt; "
            f"{self.k.value}: of {len(self.shown)} {self.direction.value} queries shown, "
            + ", ".join(f"<span style='color:{CHANGE_COLOURS[c]}'><b>{int(counts.get(c, 0))}</b> {c}</span>"
                        for c in CHANGES) + ".")

    def _point_clicked(self, trace, points, state) -> None:
        if points.point_inds:
            self.open_query(self.shown.index[points.point_inds[0]])

    def open_query(self, label) -> None:
        """Select the pair of the comparison row with this index label (as a click in a list or the scatter)."""
        row = self.table.loc[label]
        self.selection.select(**row_selection(row))

    # --- the pair in view ------------------------------------------------------------

    def show_selection(self) -> None:
        image, text_side = self.pair
        comparison = self.comparison
        try:
            self.levels = comparison.pair_levels(image, text_side)
        except ValueError as error:  # a typed query with no words
            self.levels = None
            self.levels_html.value = f"<span style='color:#b00'>{html.escape(str(error))}</span>"
            self.picture.show_message("Nothing to compare.")
            return
        words = comparison.sessions[comparison.a].tokens(text_side)
        with self.quietly():
            self.word_choice.options = [("every word (mean)", EVERY_WORD)] + [(f"{p}: {w}", p)
                                                                             for p, w in enumerate(words)]
            self.word_choice.value = EVERY_WORD
        self.levels_html.value = self._levels_html(image, text_side)
        self._draw_attention()

    def _levels_html(self, image: int, text_side) -> str:
        comparison, levels = self.comparison, self.levels
        a, b = comparison.a, comparison.b
        rows = []
        for level in levels.index:
            cells = []
            for name in (a, b):
                score, rank = levels.loc[level, (name, "score")], levels.loc[level, (name, "image_rank")]
                right = "<td style='text-align:right'>"
                cells.append(f"{right}-</td><td></td>" if pd.isna(score) else
                             f"{right}{score:.3f}</td>{right}{int(rank)}</td>")
            rows.append(f"<tr><td>{level}</td>{''.join(cells)}</tr>")
        text = html.escape(comparison.sessions[a].caption_text(text_side))
        return (f"<div style='font-size:15px;margin-top:6px'><b>“{text}”</b> with image {image}</div>"
                "<table style='border-spacing:12px 1px;margin-left:-12px'>"
                f"<tr><th>level</th><th colspan=2>{html.escape(a)}: score, image rank</th>"
                f"<th colspan=2>{html.escape(b)}: score, image rank</th></tr>" + "".join(rows) + "</table>")

    def _draw_attention(self) -> None:
        image, text_side = self.pair
        comparison = self.comparison
        split = comparison.split
        if split.boxes is None:
            self.picture.show_message("This split has no region boxes: no pictures to compare.")
            return
        word = self.word_choice.value

        def paint(*axes):
            for ax, name in zip(axes, (comparison.a, comparison.b)):
                session = comparison.sessions[name]
                explanation = session.explain(image, text_side)
                tokens = session.tokens(text_side)
                if word is None or word == EVERY_WORD or word >= len(tokens):
                    (weights, looked), about = regions_for_words(explanation), "every word"
                else:
                    (weights, looked), about = regions_for_words(explanation, word), f"“{tokens[word]}”"
                draw_pair_attention(session, image, explanation.region_indices, weights, ax,
                                    f"{name}: final {explanation.scores['final']:.3f}\nregions {looked} {about}")

        self.picture.draw((7.6, 4.2), paint, columns=2)

    def scatter_figure(self):
        """The rank scatter as a matplotlib Figure (what ``save_scatter`` writes)."""
        from widgets.drawing import new_figure

        protocol = self.protocol.value
        column = "rank" if protocol == "strict" else "valid_rank"
        fig, (ax,) = new_figure((5.0, 4.6))
        for change in CHANGES:
            rows = self.shown[self.shown[protocol] == change]
            ax.scatter(rows[f"{column}_a"] + 1, rows[f"{column}_b"] + 1, s=14, alpha=0.75,
                       color=CHANGE_COLOURS[change], label=f"{change} ({len(rows)})")
        top = max(2, int(self.shown[[f"{column}_a", f"{column}_b"]].to_numpy().max(initial=0)) + 2)
        ax.plot([1, top], [1, top], color="#888", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"rank under {self.comparison.a} + 1")
        ax.set_ylabel(f"rank under {self.comparison.b} + 1")
        ax.set_title(f"{self.direction.value} queries, {protocol} protocol, right = rank < {self.k.value}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        return fig

    def save(self, path: str | Path, what: str = "attention") -> Path:
        """Save the attention picture (``what="attention"``) or the rank scatter (``"ranks"``) as PNG or SVG."""
        if what not in ("attention", "ranks"):
            raise ValueError(f"what must be 'attention' or 'ranks', got {what!r}")
        return save_figure(self.figure if what == "attention" else self.scatter_figure(), path)


LABEL_CHARS = 64  # what a 520-pixel list shows whole; longer captions end in "..."


def _row_label(row: pd.Series, column: str) -> str:
    """One line of a list: direction, query, rank under A -> under B, then as much text as fits."""
    head = f"{row['direction']} #{row['query']} {row[f'{column}_a']}→{row[f'{column}_b']}  "
    room = LABEL_CHARS - len(head)
    text = row["query_text"] if len(row["query_text"]) <= room else row["query_text"][:room - 3] + "..."
    return (head + text).replace(" ", "\u00a0")
