"""The official puzzle CSV layout (Sudoku-Extreme, Maze-30x30-Hard): a header, then rows
``source,q,a,rating``. Shared by the Sudoku and maze readers; each checks its own characters."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hrm_fast.errors import UserError

HEADER = ("source", "q", "a", "rating")


class BoardCsvError(UserError):
    """A bad puzzle CSV: one line naming the file, the line number and the field."""


@dataclass
class CsvRow:
    line: int  # 1-based line number in the file
    source: str
    q: str
    a: str
    rating: int


def read_rows(
    path: str | Path, length: int, check: Callable[[str, str], str | None]
) -> list[CsvRow]:
    """Every data row; ``check(field, text)`` returns why a ``q``/``a`` field is bad, or None.

    ``q`` and ``a`` must be ``length`` characters; ``rating`` an integer (empty reads as 0).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            lines = list(csv.reader(f))
    except FileNotFoundError:
        raise BoardCsvError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BoardCsvError(f"{path}: unreadable ({e.__class__.__name__})") from None
    rows: list[CsvRow] = []
    for n, fields in enumerate(lines, start=1):
        where = f"{path}: line {n}"
        if n == 1:
            if tuple(f.strip() for f in fields[:4]) != HEADER:
                raise BoardCsvError(f"{where}: expected the header 'source,q,a,rating'")
            continue
        if not fields:
            continue
        if len(fields) != 4:
            raise BoardCsvError(f"{where}: expected 4 fields source,q,a,rating, got {len(fields)}")
        source, q, a, rating = fields
        for name, value in (("q", q), ("a", a)):
            if len(value) != length:
                raise BoardCsvError(
                    f"{where}: field {name} has {len(value)} characters, expected {length}"
                )
            why = check(name, value)
            if why:
                raise BoardCsvError(f"{where}: field {name} {why}")
        try:
            rating_value = int(rating) if rating.strip() else 0
        except ValueError:
            raise BoardCsvError(f"{where}: field rating {rating!r} is not an integer") from None
        rows.append(CsvRow(n, source, q, a, rating_value))
    if not rows:
        raise BoardCsvError(f"{path}: no puzzle rows after the header")
    return rows


def write_rows(path: str | Path, rows: list[tuple[str, str, str, int]]) -> None:
    """Write ``(source, q, a, rating)`` rows with the header, atomically."""
    import io

    from hrm_fast.files import write_output

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    write_output(path, buf.getvalue())
