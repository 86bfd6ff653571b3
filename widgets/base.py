"""What every view of the shared selection has in common: the bar of controls, and the plumbing.

Each view (attention explorer, level panel, ranking browser, failure explorer, embedding map)
is a ``LinkedView``: it takes a session, an optional shared ``Selection`` and ``controls=``
(whether to show the ``SelectionControls`` bar above it), and redraws once per change of the
selection, however many of its traits one ``select`` call changed. Controls a view refills
itself (a menu's options, say) are changed inside ``quietly()``, so that refilling them is not
taken for a user's choice.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Hashable

import ipywidgets as widgets
import traitlets

from widgets.selection import QUERY_KINDS, Selection, query_notice, toggle_buttons
from mlasm.session import WorkbenchSession


class QuietUpdates:
    """Tell a user's choice in a control from the widget's own changes to it."""

    _quiet = 0  # > 0 while the widget itself sets its controls

    @contextmanager
    def quietly(self):
        """Changes made inside are the widget's own: ``on_user_change`` handlers do not run."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def on_user_change(self, control: widgets.Widget, handler: Callable, name: str = "value") -> None:
        """Run ``handler(new value)`` when the user changes ``control`` (not None, not inside ``quietly``)."""
        def observer(change) -> None:
            if not self._quiet and change["new"] is not None:
                handler(change["new"])
        control.observe(observer, names=name)


class SelectionControls(QuietUpdates, widgets.VBox):
    """Image and caption indices, the captions of the image, the query kind and a typed query.

    What they show always agrees with the selection: the image and caption boxes hold its image
    and caption, the menu its caption (listed first, apart, when it is another image's, as after a click
    on a ranked image), the text box its typed text ("" unless a typed text is the query). Choosing
    here makes a matching pair: a caption brings its own image, an image keeps the caption if it is
    one of the image's and otherwise takes the image's first. The query kind is linked both ways.
    """

    def __init__(self, session: WorkbenchSession, selection: Selection):
        self.session, self.selection = session, selection
        split = session.split
        self.image_index = widgets.BoundedIntText(min=0, max=split.n_images - 1, description="image",
                                                  layout=widgets.Layout(width="150px"))
        self.caption_index = widgets.BoundedIntText(min=0, max=split.n_captions - 1, description="caption",
                                                    layout=widgets.Layout(width="160px"))
        self.own_captions = widgets.Dropdown(description="its captions", layout=widgets.Layout(width="460px"),
                                             style={"description_width": "80px"})
        self.query_kind = toggle_buttons([("caption", "caption"), ("image", "image"), ("typed text", "text")],
                                         "query", "90px", tooltips=list(QUERY_KINDS.values()))
        self.text_box = widgets.Text(placeholder="type a query, then Enter", description="text",
                                     continuous_update=False, layout=widgets.Layout(width="420px"))
        self.notice = widgets.HTML()
        super().__init__([widgets.HBox([self.image_index, self.caption_index, self.own_captions]),
                          widgets.HBox([self.query_kind, self.text_box]), self.notice])
        self.add_class("mlasm-selectioncontrols")
        for control, name in ((self.image_index, "image"), (self.caption_index, "caption"), (self.text_box, "text")):
            control.add_class(f"mlasm-{name}-box")

        self.links = [traitlets.link((selection, "query"), (self.query_kind, "value"))]
        self.on_user_change(self.image_index, self._image_chosen)
        self.on_user_change(self.caption_index, self._caption_chosen)
        self.on_user_change(self.own_captions, self._caption_chosen)
        self.on_user_change(self.text_box, lambda value: selection.select(text=value.strip(), query="text"))
        selection.observe(self._refresh, names=["image", "caption", "text", "query"])
        self._refresh()

    def _image_chosen(self, image: int) -> None:
        selection = self.selection
        own = self.session.split.image_to_captions(image)
        caption = selection.caption if selection.caption in own or not len(own) else int(own[0])
        selection.select(image=image, caption=caption, query=selection.query)  # a typed query stays the query

    def _caption_chosen(self, caption: int) -> None:
        self.selection.select(caption=caption, image=int(self.session.split.caption_to_image[caption]))

    def _refresh(self, change=None) -> None:
        selection, split = self.selection, self.session.split
        own = split.image_to_captions(selection.image)
        options = [(f"{c}: {split.captions[c]}", int(c)) for c in own]
        if selection.caption not in own:  # a pair chosen elsewhere (a ranked image, say): say whose caption it is
            options.insert(0, (f"{selection.caption}: {split.captions[selection.caption]} (a caption of image "
                               f"{int(split.caption_to_image[selection.caption])}, not this one)", selection.caption))
        with self.quietly():
            self.image_index.value = selection.image
            self.caption_index.value = selection.caption
            self.own_captions.options = options
            self.own_captions.value = selection.caption
            self.text_box.value = selection.text
        self.notice.value = query_notice(self.session, selection)


class LinkedView(QuietUpdates, widgets.VBox):
    """A view of the shared selection, with or without the bar of controls above it.

    A subclass builds its own widgets, calls ``super().__init__(session, selection, controls,
    children)``, and ends its ``__init__`` with ``self.refresh()``. It overrides
    ``show_selection`` (draw what the selection says) and, when it depends on more or less than
    the pair in view, ``selection_key``.

    A view that is not on screen (a hidden tab of the workbench: ``set_shown(False)``) does not
    redraw when the selection changes; it catches up once, with the selection of that moment, when it
    is shown again or read through the workbench (``catch_up``). A view draws only when its
    ``selection_key`` changed since its last drawing.
    """

    def __init__(self, session: WorkbenchSession, selection: Selection | None = None, controls: bool = True,
                 children: list[widgets.Widget] = ()):
        self.session = session
        self.selection = selection if selection is not None else Selection.start(session)
        self.controls = SelectionControls(session, self.selection) if controls else None
        self._shown: Hashable = None  # the selection_key last drawn
        self.on_screen = True  # False while in a hidden tab: selection changes wait for catch_up
        self._row_lists: list[tuple[widgets.Select, Callable]] = []
        super().__init__(([self.controls] if self.controls is not None else []) + list(children))
        self.add_class(f"mlasm-{type(self).__name__.lower()}")  # e.g. mlasm-attentionexplorer, for pages and tests
        self.selection.observe(self._selection_changed, names=list(Selection.TRAITS))

    @property
    def pair(self) -> tuple:
        """(image, text side) in view: the caption's index, or the typed text."""
        return self.selection.image, self.selection.text_side

    def selection_key(self) -> Hashable:
        """What of the selection this view shows: it redraws when this changes."""
        return self.pair

    def show_selection(self) -> None:
        """Draw what the selection says."""

    def refresh(self) -> None:
        """Draw the selection now, changed or not."""
        self._shown = self.selection_key()
        self.show_selection()

    def catch_up(self) -> None:
        """Draw the selection if it changed since the last drawing (nothing otherwise)."""
        if self.selection_key() != self._shown:
            self.refresh()

    def set_shown(self, shown: bool) -> None:
        """On screen or not; a view shown again catches up with the selection at once."""
        self.on_screen = shown
        if shown:
            self.catch_up()

    def release_rows_left(self, rows: widgets.Select, pair_of: Callable[[Hashable], tuple]) -> None:
        """A list whose rows each select a pair (``pair_of(row value)`` = (image, caption, query)): when the
        selection moves off the highlighted row's pair, the highlight goes, so that clicking the row again
        selects it again (a Select reports no click on the value it already has)."""
        self._row_lists.append((rows, pair_of))

    def _selection_changed(self, change=None) -> None:
        if self.on_screen:  # one select() may change several traits: draw once (catch_up draws on a change only)
            self.catch_up()
        now = (self.selection.image, self.selection.caption, self.selection.query)
        for rows, pair_of in self._row_lists:
            if rows.value is not None and tuple(pair_of(rows.value)) != now:
                with self.quietly():
                    rows.value = None

    def __repr__(self) -> str:
        return widget_placeholder(self)


def row_selection(row) -> dict:
    """What a row of a query table (a failure, a comparison) selects: its image, its caption and the query kind."""
    return dict(image=int(row["image"]), caption=int(row["caption"]),
                query="caption" if row["direction"] == "t2i" else "image")


def widget_placeholder(widget: widgets.Widget) -> str:
    """The text a notebook shows where a widget cannot be drawn (no running kernel holds it, e.g. a notebook
    opened before its cells ran), instead of the repr of every child."""
    return f"{type(widget).__name__}: an interactive widget, shown once its cell runs"
