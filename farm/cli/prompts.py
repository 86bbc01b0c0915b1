"""``farm submit PROMPTS.txt|.csv|.parquet``: a campaign from a list of prompts.

The file gives the prompts: a text file one per line (blank lines skipped), a CSV (header row)
or Parquet file its ``prompt`` column. The campaign is the grid of those prompts x ``--seeds``,
with ``--model`` and each ``--set KEY=VALUE`` as every job's defaults:

    --seeds 4          four seeds, drawn by the farm and recorded (the API's grid count)
    --seeds 0-3        seeds 0, 1, 2 and 3: pinned, the same images on every run
    --seeds 7,42,100   exactly these (one pinned seed: --seeds 42,)

A value of ``--set`` is read as JSON where it parses (``768``, ``7.5``, ``true``, ``null``,
``[1, 2]``), else it is the text as written (``--set scheduler=ddim``); quote a number meant as
text: ``--set negative_prompt='"42"'``. The API checks every key and value; its errors name the
option (``--set height: must be a multiple of 64 ...``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from farm.domain.jobs import MAX_PROMPT_CHARS
from farm.errors import InvalidJob

SUFFIXES = (".txt", ".csv", ".parquet")
COLUMN = "prompt"
MAX_SEEDS = 1_000_000  # the API's largest grid


def is_prompts_file(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def campaign(
    path: Path,
    *,
    seeds: str | None = None,
    model: str | None = None,
    sets: list[str] | None = None,
    name: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The campaign a prompts file and the options describe, and the file's columns that were
    not read (a CSV's or Parquet's other columns; the caller says so).

    Raises:
        InvalidJob: the file or an option is unusable, naming the line or the option.
    """
    prompts, ignored = read_prompts(path)
    defaults = parse_sets(sets or [])
    if model:
        if defaults.get("model", model) != model:
            raise InvalidJob("--model", "given twice (--model and --set model=): give it once")
        defaults["model"] = model
    grid = {"prompts": prompts, "seeds": parse_seeds(seeds)}
    return {"name": name or path.name, "grid": grid, "defaults": defaults}, ignored


def read_prompts(path: Path) -> tuple[list[str], list[str]]:
    """The prompts of a .txt, .csv or .parquet file, and the columns not read."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            rows, ignored = _parquet(path)
        elif suffix == ".csv":
            rows, ignored = _csv(path)
        else:
            rows, ignored = _txt(path), []
    except UnicodeDecodeError as e:
        raise InvalidJob(path.name, f"not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    if not rows:
        what = "no non-blank line" if suffix == ".txt" else f"no rows in its {COLUMN!r} column"
        raise InvalidJob(path.name, f"holds no prompts ({what})")
    for where, prompt in rows:
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidJob(
                where, f"prompt of {len(prompt)} characters; at most {MAX_PROMPT_CHARS}"
            )
    return [prompt for _, prompt in rows], ignored


def _txt(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8-sig") as f:
        return [(f"{path.name}:{n}", line.strip()) for n, line in enumerate(f, 1) if line.strip()]


def _column(path: Path, names: list[str]) -> str:
    """The prompt column's name as written (any case), or an error naming the columns found."""
    for name in names:
        if name is not None and name.strip().lower() == COLUMN:
            return name
    found = ", ".join(repr(n) for n in names) or "none"
    raise InvalidJob(path.name, f"no {COLUMN!r} column (columns found: {found})")


def _csv(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            names = list(reader.fieldnames or [])
            if not names:
                return [], []
            column = _column(path, names)
            rows = []
            for row in reader:
                value = row.get(column)
                where = f"{path.name}:{reader.line_num}"
                if value is None or not value.strip():
                    raise InvalidJob(where, f"empty {COLUMN!r} cell (each row needs a prompt)")
                rows.append((where, value.strip()))
        except csv.Error as e:
            raise InvalidJob(f"{path.name}:{reader.line_num}", f"not valid CSV: {e}") from None
    return rows, [n for n in names if n != column]


def _parquet(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with path.open("rb") as f:  # a missing file: Python's own error, naming it
        try:
            table_file = pq.ParquetFile(f)
            names = list(table_file.schema_arrow.names)
            column = _column(path, names)
            values = table_file.read(columns=[column]).column(column)
        except (pa.ArrowException, OSError) as e:
            raise InvalidJob(path.name, f"not a readable Parquet file: {e}") from None
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise InvalidJob(f"{path.name}: column {column!r}", f"must hold text (got {values.type})")
    rows = []
    for i, value in enumerate(values.to_pylist(), 1):
        where = f"{path.name}: row {i}"
        if value is None or not value.strip():
            raise InvalidJob(where, f"empty {COLUMN!r} value (each row needs a prompt)")
        rows.append((where, value.strip()))
    return rows, [n for n in names if n != column]


def parse_seeds(text: str | None) -> int | list[int]:
    """``4`` (a count, drawn by the farm), or seeds as a list of numbers and ranges (``0-3``,
    ``7,42``, ``42,``)."""
    text = (text or "1").strip()
    shape = "a count (4), a range (0-3) or a list (7,42 or 42,)"
    if text.isdigit():
        return int(text)
    seeds: list[int] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        low, dash, high = item.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise InvalidJob("--seeds", f"expected {shape}; got {text!r}")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise InvalidJob("--seeds", f"range {item} runs backwards: write {last}-{first}")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise InvalidJob("--seeds", f"at most {MAX_SEEDS} seeds (got {text!r})")
        seeds.extend(range(first, last + 1))
    if not seeds:
        raise InvalidJob("--seeds", f"expected {shape}; got {text!r}")
    return seeds


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` options as a dict, each value JSON where it parses, else the text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidJob("--set", f"expected KEY=VALUE, as height=768 (got {item!r})")
        if key == "prompt":
            raise InvalidJob("--set prompt", "the prompts come from the file")
        if key == "seed":
            raise InvalidJob("--set seed", "seeds are --seeds (a count, a range or a list)")
        out[key] = _value(raw)
    return out


def _value(raw: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(name)  # NaN and Infinity are no JSON numbers: the text stays text

    try:
        return json.loads(raw, parse_constant=refuse)
    except ValueError:
        return raw


def option_of(error: InvalidJob, path: Path) -> InvalidJob:
    """The API's error on a campaign built here, naming the option or file it came from
    (``defaults.height`` is ``--set height``; ``grid.seeds`` is ``--seeds``)."""
    field = error.field
    if field == "defaults.model":
        name = "--model"
    elif field.startswith("defaults."):
        name = f"--set {field.removeprefix('defaults.')}"
    elif field == "grid.seeds":
        name = "--seeds"
    elif field == "grid.prompts":
        name = path.name
    else:
        return error
    return InvalidJob(name, error.reason, index=error.index)
