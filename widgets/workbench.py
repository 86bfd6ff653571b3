"""Workbench: every widget on one session, linked through one selection, in tabs.

The selection bar stays above the tabs; each tab is built the first time it is opened,
so the attention explorer shows at once and the score matrix of every pair (which the
other tabs need) is computed only when one of them is opened. Only the tab on screen redraws
when the selection changes; a hidden tab redraws once, with the selection of that moment, when it
is shown again (or read through the workbench's properties), so that a change costs one view's
drawing, not six. In a notebook run for a static page (``mlasm export-notebooks``), every tab is
built at once and every tab follows the selection: a page cannot build or redraw one later.
"""
from __future__ import annotations

import html

import ipywidgets as widgets

from mlasm.attention_stats import knows_word_and_region_kinds
from mlasm.export import exporting
from widgets.attention import AttentionExplorer
from widgets.attention_stats import AttentionStatsView
from widgets.base import LinkedView, SelectionControls, widget_placeholder
from widgets.embedding import EmbeddingMap
from widgets.failures import DEFAULT_K, FailureExplorer
from widgets.levels import LevelPanel
from widgets.ranking import RankingBrowser
from widgets.selection import Selection
from mlasm.session import WorkbenchSession

# Every tab's view shares the bench's selection; the one bar of controls sits above the tabs.
TABS = {
    "Attention": lambda bench: AttentionExplorer(bench.session, bench.selection, controls=False),
    "Levels": lambda bench: LevelPanel(bench.session, bench.selection, controls=False),
    "Ranking": lambda bench: RankingBrowser(bench.session, bench.selection, controls=False),
    "Failures": lambda bench: FailureExplorer(bench.session, bench.selection, controls=False, k=bench.k),
    "Embedding map": lambda bench: EmbeddingMap(bench.session, bench.selection, controls=False),
    "Attention statistics": lambda bench: _attention_statistics(bench),
}


def _attention_statistics(bench: "Workbench") -> widgets.Widget:
    """Per word kind, over the split; a chosen word opens in the Attention tab's explorer."""
    if not knows_word_and_region_kinds(bench.session.split):
        return widgets.HTML("<p>This split does not say which kind each word and region is (ShapeScenes does, "
                            "and so does detector data with region labels), so there are no statistics per kind.</p>")
    if "t2i" not in bench.session.directions:
        return widgets.HTML("<p>This model (SCAN, image-to-text) has no word-to-region attention: the statistics per "
                            "kind of word are about where words look, so there are none for it.</p>")
    return AttentionStatsView(bench.session, bench.selection, explorer=bench.explorer)


class Workbench(widgets.VBox):
    """The attention explorer, level scores, ranking browser, failure explorer, embedding map and
    attention statistics per kind of word, linked.

    ``k``: where the failure explorer starts (a query fails when nothing true of it is in the top k).
    """

    def __init__(self, session: WorkbenchSession, selection: Selection | None = None, k: int = DEFAULT_K):
        self.session, self.k = session, k
        self.selection = selection if selection is not None else Selection.start(session)
        self._built: dict[str, widgets.Widget] = {}
        split = session.split
        self.tabs = widgets.Tab(children=[widgets.Output() for _ in TABS], titles=tuple(TABS))
        title = widgets.HTML(
            f"<h3 style='margin:4px 0'>MLASM workbench · split {html.escape(split.name)}: {split.n_images} images, "
            f"{split.n_captions} captions · levels {', '.join(session.levels)}</h3>")
        super().__init__([title, SelectionControls(session, self.selection), self.tabs])
        self.add_class("mlasm-workbench")
        self.tabs.observe(self._tab_opened, names="selected_index")
        for tab in TABS if exporting() else ("Attention",):
            self.component(tab)

    def _tab_opened(self, change) -> None:
        if change["new"] is not None:
            self.component(tuple(TABS)[change["new"]])
        self._show_only_the_selected_tab()

    def _show_only_the_selected_tab(self) -> None:
        """The tab on screen follows the selection; the others wait until shown (all follow in a static page)."""
        selected = self.tabs.selected_index
        for tab, view in self._built.items():
            if isinstance(view, LinkedView):
                view.set_shown(exporting() or selected is None or tuple(TABS).index(tab) == selected)

    def component(self, tab: str) -> widgets.Widget:
        """The widget of a tab, built (and put in its tab) on first use, drawn with the current selection."""
        if tab not in self._built:
            index = tuple(TABS).index(tab)
            placeholder = self.tabs.children[index]
            # built inside the placeholder: what building prints (a progress bar while every pair is
            # scored) shows there, and goes with it, instead of staying above the workbench
            with placeholder:
                print("Preparing... (the first tab that needs them scores every image-caption pair once)")
                self._built[tab] = TABS[tab](self)
            children = list(self.tabs.children)
            children[index] = self._built[tab]
            self.tabs.children = children
            placeholder.close()
            self._show_only_the_selected_tab()
        view = self._built[tab]
        if isinstance(view, LinkedView):  # a hidden tab read from code shows the current selection too
            view.catch_up()
        return view

    def __repr__(self) -> str:
        return widget_placeholder(self)

    @property
    def explorer(self) -> AttentionExplorer:
        return self.component("Attention")

    @property
    def levels(self) -> LevelPanel:
        return self.component("Levels")

    @property
    def ranking(self) -> RankingBrowser:
        return self.component("Ranking")

    @property
    def failures(self) -> FailureExplorer:
        return self.component("Failures")

    @property
    def embedding(self) -> EmbeddingMap:
        return self.component("Embedding map")

    @property
    def attention_statistics(self) -> widgets.Widget:
        return self.component("Attention statistics")
