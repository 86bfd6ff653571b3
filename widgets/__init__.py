"""Interactive workbench widgets: attention, levels, rankings, failures and an embedding map, linked.

    from widgets import WorkbenchSession, Workbench
    session = WorkbenchSession.from_checkpoint("runs/demo/mlasm/best.pt")
    Workbench(session)            # every widget in tabs, linked by one selection

Each widget also works alone (``AttentionExplorer(session)``) or shares a ``Selection``
with others. The logic behind them is plain Python, tested without a browser.
"""
from widgets.attention import AttentionExplorer
from widgets.embedding import EmbeddingMap
from widgets.failures import FailureExplorer
from widgets.levels import LevelPanel
from widgets.ranking import RankedItem, RankingBrowser
from widgets.selection import Selection, SelectionControls
from widgets.session import TextQuery, WorkbenchSession
from widgets.workbench import Workbench

__all__ = ["AttentionExplorer", "EmbeddingMap", "FailureExplorer", "LevelPanel", "RankedItem", "RankingBrowser",
           "Selection", "SelectionControls", "TextQuery", "Workbench", "WorkbenchSession"]
