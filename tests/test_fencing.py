"""Fencing: a job running under one message is never taken over by another, and only the
newest execution of its own message may finish it. Against a real Valkey (the Lua script)."""

from __future__ import annotations

import secrets
import time

import pytest

from farm import keys
from farm.domain.jobs import JobSpec, JobState
from farm.stores.records import ACTIVE, RecordStore, own_fence, start_fence
from tests.databases import own_database

TO_PRIOR = (JobState.QUEUED, JobState.PRIOR)


@pytest.fixture
def own_db(settings):
    with own_database(settings, 8) as pair:
        yield pair


@pytest.fixture
def job(own_db):
    records = RecordStore(own_db[1], 600)
    cid = secrets.token_hex(16)
    records.create_campaign(cid, "alice", total=1, families=["kandinsky-2.2"])
    job_id = f"{cid}-0"
    records.add_fed(cid, "alice", "renders", [(job_id, JobSpec(prompt="fence"))])
    return records, cid, job_id


def _start(records, cid, job_id, message, execution, to=JobState.PRIOR, allowed=TO_PRIOR):
    ((ok, was, _),) = records.moves(
        cid, [(job_id, {})], to, allowed, fence=start_fence(message, execution)
    )
    return ok, was


def test_another_message_cannot_take_a_running_job(job):
    records, cid, job_id = job
    assert _start(records, cid, job_id, "m1", "e1") == (True, JobState.QUEUED)
    # A duplicate copy (another message id) finds the job running under m1: refused.
    assert _start(records, cid, job_id, "m2", "e2") == (False, JobState.PRIOR)
    assert records.executions([job_id]) == ["e1"]


def test_a_redelivery_takes_over_and_fences_the_earlier_execution(job):
    records, cid, job_id = job
    _start(records, cid, job_id, "m1", "e1")
    assert _start(records, cid, job_id, "m1", "e2") == (True, JobState.PRIOR)
    assert records.held([job_id], JobState.PRIOR, "e1") == [False]
    assert records.held([job_id], JobState.PRIOR, "e2") == [True]
    # The decoder's start is an entry move (prior -> decoding): any decoder message may make it.
    allowed = (JobState.PRIOR, JobState.DECODING)
    assert _start(records, cid, job_id, "d1", "x1", JobState.DECODING, allowed)[0]
    # The earlier execution of d1 (still rendering after its redelivery) cannot finish the job,
    # nor fail it; the newest one can.
    _start(records, cid, job_id, "d1", "x2", JobState.DECODING, allowed)
    done = (JobState.DECODING,)
    ((ok, _, _),) = records.moves(cid, [(job_id, {})], JobState.DONE, done, fence=own_fence("x1"))
    assert not ok
    ok, _, _ = records.move(job_id, cid, JobState.FAILED, ACTIVE, fence=own_fence("x1"))
    assert not ok
    ((ok, _, complete),) = records.moves(
        cid, [(job_id, {})], JobState.DONE, done, fence=own_fence("x2")
    )
    assert ok and complete
    assert records.executions([job_id]) == [None]  # an ended job belongs to no execution


def test_a_job_sent_again_belongs_to_no_one_until_it_starts(job):
    records, cid, job_id = job
    _start(records, cid, job_id, "m1", "e1")
    # The reconciler (or a resume) puts it back in the queue: the fence goes with it.
    assert records.move_many(cid, [job_id], JobState.QUEUED, ACTIVE) == [job_id]
    assert records.executions([job_id]) == [None]
    assert _start(records, cid, job_id, "m3", "e3") == (True, JobState.QUEUED)
    # The old execution, still running, can no longer fail it.
    ok, _, _ = records.move(job_id, cid, JobState.FAILED, ACTIVE, fence=own_fence("e1"))
    assert not ok and records.state(job_id) == JobState.PRIOR


def test_reconciler_leaves_a_job_whose_execution_is_alive(job, own_db):
    """Its message is gone from every queue and from kombu's unacked hash (Redis restarted a
    second behind), but its execution says it is alive: not sent again. Once that stops, it is."""
    from farm.service import Farm
    from workers import liveness

    records, cid, job_id = job
    settings, redis_client = own_db
    farm = Farm(settings, client=redis_client)
    _start(records, cid, job_id, "m1", "e1")
    redis_client.hset(keys.job(job_id), "updated_at", time.time() - 3600)
    with liveness.running(redis_client, "e1"):
        assert farm.reconcile(grace_s=1, campaign_id=cid, recheck_s=0) == []
    assert not redis_client.exists(keys.running("e1"))
    assert farm.reconcile(grace_s=1, campaign_id=cid, recheck_s=0) == [job_id]
    assert records.state(job_id) == JobState.QUEUED


def _held_by_a_worker(client, job_id: str, task: str, message_id: str) -> None:
    """Put a message carrying the job in kombu's ``unacked`` hash, as a worker's delivery."""
    import base64
    import json

    body = json.dumps(
        [[], {"campaign_id": job_id.rsplit("-", 1)[0], "jobs": [{"job_id": job_id}]}, {}]
    )
    message = {
        "body": base64.b64encode(body.encode()).decode(),
        "headers": {"id": message_id, "task": task},
    }
    client.hset("unacked", f"tag-{message_id}", json.dumps([message, "", "decoder.kandinsky-2.2"]))


def test_a_job_whose_worker_died_mid_render_is_sent_again_without_waiting_an_hour(job, own_db):
    """Its message stays in kombu's unacked hash until the visibility timeout (an hour by
    default); its execution stopped saying it is alive: sent again after the grace."""
    from farm import keys as k
    from farm.service import Farm

    records, cid, job_id = job
    settings, client = own_db
    farm = Farm(settings, client=client)
    _start(records, cid, job_id, "p1", "x0")
    allowed = (JobState.PRIOR, JobState.DECODING)
    _start(records, cid, job_id, "d1", "x1", JobState.DECODING, allowed)
    _held_by_a_worker(client, job_id, k.DECODER_TASK, "d1")
    client.hset(k.job(job_id), "updated_at", time.time() - 3600)
    assert farm.reconcile(grace_s=1, campaign_id=cid, recheck_s=0) == [job_id]
    assert records.state(job_id) == JobState.QUEUED


def test_a_held_message_not_started_yet_still_covers_its_jobs(job, own_db):
    """A worker holds a prior message it has not started (the job is still queued): covered,
    however long; kombu gives it out again if that worker is gone."""
    from farm import keys as k
    from farm.service import Farm

    records, cid, job_id = job
    settings, client = own_db
    farm = Farm(settings, client=client)
    _held_by_a_worker(client, job_id, k.PRIOR_TASK, "p1")
    client.hset(k.job(job_id), "updated_at", time.time() - 3600)
    assert farm.reconcile(grace_s=1, campaign_id=cid, recheck_s=0) == []
    # A decoder message held for a job still in the prior stage: not started either.
    _start(records, cid, job_id, "p1", "x0")
    client.hdel("unacked", "tag-p1")
    _held_by_a_worker(client, job_id, k.DECODER_TASK, "d1")
    client.hset(k.job(job_id), "updated_at", time.time() - 3600)
    assert farm.reconcile(grace_s=1, campaign_id=cid, recheck_s=0) == []
