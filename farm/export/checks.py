"""An export's options and output folder, checked before any campaign data is read: each
refusal names the option and what to change."""

from __future__ import annotations

from pathlib import Path

from farm.errors import InvalidJob
from farm.export.writers import WRITERS

FORMATS = tuple(WRITERS)
JOB_STATES = ("queued", "prior", "decoding", "done", "failed", "cancelled")
STATES = (*JOB_STATES, "all")
MAX_CONCURRENCY = 256


def check_options(
    format: str, shard_size: int, shard_bytes: int, state: str, concurrency: int, prefix: str
) -> None:
    if format not in FORMATS:
        raise InvalidJob("format", f"must be one of {', '.join(FORMATS)}, got {format!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise InvalidJob(
            "shard_size", f"must be a whole number of samples >= 1, got {shard_size!r}"
        )
    if not isinstance(shard_bytes, int) or shard_bytes < 1 << 10:
        raise InvalidJob("shard_bytes", f"must be at least 1024 bytes, got {shard_bytes!r}")
    if state not in STATES:
        raise InvalidJob("state", f"must be one of {', '.join(STATES)}, got {state!r}")
    if not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidJob(
            "concurrency", f"must be between 1 and {MAX_CONCURRENCY}, got {concurrency!r}"
        )
    # A leading "_" or "." would hide the shards from readers that skip such files (pyarrow).
    if not prefix[:1].isalnum() or not all(c.isalnum() or c in "_-" for c in prefix):
        raise InvalidJob(
            "prefix", f"a letter or digit, then letters, digits, '_' and '-', got {prefix!r}"
        )


def check_folder(folder: Path) -> None:
    """Refuse a folder that cannot hold the export before any campaign data is read."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InvalidJob("out", f"{probe} is a file, not a folder: choose a folder for the shards")


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".farm-export-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise InvalidJob(
            "out",
            f"cannot write to {folder} ({e.strerror or e}): choose a folder you can write to",
        ) from None
