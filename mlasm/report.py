"""Plain-text tables of results, for the terminal and the README."""
from __future__ import annotations

from typing import Mapping

from mlasm.config import PAPER_OBJECTIVE_CAVEAT
from mlasm.levels import LEVEL_LABELS, report_order


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
    kinds = {model.get("kind") for model in result.get("models", ())}
    names = dict(LEVEL_LABELS)
    if "SCAN" in kinds:  # the final score is not MLASM's
        names["final"] = "final (ensemble)" if len(result["models"]) > 1 else "final (SCAN)"
    rows = {names[level]: levels[level] for level in report_order() if level in levels}
    if "chance" in result:
        rows["chance"] = result["chance"]
    return rows


def complete_table(rows: Mapping[str, Mapping]) -> str:
    """Complete-positive results (any item the query is true of counts): R@1/5/10, rSum, R-Precision, mAP@R."""
    width = max(12, *(len(name) for name in rows))
    header = (f"{'':<{width}} {'i2t R@1':>6} {'R@5':>6} {'R@10':>6} {'t2i R@1':>6} {'R@5':>6} {'R@10':>6} "
              f"{'rSum':>6} {'i2t RP':>6} {'mAP@R':>6} {'t2i RP':>6} {'mAP@R':>6}")
    lines = [header]
    for name, metrics in rows.items():
        i2t, t2i = metrics["i2t"], metrics["t2i"]
        values = [i2t["r1"], i2t["r5"], i2t["r10"], t2i["r1"], t2i["r5"], t2i["r10"], metrics["rsum"],
                  i2t.get("r_precision"), i2t.get("map_at_r"), t2i.get("r_precision"), t2i.get("map_at_r")]
        lines.append(f"{name:<{width}} " + " ".join("     -" if v is None else f"{v:6.1f}" for v in values))
    return "\n".join(lines)


def format_result(result: Mapping) -> str:
    """The evaluation of one model: every level, chance level, complete positives and grounding where known."""
    rows = level_rows(result)
    lines = [f"{result.get('split', '')}: {result.get('n_images', '?')} images, "
             f"{result.get('n_captions', '?')} captions, protocol {result.get('protocol', 'full')}",
             "standard protocol (one true image per caption, a caption's own):",
             recall_table(rows)]
    if any(model.get("kind") == "SCAN" for model in result.get("models", ())):  # say which models scored it
        lines[1:1] = [f"model: {model.get('description', model['kind'])} ({model['checkpoint']})"
                      for model in result["models"]]
    complete = {LEVEL_LABELS[level]: result["levels"][level]["complete"] for level in report_order()
                if "complete" in result["levels"].get(level, {})}
    if complete and "complete" in result.get("chance", {}):
        complete["chance"] = result["chance"]["complete"]
    if complete:
        lines += ["complete positives (every image a caption is true of counts; RP = R-Precision):",
                  complete_table(complete)]
    separation = result.get("score_separation")
    if isinstance(separation, Mapping):
        lines.append(f"final scores: true pairs {separation['positive']:.3f} on average, false pairs "
                     f"{separation['negative']:.3f} (gap {separation['gap']:.3f})")
    eccv = result.get("eccv_caption")
    if isinstance(eccv, Mapping) and "eccv" in eccv:
        e, c = eccv["eccv"], eccv["cxc"]
        lines.append("ECCV Caption (eccv-caption package): "
                     + ", ".join(f"{d} mAP@R {e[d]['map_at_r']:.1f} R-P {e[d]['r_precision']:.1f} R@1 {e[d]['r1']:.1f}"
                                 for d in ("i2t", "t2i"))
                     + "; CxC: " + ", ".join(f"{d} R@1/5/10 {c[d]['r1']:.1f}/{c[d]['r5']:.1f}/{c[d]['r10']:.1f}"
                                             for d in ("i2t", "t2i")))
    elif isinstance(eccv, Mapping) and "skipped" in eccv:
        lines.append(f"ECCV Caption / CxC not computed: {eccv['skipped']}")
    if "paper" in result.get("objectives", ()):
        lines.append(f"levels: {PAPER_OBJECTIVE_CAVEAT}")
    grounding = result.get("grounding")
    if isinstance(grounding, Mapping):
        lines.append(f"pointing game (grounding): {grounding['accuracy']:.1f} % of "
                     f"{grounding['words']} object-naming words attend most to their object's box"
                     + (f" (random region: {grounding['chance']:.1f} %)" if "chance" in grounding else ""))
    attention = result.get("attention_statistics")
    if attention:
        from mlasm.attention_stats import attention_table

        per_model = [attention] if isinstance(attention, Mapping) else list(attention)  # an ensemble: each model
        for index, stats in enumerate(per_model):
            whose = f" of {result['checkpoints'][index]}" if len(per_model) > 1 else ""
            lines += [f"attention per word kind{whose}, over the {stats['captions']} captions with their own images "
                      "(point% = pointing game on grounded words; H = entropy of the word's attention, H/logR = 1 "
                      "when uniform; last columns: mean share of attention per region kind):", attention_table(stats)]
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
