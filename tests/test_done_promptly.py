"""A render's jobs are done as soon as their images are stored, not after the next render of the
same message: progress and the gallery keep up with the renders.

In-process against the session's Valkey and SeaweedFS; the pipeline call is replaced by one that
returns plain images, so the test watches the decoder handler's bookkeeping, not the model.
"""

from __future__ import annotations

import contextlib
import secrets
import threading

import pytest
import redis
from PIL import Image

from farm import keys
from farm.domain.jobs import JobSpec, JobState
from farm.stores.records import RecordStore
from tests.waiting import wait_until
from workers import handlers
from workers.context import Models, WorkerContext

FAMILY = "kandinsky-3"  # single stage: the message goes straight to the decoder


@pytest.fixture
def ctx(settings, object_store):
    # A database of its own: the finalize message the handler sends reaches no session worker.
    url = settings.redis_url.rsplit("/", 1)[0] + "/9"
    # One pipeline call per render (FARM_BATCH_EXACT=false), so the test counts renders as calls.
    own = settings.model_copy(update={"redis_url": url, "batch_max": 2, "batch_exact": False})
    client = redis.Redis.from_url(url)
    client.flushdb()
    from workers.app import create_app

    context = WorkerContext(
        settings=own,
        app=create_app(own),
        redis=client,
        stage="decoder",
        models=Models(own, "decoder", [FAMILY]),
        _objects=object_store,
    )
    yield context
    client.flushdb()
    client.close()


def test_a_renders_jobs_are_done_while_the_next_render_runs(ctx, monkeypatch):
    records = RecordStore(ctx.redis, 600)
    cid = secrets.token_hex(16)
    specs = [
        JobSpec(prompt=f"prompt {i}", model=FAMILY, seed=i, height=64, width=64) for i in range(4)
    ]
    ids = [f"{cid}-{i}" for i in range(4)]
    records.create_campaign(cid, "alice", total=4, families=[FAMILY])
    records.add_fed(cid, "alice", "renders", list(zip(ids, specs, strict=True)))
    jobs = [
        {
            "job_id": job_id,
            "spec": spec.to_dict(),
            "key": keys.image_object(ctx.settings.s3_prefix, "alice", cid, job_id),
            "campaign_id": cid,
        }
        for job_id, spec in zip(ids, specs, strict=True)
    ]
    seen_during_second: list[list[JobState | None]] = []
    renders = []

    def render(pipe, batch, images, pad=False):
        renders.append([s.prompt for s in batch])
        if len(renders) == 2:
            # The second render runs: the first render's jobs turn done meanwhile (their
            # stores finish in the background), not only once this render returns.
            with contextlib.suppress(AssertionError):  # the assertions below say what was seen
                wait_until(
                    lambda: records.states(ids[:2]) == [JobState.DONE] * 2, timeout=20, every=0.05
                )
            seen_during_second.append(records.states(ids))
        return [[Image.new("RGB", (64, 64), (len(renders) * 40, 0, 0))] for _ in batch]

    monkeypatch.setattr("workers.decoder.run_single_batch", render)  # the decoder stage calls it
    monkeypatch.setattr(Models, "pipeline", lambda self, family, task: None)
    ex = handlers.Execution.of("m1", 0)
    out = handlers.decoder(ctx, cid, jobs, ex)
    assert len(renders) == 2 and sorted(out["jobs"]) == sorted(ids)
    first, second = seen_during_second[0][:2], seen_during_second[0][2:]
    assert first == [JobState.DONE] * 2, f"the first render's jobs during the second: {first}"
    assert second == [JobState.DECODING] * 2  # still rendering
    assert records.states(ids) == [JobState.DONE] * 4
    assert threading.active_count() < 50  # the finisher threads ended with the message
