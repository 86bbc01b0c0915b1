"""``farm export`` and ``export_campaign``: every error names what to fix (a missing campaign, an
unfinished one exported in part, a folder that is a file or cannot be written, another export in
the folder, a changed job order, S3 answers); then against the real stack and the bench."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from farm import cli
from farm.errors import InvalidJob, NotFound, ServiceUnavailable
from farm.export import SKIPPED, MissingObject, export_campaign
from tests.export_fakes import (
    FakeHandle,
    fetch,
    tar_samples,
)


def test_errors_name_what_to_fix(tmp_path):
    class Gone(FakeHandle):
        def status(self):
            raise NotFound(f"unknown campaign {self.id}")

    with pytest.raises(NotFound, match="farm ls"):
        export_campaign(Gone(1), tmp_path / "x", fetch=fetch)
    assert not (tmp_path / "x").exists()  # nothing created for a campaign that is not there

    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(InvalidJob, match="is a file, not a folder") as e:
        export_campaign(FakeHandle(1), a_file / "sub", fetch=fetch)
    assert e.value.field == "out"

    for field, kw in [
        ("format", {"format": "zip"}),
        ("shard_size", {"shard_size": 0}),
        ("state", {"state": "finished"}),
        ("concurrency", {"concurrency": 0}),
        ("prefix", {"prefix": "../x"}),
    ]:
        with pytest.raises(InvalidJob) as e:
            export_campaign(FakeHandle(1), tmp_path / "y", fetch=fetch, **kw)
        assert e.value.field == field

    export_campaign(FakeHandle(2), tmp_path / "z", fetch=fetch)
    with pytest.raises(InvalidJob, match="--overwrite") as e:
        export_campaign(FakeHandle(2), tmp_path / "z", format="parquet", fetch=fetch)
    assert "webdataset" in str(e.value)


def test_a_resume_checks_the_campaign_still_lists_its_jobs_in_the_same_order(tmp_path):
    def failing(url: str) -> bytes:
        if url.endswith(f"{9:032x}.png"):
            raise ServiceUnavailable("S3 went away")
        return fetch(url)

    with pytest.raises(ServiceUnavailable):
        export_campaign(FakeHandle(20), tmp_path, shard_size=4, fetch=failing, concurrency=1)

    class Reordered(FakeHandle):
        def stream(self, what="jobs", state=None):
            for record in super().stream(what, state):
                yield {**record, "job_id": record["job_id"][::-1]}

    with pytest.raises(InvalidJob, match="job order no longer matches.*--overwrite"):
        export_campaign(Reordered(20), tmp_path, shard_size=4, fetch=fetch)


def test_http_fetcher_names_the_object_and_what_to_do(monkeypatch):
    import httpx

    from farm.export import HttpFetcher

    answers = {"/b/gone.png": [404], "/b/old.png": [403], "/b/flaky.png": [503, 500, 200]}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(answers[request.url.path].pop(0), content=b"png")

    monkeypatch.setattr("farm.export.fetch.time.sleep", lambda s: None)
    get = HttpFetcher(2, transport=httpx.MockTransport(handler))
    signed = "?X-Amz-Signature=secret123"
    with pytest.raises(MissingObject):
        get("http://s3/b/gone.png" + signed)
    with pytest.raises(ServiceUnavailable, match="expired.*rerun the same export") as e:
        get("http://s3/b/old.png" + signed)
    assert "/b/old.png" in str(e.value) and "secret123" not in str(e.value)
    assert get("http://s3/b/flaky.png" + signed) == b"png"
    get.close()


def test_an_unwritable_folder_is_named(tmp_path):
    if os.geteuid() == 0:
        target = Path("/sys/farm-export-test")  # root writes anywhere but a read-only mount
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = tmp_path / "ro" / "out"
    try:
        with pytest.raises(InvalidJob, match="cannot write to .*choose a folder") as e:
            export_campaign(FakeHandle(1), target, fetch=fetch)
        assert e.value.field == "out"
    finally:
        if os.geteuid() != 0:
            (tmp_path / "ro").chmod(0o700)


def test_cli_says_an_unfinished_campaign_was_exported_in_part(tmp_path, monkeypatch, capsys):
    from farm.client import Client

    running = {"state": "running", "total": 4, "counts": {"done": 2, "prior": 2}}
    handle = FakeHandle(4, state_of=lambda i: "done" if i < 2 else "prior", status=running)
    monkeypatch.setenv("FARM_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FARM_API_TOKEN", "t")
    monkeypatch.setattr(Client, "campaign", lambda self, cid: handle)
    monkeypatch.setattr("farm.export.core.HttpFetcher", lambda n: _Closing(fetch))
    code = cli.main(["export", handle.id, "--out", str(tmp_path), "--shard-size", "1"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "exported 2 images of 2 jobs into 2 webdataset shards" in out
    assert "skipped: 2 not finished" in out
    assert "not finished" in err and "once it finishes" in err


class _Closing:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, url: str) -> bytes:
        return self.fn(url)

    def close(self) -> None:
        pass


def test_cli_refuses_a_file_as_the_folder(tmp_path, monkeypatch, capsys):
    from farm.client import Client

    monkeypatch.setenv("FARM_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FARM_API_TOKEN", "t")
    monkeypatch.setattr(Client, "campaign", lambda self, cid: FakeHandle(1))
    (tmp_path / "f").write_text("")
    code = cli.main(["export", "c" * 32, "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("farm: error: out: ") and "not a folder" in err


# -- against the real stack ----------------------------------------------------------------------

FAST = {"num_inference_steps": 2, "prior_num_inference_steps": 2, "height": 64, "width": 64}


@pytest.mark.slow
def test_export_of_a_real_campaign_equals_its_stored_images(
    alice, object_store, api_url, tokens, tmp_path, monkeypatch, capsys
):
    handle = alice.submit_campaign(
        [
            {"prompt": "a red cube", "seed": 1, **FAST},
            {"prompt": "a blue ball", "seed": 2, **FAST},
            {"prompt": "two of them", "seed": 3, "num_images_per_prompt": 2, **FAST},
        ]
    )
    handle.wait(timeout=120)
    stored = {}
    for job in handle.results(state="done"):
        for key in job["s3_keys"]:
            stored[key] = object_store.get(key)
    assert len(stored) == 4

    stats = export_campaign(handle, tmp_path / "wds", shard_size=3)
    assert stats.samples == 4 and stats.complete and not stats.skipped
    assert [s["samples"] for s in stats.shards] == [2, 2]  # the two images stay together
    samples = tar_samples(tmp_path / "wds")
    for key, sample in samples.items():
        meta = json.loads(sample["json"])
        assert sample["png"] == stored[meta["s3_key"]] and meta["job_id"] == key.split("_")[0]
        with Image.open(io.BytesIO(sample["png"])) as im:
            assert im.size == (64, 64) == (meta["width"], meta["height"])
        assert sample["txt"].decode() == meta["spec"]["prompt"] and meta["seed"] in (1, 2, 3)

    monkeypatch.setenv("FARM_API_URL", api_url)
    monkeypatch.setenv("FARM_API_TOKEN", tokens["alice"])
    code = cli.main(["export", handle.id, "--format", "parquet", "--out", str(tmp_path / "pq")])
    assert code == 0 and "exported 4 images of 3 jobs" in capsys.readouterr().out
    rows = pq.read_table(next((tmp_path / "pq").glob("*.parquet"))).to_pylist()
    assert {r["s3_key"]: r["image"] for r in rows} == stored
    assert {r["seed"] for r in rows} == {1, 2, 3} and all(r["model"] for r in rows)

    # An image gone from S3 is skipped and named; the rest is exported.
    gone = next(iter(stored))
    object_store.delete(gone)
    partial = export_campaign(handle, tmp_path / "partial")
    assert partial.samples == 3 and partial.skipped == {"missing object": 1}
    why = json.loads((tmp_path / "partial" / SKIPPED).read_text())
    assert why["reason"] == "missing object" and why["s3_key"] == gone

    # An unknown campaign: one line naming the fix, exit 2.
    code = cli.main(["export", "0" * 32, "--out", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown campaign" in err and "farm ls" in err


@pytest.mark.slow
def test_the_export_bench_runs(tmp_path):
    """bench/export.py (its own SeaweedFS) at a small size: it runs and reports both sides."""
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "bench/export.py", "--n", "300", "--mem", "200,2000", "--json", str(out)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["copy_boto3_s"] > 0 and result["ratio_webdataset"] > 0
    assert result["peak_bytes_2000"] < 16 << 20
