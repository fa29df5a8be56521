"""Report writers, each in one place: CSV, Markdown tables, printed tables and PNG figures.

Float formats are arguments because each committed report keeps its own (regenerating a
report must reproduce its committed bytes).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], float_format: str = ".6f") -> None:
    """Rows (dicts; columns in first-seen order) as CSV; floats as ``float_format``. No file
    for no rows."""
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (format(v, float_format) if isinstance(v, float) else v) for k, v in r.items()})


def fmt(v: Any) -> str:
    """A cell: floats to 4 decimals (3 significant figures past 10⁵), NaN as ``nan``."""
    if isinstance(v, float):
        return "nan" if v != v else (f"{v:.4f}" if abs(v) < 1e5 else f"{v:.3g}")
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> list[str]:
    """The lines of a Markdown table of ``cols``."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]


def write_markdown(path: str | Path, rows: Sequence[dict[str, Any]], cols: Sequence[str], title: str,
                   note: str) -> None:
    """A Markdown file: title, note, then the table."""
    Path(path).write_text("\n".join([f"# {title}", "", note, "", *markdown_table(rows, cols)]) + "\n")


def print_rows(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> None:
    """A plain table on stdout."""
    print("  ".join(cols))
    for r in rows:
        print("  ".join(fmt(r[c]) for c in cols))


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (reports write PNGs, never windows)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
