"""AttentionExplorer: where each word of a caption looks in the image, and what each region reads.

Choose a word: the regions light up by its text-to-image attention (outlined, the rest of the picture paler).
Choose a region: the words light up by its image-to-text attention. The word-by-region
matrix beside it shows every weight at once; clicking a cell chooses that word and region.
The lambda sliders change the softmax temperatures and recompute the attention live.
A model trained with <start> and <end> (the config's ``start_end_tokens``, as SCAN) reads them as
words, and they take part in the attention: they are listed, and drawn, as words.
"""
from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from mlasm.data.vocab import START, rows_before_words
from mlasm.model import PairExplanation
from widgets.base import LinkedView
from widgets.drawing import (PictureView, draw_pair_attention, keep_plotly_state, region_names, regions_for_words,
                             shaded_words_html)
from widgets.selection import Selection, toggle_buttons
from mlasm.session import WorkbenchSession

MATRICES = {
    "t2i": "t2i: each word's weights over the regions (rows sum to 1)",
    "i2t": "i2t: each region's weights over the words (columns sum to 1)",
}
LAMBDA_RANGE = (0.5, 30.0)  # widened to twice a model's own lambda when that is larger
# Words that name nothing: a typed query starts on its first word that is not one of them.
FUNCTION_WORDS = frozenset(
    "a an the this that these those some any one two three of on in at to from by with without and or but "
    "is are was were be been being has have had there here it its their his her they he she we you i "
    "next near above below under over behind beside between into onto while who which".split())


def plotly_label(word: str) -> str:
    """A word as plotly shows it: its text labels read a few HTML tags, so <start> must be escaped."""
    return word.replace("<", "&lt;").replace(">", "&gt;")


class AttentionExplorer(LinkedView):
    """The attention of the selected pair (image, caption or typed text), explored word by word.

    State a program can read: ``explanation`` (the current PairExplanation), ``word`` (a
    position in ``words``), ``region`` (an index into the image's boxes and features),
    ``region_weights`` (the word's t2i weights, aligned with ``explanation.region_indices``),
    ``word_weights`` (the region's i2t weights over ``words``), ``matrix`` (what the heatmap
    shows), ``figure`` (the last matplotlib picture; None without boxes), ``shown_pair``
    ((image, text side) of the explanation).
    """

    def __init__(self, session: WorkbenchSession, selection: Selection | None = None, controls: bool = True):
        config = session.model.config
        self.explanation: PairExplanation | None = None
        self.words: list[str] = []
        self.shown_pair = None

        self.header = widgets.HTML()
        self.word_choice = widgets.Dropdown(description="word", layout=widgets.Layout(width="230px"))
        self.region_choice = widgets.Dropdown(description="region", layout=widgets.Layout(width="230px"))
        # a SCAN model has one direction: only its matrix, slider and readings are offered
        self.directions = session.directions
        self.matrix_choice = toggle_buttons(list(self.directions), "matrix", "60px",
                                            tooltips=[MATRICES[d] for d in self.directions])
        self.lambda_t2i, self.lambda_i2t = (  # a direction the model lacks has its slider hidden
            widgets.FloatSlider(value=value, min=LAMBDA_RANGE[0], max=max(LAMBDA_RANGE[1], 2 * value), step=0.5,
                                description=f"λ {direction}", continuous_update=False, readout_format=".1f",
                                layout=widgets.Layout(width="340px",
                                                      display=None if direction in self.directions else "none"))
            for direction, value in (("t2i", config.lambda_t2i), ("i2t", config.lambda_i2t)))
        self.reset_lambdas = widgets.Button(description="trained λ", tooltip="back to the model's temperatures",
                                            layout=widgets.Layout(width="100px"))
        self.picture = PictureView(width=380, min_height=380, save_as="attention")
        self.heatmap = go.FigureWidget(go.Heatmap(z=[[0.0]], colorscale="Viridis", zmin=0,
                                                  colorbar=dict(thickness=12)))  # the title says "weights"
        # the title on the left and plotly's toolbar upright on the right, so the toolbar covers no title
        self.heatmap.update_layout(width=540, height=420, margin=dict(l=90, r=90, t=64, b=60),
                                   xaxis=dict(title="region", tickangle=-60), modebar=dict(orientation="v"),
                                   yaxis=dict(autorange="reversed"),
                                   title=dict(font=dict(size=12), x=0.01, xanchor="left"))
        self.word_row = widgets.HTML()
        help_text = widgets.HTML(
            "<small>λ sharpens each softmax: high λ puts the weight on the best few regions (words), low λ "
            "spreads it. Scores change with λ; the ranking uses the trained λ. Click a matrix cell to choose "
            "its word and region.</small>")

        super().__init__(session, selection, controls, [
            self.header,
            widgets.HBox([self.word_choice, self.region_choice, self.matrix_choice]),
            widgets.HBox([self.lambda_t2i, self.lambda_i2t, self.reset_lambdas]),
            widgets.HBox([self.picture, self.heatmap], layout=widgets.Layout(flex_flow="row wrap")),
            self.word_row,
            help_text,
        ])
        self.on_user_change(self.word_choice, lambda value: self._draw_focus())
        self.on_user_change(self.region_choice, lambda value: self._draw_focus())
        self.matrix_choice.observe(lambda change: self._draw_matrix(), names="value")
        self.on_user_change(self.lambda_t2i, lambda value: self._reload(keep_focus=True))
        self.on_user_change(self.lambda_i2t, lambda value: self._reload(keep_focus=True))
        self.reset_lambdas.on_click(lambda button: self.set_lambdas(config.lambda_t2i, config.lambda_i2t))
        self.heatmap.data[0].on_click(self._cell_clicked)
        self.refresh()

    @property
    def figure(self):
        """The last matplotlib picture drawn; None without boxes."""
        return self.picture.figure

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
        """(R,) the chosen word's text-to-image weights over the kept regions (a SCAN i2t model: each
        region's image-to-text weight on the word)."""
        return regions_for_words(self.explanation, self.word)[0]

    @property
    def word_weights(self) -> np.ndarray:
        """(L,) the chosen region's image-to-text weights over the words (a SCAN t2i model: each word's
        text-to-image weight on the region)."""
        if "i2t" in self.directions:
            return self.explanation.i2t_attention[self._region_position(self.region)]
        return self.explanation.t2i_attention[:, self._region_position(self.region)]

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
        """Choose a word (position) and/or a region (index in the image) of the selection's pair, redrawing once."""
        self.catch_up()  # in a hidden tab, the pair may have changed since it was drawn
        with self.quietly():
            if word is not None:
                self.word_choice.value = int(word)
            if region is not None:
                self.region_choice.value = int(region)
        self._draw_focus()

    def set_lambdas(self, lambda_t2i: float, lambda_i2t: float) -> None:
        """Set both temperatures, recomputing the attention once."""
        with self.quietly():
            self.lambda_t2i.value, self.lambda_i2t.value = lambda_t2i, lambda_i2t
        self._reload(keep_focus=True)

    def show_selection(self) -> None:
        self.shown_pair = self.pair
        self._reload(keep_focus=False)

    def _cell_clicked(self, trace, points, state) -> None:
        if points.point_inds:
            region_position, word = int(points.xs[0]), int(points.ys[0])
            self.select(word=word, region=int(self.explanation.region_indices[region_position]))

    # --- computing and drawing ---------------------------------------------------------

    def _reload(self, keep_focus: bool) -> None:
        image, text_side = self.shown_pair
        try:
            self.explanation = self.session.explain(image, text_side, self.lambda_t2i.value, self.lambda_i2t.value)
        except ValueError as error:  # a typed query with no words
            self.explanation = None
            self.header.value = f"<span style='color:#b00'>{html.escape(str(error))}</span>"
            self.picture.show_message("Nothing to explain.")
            return
        self.words = self.session.tokens(text_side)
        if not keep_focus:
            self._reset_focus(image)
        self._draw_header()
        self._draw_matrix(keep_state=False)  # _draw_focus keeps the heatmap's state once, marker included
        self._draw_focus()

    def _reset_focus(self, image: int) -> None:
        """New pair: list its words and regions; start on a word that names an object, and its top region."""
        explanation = self.explanation
        names = region_names(self.session, image, explanation.region_indices)
        word = self._first_word()
        region = int(explanation.region_indices[regions_for_words(explanation, word)[0].argmax()])
        unknown = set(self.session.unknown_words(self.shown_pair[1]))
        word_labels = [f"{p}: {w}" + (" (unknown)" if w in unknown else "") for p, w in enumerate(self.words)]
        with self.quietly():
            self.word_choice.options = list(zip(word_labels, range(len(self.words))))
            self.region_choice.options = [(name, int(r)) for name, r in zip(names, explanation.region_indices)]
            self.word_choice.value, self.region_choice.value = word, region
        # wide enough for the longest label: a cut label hides "(unknown)" or the detector's label
        for menu, labels in ((self.word_choice, word_labels), (self.region_choice, names)):
            menu.layout.width = f"{max(230, 110 + 8 * max(map(len, labels), default=0))}px"

    def _first_word(self) -> int:
        """The first word that names something: the split's first grounded word (one that names an object),
        else, for a typed text, its first word that is not a function word ("a", "on", ...)."""
        text_side, grounding = self.shown_pair[1], self.session.split.grounding
        if not isinstance(text_side, str) and grounding is not None and grounding[text_side]:
            return int(grounding[text_side][0][0]) + rows_before_words(self.words[:1] == [START])
        naming = [p for p, w in enumerate(self.words) if w.isalnum() and w.lower() not in FUNCTION_WORDS]
        return naming[0] if naming else int(self.matrix.max(axis=1).argmax())

    def _draw_header(self) -> None:
        image, text_side = self.shown_pair
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
            ", ".join(f"λ {d} {getattr(explanation, 'lambda_' + d):g}" for d in session.directions)
            + " (trained λ give final "
            f"{session.explain(image, text_side).scores['final']:.3f})")
        self.header.value = (
            f"<div style='font-size:16px'><b>“{text}”</b></div>"
            f"<div style='color:#555'>{source} · image {image} ({html.escape(split.image_ids[image])})</div>"
            f"<div>scores at {at}: {scores}</div>")

    def _draw_matrix(self, keep_state: bool = True) -> None:
        if self.explanation is None:
            return
        explanation, image = self.explanation, self.shown_pair[0]
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
            # on two lines: a narrow heatmap (few regions) would cut one long line
            self.heatmap.layout.title.text = MATRICES[direction].replace(" (", "<br>(") + ", λ = " + \
                f"{explanation.lambda_t2i if direction == 't2i' else explanation.lambda_i2t:g}"
            self.heatmap.layout.height = max(320, 140 + 24 * len(self.words))
            self.heatmap.layout.width = min(640, max(420, 200 + 26 * len(names)))
        if keep_state:
            keep_plotly_state(self.heatmap)

    def _draw_cell_marker(self) -> None:
        x, y = self._region_position(self.region), self.word
        self.heatmap.layout.shapes = [dict(type="rect", x0=x - 0.5, x1=x + 0.5, y0=y - 0.5, y1=y + 0.5,
                                           line=dict(color="#ff2d55", width=3))]
        keep_plotly_state(self.heatmap)

    def _draw_focus(self) -> None:
        """Redraw what depends on the chosen word and region: picture, word row, matrix marker."""
        if self.explanation is None:
            return
        word, region, image = self.word, self.region, self.shown_pair[0]
        explanation = self.explanation
        reads = (f"reads the words (image-to-text, λ = {explanation.lambda_i2t:g})" if "i2t" in self.directions
                 else f"is looked at by the words (text-to-image, λ = {explanation.lambda_t2i:g})")
        self.word_row.value = (
            f"<div style='margin-top:6px'><b>region r{region}</b> {reads}:</div>"
            + shaded_words_html(self.words, self.word_weights, selected=word,
                                unknown=set(self.session.unknown_words(self.shown_pair[1]))))
        self._draw_cell_marker()
        if self.session.split.boxes is None:
            self.picture.show_message("This split has no region boxes, so the attention cannot be placed on a "
                                      "picture: the matrix on the right shows every weight.")
            return
        self.picture.draw((3.8, 3.8), lambda ax: draw_pair_attention(
            self.session, image, explanation.region_indices, self.region_weights, ax,
            f"“{self.words[word]}” looks at (text-to-image, λ = {explanation.lambda_t2i:g})" if "t2i" in self.directions
            else f"regions attending to “{self.words[word]}” (image-to-text, λ = {explanation.lambda_i2t:g})",
            highlight=region), key=(self.shown_pair, explanation.lambda_t2i, explanation.lambda_i2t, word, region))
