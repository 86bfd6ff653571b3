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
# # 05 · Error analysis of failed queries
#
# A caption is often true of more than one picture ("A square." of every picture with a square).
# ShapeScenes knows every picture each caption is true of (its *complete positives*), so the
# workbench tells three outcomes apart at k:
#
# - **hit**: the query's own item is among the top k;
# - **valid alternative**: it is not, but another item the query is true of is; the model was
#   right, the standard protocol (one true image per caption) counts it as a miss;
# - **failure**: nothing true of the query is among the top k. These are the errors worth a
#   researcher's time, and the only ones listed by default.
#
# For each failure the workbench keeps its rank under every level (t2i, i2t, local, global,
# final), so one can ask: **would another level have got it right?** Choosing a row opens the
# query in the attention explorer and the ranking browser, and draws the ground truth beside
# the wrongly preferred item.

# %% tags=["nbval-ignore-output"]
from mlasm.demo import demo_checkpoint
from mlasm.evaluate import chance_metrics
from widgets import Workbench, WorkbenchSession

session = WorkbenchSession.from_checkpoint(demo_checkpoint())
failures = session.failures(k=5)
queries = session.query_table(k=5)
outcomes = queries["outcome"].value_counts()
print(f"{len(queries)} queries at k = 5:", ", ".join(f"{n} {name}" for name, n in outcomes.items()))
# a ranking at random finds something true of a query within the top 5 this often (per direction)
chance = chance_metrics(session.split.n_images, session.split.caption_to_image, session.positives)["complete"]
found = {direction: 100 * (rows["outcome"] != "failure").mean() for direction, rows in queries.groupby("direction")}
assert all(found[d] > 2 * chance[d]["r5"] for d in found), "a trained model finds far more than chance"

# %% [markdown]
# ## Which level would have ranked them right?
# `right_under` lists the levels under which an item true of the query is within the top k. Failures that
# no level gets right are the model's blind spots; failures one level gets right suggest that the
# mix of levels (ρ) costs something on them.

# %%
summary = failures.assign(any_level=failures["right_under"] != "").groupby("direction")[["any_level"]].mean()
summary.rename(columns={"any_level": "share another level gets right"}).round(2)

# %% [markdown]
# ## The worst failures

# %%
failures.head(10)[["direction", "query_text", "valid_rank", "n_valid", "right_under", "preferred_text"]]

# %% [markdown]
# The valid alternatives, left out above, are listed with `include_valid=True` (and by the
# explorer's "include valid alternatives" box): each names the other item the model preferred,
# which the query is also true of.

# %%
alternatives = session.query_table(k=1).query("outcome == 'valid alternative'")
alternatives.head(5)[["direction", "query_text", "rank", "n_valid", "preferred_text"]]

# %% [markdown]
# ## The workbench
# Every widget in one place, linked by one selection: open the **Failures** tab, choose a row,
# then look at the **Attention** and **Ranking** tabs.

# %% tags=["nbval-ignore-output"]
workbench = Workbench(session)
workbench.component("Failures").open_row(failures.index[0])
workbench
