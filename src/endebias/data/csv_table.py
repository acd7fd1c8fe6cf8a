"""Reading a CSV table for the tabular benchmark: columns as strings, numbers or codes.

Every error names the file and the column (and the line where a value is at fault), so
a user can fix the table without reading code.
"""

from __future__ import annotations

import contextlib
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class TableError(ValueError):
    """The CSV table cannot serve the requested columns."""


@dataclass
class Table:
    """A CSV file's columns by name; ``lines[i]`` is the file line of row ``i``."""

    path: Path
    columns: dict[str, list[str]]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.lines)

    def column(self, name: str, role: str) -> list[str]:
        if name not in self.columns:
            raise TableError(
                f"{self.path}: no {role} column {name!r}; columns: {', '.join(self.columns)}"
            )
        return self.columns[name]

    def numeric(self, name: str, role: str) -> np.ndarray:
        """The column as float64; every cell must be a finite number."""
        values = np.empty(len(self), dtype=np.float64)
        for index, text in enumerate(self.column(name, role)):
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise TableError(
                    f"{self.path}: {role} column {name!r} must be numeric; line "
                    f"{self.lines[index]} has {text!r}"
                )
            if abs(number) > FLOAT32_MAX:  # its square overflows the standardisation
                raise TableError(
                    f"{self.path}: {role} column {name!r}: line {self.lines[index]} has "
                    f"{text!r}, beyond the range of the 32-bit floats features are trained "
                    f"in (±{FLOAT32_MAX:.3g})"
                )
            values[index] = number
        return values

    def categories(self, name: str, role: str) -> tuple[np.ndarray, list[str]]:
        """Integer codes and the category names, sorted (numerically if all numbers)."""
        values = self.column(name, role)
        for index, text in enumerate(values):
            if text == "":
                raise TableError(
                    f"{self.path}: {role} column {name!r} is empty on line {self.lines[index]}"
                )
        names = sorted(set(values))
        with contextlib.suppress(ValueError):  # not all numbers: keep the text order
            names.sort(key=float)
        lookup = {category: code for code, category in enumerate(names)}
        return np.array([lookup[v] for v in values], dtype=np.int64), names


FLOAT32_MAX = float(np.finfo(np.float32).max)


def read_table(path: str | Path) -> Table:
    """Read a CSV file with a header row. Cells are stripped of surrounding spaces."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such CSV file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise TableError(f"{path}: the file is empty (no header row)")
            header = [name.strip() for name in header]
            if len(set(header)) != len(header) or "" in header:
                raise TableError(f"{path}: the header has empty or repeated column names")
            columns: dict[str, list[str]] = {name: [] for name in header}
            lines: list[int] = []
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue  # blank lines carry no sample
                if len(row) != len(header):
                    raise TableError(
                        f"{path}: line {reader.line_num} has {len(row)} fields, the header "
                        f"has {len(header)}"
                    )
                for name, cell in zip(header, row, strict=True):
                    columns[name].append(cell.strip())
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as error:
        raise TableError(f"{path}: not a readable CSV file ({error})") from error
    if not lines:
        raise TableError(f"{path}: the table has a header but no rows")
    return Table(path, columns, lines)
