"""CPU time of one selection change in one workbench, as a served kernel spends it (no browser, no kernel).

Builds the workbench over a saved run (the checkpoint and the saved scores, as ``mlasm serve``
does), opens the tabs asked for, then makes ``--changes`` changes of one kind and reports the
process CPU time of each (median, 95th percentile) and how many times each view redrew:

- ``image``: a new image typed in the image box (as the server-side benchmark of serve_visitors.py);
- ``caption``: a caption chosen in the caption box (its image comes with it);
- ``word``: another word chosen in the attention explorer;
- ``tab``: the next tab shown (every tab in turn, each already built once), after an image change made
  (untimed) while the tab before it was on screen: the cost of a hidden tab catching up.

CPU time (``time.process_time``) is what one change costs the machine whatever else runs on it,
so it is the figure to compare under load; with ten visitors on two cores, ten such costs queue.
The widgets are not attached to a kernel: the state they would send is made but not sent.

    python benchmarks/workbench_changes.py --run RUN                       # image changes, Attention tab open
    python benchmarks/workbench_changes.py --run RUN --kind caption --open all
    python benchmarks/workbench_changes.py --run RUN --profile /tmp/changes.prof
"""
from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KINDS = ("image", "caption", "word", "tab")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def open_session(run: Path):
    from mlasm.serve import run_checkpoint, run_is_fast
    from mlasm.session import WorkbenchSession

    return WorkbenchSession.from_checkpoint(run_checkpoint(run), fast=run_is_fast(run))


def count_redraws(bench) -> Counter:
    """Wrap every built view's show_selection so that each call is counted (per tab)."""
    counts: Counter = Counter()
    for tab, view in bench._built.items():
        if hasattr(view, "show_selection"):
            original = view.show_selection

            def counted(original=original, tab=tab):
                counts[tab] += 1
                original()
            view.show_selection = counted
    return counts


def changes(bench, kind: str, n: int):
    """n callables, each making one change of ``kind``."""
    split = bench.session.split
    if kind == "image":
        box = bench.children[1].image_index
        return [lambda i=i: setattr(box, "value", 1 + (7 * i + 3) % (split.n_images - 1)) for i in range(n)]
    if kind == "caption":
        box = bench.children[1].caption_index
        return [lambda i=i: setattr(box, "value", 1 + (37 * i + 5) % (split.n_captions - 1)) for i in range(n)]
    if kind == "word":
        explorer = bench.explorer
        return [lambda i=i: setattr(explorer.word_choice, "value", i % len(explorer.words)) for i in range(n)]
    tabs = bench.tabs
    return [lambda i=i: setattr(tabs, "selected_index", (i + 1) % len(tabs.children)) for i in range(n)]


def preparations(bench, kind: str, n: int):
    """What is done, untimed, before each change: for ``tab``, an image change on the tab on screen."""
    if kind != "tab":
        return [lambda: None] * n
    return changes(bench, "image", n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a run folder (mlasm demo --fast --out DIR)")
    parser.add_argument("--kind", choices=KINDS, default="image")
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--open", default="Attention", help="tabs opened before the changes, comma-separated, "
                                                            "or 'all' (default Attention, as a page starts)")
    parser.add_argument("--profile", default=None, help="write a cProfile of the changes here")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    from widgets.workbench import TABS, Workbench

    session = open_session(Path(args.run))
    bench = Workbench(session)
    opened = list(TABS) if args.open == "all" else args.open.split(",")
    for tab in opened:  # opened as a visitor opens it, then back to the first
        bench.tabs.selected_index = list(TABS).index(tab)
    bench.tabs.selected_index = list(TABS).index(opened[0]) if args.kind != "word" else 0
    for change in changes(bench, args.kind, 3):  # warm: the first drawing loads fonts and caches
        change()
    counts = count_redraws(bench)
    todo = changes(bench, args.kind, args.changes)
    before = preparations(bench, args.kind, args.changes)
    profile = cProfile.Profile() if args.profile else None
    cpu, wall = [], []
    for prepare, change in zip(before, todo):
        prepare()
        started, started_wall = time.process_time(), time.perf_counter()
        if profile:
            profile.enable()
        change()
        if profile:
            profile.disable()
        cpu.append(time.process_time() - started)
        wall.append(time.perf_counter() - started_wall)
    if profile:
        profile.dump_stats(args.profile)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.changes} {args.kind} changes, tabs built: "
          f"{', '.join(bench._built)}; shown: {list(TABS)[bench.tabs.selected_index]}")
    print(f"CPU s per change: median {statistics.median(cpu):.4f}, p95 {percentile(cpu, 0.95):.4f}, "
          f"max {max(cpu):.4f}; wall median {statistics.median(wall):.4f}")
    print("redraws per view (timed and untimed):", dict(counts) or "none")


if __name__ == "__main__":
    main()
