"""Fakes for the export's fast tests: a campaign handle whose job records are made on the fly
(a 100,000-job campaign is never held), a fetch that hands back tiny PNGs, and readers."""

from __future__ import annotations

import gc
import io
import tarfile
import warnings
from pathlib import Path

from PIL import Image

from farm.export import MissingObject


def png(i: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size + 1), (i % 256, (i * 7) % 256, 3)).save(buf, "PNG")
    return buf.getvalue()


PNGS = [png(i) for i in range(16)]


def job_record(i: int, state: str = "done", images: int = 1) -> dict:
    job_id = f"{i:032x}"
    key = f"renders/t/c/{job_id}.png"
    keys = [key] if images == 1 else [key.replace(".png", f"-{n}.png") for n in range(images)]
    done = state == "done"
    spec = {
        "prompt": f"prompt {i} ✓",
        "seed": i,
        "model": "kandinsky-2.2",
        "task": "text2img",
        "width": 8,
        "height": 9,
        "num_images_per_prompt": images,
    }
    return {
        "job_id": job_id,
        "state": state,
        "spec": spec,
        "seed": i,
        "s3_key": key,
        "s3_keys": keys if done else [],
        "url": f"http://s3/{keys[0]}" if done else None,
        "urls": [f"http://s3/{k}" for k in keys] if done else [],
        "timings": {"decode": 0.5} if done else {},
        "error": {"type": "Boom", "message": "no"} if state == "failed" else None,
    }


class FakeHandle:
    """A campaign as the client hands it: ``id``, ``status()``, ``stream("jobs")``; records are
    generated on the fly, so a 100,000-job campaign is never held."""

    def __init__(
        self, n: int, *, state_of=lambda i: "done", images_of=lambda i: 1, status=None, gone=()
    ):
        self.id = "c" * 32
        self.gone = set(gone)  # jobs whose image objects are missing from S3
        self.n, self.state_of, self.images_of = n, state_of, images_of
        counts = {"queued": 0, "prior": 0, "decoding": 0, "done": 0, "failed": 0, "cancelled": 0}
        for i in range(n if n <= 10_000 else 0):
            counts[state_of(i)] += 1
        self._status = status or {"state": "finished", "total": n, "counts": counts}

    def status(self) -> dict:
        return self._status

    def stream(self, what: str = "jobs", state: str | None = None):
        assert what == "jobs" and state is None
        for i in range(self.n):
            record = job_record(i, self.state_of(i), self.images_of(i))
            if i in self.gone:
                record["urls"] = [u.replace("/renders/", "/missing/") for u in record["urls"]]
            yield record


def fetch(url: str) -> bytes:
    if "/missing/" in url:
        raise MissingObject(url)
    return PNGS[int(url.rsplit("/", 1)[1][:32], 16) % len(PNGS)]


def mixed() -> FakeHandle:
    """25 jobs: #3 failed, #5 three images, #7's object gone, #11 still queued."""
    states = {3: "failed", 11: "queued"}
    return FakeHandle(
        25,
        state_of=lambda i: states.get(i, "done"),
        images_of=lambda i: 3 if i == 5 else 1,
        status={"state": "finished", "total": 25, "counts": {"done": 23, "failed": 1}},
        gone={7},
    )


def tar_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                data = tar.extractfile(member).read()
                assert ext not in samples.setdefault(key, {}), f"duplicate {member.name}"
                samples[key][ext] = data
    return samples


def read_webdataset(urls: list[str], decode: str | None = None) -> list[dict]:
    """Every sample as webdataset reads it. webdataset 1.0.2 leaves its shard files for the
    garbage collector to close: collected here, so no later test sees their warnings."""
    import webdataset as wds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        dataset = wds.WebDataset(urls, shardshuffle=False)
        samples = list(dataset.decode(decode) if decode else dataset)
        del dataset
        gc.collect()
    return samples
