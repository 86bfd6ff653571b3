"""Plain-text tables of results, for the terminal and the README."""
from __future__ import annotations

from typing import Mapping

LEVEL_NAMES = {"final": "final (MLASM)", "local": "local level", "global": "global level",
               "t2i": "text-to-image", "i2t": "image-to-text"}


def _row(name: str, metrics: Mapping, width: int) -> str:
    i2t, t2i = metrics["i2t"], metrics["t2i"]
    values = [i2t["r1"], i2t["r5"], i2t["r10"], t2i["r1"], t2i["r5"], t2i["r10"], metrics["rsum"]]
    return f"{name:<{width}} " + " ".join(f"{v:6.1f}" for v in values)


def recall_table(rows: Mapping[str, Mapping]) -> str:
    """One line per named result: image-to-text R@1/5/10, text-to-image R@1/5/10, rSum."""
    width = max(12, *(len(name) for name in rows))
    header = f"{'':<{width}} {'i2t R@1':>6} {'R@5':>6} {'R@10':>6} {'t2i R@1':>6} {'R@5':>6} {'R@10':>6} {'rSum':>6}"
    return "\n".join([header] + [_row(name, metrics, width) for name, metrics in rows.items()])


def level_rows(result: Mapping) -> dict[str, Mapping]:
    """Every level of an evaluation result under a readable name, then chance level where known."""
    levels = result["levels"]
    rows = {LEVEL_NAMES[level]: levels[level] for level in LEVEL_NAMES if level in levels}
    if "chance" in result:
        rows["chance"] = result["chance"]
    return rows


def format_result(result: Mapping) -> str:
    """The evaluation of one model: every level, chance level and grounding where known."""
    rows = level_rows(result)
    lines = [f"{result.get('split', '')}: {result.get('n_images', '?')} images, "
             f"{result.get('n_captions', '?')} captions, protocol {result.get('protocol', 'full')}",
             recall_table(rows)]
    grounding = result.get("grounding")
    if isinstance(grounding, Mapping):
        lines.append(f"pointing game (grounding): {grounding['accuracy']:.1f} % of "
                     f"{grounding['words']} object-naming words attend most to their object's box"
                     + (f" (random region: {grounding['chance']:.1f} %)" if "chance" in grounding else ""))
    return "\n".join(lines)


def result_frame(rows: Mapping[str, Mapping]):
    """A pandas table of named results: R@1/5/10 both directions, rSum, median ranks."""
    import pandas as pd

    records = {}
    for name, metrics in rows.items():
        record = {f"{direction} {k.upper()}": metrics[direction][k]
                  for direction in ("i2t", "t2i") for k in ("r1", "r5", "r10")}
        record["rSum"] = metrics["rsum"]
        for direction in ("i2t", "t2i"):
            if "medr" in metrics[direction]:
                record[f"{direction} medr"] = metrics[direction]["medr"]
        records[name] = record
    return pd.DataFrame.from_dict(records, orient="index").round(1)
