"""Read a CSV file into dictionaries and compute per-column numeric summaries."""

import csv
import statistics


def read_rows(path: str) -> list[dict]:
    """The rows of the CSV file at `path`, as dictionaries keyed by its header."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def column_summary(rows: list[dict], column: str) -> dict:
    """count, min, max, mean and median of the numeric values in `column`."""
    values = [float(row[column]) for row in rows if row.get(column, "").strip()]
    if not values:
        return {"count": 0}
    return {"count": len(values), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values), "median": statistics.median(values)}
