"""Report folders: metrics.json, tables as CSV and Markdown, and a report.md that shows tables and figures together."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Section:
    """One part of report.md: a heading, text, a Markdown table and figures (caption, file name in the report folder)."""

    heading: str
    text: str = ""
    table: str = ""
    figures: Sequence[tuple[str, str]] = field(default_factory=tuple)


def cell(value: Any) -> str:
    """A table cell: numbers with six significant digits, missing values as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of `rows`, whose keys (in the first row's order) are the columns."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[Mapping[str, Any]], folder: str | Path, stem: str) -> str:
    """Write `rows` to `<folder>/<stem>.csv` and `<stem>.md`; returns the Markdown."""
    if not rows:
        raise ValueError(f"table {stem} has no rows")
    folder = Path(folder)
    with open(folder / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: cell(v) for k, v in row.items()} for row in rows)
    table = markdown_table(rows)
    (folder / f"{stem}.md").write_text(table)
    return table


def write_json(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write `data` as indented JSON, with NaN written as null so that any JSON reader takes it."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    Path(path).write_text(json.dumps(clean(data), indent=2) + "\n")
    return Path(path)


def write_report(folder: str | Path, title: str, sections: Sequence[Section]) -> Path:
    """Write `<folder>/report.md`: the title, then each section's text, table and figures; checks that every figure exists."""
    folder = Path(folder)
    parts = [f"# {title}\n"]
    for s in sections:
        parts.append(f"## {s.heading}\n")
        parts += [p for p in (s.text, s.table) if p]
        for caption, name in s.figures:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"report figure {folder / name} was not written")
            parts.append(f"![{caption}]({name})\n\n*{caption}*\n")
    path = folder / "report.md"
    path.write_text("\n".join(parts))
    return path
