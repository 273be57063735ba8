"""A report for a terminal: the same blocks as report.md, as rich text and tables.

Markdown image tags mean nothing in a terminal, so each picture is shown as its path where it
stands in the report, and the files the report wrote are listed at the end. Tables keep every column on one line each when the
output is not a terminal (a pipe or a log file), so the figures stay greppable.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from qbench.printable import printable
from qbench.report.blocks import Block, Bullets, Heading, Image, Links, Para, Table

PIPE_WIDTH = 250  # columns used when stdout is not a terminal


def _plain(text: str) -> str:
    """Inline Markdown we emit (`code`, **bold**) without its marks; a terminal escape in a
    model's error or a path shown as text (worker/printable.py)."""
    return printable(text.replace("`", "").replace("**", ""), keep_newlines=True)


def terminal_console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=PIPE_WIDTH, soft_wrap=True)
    return console


def _table(block: Table) -> RichTable:
    table = RichTable(show_edge=False, header_style="bold", pad_edge=False)
    for i, header in enumerate(block.headers):
        table.add_column(_plain(header), justify="right" if i in block.align_right else "left",
                         no_wrap=True)
    for row in block.rows:
        table.add_row(*(Text(_plain(c)) for c in row))
    return table


def print_report(blocks: list[Block], folder: Path, files: list[Path],
                 console: Console | None = None) -> None:
    """Print the blocks for a person at a terminal, then the paths of the files written."""
    console = console or terminal_console()
    for b in blocks:
        if isinstance(b, Heading):
            console.print()
            console.print(Text(_plain(b.text), style="bold" if b.level == 1 else "bold underline"))
        elif isinstance(b, Para):
            console.print(Text(_plain(b.text), style="bold red" if b.alert else ""))
        elif isinstance(b, Bullets):
            for item in b.items:
                console.print(Text("• " + _plain(item)))
        elif isinstance(b, Table):
            console.print(_table(b))
        elif isinstance(b, Image):
            path = b.path if b.path.is_absolute() else folder / b.path
            console.print(Text(printable(f"picture ({b.alt}): ")) + Text(printable(path), style="cyan"),
                          soft_wrap=True)
        elif isinstance(b, Links):
            console.print(Text(_plain(b.intro)))
            for p in b.paths:
                console.print(Text("• ") + Text(printable(folder / p), style="cyan"),
                              soft_wrap=True)
    console.print()
    console.print(Text("files written", style="bold underline"))
    for path in files:
        console.print(Text(str(path)), soft_wrap=True)
