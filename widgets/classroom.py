"""The pages ``mlasm serve`` shows a class: the workbench, and a teaching page with tasks it checks.

Each visitor's kernel runs one hidden cell (``mlasm.classroom_server.PAGES``) that calls ``student_workbench()``
or ``teaching_page()``. Both read the run from the environment ``mlasm serve`` sets, open the
session once per kernel (the score matrices memory-mapped from the files the server prepared, so
every kernel shares one copy) and make a failure one sentence on the page, never a traceback.

The teaching page follows notebook 06: a toy where a bag of words cannot tell who is red, then
cross attention with a λ to try, then two tasks on the trained model that the page answers:

1. a caption whose best image under the t2i level is right and under the i2t level is wrong
   (``TeachingTasks.check_caption``);
2. the kind of word whose attention points at its own object least often
   (``TeachingTasks.check_word_kind``, over ``mlasm.attention_stats``).
"""
from __future__ import annotations

import html
import os
from functools import lru_cache

import ipywidgets as widgets
import numpy as np
import torch

from mlasm.model import l2norm
from mlasm.scan_model import cross_attention_scores
from widgets.levels import LevelPanel
from widgets.selection import Selection
from mlasm.session import WorkbenchSession

# captions the word-kind task reads at most (the attention of each with its own image): seconds, not minutes
WORD_TASK_CAPTIONS = 1000


def failure_sentence(error: BaseException) -> str:
    """What a visitor reads when something fails: one sentence, no traceback."""
    detail = " ".join(str(error).split())
    return f"That did not work{': ' + detail if detail else ''}. Try another choice, or reload the page."


def one_sentence_errors() -> None:
    """In this kernel, show every error (a cell's, or a widget callback's inside an Output) as one sentence."""
    from IPython import get_ipython
    from IPython.display import HTML, display

    shell = get_ipython()
    if shell is None or getattr(shell, "_mlasm_one_sentence", False):
        return

    def show(*args, **kwargs) -> None:
        import sys

        error = sys.exc_info()[1]
        if args and isinstance(args[0], tuple) and len(args[0]) == 3:
            error = args[0][1]
        display(HTML(f"<p class='mlasm-error' style='color:#b00'>{html.escape(failure_sentence(error or ''))}</p>"))

    shell.showtraceback = show
    shell.set_custom_exc((Exception,), lambda _shell, _type, value, _tb, tb_offset=None: show((_type, value, _tb)))
    shell._mlasm_one_sentence = True


@lru_cache(maxsize=1)
def served_session() -> WorkbenchSession:
    """The session of the run ``mlasm serve`` serves (its environment), opened once per kernel."""
    from mlasm.checkpoint import load_model
    from mlasm.serve import RUN_CHECKPOINT, RUN_DATA, RUN_FAST, RUN_SCORES, RUN_SPLIT, load_shared_scores
    from mlasm.sources import open_split

    if RUN_CHECKPOINT not in os.environ:
        raise RuntimeError("this page is served by `mlasm serve`, which says which run to show")
    model, vocab, _ = load_model(os.environ[RUN_CHECKPOINT], "cpu")
    fast = os.environ.get(RUN_FAST, "")
    split = open_split(os.environ[RUN_DATA], os.environ[RUN_SPLIT], fast=None if fast == "" else fast == "1",
                       progress=False)
    scores = load_shared_scores(os.environ[RUN_SCORES]) if os.environ.get(RUN_SCORES) else None
    session = WorkbenchSession(model, vocab, split, **({"scores": scores} if scores else {}))
    if scores:
        session.scores_source = os.environ[RUN_SCORES]
    return session


def student_workbench(session: WorkbenchSession | None = None):
    """The workbench for one visitor: their own selection over the shared session."""
    from widgets.workbench import Workbench

    one_sentence_errors()
    return Workbench(session or served_session())


# --- the toy of notebook 06 ----------------------------------------------------------------------

# axes red, blue, circle, square; image A: a red circle and a blue square, image B: a blue circle and a red square
TOY_REGIONS = l2norm(torch.tensor([[[1.0, 0, 1, 0], [0, 1, 0, 1]], [[0.0, 1, 1, 0], [1, 0, 0, 1]]]))
TOY_WORDS = {"context-free": l2norm(torch.tensor([[[1.0, 0, 0, 0], [0, 0, 1, 0]]])),   # "red", "circle"
             "contextual": l2norm(torch.tensor([[[1.0, 0, 0.6, 0], [0.6, 0, 1, 0]]]))}  # each leans to the other


def toy_scores(words: str, lambda_t2i: float) -> dict[str, float]:
    """The caption "red circle" against image A and image B, text-to-image attention, and bag of words."""
    caption = TOY_WORDS[words]
    scores = cross_attention_scores(TOY_REGIONS, torch.ones(2, 2, dtype=torch.bool), caption, torch.tensor([2]),
                                    "t2i", lambda_softmax=lambda_t2i).squeeze(1)
    bag = (l2norm(TOY_REGIONS.mean(dim=1)) @ l2norm(caption.mean(dim=1)).T).squeeze(1)
    return {"A attention": float(scores[0]), "B attention": float(scores[1]),
            "A bag": float(bag[0]), "B bag": float(bag[1])}


def toy_red_weights(lambda_t2i: float) -> list[float]:
    """Where the contextual word "red" looks in image B (blue circle, red square) at temperature λ."""
    rectified = torch.nn.functional.leaky_relu(TOY_REGIONS[1] @ TOY_WORDS["contextual"][0].T, 0.1)
    normalised = rectified / rectified.norm(dim=1, keepdim=True)
    return torch.softmax(lambda_t2i * normalised[:, 0], dim=0).tolist()


class ToyAttention(widgets.VBox):
    """Notebook 06's toy: the same words bound differently, scored by a bag of words and by attention."""

    def __init__(self):
        self.words = widgets.ToggleButtons(options=[("words alone", "context-free"), ("words in context", "contextual")],
                                           value="context-free", description="words")
        self.lambda_t2i = widgets.FloatSlider(value=9.0, min=0.5, max=30.0, step=0.5, description="λ")
        self.readout = widgets.HTML()
        for control in (self.words, self.lambda_t2i):
            control.observe(lambda _change: self.redraw(), names="value")
        super().__init__([widgets.HTML(
            "<h3>1. Who is red?</h3><p>Image A has a <b style='color:#c00'>red</b> circle and a "
            "<b style='color:#03c'>blue</b> square; image B a blue circle and a red square. The caption is "
            "<i>red circle</i>. Each word and each region is a vector whose axes mean red, blue, circle, square.</p>"),
            self.words, self.lambda_t2i, self.readout])
        self.add_class("mlasm-toyattention")
        self.redraw()

    def redraw(self) -> None:
        scores = toy_scores(self.words.value, self.lambda_t2i.value)
        weights = toy_red_weights(self.lambda_t2i.value)
        tie = abs(scores["A attention"] - scores["B attention"]) < 1e-4
        verdict = ("a tie: attention over words that do not know their neighbours is still a bag of words"
                   if tie else "image A wins: words that carry their context find the region where both are true")
        self.readout.value = (
            f"<p>Bag of words (mean of the regions against mean of the words): A {scores['A bag']:.3f}, "
            f"B {scores['B bag']:.3f}, always a tie.<br>Cross attention (each word finds its regions): "
            f"A {scores['A attention']:.3f}, B {scores['B attention']:.3f}: <b>{verdict}</b>.</p>"
            f"<p>In image B, the word <i>red</i> (in context) puts {weights[0]:.0%} of its attention on the blue "
            f"circle and {weights[1]:.0%} on the red square. A small λ spreads attention over every region; a large "
            f"λ puts it on the best match.</p>")


# --- the tasks on the trained model ------------------------------------------------------------------

class TeachingTasks:
    """The answers the teaching page checks, computed from the session (no widgets: tests read them)."""

    # id(session) -> (session, summary): computed once per session for every page (the session is kept,
    # so that its id is never another's)
    _word_summaries: dict[int, tuple] = {}

    def __init__(self, session: WorkbenchSession):
        self.session = session

    def check_caption(self, caption: int) -> tuple[bool, str]:
        """Task 1: is the best image of ``caption`` right under the t2i level and wrong under the i2t level?"""
        caption = int(caption)
        true_of = set(self.session.valid_images(caption).tolist())
        best = {level: int(np.argmax(self.session.image_scores(caption, level))) for level in ("t2i", "i2t")}
        right = {level: image in true_of for level, image in best.items()}
        said = {level: f"the {level} level puts image {image} first, which the caption "
                       f"{'is' if right[level] else 'is not'} true of" for level, image in best.items()}
        found = right["t2i"] and not right["i2t"]
        head = "Found one" if found else "Not this one"
        return found, f"{head}: for caption {caption}, {said['t2i']}, and {said['i2t']}."

    def word_summary(self):
        """Pointing accuracy per kind of word over the matching pairs of (up to WORD_TASK_CAPTIONS) captions."""
        key = id(self.session)
        if key not in self._word_summaries or self._word_summaries[key][0] is not self.session:
            from mlasm.attention_stats import model_records, summarize

            session = self.session
            count = min(session.split.n_captions, WORD_TASK_CAPTIONS)
            records = model_records(session.model, session.split, session.vocab, session.images, session.captions,
                                    captions=range(count))
            summary = summarize(records)
            self._word_summaries[key] = (session, summary[summary["grounded"] > 0].sort_values("pointing %",
                                                                                                 kind="stable"))
        return self._word_summaries[key][1]

    def word_kinds(self) -> tuple[str, ...]:
        """The kinds a visitor may answer with (ShapeScenes' kinds of word, or detector labels' kinds)."""
        from mlasm.attention_stats import LABEL_WORD_KINDS, WORD_KINDS, shapescenes_region_kinds

        return WORD_KINDS if shapescenes_region_kinds(self.session.split) is not None else LABEL_WORD_KINDS

    def check_word_kind(self, kind: str) -> tuple[bool, str]:
        """Task 2: is ``kind`` the kind of word whose attention points at its own object least often?"""
        summary = self.word_summary()
        if kind not in summary.index:
            return False, f"There are no grounded {kind} words here; choose another kind."
        worst = summary.index[0]
        mine = summary.loc[kind, "pointing %"]
        if kind == worst:
            return True, (f"Yes: {kind} words point at their own object {mine:.0f}% of the time "
                          f"(chance {summary.loc[kind, 'chance %']:.0f}%), the least of every kind of word.")
        return False, (f"Not quite: {kind} words point at their own object {mine:.0f}% of the time; "
                       f"one kind of word does worse. Try words of other kinds in the workbench's Attention tab.")


def task_box(title: str, text: str, controls: list[widgets.Widget], check) -> widgets.VBox:
    """A task: its statement, its controls, a Check button and the page's answer."""
    answer = widgets.HTML()
    button = widgets.Button(description="Check", button_style="primary")

    def clicked(_button) -> None:
        try:
            found, sentence = check()
        except Exception as error:  # noqa: BLE001 - a visitor sees one sentence, whatever failed
            found, sentence = False, failure_sentence(error)
        colour = "#2a7" if found else "#a60"
        answer.value = f"<p class='mlasm-answer' style='color:{colour}'>{html.escape(sentence)}</p>"

    button.on_click(clicked)
    box = widgets.VBox([widgets.HTML(f"<h3>{html.escape(title)}</h3><p>{text}</p>"),
                        widgets.HBox([*controls, button]), answer])
    box.add_class("mlasm-task")
    box.check_button, box.answer = button, answer
    return box


def teaching_page(session: WorkbenchSession | None = None) -> widgets.VBox:
    """The toy, the model's levels to explore with, and the two tasks with their checks."""
    one_sentence_errors()
    session = session or served_session()
    tasks = TeachingTasks(session)
    selection = Selection.start(session)
    levels = LevelPanel(session, selection, controls=True)
    kind_menu = widgets.Dropdown(options=tasks.word_kinds(), description="kind of word")
    first = task_box(
        "Task 1: one caption, two directions",
        "Find a caption whose best image is right under the <b>t2i</b> level (words look for regions) and wrong "
        "under the <b>i2t</b> level (regions look for words). Choose a caption above; the table shows where each "
        "level ranks its image. Then check it.",
        [], lambda: tasks.check_caption(selection.caption))
    second = task_box(
        "Task 2: which words ground worst?",
        "Each word's attention should fall on its own object. Which kind of word misses it most often? "
        "Try words in the workbench's Attention tab, then choose a kind and check.",
        [kind_menu], lambda: tasks.check_word_kind(kind_menu.value))
    page = widgets.VBox([
        ToyAttention(),
        widgets.HTML("<h3>2. A trained model: two directions and a semantic level</h3><p>MLASM scores a pair in "
                     "both directions (t2i: each word attends to regions; i2t: each region attends to words), "
                     "averages them into the <b>local</b> level, adds a <b>global</b> level built from what was "
                     "attended, and mixes the two into the <b>final</b> score. Read a score against the same "
                     "caption's scores with other images, never alone.</p>"),
        levels, first, second])
    page.add_class("mlasm-teaching")
    page.tasks, page.selection, page.levels, page.kind_menu = tasks, selection, levels, kind_menu
    page.task_boxes = (first, second)
    return page


def warm_up() -> None:
    """What the warm process of ``mlasm serve`` holds before it forks a kernel per visitor
    (mlasm.kernel_fork): the libraries, the served session and each page built once, so that what
    loads on first use (fonts, plotly's widgets, the first drawing) is in every kernel already."""
    import matplotlib  # noqa: F401
    import pandas  # noqa: F401
    import plotly.graph_objects  # noqa: F401

    session = served_session()  # the model, the split, its encodings and the memory-mapped scores, shared
    TeachingTasks(session).word_summary()  # the word task's answers, computed once for all
    from widgets.embedding import SHOW, map_of
    map_of(session, next(iter(SHOW)))  # the embedding map's vectors and projection, so its first open is quick
    student_workbench(session)
    teaching_page(session)
    widgets.Widget.close_all()


if __name__ == "__main__":  # python -m widgets.classroom --warm SOCKET, started by mlasm serve
    import sys

    from mlasm.kernel_fork import warm
    from widgets import classroom  # the module the pages import, not this __main__ copy: its caches are theirs

    if sys.argv[1:2] != ["--warm"] or len(sys.argv) != 3:
        raise SystemExit("usage: python -m widgets.classroom --warm SOCKET (mlasm serve starts it)")
    warm(sys.argv[2], classroom.warm_up)
