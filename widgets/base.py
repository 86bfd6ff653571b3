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
from widgets.session import WorkbenchSession


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

    The image index and the query kind are linked to the selection (``traitlets.link``); the
    caption goes through ``Selection.select``, which also ends a typed query.
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

        self.links = [traitlets.link((selection, "image"), (self.image_index, "value")),
                      traitlets.link((selection, "query"), (self.query_kind, "value"))]
        self.on_user_change(self.caption_index, lambda value: selection.select(caption=value))
        self.on_user_change(self.own_captions, lambda value: selection.select(caption=value))
        self.on_user_change(self.text_box, lambda value: selection.select(text=value.strip(), query="text"))
        selection.observe(self._refresh, names=["image", "caption", "text", "query"])
        self._refresh()

    def _refresh(self, change=None) -> None:
        selection, split = self.selection, self.session.split
        own = split.image_to_captions(selection.image)
        with self.quietly():
            self.caption_index.value = selection.caption
            self.own_captions.options = [(f"{c}: {split.captions[c]}", int(c)) for c in own]
            self.own_captions.value = selection.caption if selection.caption in own else None
            self.text_box.value = selection.text
        self.notice.value = query_notice(self.session, selection)


class LinkedView(QuietUpdates, widgets.VBox):
    """A view of the shared selection, with or without the bar of controls above it.

    A subclass builds its own widgets, calls ``super().__init__(session, selection, controls,
    children)``, and ends its ``__init__`` with ``self.refresh()``. It overrides
    ``show_selection`` (draw what the selection says) and, when it depends on more or less than
    the pair in view, ``selection_key``.
    """

    def __init__(self, session: WorkbenchSession, selection: Selection | None = None, controls: bool = True,
                 children: list[widgets.Widget] = ()):
        self.session = session
        self.selection = selection if selection is not None else Selection.start(session)
        self.controls = SelectionControls(session, self.selection) if controls else None
        self._shown: Hashable = None  # the selection_key last drawn
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

    def _selection_changed(self, change=None) -> None:
        if self.selection_key() != self._shown:  # one select() may change several traits: draw once
            self.refresh()

    def __repr__(self) -> str:
        return widget_placeholder(self)


def widget_placeholder(widget: widgets.Widget) -> str:
    """The text a notebook shows where a widget cannot be drawn (no running kernel holds it, e.g. a notebook
    opened before its cells ran), instead of the repr of every child."""
    return f"{type(widget).__name__}: an interactive widget, shown once its cell runs"
