"""Interactive workbench widgets: attention, levels, rankings, failures and an embedding map, linked.

    from widgets import WorkbenchSession, Workbench
    session = WorkbenchSession.from_checkpoint("runs/demo/mlasm/best.pt")
    Workbench(session)            # every widget in tabs, linked by one selection

Each widget also works alone (``AttentionExplorer(session)``, with its own bar of controls;
``controls=False`` leaves it out) or shares a ``Selection`` with others. The logic behind
them is plain Python, tested without a browser.
"""
from widgets.attention import AttentionExplorer
from widgets.attention_stats import AttentionStatsView
from widgets.base import LinkedView, SelectionControls
from mlasm.compare import ModelComparison, ensemble_session
from widgets.comparison import ComparisonView
from widgets.drawing import save_view
from widgets.embedding import EmbeddingMap
from widgets.failures import FailureExplorer
from widgets.levels import LevelPanel
from widgets.ranking import RankedItem, RankingBrowser
from widgets.saving import SaveButtons, save_figure
from widgets.selection import Selection
from mlasm.session import TextQuery, WorkbenchSession
from widgets.workbench import Workbench

__all__ = ["AttentionExplorer", "AttentionStatsView", "ComparisonView", "EmbeddingMap", "FailureExplorer",
           "LevelPanel", "LinkedView", "ModelComparison", "RankedItem", "RankingBrowser", "SaveButtons", "Selection",
           "SelectionControls", "TextQuery", "Workbench", "WorkbenchSession", "ensemble_session",
           "save_figure", "save_view"]
