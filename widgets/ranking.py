"""RankingBrowser: a query and its top-k results, the ground truth marked with its rank.

The query is the selection's: a caption of the data or a typed text (images ranked, shown
as thumbnails) or an image (captions ranked). Each result is marked one of three ways: the
query's own item (its ground truth), *also true* (another item the caption is true of, where
the split knows: a valid alternative, not an error) or wrong; results of a typed text are not
judged. Choosing a result selects it everywhere, so the attention explorer can show why a
wrong result was preferred.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from functools import lru_cache

import ipywidgets as widgets
import numpy as np

from widgets.base import LinkedView
from widgets.drawing import png_thumbnail
from widgets.selection import Selection
from mlasm.session import WorkbenchSession

THUMBNAIL = 128
TRUTH, ALSO_TRUE, SELECTED, PLAIN = "#2ca02c", "#bcbd22", "#1f77b4", "#dddddd"
ALSO_TRUE_TEXT = "#6b8e23"  # ALSO_TRUE darkened enough to read as text
OWN, ALSO, WRONG, UNJUDGED = "own", "also true", "wrong", "not judged"


@dataclass(frozen=True)
class RankedItem:
    """One result: its rank (0 = first in the list), its index (an image, or a caption for an image query).

    ``is_truth``: the query's own item; ``also_true``: another item true of the query (a valid
    alternative); ``judged``: False for a typed text's results, where nothing is known to be true.
    """

    rank: int
    index: int
    score: float
    is_truth: bool
    also_true: bool = False
    judged: bool = True

    @property
    def kind(self) -> str:
        """"own", "also true", "wrong", or "not judged" (a typed text's result)."""
        return OWN if self.is_truth else ALSO if self.also_true else WRONG if self.judged else UNJUDGED


class _ImageTile(widgets.VBox):
    """A result image: thumbnail (or its id when the split has no pictures), rank and score, a select button."""

    def __init__(self, on_select):
        self.picture = widgets.Image(format="png", width=THUMBNAIL, height=THUMBNAIL)
        self.no_picture = widgets.HTML(layout=widgets.Layout(width=f"{THUMBNAIL}px", height=f"{THUMBNAIL}px"))
        # every part as wide as the thumbnail, the label wrapping inside it: nothing overflows the tile
        self.label = widgets.HTML(layout=widgets.Layout(width=f"{THUMBNAIL}px", margin="0"))
        self.button = widgets.Button(description="select", layout=widgets.Layout(width=f"{THUMBNAIL}px", margin="0"))
        self.button.on_click(lambda button: on_select(self.index))
        self.index = -1
        super().__init__([self.picture, self.no_picture, self.label, self.button],
                         layout=widgets.Layout(padding="4px", margin="2px", width=f"{THUMBNAIL + 16}px",
                                               overflow="hidden"))

    def show(self, item: RankedItem, png: bytes | None, image_id: str, selected: bool) -> None:
        self.index = item.index
        if png is not None:
            self.picture.value = png
        self.picture.layout.display = None if png is not None else "none"
        self.no_picture.layout.display = "none" if png is not None else None
        self.no_picture.value = (f"<div style='background:#eee;height:{THUMBNAIL}px;display:flex;"
                                 f"align-items:center;justify-content:center'>{html.escape(image_id)}</div>")
        self.label.value = ("<div style='white-space:normal;width:%dpx'>%s</div>"
                            % (THUMBNAIL, _item_label(item, f"image {item.index}", selected, separator="<br>")))
        self.layout.border = f"3px solid {_colour(item, selected)}"
        self.button.tooltip = f"select image {item.index} ({image_id}) everywhere"


class _CaptionRow(widgets.HBox):
    """A result caption: a select button, rank, score and text."""

    def __init__(self, on_select):
        self.button = widgets.Button(description="select", layout=widgets.Layout(width="70px"))
        self.button.on_click(lambda button: on_select(self.index))
        self.text = widgets.HTML()
        self.index = -1
        super().__init__([self.button, self.text], layout=widgets.Layout(padding="1px 4px", margin="2px 0"))

    def show(self, item: RankedItem, caption: str, selected: bool) -> None:
        self.index = item.index
        self.text.value = f"{_item_label(item, f'caption {item.index}', selected)} {html.escape(caption)}"
        self.layout.border_left = f"5px solid {_colour(item, selected)}"


def _colour(item: RankedItem, selected: bool) -> str:
    return TRUTH if item.is_truth else ALSO_TRUE if item.also_true else SELECTED if selected else PLAIN


KIND_MARKS = {OWN: f" <b style='color:{TRUTH}'>ground truth</b>",
              ALSO: f" <b style='color:{ALSO_TRUE_TEXT}'>also true</b>",
              WRONG: " <span style='color:#999'>wrong</span>", UNJUDGED: ""}


def _item_label(item: RankedItem, name: str, selected: bool, separator: str = " · ") -> str:
    marks = KIND_MARKS[item.kind] + (" <b style='color:#1f77b4'>selected</b>" if selected else "")
    return (f"<span style='font-size:12px;line-height:1.4'>rank <b>{item.rank}</b> · {name}{separator}"
            f"score {item.score:.3f}{marks}</span>")


class RankingBrowser(LinkedView):
    """The selection's query ranked under a chosen level; ``results``, ``truths`` and ``also_true`` hold what is shown.

    ``truths`` lists every ground-truth item with its rank, inside the top k or not (none for
    a typed text); ``also_true`` likewise every other item true of the query (none unless the
    split knows complete positives). Ranks are positions in the list sorted by decreasing
    score (0 = first).
    """

    def __init__(self, session: WorkbenchSession, selection: Selection | None = None, controls: bool = True,
                 top_k: int = 8):
        self.results: list[RankedItem] = []
        self.truths: list[RankedItem] = []
        self.also_true: list[RankedItem] = []
        self._thumbnail = lru_cache(maxsize=1024)(self._make_thumbnail)
        self._image_tiles: list[_ImageTile] = []
        self._caption_rows: list[_CaptionRow] = []

        self.level_choice = widgets.Dropdown(options=list(session.levels), value="final", description="rank by",
                                             layout=widgets.Layout(width="200px"))
        self.top_k = widgets.IntSlider(value=top_k, min=1, max=30, description="top k",
                                       layout=widgets.Layout(width="300px"))
        self.query_view = widgets.HTML()
        self.query_picture = widgets.Image(format="png", width=THUMBNAIL, height=THUMBNAIL)
        self.result_view = widgets.Box(layout=widgets.Layout(flex_flow="row wrap"))
        self.truth_title = widgets.HTML()
        self.truth_view = widgets.VBox()
        super().__init__(session, selection, controls, [widgets.HBox([self.level_choice, self.top_k]),
                                                        widgets.HBox([self.query_picture, self.query_view]),
                                                        self.result_view, self.truth_view])
        for control in (self.level_choice, self.top_k):
            control.observe(lambda change: self.refresh(), names="value")
        self.refresh()

    def selection_key(self):
        """Everything: the query, and which image and caption are marked selected among the results."""
        selection = self.selection
        return selection.image, selection.caption, selection.text, selection.query

    # --- ranking ---------------------------------------------------------------------

    def ranking(self) -> tuple[np.ndarray, np.ndarray, set[int]]:
        """(indices by decreasing score, their scores, ground-truth indices) for the selection's query."""
        selection, session, level = self.selection, self.session, self.level_choice.value
        if selection.query == "image":
            scores = session.caption_scores(selection.image, level)
            truth = set(session.split.image_to_captions(selection.image).tolist())
        else:
            scores = session.image_scores(selection.text_side, level)
            truth = set() if isinstance(selection.text_side, str) else \
                {int(session.split.caption_to_image[selection.caption])}
        order = np.argsort(-scores, kind="stable")
        return order, scores[order], truth

    def valid(self) -> set[int]:
        """The items true of the selection's query other than its own (valid alternatives); none for a typed text."""
        selection, session = self.selection, self.session
        if selection.query == "image":
            captions = session.valid_captions(selection.image)
            return set(captions[session.split.caption_to_image[captions] != selection.image].tolist())
        if isinstance(selection.text_side, str):
            return set()
        own = int(session.split.caption_to_image[selection.caption])
        return set(session.valid_images(selection.caption).tolist()) - {own}

    def show_selection(self) -> None:
        selection = self.selection
        if selection.query == "text" and not (selection.text and self.session.tokens(selection.text)):
            self.results, self.truths, self.also_true = [], [], []
            self.query_picture.layout.display = "none"
            self.query_view.value = "<i>Nothing to rank yet: type a query that has words, then Enter.</i>"
            self.result_view.children, self.truth_view.children = (), ()
            return
        order, scores, truth = self.ranking()
        also, judged = self.valid() - truth, not isinstance(selection.text_side, str)
        rank_of = np.empty_like(order)
        rank_of[order] = np.arange(len(order))
        k = self.top_k.value
        self.results = [RankedItem(rank, int(index), float(scores[rank]), int(index) in truth,
                                   int(index) in also, judged)
                        for rank, index in enumerate(order[:k])]
        self.truths = sorted((RankedItem(int(rank_of[index]), index, float(scores[rank_of[index]]), True)
                              for index in truth), key=lambda item: item.rank)
        self.also_true = sorted((RankedItem(int(rank_of[index]), index, float(scores[rank_of[index]]), False, True)
                                 for index in also), key=lambda item: item.rank)
        self._show_query()
        missed = [item for item in self.truths if item.rank >= k]
        show = self._caption_rows_for if selection.query == "image" else self._image_tiles_for
        self.result_view.layout.flex_flow = "column" if selection.query == "image" else "row wrap"
        self.result_view.children = show(self.results, 0)
        self.truth_title.value = f"<b>Ground truth outside the top {k}:</b>"
        self.truth_view.children = (self.truth_title, *show(missed, len(self.results))) if missed else ()

    def _show_query(self) -> None:
        selection, session, split = self.selection, self.session, self.session.split
        level = self.level_choice.value
        if selection.query == "image":
            png = self._thumbnail(selection.image)
            self.query_picture.layout.display = None if png is not None else "none"
            if png is not None:
                self.query_picture.value = png
            ranks = ", ".join(str(item.rank) for item in self.truths)
            self.query_view.value = (
                f"<div style='font-size:15px'>Image {selection.image} "
                f"({html.escape(split.image_ids[selection.image])}) as the query: captions ranked by "
                f"<b>{level}</b></div><div>its own captions rank {ranks or '(it has none)'}</div>"
                + self._also_true_line("caption"))
            return
        self.query_picture.layout.display = "none"
        text = html.escape(session.caption_text(selection.text_side))
        if selection.query == "text":  # its unknown words are listed by the selection bar
            known = ("a typed query: the results are not judged right or wrong"
                     f"</div><div>{html.escape(session.typed_ranking)}")
        else:
            truth = self.truths[0]
            known = f"ground truth: image {truth.index}, rank <b>{truth.rank}</b>" + self._also_true_line("image")
        self.query_view.value = (f"<div style='font-size:15px'><b>“{text}”</b>: images ranked by <b>{level}</b>"
                                 f"</div><div>{known}</div>")

    def _also_true_line(self, noun: str) -> str:
        """How many other items are true of the query and where the first ranks ("" when none)."""
        if not self.also_true:
            return ""
        n, k = len(self.also_true), self.top_k.value
        inside = sum(item.rank < k for item in self.also_true)
        return (f"<div><b style='color:{ALSO_TRUE_TEXT}'>also true</b> of {n} other {noun}{'s' if n != 1 else ''} "
                f"(valid alternatives), the first at rank <b>{self.also_true[0].rank}</b>; "
                f"{inside} in the top {k}</div>")

    def _image_tiles_for(self, items: list[RankedItem], start: int) -> tuple:
        """Tiles from the pool (tiles start.. for this list), so redraws reuse widgets instead of making new ones."""
        while len(self._image_tiles) < start + len(items):
            self._image_tiles.append(_ImageTile(lambda image: self.selection.select(image=image)))
        tiles = self._image_tiles[start:start + len(items)]
        for tile, item in zip(tiles, items):
            tile.show(item, self._thumbnail(item.index), self.session.split.image_ids[item.index],
                      selected=item.index == self.selection.image)
        return tuple(tiles)

    def _caption_rows_for(self, items: list[RankedItem], start: int) -> tuple:
        while len(self._caption_rows) < start + len(items):
            self._caption_rows.append(_CaptionRow(lambda caption: self.selection.select(caption=caption)))
        rows = self._caption_rows[start:start + len(items)]
        for row, item in zip(rows, items):
            row.show(item, self.session.split.captions[item.index], selected=item.index == self.selection.caption)
        return tuple(rows)

    def _make_thumbnail(self, image: int) -> bytes | None:
        picture = self.session.picture(image)
        return None if picture is None else png_thumbnail(picture, THUMBNAIL)
