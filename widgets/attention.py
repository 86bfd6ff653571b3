"""AttentionExplorer: where each word of a caption looks in the image, and what each region reads.

Choose a word: the regions light up by its text-to-image attention (heat over the picture).
Choose a region: the words light up by its image-to-text attention. The word-by-region
matrix beside it shows every weight at once; clicking a cell chooses that word and region.
The lambda sliders change the softmax temperatures and recompute the attention live.
A model trained with <start> and <end> (the config's ``start_end_tokens``, as SCAN) reads them as
words, and they take part in the attention: they are listed, and drawn, as words.
"""
from __future__ import annotations

import html
from contextlib import contextmanager

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import plotly.graph_objects as go

from mlasm.data.vocab import START
from mlasm.model import PairExplanation
from widgets.drawing import draw_pair_attention, region_names, shaded_words_html, show_figure, show_message
from widgets.selection import Selection, SelectionControls, query_notice, toggle_buttons
from widgets.session import WorkbenchSession

MATRICES = {
    "t2i": "t2i: each word's weights over the regions (rows sum to 1)",
    "i2t": "i2t: each region's weights over the words (columns sum to 1)",
}
LAMBDA_RANGE = (0.5, 30.0)  # widened to twice a model's own lambda when that is larger


def plotly_label(word: str) -> str:
    """A word as plotly shows it: its text labels read a few HTML tags, so <start> must be escaped."""
    return word.replace("<", "&lt;").replace(">", "&gt;")


class AttentionExplorer(widgets.VBox):
    """The attention of the selected pair (image, caption or typed text), explored word by word.

    State a program can read: ``explanation`` (the current PairExplanation), ``word`` (a
    position in ``words``), ``region`` (an index into the image's boxes and features),
    ``region_weights`` (the word's t2i weights, aligned with ``explanation.region_indices``),
    ``word_weights`` (the region's i2t weights over ``words``), ``matrix`` (what the heatmap
    shows), ``figure`` (the last matplotlib picture, closed; None without boxes).
    """

    def __init__(self, session: WorkbenchSession, selection: Selection | None = None, controls: bool = True):
        self.session = session
        self.selection = selection if selection is not None else Selection.start(session)
        config = session.model.config
        self.explanation: PairExplanation | None = None
        self.words: list[str] = []
        self.figure = None
        self._pair = None        # (image, text side) of the explanation shown
        self._quiet = False      # True while controls are set by the explorer itself

        self.header = widgets.HTML()
        self.word_choice = widgets.Dropdown(description="word", layout=widgets.Layout(width="230px"))
        self.region_choice = widgets.Dropdown(description="region", layout=widgets.Layout(width="230px"))
        self.matrix_choice = toggle_buttons(list(MATRICES), "matrix", "60px", tooltips=list(MATRICES.values()))
        self.lambda_t2i, self.lambda_i2t = (
            widgets.FloatSlider(value=value, min=LAMBDA_RANGE[0], max=max(LAMBDA_RANGE[1], 2 * value), step=0.5,
                                description=f"λ {direction}", continuous_update=False, readout_format=".1f",
                                layout=widgets.Layout(width="340px"))
            for direction, value in (("t2i", config.lambda_t2i), ("i2t", config.lambda_i2t)))
        self.reset_lambdas = widgets.Button(description="trained λ", tooltip="back to the model's temperatures",
                                            layout=widgets.Layout(width="100px"))
        self.picture = widgets.Output(layout=widgets.Layout(width="440px", min_height="420px"))
        self.heatmap = go.FigureWidget(go.Heatmap(z=[[0.0]], colorscale="Viridis", zmin=0,
                                                  colorbar=dict(title=dict(text="weight", side="right"),
                                                                thickness=12)))
        self.heatmap.update_layout(width=520, height=420, margin=dict(l=90, r=20, t=50, b=60),
                                   xaxis=dict(title="region", tickangle=-60),
                                   yaxis=dict(autorange="reversed"), title=dict(font=dict(size=12)))
        self.word_row = widgets.HTML()
        help_text = widgets.HTML(
            "<small>λ sharpens each softmax: high λ puts the weight on the best few regions (words), low λ "
            "spreads it. Scores change with λ; the ranking uses the trained λ. Click a matrix cell to choose "
            "its word and region.</small>")

        children = [SelectionControls(session, self.selection)] if controls else []
        children += [
            self.header,
            widgets.HBox([self.word_choice, self.region_choice, self.matrix_choice]),
            widgets.HBox([self.lambda_t2i, self.lambda_i2t, self.reset_lambdas]),
            widgets.HBox([self.picture, self.heatmap]),
            self.word_row,
            help_text,
        ]
        super().__init__(children)

        self.word_choice.observe(self._focus_changed, names="value")
        self.region_choice.observe(self._focus_changed, names="value")
        self.matrix_choice.observe(lambda change: self._draw_matrix(), names="value")
        self.lambda_t2i.observe(self._lambdas_changed, names="value")
        self.lambda_i2t.observe(self._lambdas_changed, names="value")
        self.reset_lambdas.on_click(lambda button: self.set_lambdas(config.lambda_t2i, config.lambda_i2t))
        self.heatmap.data[0].on_click(self._cell_clicked)
        self.selection.observe(self._selection_changed, names=["image", "caption", "text", "query"])
        self._selection_changed()

    # --- what is shown -----------------------------------------------------------------

    @property
    def word(self) -> int | None:
        """The chosen word: its position in ``words`` (an attention row)."""
        return self.word_choice.value

    @property
    def region(self) -> int | None:
        """The chosen region: its index in the image's boxes and features (not among the kept regions)."""
        return self.region_choice.value

    @property
    def region_weights(self) -> np.ndarray:
        """(R,) the chosen word's text-to-image weights over the kept regions."""
        return self.explanation.t2i_attention[self.word]

    @property
    def word_weights(self) -> np.ndarray:
        """(L,) the chosen region's image-to-text weights over the words."""
        return self.explanation.i2t_attention[self._region_position(self.region)]

    @property
    def matrix(self) -> np.ndarray:
        """(L, R) the heatmap: t2i weights, or i2t weights transposed to the same words x regions layout."""
        if self.matrix_choice.value == "t2i":
            return self.explanation.t2i_attention
        return self.explanation.i2t_attention.T

    def _region_position(self, region: int) -> int:
        return int(np.flatnonzero(self.explanation.region_indices == region)[0])

    # --- user actions ------------------------------------------------------------------

    def select(self, word: int | None = None, region: int | None = None) -> None:
        """Choose a word (position) and/or a region (index in the image), redrawing once."""
        with self._quietly():
            if word is not None:
                self.word_choice.value = int(word)
            if region is not None:
                self.region_choice.value = int(region)
        self._draw_focus()

    def set_lambdas(self, lambda_t2i: float, lambda_i2t: float) -> None:
        """Set both temperatures, recomputing the attention once."""
        with self._quietly():
            self.lambda_t2i.value, self.lambda_i2t.value = lambda_t2i, lambda_i2t
        self._reload(keep_focus=True)

    @contextmanager
    def _quietly(self):
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def _selection_changed(self, change=None) -> None:
        pair = (self.selection.image, self.selection.text_side)
        if pair != self._pair:  # several traits change in one select(): redraw once
            self._pair = pair
            self._reload(keep_focus=False)

    def _lambdas_changed(self, change) -> None:
        if not self._quiet:
            self._reload(keep_focus=True)

    def _focus_changed(self, change) -> None:
        if not self._quiet and change["new"] is not None:
            self._draw_focus()

    def _cell_clicked(self, trace, points, state) -> None:
        if points.point_inds:
            region_position, word = int(points.xs[0]), int(points.ys[0])
            self.select(word=word, region=int(self.explanation.region_indices[region_position]))

    # --- computing and drawing ---------------------------------------------------------

    def _reload(self, keep_focus: bool) -> None:
        image, text_side = self._pair
        try:
            self.explanation = self.session.explain(image, text_side, self.lambda_t2i.value, self.lambda_i2t.value)
        except ValueError as error:  # a typed query with no words
            self.explanation = None
            self.header.value = f"<span style='color:#b00'>{html.escape(str(error))}</span>"
            show_message(self.picture, "Nothing to explain.")
            return
        self.words = self.session.tokens(text_side)
        if not keep_focus:
            self._reset_focus(image)
        self._draw_header()
        self._draw_matrix()
        self._draw_focus()

    def _reset_focus(self, image: int) -> None:
        """New pair: list its words and regions; start on a word that names an object, and its top region."""
        explanation = self.explanation
        names = region_names(self.session, image, explanation.region_indices)
        word = self._first_word()
        region = int(explanation.region_indices[explanation.t2i_attention[word].argmax()])
        unknown = set(self.session.unknown_words(self._pair[1]))
        with self._quietly():
            self.word_choice.options = [(f"{p}: {w}" + (" (unknown)" if w in unknown else ""), p)
                                        for p, w in enumerate(self.words)]
            self.region_choice.options = [(name, int(r)) for name, r in zip(names, explanation.region_indices)]
            self.word_choice.value, self.region_choice.value = word, region

    def _first_word(self) -> int:
        """The first grounded word (one that names an object) where the split says, else the most focused word."""
        text_side, grounding = self._pair[1], self.session.split.grounding
        if not isinstance(text_side, str) and grounding is not None and grounding[text_side]:
            # grounding counts the caption's own tokens; <start>, where the model reads it, is row 0
            return int(grounding[text_side][0][0]) + int(self.words[:1] == [START])
        return int(self.explanation.t2i_attention.max(axis=1).argmax())

    def _draw_header(self) -> None:
        image, text_side = self._pair
        session, explanation = self.session, self.explanation
        config = session.model.config
        split = session.split
        text = html.escape(session.caption_text(text_side))
        if isinstance(text_side, str):
            source = "typed query"
        else:
            truth = "its own image" if split.caption_to_image[text_side] == image else \
                f"caption of image {split.caption_to_image[text_side]}"
            source = f"caption {text_side} ({truth})"
        scores = " · ".join(f"{level} {value:.3f}" for level, value in explanation.scores.items()
                            if level in session.levels)
        trained = (explanation.lambda_t2i, explanation.lambda_i2t) == (config.lambda_t2i, config.lambda_i2t)
        at = "trained λ" if trained else (
            f"λ t2i {explanation.lambda_t2i:g}, λ i2t {explanation.lambda_i2t:g} (trained λ give final "
            f"{session.explain(image, text_side).scores['final']:.3f})")
        self.header.value = (
            f"<div style='font-size:16px'><b>“{text}”</b></div>"
            f"<div style='color:#555'>{source} · image {image} ({html.escape(split.image_ids[image])})</div>"
            f"<div>scores at {at}: {scores}</div>"
            f"<div>{query_notice(session, self.selection)}</div>")

    def _draw_matrix(self) -> None:
        if self.explanation is None:
            return
        explanation, image = self.explanation, self._pair[0]
        names = region_names(self.session, image, explanation.region_indices)
        matrix = self.matrix
        hover = [[f"“{plotly_label(word)}” · {name}: {weight:.3f}" for name, weight in zip(names, row)]
                 for word, row in zip(self.words, matrix)]
        direction = self.matrix_choice.value
        with self.heatmap.batch_update():
            trace = self.heatmap.data[0]
            trace.z, trace.zmax = matrix, max(1e-6, float(matrix.max()))
            trace.x, trace.y = list(range(matrix.shape[1])), list(range(matrix.shape[0]))
            trace.text, trace.hovertemplate = hover, "%{text}<extra></extra>"
            self.heatmap.layout.xaxis.update(tickvals=list(range(len(names))), ticktext=names)
            self.heatmap.layout.yaxis.update(tickvals=list(range(len(self.words))),
                                             ticktext=[plotly_label(word) for word in self.words])
            self.heatmap.layout.title.text = f"{MATRICES[direction]}, λ = " + \
                f"{explanation.lambda_t2i if direction == 't2i' else explanation.lambda_i2t:g}"
            self.heatmap.layout.height = max(320, 140 + 24 * len(self.words))

    def _draw_cell_marker(self) -> None:
        x, y = self._region_position(self.region), self.word
        self.heatmap.layout.shapes = [dict(type="rect", x0=x - 0.5, x1=x + 0.5, y0=y - 0.5, y1=y + 0.5,
                                           line=dict(color="#ff2d55", width=3))]

    def _draw_focus(self) -> None:
        """Redraw what depends on the chosen word and region: picture, word row, matrix marker."""
        if self.explanation is None:
            return
        word, region, image = self.word, self.region, self._pair[0]
        explanation = self.explanation
        self.word_row.value = (
            f"<div style='margin-top:6px'><b>region r{region}</b> reads the words (image-to-text, "
            f"λ = {explanation.lambda_i2t:g}):</div>"
            + shaded_words_html(self.words, self.word_weights, selected=word,
                                unknown=set(self.session.unknown_words(self._pair[1]))))
        self._draw_cell_marker()
        if self.session.split.boxes is None:
            self.figure = None
            show_message(self.picture, "This split has no region boxes, so the attention cannot be placed on a "
                                       "picture: the matrix on the right shows every weight.")
            return
        fig, ax = plt.subplots(figsize=(4.4, 4.4))
        draw_pair_attention(self.session, image, explanation.region_indices, self.region_weights, ax,
                            f"“{self.words[word]}” looks at (text-to-image, λ = {explanation.lambda_t2i:g})",
                            highlight=region)
        fig.tight_layout()
        self.figure = fig
        show_figure(self.picture, fig)
