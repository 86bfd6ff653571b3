"""The selection every widget shares.

Choosing something in one widget selects it in all the others (as in LIT or FiftyOne):
each widget observes one ``Selection`` and writes to it through ``select``. The bar of
controls that sets it, and the base of every view of it, are in ``widgets.base``.
"""
from __future__ import annotations

import ipywidgets as widgets
from traitlets import Enum, HasTraits, Int, Unicode, observe

from mlasm.session import CaptionRef, WorkbenchSession

QUERY_KINDS = {"caption": "a caption of the data", "image": "an image", "text": "a typed text"}


def toggle_buttons(options, description: str, button_width: str, tooltips=None) -> widgets.ToggleButtons:
    """ToggleButtons with the description on their left, as other controls have it (JupyterLab puts it above)."""
    return widgets.ToggleButtons(options=options, description=description, tooltips=tooltips or [],
                                 style={"button_width": button_width, "description_width": "80px"},
                                 layout=widgets.Layout(display="flex", align_items="center"))


class Selection(HasTraits):
    """The image, the caption and the query in view.

    ``query`` says what is being searched with: the caption (images ranked), the image
    (captions ranked) or the typed ``text`` (images ranked). The text side of a pair is the
    typed text when ``query == "text"``, else the caption.
    """

    image = Int(0)
    caption = Int(0)
    text = Unicode("")
    query = Enum(tuple(QUERY_KINDS), default_value="caption")

    #: the traits a view of the selection observes
    TRAITS = ("image", "caption", "text", "query")

    @classmethod
    def start(cls, session: WorkbenchSession) -> "Selection":
        """The first caption of the split with its own image."""
        return cls(image=int(session.split.caption_to_image[0]), caption=0)

    @property
    def text_side(self) -> CaptionRef:
        """What the image is paired with: the typed text (a str) or the caption's index."""
        return self.text if self.query == "text" and self.text else self.caption

    def select(self, image: int | None = None, caption: int | None = None, text: str | None = None,
               query: str | None = None) -> None:
        """Change several at once; observers run after all values are set.

        Choosing a caption of the data while a typed text is the query makes that caption the
        query, so the caption shows wherever the text side is drawn; a typed text given alone makes
        it the query. Leaving the typed-text query clears the text (``text`` is "" unless
        ``query == "text"``), so no old text lingers in a text box.
        """
        if caption is not None and query is None and self.query == "text":
            query = "caption"
        if text and query is None:
            query = "text"
        with self.hold_trait_notifications():
            for name, value in (("image", image), ("caption", caption), ("text", text), ("query", query)):
                if value is not None:
                    setattr(self, name, int(value) if name in ("image", "caption") else value)

    @observe("query")
    def _typed_text_ends(self, change) -> None:
        if change["new"] != "text":
            self.text = ""


def query_notice(session: WorkbenchSession, selection: Selection) -> str:
    """One line on the current text side: the typed words the model does not know, or why it is empty."""
    if selection.query != "text":
        return ""
    if not selection.text:
        return "<i>Type a query above and press Enter.</i>"
    unknown = session.unknown_words(selection.text)
    if not session.tokens(selection.text):
        return "<span style='color:#b00'>The typed query has no words.</span>"
    if unknown:
        words = ", ".join(f"<b>{word}</b>" for word in dict.fromkeys(unknown))
        return f"<span style='color:#b00'>Unknown words, read as &lt;unk&gt;: {words}</span>"
    return "<span style='color:#2a7'>Every word of the query is in the vocabulary.</span>"
