"""The one way a benchmark script saves its rows: a CSV under results/benchmarks/."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "results" / "benchmarks"


def write_rows(rows: Sequence[dict], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` (dicts) to ``path`` (a bare name goes under results/benchmarks/) and return the path."""
    path = Path(path)
    if not path.is_absolute() and path.parent == Path("."):
        path = BENCHMARKS / path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns or rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
