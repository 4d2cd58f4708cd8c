"""The table the benchmarks that report rows print: ``(what, value, unit, note)`` each.

Shared by ``assets.py`` and ``ui.py`` (run as scripts: this folder is on ``sys.path``).
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

#: One measured row: what, value, unit, and the note against its baseline or target.
Row = tuple[str, float, str, str]


def print_rows(title: str, rows: list[Row]) -> None:
    """Print ``rows`` under ``title``, at least 150 columns wide (a table read in a log
    keeps its rows on one line each); a value that is NaN shows as ``-``."""
    table = Table(title=title)
    for column in ("what", "value", "unit", "against the baseline / target"):
        table.add_column(
            column,
            justify="right" if column == "value" else "left",
            no_wrap=True,
            min_width=8 if column in ("value", "unit") else None,
        )
    for what, value, unit, note in rows:
        shown = "-" if value != value else (f"{value:.1f}" if value >= 10 else f"{value:.2f}")
        table.add_row(what, shown, unit, note)
    Console(width=max(Console().width, 150)).print(table)
