"""``export_campaign``: shards read back with tarfile, webdataset and pyarrow; a shard never
splits a job; a resumed export equals an uninterrupted one; memory stays flat in the campaign's
size (tracemalloc at ten times the jobs). Errors, the CLI and the real stack:
test_export_errors.py."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from farm.errors import ServiceUnavailable
from farm.export import MANIFEST, SKIPPED, STATS, export_campaign
from tests.export_fakes import (
    PNGS,
    FakeHandle,
    fetch,
    mixed,
    read_webdataset,
    tar_samples,
)


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.suffix in (".tar", ".parquet") or p.name == SKIPPED
    }


def test_webdataset_shards_read_back_with_tarfile_andread_webdataset(tmp_path):
    stats = export_campaign(mixed(), tmp_path, shard_size=10, fetch=fetch)
    # 21 single-image jobs done (25 less failed, queued, missing) + 3 images of #5.
    assert (stats.jobs, stats.samples) == (22, 24)
    assert stats.skipped == {"failed": 1, "not finished": 1, "missing object": 1}
    assert [s["samples"] for s in stats.shards] == [10, 10, 4]
    assert stats.complete and stats.campaign_finished and stats.note is None

    samples = tar_samples(tmp_path)
    assert len(samples) == 24
    five = f"{5:032x}"
    assert {f"{five}_0", f"{five}_1", f"{five}_2"} <= set(samples)
    one = samples[f"{1:032x}"]
    assert set(one) == {"png", "json", "txt"}
    assert one["png"] == PNGS[1] and one["txt"].decode() == "prompt 1 ✓"
    meta = json.loads(one["json"])
    assert meta["seed"] == 1 and meta["model"] == "kandinsky-2.2" and meta["task"] == "text2img"
    assert meta["s3_key"] == f"renders/t/c/{1:032x}.png" and meta["timings"] == {"decode": 0.5}
    assert (meta["width"], meta["height"]) == (8, 9) and meta["campaign_id"] == "c" * 32
    assert json.loads(samples[f"{five}_2"]["json"])["s3_key"].endswith("-2.png")

    urls = [str(p) for p in sorted(tmp_path.glob("*.tar"))]
    read = read_webdataset(urls)
    assert [s["__key__"] for s in read] == list(samples)
    assert all(s["png"] == samples[s["__key__"]]["png"] for s in read)
    decoded = read_webdataset(urls, decode="pil")[0]
    assert decoded["png"].size == (8, 9) and decoded["json"]["key"] == decoded["__key__"]

    manifest = json.loads((tmp_path / MANIFEST).read_text())
    for shard in manifest["shards"]:
        data = (tmp_path / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
    assert sum(s["samples"] for s in manifest["shards"]) == 24 and manifest["complete"]
    assert json.loads((tmp_path / STATS).read_text())["shard_count"] == len(manifest["shards"])
    why = [json.loads(x) for x in (tmp_path / SKIPPED).read_text().splitlines()]
    assert [(w["job_id"][-2:], w["reason"]) for w in why] == [
        ("03", "failed"),
        ("07", "missing object"),
        ("0b", "not finished"),
    ]
    assert why[0]["error"]["type"] == "Boom"
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*.tmp"))


def test_a_shard_never_splits_a_job(tmp_path):
    stats = export_campaign(mixed(), tmp_path, shard_size=4, fetch=fetch)
    keys = [set(_tar_samples_of(p)) for p in sorted(tmp_path.glob("*.tar"))]
    five = f"{5:032x}"
    holding = [k for k in keys if any(x.startswith(five) for x in k)]
    assert len(holding) == 1 and len(holding[0]) <= 4
    assert all(s["samples"] <= 4 for s in stats.shards)


def _tar_samples_of(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return {m.name.split(".", 1)[0] for m in tar}


def test_parquet_rows_read_back_with_pyarrow(tmp_path):
    stats = export_campaign(mixed(), tmp_path, format="parquet", shard_size=10, fetch=fetch)
    files = sorted(tmp_path.glob("*.parquet"))
    assert len(files) == len(stats.shards) and stats.samples == 24
    table = pq.ParquetDataset([str(f) for f in files]).read()
    assert table.num_rows == 24
    assert {"key", "job_id", "prompt", "seed", "model", "spec", "timings", "s3_key"} <= set(
        table.column_names
    )
    rows = table.to_pylist()
    assert len({r["key"] for r in rows}) == 24
    first = rows[0]
    assert first["image"] == PNGS[0] and first["prompt"] == "prompt 0 ✓" and first["seed"] == 0
    assert json.loads(first["spec"])["num_images_per_prompt"] == 1
    assert json.loads(first["timings"]) == {"decode": 0.5}
    assert (first["width"], first["height"]) == (8, 9)
    with Image.open(io.BytesIO(rows[5]["image"])) as im:
        assert im.size == (8, 9)
    assert pq.ParquetFile(files[0]).schema_arrow.field("image").type == "binary"
    # The folder reads as one dataset: the export's own _manifest.json etc. are passed over.
    import pyarrow.dataset as ds

    assert ds.dataset(tmp_path, format="parquet").to_table().num_rows == 24


def test_shard_bytes_closes_shards_before_the_count(tmp_path):
    image = b"x" * 10_000
    stats = export_campaign(FakeHandle(12), tmp_path, shard_bytes=45_000, fetch=lambda u: image)
    assert [s["samples"] for s in stats.shards] == [3, 3, 3, 3]
    assert all(s["bytes"] <= 45_000 for s in stats.shards)
    rows = export_campaign(
        FakeHandle(12), tmp_path / "pq", format="parquet", shard_bytes=40_000, fetch=lambda u: image
    )
    assert len(rows.shards) >= 4 and all(s["bytes"] <= 40_000 for s in rows.shards)


@pytest.mark.parametrize("format", ["webdataset", "parquet"])
def test_an_interrupted_export_resumes_to_the_same_output(tmp_path, format):
    clean = tmp_path / "clean"
    export_campaign(mixed(), clean, format=format, shard_size=4, fetch=fetch)

    calls = {"n": 0}

    def failing(url: str) -> bytes:
        calls["n"] += 1
        if calls["n"] == 15:
            raise ServiceUnavailable("S3 went away")
        return fetch(url)

    out = tmp_path / "out"
    with pytest.raises(ServiceUnavailable):
        export_campaign(mixed(), out, format=format, shard_size=4, fetch=failing, concurrency=2)
    interrupted = json.loads((out / MANIFEST).read_text())
    assert not interrupted["complete"] and 0 < len(interrupted["shards"]) < 7
    assert not list(out.glob(".*.tmp"))
    # A crash can leave a half-written shard and one not yet recorded: both are redone.
    (out / f".shard-{99:06d}.tar.tmp").write_bytes(b"half")
    stray = (
        out
        / f"shard-{len(interrupted['shards']):06d}{'.tar' if format == 'webdataset' else '.parquet'}"
    )
    stray.write_bytes(b"not recorded")

    fetched = []
    stats = export_campaign(
        mixed(), out, format=format, shard_size=4, fetch=lambda u: fetched.append(u) or fetch(u)
    )
    assert stats.resumed and stats.kept_shards == len(interrupted["shards"])
    assert _digests(out) == _digests(clean)
    assert len(fetched) < 25  # 25 GETs in all: only those after the kept shards
    assert stats.samples == 24 and stats.skipped == {
        "failed": 1,
        "not finished": 1,
        "missing object": 1,
    }
    if format == "webdataset":
        assert len(tar_samples(out)) == 24  # _tar_samples refuses a duplicate member


def test_a_finished_export_is_not_redone_and_overwrite_starts_again(tmp_path):
    export_campaign(FakeHandle(5), tmp_path, fetch=fetch)
    again = export_campaign(FakeHandle(5), tmp_path, fetch=lambda u: pytest.fail("fetched"))
    assert again.complete and again.samples == 5
    (tmp_path / "mine.txt").write_text("kept")
    over = export_campaign(FakeHandle(3), tmp_path, fetch=fetch, resume=False)
    assert over.samples == 3 and len(tar_samples(tmp_path)) == 3
    assert (tmp_path / "mine.txt").read_text() == "kept"


def test_an_unfinished_campaign_exports_what_is_done_and_says_so(tmp_path):
    running = {"state": "running", "total": 10, "counts": {"done": 6, "queued": 4}}
    handle = FakeHandle(10, state_of=lambda i: "done" if i < 6 else "queued", status=running)
    stats = export_campaign(handle, tmp_path, fetch=fetch)
    assert stats.samples == 6 and stats.skipped == {"not finished": 4}
    assert not stats.campaign_finished and "not finished" in stats.note and "4 jobs" in stats.note
    assert json.loads((tmp_path / STATS).read_text())["note"] == stats.note
    # Once it finishes, the same export runs again from the start and takes the rest.
    done = export_campaign(FakeHandle(10), tmp_path, fetch=fetch)
    assert done.samples == 10 and done.campaign_finished and not done.skipped
    assert len(tar_samples(tmp_path)) == 10


def test_state_all_keeps_the_records_of_jobs_without_images(tmp_path):
    stats = export_campaign(mixed(), tmp_path, state="all", fetch=fetch)
    samples = tar_samples(tmp_path)
    failed = samples[f"{3:032x}"]
    assert set(failed) == {"json", "txt"} and json.loads(failed["json"])["error"]["type"] == "Boom"
    assert stats.skipped == {"missing object": 1}


def _peak(n: int, tmp: Path, format: str) -> int:
    tracemalloc.start()
    try:
        stats = export_campaign(
            FakeHandle(n), tmp, format=format, fetch=fetch, concurrency=4, shard_size=2000
        )
        assert stats.samples == n
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("format", ["webdataset", "parquet"])
def test_memory_is_flat_in_the_campaign_size(tmp_path, format):
    _peak(200, tmp_path / "warm", format)  # imports and first-use caches out of the way
    small = _peak(3_000, tmp_path / "small", format)
    large = _peak(30_000, tmp_path / "large", format)
    # Ten times the jobs; the peak may grow by the manifest's shard list, not by the jobs.
    assert large < small * 1.5 + (256 << 10), (small, large)
    assert large < 16 << 20, large


@pytest.mark.parametrize("format", ["webdataset", "parquet"])
def test_hugging_face_datasets_loads_either_format(tmp_path, monkeypatch, format):
    # What most training code calls: `datasets.load_dataset` with the builder for the format.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets  # a dev dependency; imported here, after its offline switch is set

    out = tmp_path / "export"
    stats = export_campaign(mixed(), out, format=format, shard_size=10, fetch=fetch)
    files = sorted(str(p) for p in out.glob("*.tar" if format == "webdataset" else "*.parquet"))
    data = datasets.load_dataset(format, data_files=files, split="train", cache_dir=str(tmp_path))
    assert data.num_rows == stats.samples == 24
    first = data[0]
    if format == "webdataset":  # members by extension, decoded: the image, the spec and prompt
        assert first["png"].size == (8, 9) and first["txt"] == "prompt 0 ✓"
        assert first["json"]["seed"] == 0
    else:
        assert first["prompt"] == "prompt 0 ✓" and first["seed"] == 0
        assert first["image"] == PNGS[0]
