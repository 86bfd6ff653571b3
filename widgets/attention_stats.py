"""AttentionStatsView: per kind of word, over a whole split, how well and where the model looks.

The table gives, per word kind, the pointing game and the entropy of the attention; the matrix
gives the mean share of each word kind's attention on each kind of region. Clicking a cell lists
the words behind it (most attention on that region kind first); choosing one selects its pair in
every linked view and, where an attention explorer is attached, opens that word in it.
"""
from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from mlasm.attention_stats import SplitReader, examples, kind_matrix, model_records, summarize
from widgets.base import LinkedView
from widgets.drawing import keep_plotly_state, new_figure
from widgets.saving import SaveButtons, save_figure
from widgets.selection import Selection
from mlasm.session import WorkbenchSession

EXAMPLES_LISTED = 30


def session_records(session: WorkbenchSession) -> pd.DataFrame:
    """Every word's record (``mlasm.attention_stats``) over the matching pairs of the session's split:
    those its evaluation saved (``session.attention_records``), else computed now (a model.explain per caption)."""
    if session.attention_records is not None:
        return session.attention_records
    return model_records(session.model, session.split, session.vocab, session.images, session.captions)


class AttentionStatsView(LinkedView):
    """Pointing and entropy per word kind, the word-kind x region-kind matrix, and its examples.

    State a program can read: ``records`` (one row per word), ``summary`` (per word kind),
    ``matrix`` (word kind x region kind), ``cell`` (the (word kind, region kind) chosen),
    ``cell_examples`` (the words behind it); ``figure()`` draws matrix and pointing as a Figure.
    ``explorer``: an AttentionExplorer on the same selection, told the word of a chosen example.
    """

    def __init__(self, session: WorkbenchSession, selection: Selection | None = None, controls: bool = False,
                 records: pd.DataFrame | None = None, explorer=None):
        reader = SplitReader(session.split)
        self.region_kinds = list(reader.region_kind_names)
        self.records = records if records is not None else session_records(session)
        self.summary = summarize(self.records)
        self.matrix = kind_matrix(self.records, self.region_kinds, kinds=list(self.summary.index))
        self.explorer = explorer
        self.cell: tuple[str, str] | None = None
        self.cell_examples: pd.DataFrame | None = None
        self.table_html = widgets.HTML(self._table_html(session))
        matrix = self.matrix.to_numpy()
        self.heatmap = go.FigureWidget(go.Heatmap(
            z=matrix, x=self.region_kinds, y=list(self.matrix.index), zmin=0, zmax=1, colorscale="Viridis",
            text=[[f"{v:.2f}" for v in row] for row in matrix], texttemplate="%{text}",
            hovertemplate="%{y} words → %{x} regions: %{z:.2f} of their attention<extra></extra>",
            colorbar=dict(title=dict(text="share", side="right"), thickness=12)))
        # the title on the left and plotly's toolbar upright on the right (as the explorer's), covering no title
        self.heatmap.update_layout(width=560, height=140 + 30 * len(self.matrix), margin=dict(l=110, r=60, t=50, b=40),
                                   yaxis=dict(autorange="reversed"), modebar=dict(orientation="v"),
                                   title=dict(text="where each kind of word looks (rows sum to 1); click a cell",
                                              font=dict(size=12), x=0.01, xanchor="left"))
        keep_plotly_state(self.heatmap)
        self.cell_title = widgets.HTML()
        self.example_list = widgets.Select(rows=10, layout=widgets.Layout(width="100%"))
        self.save_buttons = SaveButtons(self.figure, "figures/attention-statistics")
        super().__init__(session, selection, controls, [
            self.table_html, self.heatmap, self.cell_title, self.example_list, self.save_buttons])
        self.heatmap.data[0].on_click(self._cell_clicked)
        self.on_user_change(self.example_list, self.open_example)
        self.refresh()

    def _table_html(self, session: WorkbenchSession) -> str:
        rows = []
        for kind, row in self.summary.iterrows():
            pointing = ("-" if pd.isna(row["pointing %"])
                        else f"{row['pointing %']:.1f} % (chance {row['chance %']:.1f})")
            rows.append(f"<tr><td>{html.escape(kind)}</td><td style='text-align:right'>{int(row['words'])}</td>"
                        f"<td style='text-align:right'>{pointing}</td>"
                        f"<td style='text-align:right'>{row['entropy']:.2f}</td>"
                        f"<td style='text-align:right'>{row['normalised entropy']:.2f}</td></tr>")
        return ("<table style='border-spacing:12px 1px;margin-left:-12px'><tr><th>word kind</th><th>words</th>"
                "<th title='grounded words whose most-attended region is a box of their object'>pointing game</th>"
                "<th title='mean entropy of the word&#39;s attention over regions, nats'>entropy</th>"
                "<th title='entropy / log(regions): 1 = spread evenly, 0 = on one region'>H / log R</th></tr>"
                + "".join(rows) + "</table>"
                f"<div style='color:#666;font-size:12px'>{len(self.records)} words of "
                f"{self.records['caption'].nunique()} captions, each with its own image, "
                f"{html.escape(session.split.name)} split.</div>")

    def _cell_clicked(self, trace, points, state) -> None:
        if points.point_inds:  # the heatmap's axes are the kinds' names
            self.open_cell(str(points.ys[0]), str(points.xs[0]))

    def open_cell(self, word_kind: str, region_kind: str) -> pd.DataFrame:
        """List the words of ``word_kind`` with the most attention on ``region_kind`` regions first (a cell click)."""
        if word_kind not in self.matrix.index or region_kind not in self.region_kinds:
            raise ValueError(f"no cell ({word_kind!r}, {region_kind!r}): word kinds {list(self.matrix.index)}, "
                             f"region kinds {self.region_kinds}")
        self.cell = (word_kind, region_kind)
        self.cell_examples = examples(self.records, word_kind, region_kind, limit=EXAMPLES_LISTED)
        captions = self.session.split.captions
        share = f"share {region_kind}"
        with self.quietly():
            self.example_list.value = None
            self.example_list.options = [
                (f"{row[share]:.2f} on {region_kind} · “{row['word']}” in caption {row['caption']}: "
                 f"{captions[row['caption']]}", label) for label, row in self.cell_examples.iterrows()]
        self.cell_title.value = (f"<b>{html.escape(word_kind)}</b> words → "
                                 f"<b>{html.escape(region_kind)}</b> regions: "
                                 f"mean share {self.matrix.loc[word_kind, region_kind]:.2f}; the "
                                 f"{len(self.cell_examples)} words with the largest share, choose one to open it:")
        return self.cell_examples

    def open_example(self, label) -> None:
        """Select the pair of one example word (a record's index label), and its word in the explorer."""
        record = self.records.loc[label]
        self.selection.select(image=int(record["image"]), caption=int(record["caption"]), query="caption")
        if self.explorer is not None:
            self.explorer.select(word=int(record["position"]))

    def figure(self):
        """The matrix and, beside it, the pointing game per word kind against chance: a Figure to save."""
        fig, (left, right) = new_figure((9.0, 0.9 + 0.32 * len(self.matrix)), columns=2)
        matrix = self.matrix.to_numpy()
        image = left.imshow(matrix, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (i, j), value in np.ndenumerate(matrix):
            if not np.isnan(value):
                left.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                          color="white" if value < 0.6 else "black")
        left.set_xticks(range(len(self.region_kinds)), self.region_kinds, fontsize=8)
        left.set_yticks(range(len(self.matrix)), list(self.matrix.index), fontsize=8)
        left.set_title("share of each word kind's attention per region kind", fontsize=9)
        fig.colorbar(image, ax=left, fraction=0.05)
        pointed = self.summary.dropna(subset=["pointing %"])
        y = np.arange(len(pointed))
        right.barh(y, pointed["pointing %"], color="#1f77b4", label="model")
        right.scatter(pointed["chance %"], y, color="black", marker="|", s=200, label="random region")
        right.set_yticks(y, list(pointed.index), fontsize=8)
        right.invert_yaxis()
        right.set_xlim(0, 100)
        right.set_xlabel("pointing game, % of grounded words", fontsize=8)
        right.legend(fontsize=7, loc="lower right")
        right.set_title("does the word look at its own object?", fontsize=9)
        return fig

    def save(self, path: str | Path) -> Path:
        """Save ``figure()`` as PNG or SVG (by the suffix)."""
        return save_figure(self.figure(), path)
