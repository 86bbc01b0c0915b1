"""An export's record of itself: ``_manifest.json`` (options, every finished shard, where in the
campaign's job order it stands, what was skipped and why) and ``_stats.json`` (the same, less
the shard list), and ``_skipped.jsonl``. Rewritten atomically after each shard: the state a
resumed export starts from. The leading underscore keeps them out of a folder read as a dataset
(pyarrow, pandas and Spark skip ``_`` and ``.`` files).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from farm.errors import InvalidJob

MANIFEST = "_manifest.json"
STATS = "_stats.json"
SKIPPED = "_skipped.jsonl"
VERSION = 1
# What must match for an export to resume another: the same shards would come out.
OPTIONS = ("campaign_id", "format", "prefix", "shard_size", "shard_bytes", "state")


@dataclass
class ExportStats:
    """What an export wrote and skipped. ``complete``: it read the campaign's job list to the
    end; ``campaign_finished``: no job was queued or running when it started."""

    campaign_id: str
    format: str
    out: str
    prefix: str
    shard_size: int
    shard_bytes: int
    state: str
    campaign_state: str | None = None
    campaign_finished: bool = False
    campaign_counts: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    position: int = 0  # job records read and accounted for, in the campaign's order
    last_job_id: str | None = None  # the record at position - 1: checked when resuming
    jobs: int = 0  # jobs with at least one sample written
    samples: int = 0
    bytes: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_file: str = SKIPPED
    skipped_file_bytes: int = 0
    resumed: bool = False
    kept_shards: int = 0  # shards a resumed export found finished and kept
    note: str | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    elapsed_s: float = 0.0
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """_stats.json: everything but the shard list (which can run to a thousand entries)."""
        out = self.to_dict()
        out.pop("shards")
        out["shard_count"] = len(self.shards)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportStats:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, folder: Path) -> None:
        self.updated_at = time.time()
        write_json(folder / MANIFEST, self.to_dict())
        write_json(folder / STATS, self.summary())

    def same_options(self, other: ExportStats) -> bool:
        return all(getattr(self, k) == getattr(other, k) for k in OPTIONS)


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(folder: Path) -> ExportStats | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} export manifest")
        return ExportStats.from_dict(data)
    except (ValueError, TypeError) as e:
        raise InvalidJob(
            "out",
            f"{path} is not an export manifest this farm can read ({e}): "
            "pass --overwrite (resume=False) to start the export again, or choose another folder",
        ) from None


def describe(stats: ExportStats) -> str:
    return (
        f"campaign {stats.campaign_id} as {stats.format} (prefix {stats.prefix!r}, "
        f"{stats.shard_size} samples / {stats.shard_bytes} bytes a shard, state {stats.state})"
    )


def ours(folder: Path, prefix: str) -> list[Path]:
    """Every file an export with this prefix writes in ``folder`` (shards, temp files, records):
    what starting over removes. Anything else in the folder is left alone."""
    names = {MANIFEST, STATS, SKIPPED}
    found = []
    for path in folder.iterdir():
        name = path.name.removesuffix(".tmp")
        if name in names:
            found.append(path)
        elif name.lstrip(".").startswith(f"{prefix}-") and name.endswith((".tar", ".parquet")):
            found.append(path)
    return found


def shards_intact(folder: Path, stats: ExportStats) -> str | None:
    """None when every recorded shard is on disk at its recorded size; else what is not."""
    for shard in stats.shards:
        path = folder / shard["name"]
        if not path.is_file():
            return f"{shard['name']} is missing"
        if path.stat().st_size != shard["bytes"]:
            return f"{shard['name']} is {path.stat().st_size} bytes, recorded {shard['bytes']}"
    return None
