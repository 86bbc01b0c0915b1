"""``export_campaign``: a campaign's images, streamed from S3 into WebDataset or Parquet shards.

Job records are read in the campaign's own order (``handle.stream("jobs")``, a line at a time),
images fetched by a bounded pool of GETs and written in that same order, so memory stays flat
whatever the campaign's size and an interrupted export resumes after its last finished shard.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import farm.export.manifest as mf
from farm.errors import InvalidJob, NotFound
from farm.export.checks import check_folder, check_options, make_folder
from farm.export.fetch import Fetch, HttpFetcher, MissingObject, ordered
from farm.export.writers import OVERHEAD, WRITERS, ShardWriter, png_size

ACTIVE = ("queued", "prior", "decoding")


@dataclass
class _Item:
    """One job record on its way through the pipeline."""

    position: int
    record: dict[str, Any]
    urls: list[str] = field(default_factory=list)
    skip: str | None = None  # why it yields no sample


def export_campaign(
    handle: Any,
    out: str | Path,
    *,
    format: str = "webdataset",
    shard_size: int = 1000,
    shard_bytes: int = 1 << 30,
    state: str = "done",
    resume: bool = True,
    progress: bool = False,
    concurrency: int = 16,
    prefix: str = "shard",
    fetch: Fetch | None = None,
) -> mf.ExportStats:
    """Write the campaign's images (jobs in ``state``; "all" for every job, images where done)
    into shards under ``out``; returns what was written and skipped (also ``out/_stats.json``).

    A shard closes at ``shard_size`` samples or ``shard_bytes`` bytes, whichever comes first,
    and never splits a job's images. With ``resume`` (the default) a folder holding an
    interrupted export of the same campaign and options is continued after its last finished
    shard; ``resume=False`` starts again, replacing the export's own files (only those).
    ``fetch`` (url -> bytes) replaces the HTTP GETs (tests).

    Raises:
        InvalidJob: a bad option, or ``out`` cannot be written (its message says what to fix).
        NotFound: no such campaign for this token.
        ServiceUnavailable: S3 or the API failed mid-way; finished shards are kept for a resume.
    """
    check_options(format, shard_size, shard_bytes, state, concurrency, prefix)
    campaign_id = str(handle.id)
    folder = Path(out).expanduser()
    check_folder(folder)
    status = _status(handle, campaign_id)
    counts = {k: int(v) for k, v in (status.get("counts") or {}).items()}
    fresh = mf.ExportStats(
        campaign_id=campaign_id,
        format=format,
        out=str(folder),
        prefix=prefix,
        shard_size=shard_size,
        shard_bytes=shard_bytes,
        state=state,
        campaign_state=status.get("state"),
        campaign_finished=_finished(status, counts),
        campaign_counts=counts,
    )
    make_folder(folder)
    stats = _begin(folder, fresh, resume)
    if stats.complete:
        return stats  # already exported, and the campaign has not changed since
    own_fetch = fetch is None
    getter: Fetch = HttpFetcher(concurrency) if fetch is None else fetch
    started = time.monotonic() - stats.elapsed_s
    try:
        _run(
            handle,
            folder,
            stats,
            getter,
            concurrency,
            progress,
            total=int(status.get("total") or 0),
        )
    finally:
        if own_fetch:
            getter.close()  # type: ignore[attr-defined]
    stats.complete = True
    stats.elapsed_s = round(time.monotonic() - started, 3)
    stats.note = _note(stats)
    stats.save(folder)
    return stats


def _status(handle: Any, campaign_id: str) -> dict[str, Any]:
    try:
        return dict(handle.status())  # a CampaignStatus reads as a dict
    except NotFound as e:
        raise NotFound(
            f"campaign {campaign_id} not found ({e}): check the id; `farm ls` lists yours"
        ) from e


def _finished(status: dict[str, Any], counts: dict[str, int]) -> bool:
    if counts:
        return not any(counts.get(s, 0) for s in ACTIVE)
    return status.get("state") in ("finished", "cancelled")


def _begin(folder: Path, fresh: mf.ExportStats, resume: bool) -> mf.ExportStats:
    """The stats to continue from: a resumable earlier export's, else ``fresh`` on a clean slate."""
    old = mf.load(folder) if resume else None
    if old is not None and not old.same_options(fresh):
        raise InvalidJob(
            "out",
            f"{folder} holds an export of {mf.describe(old)}, not of {mf.describe(fresh)}: "
            "rerun with its options to resume it, pass --overwrite (resume=False) to replace "
            "it, or choose another folder",
        )
    if old is not None and old.complete and not old.campaign_finished:
        old = None  # it exported a campaign still running then: more may be done now
    if old is not None and (problem := mf.shards_intact(folder, old)):
        raise InvalidJob(
            "out",
            f"cannot resume the export in {folder}: {problem}; "
            "pass --overwrite (resume=False) to export again from the start",
        )
    keep = ({s["name"] for s in old.shards} | {mf.MANIFEST, mf.STATS, mf.SKIPPED}) if old else set()
    for path in mf.ours(folder, fresh.prefix):
        if path.name not in keep:
            path.unlink()  # a half-written shard, or the files of the export being replaced
    if old is None:
        fresh.save(folder)
        return fresh
    if not old.complete:
        old.resumed, old.kept_shards = True, len(old.shards)
        old.campaign_state, old.campaign_counts = fresh.campaign_state, fresh.campaign_counts
        old.campaign_finished = fresh.campaign_finished
    return old


def _records(handle: Any, stats: mf.ExportStats) -> Iterator[_Item]:
    """The campaign's job records from ``stats.position`` on, each with what to fetch or why not."""
    for position, record in enumerate(handle.stream("jobs")):
        if position < stats.position:
            if position == stats.position - 1 and record.get("job_id") != stats.last_job_id:
                raise InvalidJob(
                    "out",
                    f"the campaign's job order no longer matches the export being resumed "
                    f"(job {position} is {record.get('job_id')}, recorded "
                    f"{stats.last_job_id}): pass --overwrite (resume=False) to export again",
                )
            continue
        yield _plan(position, record, stats.state)


def _plan(position: int, record: dict[str, Any], wanted: str) -> _Item:
    item = _Item(position, record)
    job_state = str(record.get("state"))
    if wanted not in ("all", job_state):
        if job_state in ("failed", "cancelled"):
            item.skip = job_state
        elif job_state in ACTIVE:
            item.skip = "not finished"
        else:
            item.skip = f"not selected ({job_state})"
    elif job_state == "done":
        item.urls = list(record.get("urls") or ([record["url"]] if record.get("url") else []))
        if not item.urls:
            item.skip = "no image key"
    return item


def _run(
    handle: Any,
    folder: Path,
    stats: mf.ExportStats,
    fetch: Fetch,
    concurrency: int,
    progress: bool,
    *,
    total: int,
) -> None:
    from tqdm.auto import tqdm

    skipped = _open_skipped(folder, stats)
    writer: ShardWriter | None = None
    bar = tqdm(
        total=total or None, initial=stats.position, unit="job", disable=not progress, leave=False
    )
    pipeline = ordered(
        _records(handle, stats),
        lambda item: item.urls,
        fetch,
        concurrency=concurrency,
        window=max(4 * concurrency, 8),
    )
    try:
        for item, bodies in pipeline:
            bar.update(1)
            samples, missing = ([], []) if item.skip else _samples(item, bodies, stats.campaign_id)
            if samples:
                size = sum(len(s[1] or b"") + OVERHEAD for s in samples)
                if writer and (
                    writer.samples + len(samples) > stats.shard_size
                    or writer.payload + size > stats.shard_bytes
                ):
                    # Closed before this job, which (and whose skips) it then does not cover.
                    _finish(writer, folder, stats, skipped)
                    writer = None
                writer = writer or _new_writer(folder, stats)
                for key, image, meta, prompt in samples:
                    writer.add(key, image, meta, prompt)
                stats.jobs += 1
            if item.skip:
                _skip(skipped, stats, item.record, item.skip)
            for s3_key in missing:
                _skip(skipped, stats, item.record, "missing object", s3_key=s3_key)
            stats.position, stats.last_job_id = item.position + 1, item.record.get("job_id")
            if writer and (
                writer.samples >= stats.shard_size or writer.payload >= stats.shard_bytes
            ):
                _finish(writer, folder, stats, skipped)
                writer = None
        if writer and writer.samples:
            _finish(writer, folder, stats, skipped)
            writer = None
        skipped.flush()
        stats.skipped_file_bytes = skipped.tell()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        pipeline.close()  # cancels the GETs not started and waits for those under way
        bar.close()
        skipped.close()


def _open_skipped(folder: Path, stats: mf.ExportStats) -> BinaryIO:
    """The skipped-jobs log, cut back to what the last finished shard had recorded."""
    path = folder / stats.skipped_file
    f = path.open("ab+")
    f.truncate(stats.skipped_file_bytes)
    f.seek(stats.skipped_file_bytes)
    return f


def _skip(
    log: BinaryIO, stats: mf.ExportStats, record: dict[str, Any], reason: str, **extra: Any
) -> None:
    stats.skipped[reason] = stats.skipped.get(reason, 0) + 1
    entry = {
        "job_id": record.get("job_id"),
        "state": record.get("state"),
        "reason": reason,
        **extra,
    }
    if record.get("error"):
        entry["error"] = record["error"]
    log.write(json.dumps(entry, ensure_ascii=False).encode() + b"\n")


def _samples(
    item: _Item, bodies: list[bytes | MissingObject], campaign_id: str
) -> tuple[list[tuple[str, bytes | None, dict[str, Any], str]], list[str | None]]:
    """(key, image, json, prompt) for each image of a job (one, without image, if not done),
    and the S3 keys of its images that are gone."""
    rec = item.record
    spec = rec.get("spec") or {}
    job_id = str(rec.get("job_id"))
    keys = list(rec.get("s3_keys") or ([rec["s3_key"]] if rec.get("s3_key") else []))
    images: list[bytes | MissingObject | None] = list(bodies) if item.urls else [None]
    out, missing = [], []
    for i, image in enumerate(images):
        s3_key = keys[i] if i < len(keys) else rec.get("s3_key")
        if isinstance(image, MissingObject):
            missing.append(s3_key)
            continue
        # WebDataset's key is a name up to its first dot: "<job>_<i>" keeps a job's images apart.
        key = job_id if len(images) == 1 else f"{job_id}_{i}"
        size = png_size(image)
        meta = {
            "key": key,
            "job_id": job_id,
            "campaign_id": campaign_id,
            "image_index": i,
            "state": rec.get("state"),
            "prompt": spec.get("prompt", ""),
            "seed": rec.get("seed", spec.get("seed")),
            "model": spec.get("model"),
            "task": spec.get("task"),
            "width": size[0] if size else spec.get("width"),
            "height": size[1] if size else spec.get("height"),
            "s3_key": s3_key,
            "spec": spec,
            "timings": rec.get("timings") or {},
        }
        if rec.get("error"):
            meta["error"] = rec["error"]
        out.append((key, image, meta, str(spec.get("prompt") or "")))
    return out, missing


def _new_writer(folder: Path, stats: mf.ExportStats) -> ShardWriter:
    cls = WRITERS[stats.format]
    return cls(folder / f"{stats.prefix}-{len(stats.shards):06d}{cls.suffix}")


def _finish(writer: ShardWriter, folder: Path, stats: mf.ExportStats, skipped: BinaryIO) -> None:
    """Publish a shard, then record it, with the position reached, in the manifest: a resume
    starts from there."""
    entry = writer.close()
    entry["end_position"] = stats.position
    stats.shards.append(entry)
    stats.samples += entry["samples"]
    stats.bytes += entry["bytes"]
    skipped.flush()
    stats.skipped_file_bytes = skipped.tell()
    stats.save(folder)


def _note(stats: mf.ExportStats) -> str | None:
    if stats.campaign_finished:
        return None
    waiting = sum(stats.campaign_counts.get(s, 0) for s in ACTIVE)
    return (
        f"campaign {stats.campaign_id} was not finished ({stats.campaign_state}, {waiting} jobs "
        f"queued or running): exported the {stats.jobs} jobs done so far; run the same export "
        "again once it finishes to export them all"
    )
