# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Comparing two models, and attention over a whole split
#
# Error analysis asks *which queries did the new model fix, and which did it break?* Here two
# models differ in one thing: **MLASM** (local and semantic levels mixed, ρ < 1) and a
# **local-only** model (ρ = 1, its final score is the local level alone, as SCAN). Both are the
# demo's: `mlasm demo --compare` writes both to `runs/demo`; after a plain `mlasm demo` the next
# cell trains the local-only baseline once, with the demo's own settings and seed (it says how long
# the demo's training took; a progress bar shows the rest). Without the demo's run, and always in
# fast mode (`MLASM_FAST=1`), two tiny ones trained in seconds.
#
# A query is *fixed by B* when A ranks its item k or worse and B within the top k; *broken by B*
# in the opposite case. Two protocols: **strict** (the query's own item counts) and **complete**
# (any item the query is true of counts: ShapeScenes knows every image each caption is true of).

# %% tags=["nbval-ignore-output"]
from mlasm.demo import demo_pair
from widgets import ModelComparison

comparison = ModelComparison.from_checkpoints(demo_pair())  # {"local-only": checkpoint, "MLASM": checkpoint}
print(f"A = {comparison.a}, B = {comparison.b}, on {comparison.split!r}")

# %% [markdown]
# ## How many queries changed
# Per protocol and direction (t2i: a caption searches the images; i2t: an image searches the
# captions), how many queries B fixed, broke, or left right or wrong, at k = 1.
# A check that can fail: B's recall minus A's recall is exactly (fixed − broken) / queries.

# %% tags=["nbval-ignore-output"]
from mlasm.compare import recall_at

K = 1
counts = comparison.counts(K)
recalls = recall_at(comparison.table(K), K)
for (protocol, direction), column in counts.items():
    queries = column.sum()
    gained = 100 * (column["fixed"] - column["broken"]) / queries
    a, b = recalls[f"{protocol} {direction}"]["a"], recalls[f"{protocol} {direction}"]["b"]
    print(f"{protocol:>8} {direction}: R@{K} {a:5.1f} -> {b:5.1f}  "
          f"({column['fixed']} fixed, {column['broken']} broken)")
    assert abs((b - a) - gained) < 1e-9, "a change in recall is the fixed queries minus the broken ones"
counts

# %% [markdown]
# ## Which kinds of caption?
# Captions speak of counts ("two stars"), relations ("above"), extremes ("the leftmost"),
# colours, sizes, positions ("on the left") and backgrounds. Fixed and broken caption queries
# (strict, k = 1) per kind: where does the semantic level help, where does it cost?

# %% tags=["nbval-ignore-output"]
import pandas as pd

from mlasm.attention_stats import CAPTION_KINDS

by_kind = pd.DataFrame({kind: {"queries": len(comparison.table(K).pipe(
                                   lambda t: t[(t["direction"] == "t2i") & t["kinds"].map(lambda k: kind in k)])),
                               "fixed": len(comparison.fixed(K, direction="t2i", kind=kind)),
                               "broken": len(comparison.broken(K, direction="t2i", kind=kind))}
                        for kind in CAPTION_KINDS}).T
assert (by_kind["fixed"] + by_kind["broken"] <= by_kind["queries"]).all()
by_kind

# %% [markdown]
# The fixed caption queries that speak of a colour, largest moves first (rank under A, under B):

# %% tags=["nbval-ignore-output"]
fixed_colours = comparison.fixed(K, direction="t2i", kind="colour")
assert (fixed_colours["rank_a"] >= K).all() and (fixed_colours["rank_b"] < K).all()
fixed_colours.head(8)[["query", "query_text", "rank_a", "rank_b", "valid_rank_a", "valid_rank_b"]]

# %% [markdown]
# ## Attention over the whole split
# For every word of every caption, with its own image: the pointing game (does a word that
# names an object attend most to a box of that object?), the entropy of its attention (0: on
# one region; H / log R = 1: spread evenly), and the share of its attention on each kind of
# region (the object's own box, a part of it, a box around two objects, background). This is
# what answers *does the model bind colours to shapes, or only find shapes?*: colour words
# that point at their object as often as shape words do are bound to it.

# %% tags=["nbval-ignore-output"]
from mlasm.attention_stats import REGION_KINDS, kind_matrix, summarize
from widgets.attention_stats import session_records

records = {name: session_records(session) for name, session in comparison.sessions.items()}
pointing = pd.concat({name: summarize(r)[["pointing %", "chance %", "normalised entropy"]]
                      for name, r in records.items()}, axis=1)
for name in records:
    for kind in ("colour", "shape"):
        accuracy, chance = pointing.loc[kind, (name, "pointing %")], pointing.loc[kind, (name, "chance %")]
        print(f"{name:>10}: {kind} words point at their object {accuracy:.1f} % of the time (chance {chance:.1f} %)")
        assert accuracy > chance, f"{name}'s {kind} words should find their object more often than chance"
pointing.round(2)

# %% [markdown]
# Where each kind of word looks, MLASM's (rows sum to 1):

# %% tags=["nbval-ignore-output"]
matrix = kind_matrix(records["MLASM"], REGION_KINDS)
assert ((matrix.sum(axis=1) - 1).abs() < 1e-4).all()
matrix.round(2)

# %% [markdown]
# ## The views
# The **comparison view**: each point is a query, rank under A against rank under B (log
# scales; below the diagonal B does better). Click a point, or a row of the lists, to select
# that query; both models' attention on the same picture and both models' level scores follow.
# Filter by what the captions speak of, or by words. Save either picture as PNG or SVG with
# the buttons, or from Python (`view.save("ranks.svg", what="ranks")`).

# %% tags=["nbval-ignore-output"]
from widgets import AttentionExplorer, AttentionStatsView, ComparisonView, Selection

selection = Selection.start(comparison.sessions["MLASM"])
view = ComparisonView(comparison, selection)
if len(view.fixed_list.options):
    view.open_query(view.fixed_list.options[0][1])
view

# %% [markdown]
# The **attention statistics** of MLASM, with drill-down: click a cell of the matrix to list
# the words behind it; choosing one opens its pair in the attention explorer below (and in
# the comparison view above: they share the selection).

# %% tags=["nbval-ignore-output"]
explorer = AttentionExplorer(comparison.sessions["MLASM"], selection, controls=False)
stats_view = AttentionStatsView(comparison.sessions["MLASM"], selection, records=records["MLASM"], explorer=explorer)
stats_view.open_cell("colour", "part")
stats_view.open_example(stats_view.cell_examples.index[0])
assert explorer.words[explorer.word] == stats_view.cell_examples.iloc[0]["word"]
stats_view

# %%
explorer

# %% [markdown]
# Pictures for a paper: the statistics as one figure, saved as SVG (PNG by the suffix `.png`).
# Every view's picture saves the same way (`widgets.save_view(explorer, "word.png")`), and
# `mlasm export-notebooks --out DIR notebooks/08_comparison.py` writes this notebook as a
# static HTML page, widgets included, that opens without Python.

# %% tags=["nbval-ignore-output"]
import tempfile
from pathlib import Path

saved = stats_view.save(Path(tempfile.mkdtemp()) / "attention-statistics.svg")
print(f"wrote {saved.name}: {saved.stat().st_size:,} bytes")
assert saved.read_text().lstrip().startswith("<?xml")
