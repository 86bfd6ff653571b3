"""The benchmarks' result rows as a Markdown table, to paste into the README or an issue."""
from __future__ import annotations


def print_markdown_table(rows: list[dict]) -> None:
    """One column per key of the first row, one line per row."""
    print("\n| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
