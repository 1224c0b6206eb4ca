"""Text tables for the reports (rich), rendered to plain strings.

Reports are strings (printed by the CLI, written to files, checked by tests), so a
table is laid out by rich and returned as text: no colour, no markup parsing (cells
are literal), columns as wide as their widest cell, trailing spaces stripped.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> list[str]:
    """Lines of a table: ``header``, a rule, then ``rows``; columns in ``right`` are right-aligned."""
    from io import StringIO

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0, 0, 1))
    for c, name in enumerate(header):
        table.add_column(Text(name), justify="right" if c in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    out = StringIO()
    Console(file=out, width=100_000, color_system=None, highlight=False, emoji=False).print(table)
    return [line.rstrip() for line in out.getvalue().splitlines()]
