"""EmbeddingMap: images and captions in two dimensions, coloured by what the data knows about them.

MLASM scores a pair from the pair's own attention, so no single vector per image or per
caption is what it compares. The map uses the nearest pair-independent vectors:

* an image: its global vector h (``ImageEncoding.glob``), which the semantic level mixes in
  through the gate; a local-only model (no h) uses the mean of its region vectors v_r;
* a caption: the semantic level's text vector with every word weighted equally,
  l2norm(W_t mean_l(u_l) + b_t) (spec 4 with uniform word weights instead of the
  pair's attention); a local-only model uses the mean of its word vectors u_l.

Both are unit-normalised. With both kinds shown, each kind is first centred on its own mean
(``kind_centred``): images and captions sit apart by a constant offset (the "modality gap"), which
would otherwise be the first principal component and squeeze each kind into a thin band. The
points are then projected onto their first two principal components (``principal_components_2d``,
numpy), each axis signed so that its largest coordinate is positive: the same vectors always give
the same map. Vectors, coordinates and hover labels are computed once per session and kept
(``map_of``): a second workbench on the session (a second visitor's, forked after ``mlasm serve``'s
warm process made them) opens the map without computing them again.

Thousands of points fill a few hundred pixels, so single points overlap in the whole map: the map
opens zoomed to the selection (``zoom``): the axes span the selected item's ``ZOOM_NEIGHBOURS``
nearest points on the map, with a margin, and follow the selection; "whole map" shows everything.
"""
from __future__ import annotations

import html
import weakref

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import torch

from mlasm.model import l2norm, masked_mean
from widgets.base import LinkedView
from widgets.drawing import keep_plotly_state
from widgets.selection import Selection, toggle_buttons
from mlasm.session import WorkbenchSession

IMAGE_COLOUR, CAPTION_COLOUR, ABSENT_COLOUR = "#1f77b4", "#ff7f0e", "#c7c7c7"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
IMAGES, CAPTIONS, SELECTED = 0, 1, 2  # trace order; the traces after them are legend entries only
MAX_CATEGORIES = len(PALETTE)
SHOW = {"images and captions": ("image", "caption"), "images": ("image",), "captions": ("caption",)}
ZOOMS = ("zoom to the selection", "whole map")
ZOOM_NEIGHBOURS = 40  # the zoomed view spans this many nearest points of the selected one (and it)
ZOOM_MARGIN = 0.25    # of the span, added on each side
PICKED = ("list", "group")  # attribute kinds coloured by one chosen value: has it, or not


@torch.no_grad()
def embedding_vectors(session: WorkbenchSession) -> tuple[np.ndarray, np.ndarray]:
    """(N, d) image vectors and (M, d) caption vectors, unit length (see the module docstring for which)."""
    model, img, cap = session.model, session.images, session.captions
    images = img.glob if img.glob is not None else masked_mean(img.regions, img.mask[..., None], 1)
    word_mask = (torch.arange(cap.words.shape[1], device=cap.words.device) < cap.lengths[:, None])[..., None]
    captions = masked_mean(cap.words, word_mask, 1)
    if model.config.uses_global_level:
        captions = model.text_context_proj(captions)
    return l2norm(images).cpu().numpy(), l2norm(captions).cpu().numpy()


def principal_components_2d(vectors: np.ndarray) -> np.ndarray:
    """(K, 2) coordinates on the first two principal components of the vectors.

    The components are the top eigenvectors of the (d, d) scatter matrix, the right singular
    vectors of the centred data: a d x d problem however many points there are. Each axis is
    signed so that its coordinate of largest magnitude is positive (an eigenvector's sign is arbitrary).
    """
    centred = (vectors - vectors.mean(axis=0)).astype(np.float64)
    _, eigenvectors = np.linalg.eigh(centred.T @ centred)         # ascending eigenvalues
    points = centred @ eigenvectors[:, ::-1][:, :2]
    if len(points):
        points *= np.where(points[np.abs(points).argmax(axis=0), [0, 1]] < 0, -1.0, 1.0)
    return points


def kind_centred(vectors: dict[str, np.ndarray], kinds: tuple[str, ...]) -> np.ndarray:
    """The vectors of ``kinds`` stacked, each kind minus its own mean (one kind alone: as it is)."""
    if len(kinds) == 1:
        return vectors[kinds[0]]
    return np.concatenate([vectors[kind] - vectors[kind].mean(axis=0) for kind in kinds])


def zoom_ranges(points: np.ndarray, centre: np.ndarray, neighbours: int = ZOOM_NEIGHBOURS,
                margin: float = ZOOM_MARGIN) -> tuple[list[float], list[float]]:
    """x and y ranges around ``centre`` spanning its ``neighbours`` nearest ``points`` (and it), a margin added."""
    near = points[np.argsort(np.linalg.norm(points - centre, axis=1), kind="stable")[:neighbours + 1]]
    low, high = np.minimum(near.min(axis=0), centre), np.maximum(near.max(axis=0), centre)
    span = np.maximum(high - low, 1e-6)
    return ([float(low[0] - margin * span[0]), float(high[0] + margin * span[0])],
            [float(low[1] - margin * span[1]), float(high[1] + margin * span[1])])


class _SessionMap:
    """What the map of one session needs, computed once: vectors, hover labels, coordinates per choice."""

    def __init__(self, session: WorkbenchSession):
        split = session.split
        self.vectors = dict(zip(("image", "caption"), embedding_vectors(session)))
        self.hover = {
            "image": [f"image {i} ({html.escape(split.image_ids[i])})" for i in range(split.n_images)],
            "caption": [f"caption {c} (image {i})<br>{html.escape(text)}"
                        for c, (i, text) in enumerate(zip(split.caption_to_image, split.captions))],
        }
        self._coordinates: dict[str, dict[str, np.ndarray]] = {}

    def coordinates(self, show: str) -> dict[str, np.ndarray]:
        """Kind -> (n, 2) coordinates, from a projection fitted on the kinds shown."""
        if show not in self._coordinates:
            shown = SHOW[show]
            points = principal_components_2d(kind_centred(self.vectors, shown))
            self._coordinates[show] = dict(zip(shown, np.split(points, [len(self.vectors[shown[0]])])))
        return self._coordinates[show]


_MAPS: "weakref.WeakKeyDictionary[WorkbenchSession, _SessionMap]" = weakref.WeakKeyDictionary()


def map_of(session: WorkbenchSession, show: str | None = None) -> _SessionMap:
    """The session's map data, made on first use and kept while the session lives; ``show``: also project now."""
    if session not in _MAPS:
        _MAPS[session] = _SessionMap(session)
    if show is not None:
        _MAPS[session].coordinates(show)
    return _MAPS[session]


def attribute_options(attributes: list[dict] | None) -> dict[str, str]:
    """Attribute name -> how to colour by it, for the keys every image has.

    "number": a colour scale (fractional numbers with more than MAX_CATEGORIES values);
    "category": one colour per value (at most MAX_CATEGORIES values); "group" (whole numbers with
    more values, such as ShapeScenes' 250 family ids: labels, not quantities, so a colour scale
    would suggest an order that is not there): whether it is the chosen value; "list" (e.g. the
    colours in a scene): whether it contains a chosen value.
    """
    if not attributes:
        return {}
    kinds = {}
    for key in attributes[0]:
        values = [a.get(key) for a in attributes]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            whole = all(float(v).is_integer() for v in values)
            kinds[key] = "category" if len(set(values)) <= MAX_CATEGORIES else "group" if whole else "number"
        elif all(isinstance(v, (str, bool)) for v in values):
            kinds[key] = "category"
        elif all(isinstance(v, (list, tuple)) and all(isinstance(x, (str, int)) for x in v) for v in values):
            kinds[key] = "list"
    return kinds


class EmbeddingMap(LinkedView):
    """A scatter of images (squares) and captions (dots); clicking a point selects it everywhere.

    ``coordinates``: kind -> (n, 2) of the points shown ("image", "caption"); the selected
    image and caption are ringed.
    """

    def __init__(self, session: WorkbenchSession, selection: Selection | None = None, controls: bool = True):
        split = session.split
        self._map = map_of(session)
        self.vectors = self._map.vectors
        self.attribute_kinds = attribute_options(split.image_attributes)
        self.coordinates: dict[str, np.ndarray] = {}
        self._owner = {"image": np.arange(split.n_images), "caption": split.caption_to_image}  # image of each point
        self._hover = self._map.hover

        self.show_choice = toggle_buttons(list(SHOW), "show", "150px")
        self.zoom = toggle_buttons(list(ZOOMS), "view", "170px",
                                   tooltips=[f"the selected image's {ZOOM_NEIGHBOURS} nearest points on the map; "
                                             "follows the selection", "every point"])
        self.colour_choice = widgets.Dropdown(options=["image or caption"] + list(self.attribute_kinds),
                                              description="colour by", layout=widgets.Layout(width="260px"))
        self.value_choice = widgets.Dropdown(layout=widgets.Layout(width="240px"))
        self.note = widgets.HTML(
            "<small>Squares: images (global vector h); dots: captions (text vector of the semantic level, words "
            "weighted equally). Click a point to select it everywhere (a caption selects its image too); the "
            "ringed points are the selected image and caption. The view opens zoomed to the selection's "
            "neighbourhood, where single points can be told apart; \u201cwhole map\u201d shows every point "
            "(drag a box to zoom in anywhere). The hover label names the point a click picks. Each kind is "
            "centred on its own mean before the projection, so that the map shows how items differ, not the "
            "constant gap between images and captions.</small>")
        self.figure = go.FigureWidget()
        # the title on the left and plotly's toolbar upright on the right, so the toolbar covers no title,
        # and the legend in a row under the plot, where the toolbar is not;
        # a click picks the point under the pointer only (hoverdistance in pixels), not a near neighbour
        self.figure.update_layout(width=760, height=640, margin=dict(l=40, r=50, t=40, b=90),
                                  title=dict(x=0.01, xanchor="left"), modebar=dict(orientation="v"),
                                  xaxis=dict(title="PC 1", zeroline=False), yaxis=dict(title="PC 2", zeroline=False),
                                  legend=dict(itemclick=False, itemdoubleclick=False, orientation="h",
                                              x=0, xanchor="left", y=-0.1, yanchor="top"), hovermode="closest",
                                  hoverdistance=6)
        super().__init__(session, selection, controls, [widgets.HBox([self.show_choice, self.zoom]),
                                                        widgets.HBox([self.colour_choice, self.value_choice]),
                                                        self.note, self.figure])
        self.show_choice.observe(lambda change: self._draw(), names="value")
        self.zoom.observe(lambda change: self._zoom_to_selection(), names="value")
        self.colour_choice.observe(self._colour_changed, names="value")
        self.on_user_change(self.value_choice, lambda value: self._draw())
        self._colour_changed()
        self.refresh()

    def selection_key(self):
        return self.selection.image, self.selection.caption

    def show_selection(self) -> None:
        self._draw_selected()

    # --- colouring ---------------------------------------------------------------------

    def _colour_changed(self, change=None) -> None:
        key = self.colour_choice.value
        kind = self.attribute_kinds.get(key)
        self.value_choice.layout.display = None if kind in PICKED else "none"
        if kind in PICKED:
            attributes = self.session.split.image_attributes
            values = _sorted({v for a in attributes for v in (a[key] if kind == "list" else [a[key]])})
            # a group starts on the selected image's own (its family, say)
            start = attributes[self.selection.image][key] if kind == "group" else values[0]
            with self.quietly():
                self.value_choice.description = "contains" if kind == "list" else "is"
                self.value_choice.options = values
                self.value_choice.value = start
        self._draw()

    def image_values(self) -> np.ndarray | None:
        """(N,) what colours each image (its captions take their image's): None when colouring by kind."""
        key = self.colour_choice.value
        kind = self.attribute_kinds.get(key)
        if kind is None:
            return None
        attributes = self.session.split.image_attributes
        if kind == "list":
            return np.array([self.value_choice.value in a[key] for a in attributes])
        if kind == "group":
            return np.array([a[key] == self.value_choice.value for a in attributes])
        return np.array([a[key] for a in attributes])

    # --- drawing -----------------------------------------------------------------------

    def _draw(self) -> None:
        shown = SHOW[self.show_choice.value]
        self.coordinates = self._map.coordinates(self.show_choice.value)
        centred = " (each kind centred)" if len(shown) > 1 else ""
        self.figure.layout.title.text = f"{self.show_choice.value}, first two principal components{centred}"
        values = self.image_values()
        colours, legend, colour_bar = self._colours(values)
        hover = self._hover
        if values is not None:
            name = self.colour_choice.value
            raw = [a[name] for a in self.session.split.image_attributes]
            hover = {kind: [f"{text}<br>{name}: {raw[i]}" for text, i in zip(texts, self._owner[kind])]
                     for kind, texts in hover.items()}
        with self.figure.batch_update():
            self.figure.data = []
            for kind, symbol, size in (("image", "square", 8), ("caption", "circle", 5)):
                xy = self.coordinates.get(kind, np.empty((0, 2)))
                marker = dict(symbol=symbol, size=size, line=dict(width=0.5, color="white"),
                              color=colours[kind] if kind in shown else None)
                if colour_bar is not None:  # one scale for both kinds, its bar drawn once
                    marker.update(colorscale="Viridis", cmin=float(values.min()), cmax=float(values.max()),
                                  showscale=kind == shown[0], colorbar=dict(title=dict(text=colour_bar)))
                self.figure.add_scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name=f"{kind}s", marker=marker,
                                        hovertext=hover[kind] if kind in shown else None, hoverinfo="text",
                                        showlegend=values is None and kind in shown)
            self.figure.add_scatter(x=[], y=[], mode="markers", name="selected", hoverinfo="skip",
                                    marker=dict(size=18, symbol="circle-open", color="black", line=dict(width=2.5)))
            for label, colour in legend:
                self.figure.add_scatter(x=[None], y=[None], mode="markers", name=label,
                                        marker=dict(color=colour, size=9))
            for trace in self.figure.data[:SELECTED]:
                trace.on_click(self._point_clicked)
        self._draw_selected()
        keep_plotly_state(self.figure)  # the ring alone is not kept: a reloaded page rings the points of this draw

    def _colours(self, values):
        """Per kind, the marker colours; the legend entries (label, colour); a colour-bar title or None."""
        if values is None:
            return {"image": IMAGE_COLOUR, "caption": CAPTION_COLOUR}, [], None
        kind_of_attribute = self.attribute_kinds[self.colour_choice.value]
        if kind_of_attribute == "number":
            return ({kind: values[owner].astype(float) for kind, owner in self._owner.items()}, [],
                    self.colour_choice.value)
        if kind_of_attribute in PICKED:
            palette = {True: PALETTE[3], False: ABSENT_COLOUR}
            key, value = self.colour_choice.value, self.value_choice.value
            legend = ([(f"has {value}", palette[True]), ("has not", palette[False])] if kind_of_attribute == "list"
                      else [(f"{key} {value}", palette[True]), (f"other {key}", palette[False])])
        else:  # categories; colours repeat past MAX_CATEGORIES
            categories = _sorted(set(values.tolist()))
            palette = {c: PALETTE[n % len(PALETTE)] for n, c in enumerate(categories)}
            legend = [(str(c), palette[c]) for c in categories]
        return ({kind: [palette[v] for v in values[owner].tolist()] for kind, owner in self._owner.items()},
                legend, None)

    def _draw_selected(self) -> None:
        points = [self.coordinates[kind][index] for kind, index in
                  (("image", self.selection.image), ("caption", self.selection.caption)) if kind in self.coordinates]
        trace = self.figure.data[SELECTED]
        with self.figure.batch_update():
            trace.x = [p[0] for p in points]
            trace.y = [p[1] for p in points]
            self._zoom_to_selection()

    def view_ranges(self) -> tuple[list[float], list[float]] | None:
        """(x range, y range) of the zoomed view around the selection; None for the whole map."""
        if self.zoom.value != ZOOMS[0]:
            return None
        kind, index = ("image", self.selection.image) if "image" in self.coordinates else \
            ("caption", self.selection.caption)
        every = np.concatenate(list(self.coordinates.values()))
        return zoom_ranges(every, self.coordinates[kind][index])

    def _zoom_to_selection(self) -> None:
        ranges = self.view_ranges()
        x_range, y_range = (None, None) if ranges is None else ranges
        with self.figure.batch_update():
            self.figure.layout.xaxis.update(autorange=ranges is None, range=x_range)
            self.figure.layout.yaxis.update(autorange=ranges is None, range=y_range)

    def _point_clicked(self, trace, points, state) -> None:
        if not points.point_inds:
            return
        index = int(points.point_inds[0])
        split = self.session.split
        if points.trace_index == IMAGES:  # the image, with its first caption unless one of its own is selected
            own = split.image_to_captions(index)
            keep = self.selection.caption in own or not len(own)
            self.selection.select(image=index, caption=None if keep else int(own[0]))
        else:  # the caption and its own image: a matching pair, as everywhere else a caption is chosen
            self.selection.select(caption=index, image=int(split.caption_to_image[index]))


def _sorted(values) -> list:
    try:
        return sorted(values)
    except TypeError:  # mixed types
        return sorted(values, key=str)
