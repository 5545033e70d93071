"""Metric events from text: JSON Lines, or long-format CSV merged into events, with the line
each came from. Shared by `publish` (files on disk) and `on_evaluation_file` (Cloud Storage).

- JSONL: one event object per line, exactly as in the design doc; blank lines are skipped.
  Only the syntax is checked here (a JSON object per line, no NaN/Infinity); the schema is the
  service's job, so a bad event comes back as *rejected* with the field it names.
- CSV (long format, header row required): `model,metric,value,window_end` and optionally
  `examples,slice,model_version,window_start`. Rows sharing (model, slice, model_version,
  window_end) are **merged** into one event with several metrics, whether or not they are
  adjacent; events come out in the order of their first row, numbered by that row's line.
  Merging is strict: the same metric twice in one event, or merged rows that disagree on
  `examples` or `window_start`, is an error (publish a correction as a separate file).
  Empty optional cells are omitted (so `slice` defaults to `overall` in the service).

`read_events` raises `ValueError("<path>:<line>: ...")` on the first malformed line, or, given
`skip`, tells it (line, reason) and goes on without that line (CSV: without that row).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

SkipRow = Callable[[int, str], None]
"""Told (line number, reason) of each malformed line that `read_events` leaves out."""

CSV_REQUIRED = ("model", "metric", "value", "window_end")
CSV_OPTIONAL = ("examples", "slice", "model_version", "window_start")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def read_events(
    path: str | Path, fmt: str | None = None, skip: SkipRow | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, event) from a JSONL or CSV file (`-` reads JSONL/CSV from stdin).

    `fmt` ("jsonl" or "csv") overrides detection by extension/content.
    Raises ValueError("<path>:<line>: <reason>") on the first malformed line; with `skip`,
    reports each malformed line to it and leaves the line out instead (a CSV header that
    lacks required columns still raises: no row of such a file can be read).
    """
    name = str(path)
    if name == "-":
        text = sys.stdin.read()
        yield from read_events_text(text, "<stdin>", fmt, skip)
        return
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            if (fmt or detect_format(Path(path), handle)) == "csv":
                yield from _read_csv(handle, name, skip)
            else:
                yield from _read_jsonl(handle, name, skip)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_events_text(
    text: str, name: str, fmt: str | None, skip: SkipRow | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """`read_events` on text already in memory (`name` is used in error messages); `fmt`
    None sniffs: a first non-blank `{` is JSONL, anything else CSV."""
    handle = io.StringIO(text.removeprefix("\ufeff"), newline="")
    fmt = fmt or ("jsonl" if text.lstrip("\ufeff \t\r\n").startswith("{") else "csv")
    yield from (_read_csv(handle, name, skip) if fmt == "csv"
                else _read_jsonl(handle, name, skip))


def _malformed(name: str, line: int, reason: str, skip: SkipRow | None) -> None:
    """Raise for a malformed line, or report it to `skip`."""
    if skip is None:
        raise ValueError(f"{name}:{line}: {reason}")
    skip(line, reason)


def detect_format(path: Path, handle: IO[str]) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    start = handle.tell()
    head = handle.read(4096).lstrip()
    handle.seek(start)
    return "jsonl" if head.startswith("{") else "csv"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (metric values must be finite numbers)")


def _read_jsonl(
    handle: IO[str], name: str, skip: SkipRow | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            _malformed(name, number, f"invalid JSON: {exc.msg} (column {exc.colno})", skip)
            continue
        except ValueError as exc:
            _malformed(name, number, str(exc), skip)
            continue
        except RecursionError:
            _malformed(name, number, "JSON nested too deeply", skip)
            continue
        if not isinstance(event, dict):
            _malformed(name, number, "expected a JSON object (one event per line), "
                       f"got {type(event).__name__}", skip)
            continue
        yield number, event


def _read_csv(
    handle: IO[str], name: str, skip: SkipRow | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(handle)
    header: list[str] | None = None
    header_line = 0
    # (model, slice, model_version, window_end) -> (first line, event, {metric: line})
    merged: dict[tuple[str, str, str, str], tuple[int, dict[str, Any], dict[str, int]]] = {}
    for row in reader:
        line = reader.line_num  # physical line where this record ends
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header, header_line = [cell.strip() for cell in row], line
            _check_header(header, name, header_line)
            continue
        if len(row) != len(header):
            _malformed(name, line, f"expected {len(header)} columns ({','.join(header)}), "
                       f"got {len(row)}", skip)
            continue
        cells = {col: cell.strip() for col, cell in zip(header, row, strict=True)}
        try:
            _merge_row(merged, cells, name, line)
        except ValueError as exc:
            _malformed(name, line, str(exc).removeprefix(f"{name}:{line}: "), skip)
    if header is None:
        raise ValueError(f"{name}:1: empty CSV: expected a header row {','.join(CSV_REQUIRED)}")
    for first_line, event, _ in merged.values():
        yield first_line, event


def _check_header(header: list[str], name: str, line: int) -> None:
    missing = [col for col in CSV_REQUIRED if col not in header]
    if missing:
        raise ValueError(
            f"{name}:{line}: CSV header lacks column(s) {', '.join(missing)} "
            f"(required: {','.join(CSV_REQUIRED)}; optional: {','.join(CSV_OPTIONAL)})"
        )
    unknown = [col for col in header if col not in CSV_REQUIRED + CSV_OPTIONAL]
    if unknown:
        raise ValueError(
            f"{name}:{line}: unknown CSV column(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {','.join(CSV_REQUIRED + CSV_OPTIONAL)})"
        )
    duplicated = sorted({col for col in header if header.count(col) > 1})
    if duplicated:
        raise ValueError(f"{name}:{line}: duplicate CSV column(s) {', '.join(duplicated)}")


def _merge_row(
    merged: dict[tuple[str, str, str, str], tuple[int, dict[str, Any], dict[str, int]]],
    cells: dict[str, str],
    name: str,
    line: int,
) -> None:
    where = f"{name}:{line}"
    for col in CSV_REQUIRED:
        if not cells[col]:
            raise ValueError(f"{where}: empty {col!r}")
    value = _number(cells["value"], where)
    key = (
        cells["model"],
        cells.get("slice") or "overall",
        cells.get("model_version", ""),
        cells["window_end"],
    )
    if key not in merged:
        event: dict[str, Any] = {"model": cells["model"], "metrics": {}}
        if cells.get("model_version"):
            event["model_version"] = cells["model_version"]
        if cells.get("window_start"):
            event["window_start"] = cells["window_start"]
        event["window_end"] = cells["window_end"]
        if cells.get("examples"):
            event["examples"] = _count(cells["examples"], where)
        if cells.get("slice"):
            event["slice"] = cells["slice"]
        merged[key] = (line, event, {})
    first_line, event, metric_lines = merged[key]
    metric = cells["metric"]
    if metric in metric_lines:
        raise ValueError(
            f"{where}: metric {metric!r} repeats line {metric_lines[metric]} for the same "
            f"(model, slice, model_version, window_end); publish corrections separately"
        )
    given = {
        col: parsed
        for col, parsed in (
            ("window_start", cells.get("window_start") or None),
            ("examples", _count(cells["examples"], where) if cells.get("examples") else None),
        )
        if parsed is not None
    }
    for col, parsed in given.items():  # check everything before changing anything
        if col in event and event[col] != parsed:
            raise ValueError(
                f"{where}: {col} {parsed!r} disagrees with {event[col]!r} on line {first_line} "
                f"(rows merged into one event must agree)"
            )
    event.update(given)
    metric_lines[metric] = line
    event["metrics"][metric] = value


def _number(text: str, where: str) -> float | int:
    try:
        value: float | int = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{where}: value {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: value {text!r} is not a finite number")
    return value


def _count(text: str, where: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"{where}: examples {text!r} is not a whole number") from None
    if count < 0:
        raise ValueError(f"{where}: examples {count} is negative")
    return count
