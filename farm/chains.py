"""Chained jobs: a job that reads another job's image is held until that job is done.

The worker that finishes (or fails) a parent releases (or fails) its children; the client is not
in the loop. Used by the workers and by submission alike, so it sits below both.
"""

from __future__ import annotations

import json

import redis

from farm import keys
from farm.domain.jobs import JobState
from farm.stores.connect import text
from farm.stores.records import RecordStore


def release(client: redis.Redis, records: RecordStore, app, job_id: str) -> bool:
    """Send a held chained job once every job it reads is done; exactly once (GETDEL wins)."""
    raw = client.get(keys.pending(job_id))
    if raw is None:
        return False
    held = json.loads(raw)
    if any(records.state(p) != JobState.DONE for p in held["parents"]):
        return False
    if client.getdel(keys.pending(job_id)) is None:
        return False  # someone else released it
    app.send_task(held["task"], kwargs=held["kwargs"])
    return True


def release_children(
    client: redis.Redis, records: RecordStore, app, job_id: str, campaign_id: str, ok: bool
) -> list[str]:
    """After a job ends: send its waiting children, or, if it did not succeed, fail them (and theirs)."""
    children = [text(c) for c in client.smembers(keys.children(job_id))]
    if ok:
        return [c for c in children if release(client, records, app, c)]
    failed = []
    for child in children:
        if client.getdel(keys.pending(child)) is None:
            continue
        error = {
            "type": "ParentFailed",
            "message": f"job {job_id}, whose image this job reads, did not finish",
        }
        moved, _, complete = records.move(
            child, campaign_id, JobState.FAILED, (JobState.QUEUED,), error=error
        )
        if moved:
            failed.append(child)
            if complete:
                app.send_task(keys.FINALIZE_TASK, kwargs={"campaign_id": campaign_id})
            failed += release_children(client, records, app, child, campaign_id, ok=False)
    return failed
