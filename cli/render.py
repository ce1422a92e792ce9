"""The one renderer for every listing: ``--format table|json|csv``.

Rows are dicts of raw values (times as integer nanoseconds since the epoch, UTC); a
``Column`` says how to show one key. JSON and CSV carry every listed key with full
precision (times as RFC 3339 with nanoseconds); the table is for eyes: aligned, times
to the second, long text cut to the column's ``width`` so it stays under 80 columns.
"""
from __future__ import annotations

import csv
import datetime as dt
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, TextIO

import msgspec

from .options import OutputFormat

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    kind: str = "text"  # text | int | time | bytes | us (microseconds; the table shows ms to 0.1, "-" for 0)
    width: int = 0  # table only: cut longer text to this many characters (0: never)


def rfc3339(ns: int, *, digits: int = 9) -> str:
    """Nanoseconds since the epoch as RFC 3339 UTC: ``2026-11-22T01:41:02.123456789Z``."""
    seconds, fraction = divmod(int(ns), 1_000_000_000)
    text = (_EPOCH + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{fraction:09d}"[: len(text) + 1 + digits] + "Z" if digits else text + "Z"


_UNITS = ("", "K", "M", "G", "T", "P", "E", "Z", "Y")


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5K``; under 1024 exactly; any size (sums can pass 2**64)."""
    if n < 1024:
        return str(n)
    for power, unit in enumerate(_UNITS[1:], 1):
        if n < 1024 ** (power + 1) or unit == _UNITS[-1]:
            return f"{n / 1024 ** power:.1f}{unit}"
    return str(n)


def data_value(column: Column, value: Any) -> Any:
    """A value as JSON and CSV carry it."""
    if column.kind == "time" and isinstance(value, int):
        return rfc3339(value) if value else ""
    return value


def table_value(column: Column, value: Any) -> str:
    """A value as the table shows it."""
    if value is None:
        return "-"
    if column.kind == "time" and isinstance(value, int):
        return rfc3339(value, digits=0) if value else "-"
    if column.kind == "bytes":
        return human_bytes(value)
    if column.kind == "us":  # ms to a tenth, cut (not rounded) in integers
        return f"{value // 1000}.{value % 1000 // 100}" if value else "-"
    text = str(value)
    if column.width and len(text) > column.width:
        return text[: column.width - 1] + "…"
    return text


def render(rows: Iterable[dict], columns: Sequence[Column], fmt: OutputFormat = OutputFormat.table,
           out: TextIO | None = None, *, empty: str = "") -> None:
    out = out or sys.stdout
    rows = list(rows)
    if fmt is OutputFormat.json:
        doc = [{c.key: data_value(c, row.get(c.key)) for c in columns} for row in rows]
        out.write(msgspec.json.format(msgspec.json.encode(doc), indent=2).decode() + "\n")
    elif fmt is OutputFormat.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([c.key for c in columns])
        for row in rows:
            writer.writerow([data_value(c, row.get(c.key)) for c in columns])
    else:
        out.write(table_text(rows, columns, empty=empty))


def table_text(rows: Sequence[dict], columns: Sequence[Column], *, empty: str = "") -> str:
    """Aligned columns, numbers to the right; ``empty`` (if any) when there are no rows."""
    if not rows and empty:
        return empty + "\n"
    cells = [[table_value(c, row.get(c.key)) for c in columns] for row in rows]
    widths = [max([len(c.header)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    lines = [_line([c.header for c in columns], columns, widths)]
    lines += [_line(line, columns, widths) for line in cells]
    return "\n".join(lines) + "\n"


def _line(cells: Sequence[str], columns: Sequence[Column], widths: Sequence[int]) -> str:
    parts = [cell.rjust(w) if c.kind in ("int", "bytes", "us") else cell.ljust(w)
             for cell, c, w in zip(cells, columns, widths, strict=True)]
    return " ".join(parts).rstrip()
