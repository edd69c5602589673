"""Small file-making helpers shared by the tests."""

import csv
from pathlib import Path


def touch(path: Path) -> Path:
    """An empty file at `path`, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    """A CSV of `rows` (the header first) at `path`."""
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path
