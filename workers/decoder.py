"""The decoder stage's handler: a message's jobs, with those it gathers from other queued
messages, rendered ``batch_max`` at a time, each render's images stored while the next runs.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from farm import keys, metrics
from farm.domain.batching import batch_key
from farm.domain.jobs import JobSpec, JobState
from farm.errors import ServiceUnavailable
from farm.families import get
from farm.stages import run_decoder_batch, run_single_batch
from farm.stores.records import own_fence
from workers import liveness
from workers.common import (
    Execution,
    _images,
    _per_job,
    _send,
    _started,
    _waits,
    fail,
    split,
)
from workers.context import WorkerContext
from workers.storing import by_campaign as _by_campaign
from workers.storing import finish, store

log = logging.getLogger("farm.worker")


def decoder(
    ctx: WorkerContext, campaign_id: str, jobs: list[dict], ex: Execution | None = None
) -> dict:
    """A message of compatible jobs, with those it gathers from other queued messages (any
    campaign's), rendered ``batch_max`` at a time, each render's images stored while the next
    one runs. A job moves to "decoding" only when its render starts, so a cancel still stops
    the message's later jobs."""
    ex = ex or Execution.of(None, 0)
    with liveness.running(ctx.redis, ex.token, ex.message_id):
        return _decoder(ctx, campaign_id, jobs, ex)


def _decoder(ctx: WorkerContext, campaign_id: str, jobs: list[dict], ex: Execution) -> dict:
    jobs = [{**job, "campaign_id": job.get("campaign_id") or campaign_id} for job in jobs]
    first = JobSpec.model_validate(jobs[0]["spec"])
    taken = _gather(ctx, first, jobs, ex.message_id)
    if taken is None:
        log.info("message %s was gathered into another decoder's batch", ex.message_id)
        return {"jobs": len(jobs), "skipped": True, "gathered": True}
    try:
        finished, complete = _decode(ctx, first, jobs + taken, ex)
    except ServiceUnavailable as e:
        if ex.last_try:  # the adapter fails this message's own jobs, we fail those we took
            for job in taken:
                fail(ctx, job["job_id"], job["campaign_id"], e, ex.token)
        raise  # retried: the same message id gathers the same jobs again
    except BaseException as e:
        # The task adapter fails this message's own jobs; the gathered ones are ours to fail.
        for job in taken:
            fail(ctx, job["job_id"], job["campaign_id"], e, ex.token)
        raise
    for cid in complete:
        ctx.app.send_task(keys.FINALIZE_TASK, kwargs={"campaign_id": cid})
    if taken:
        ctx.gathering.release(ex.message_id)
    return {"jobs": finished} if finished else {"jobs": len(jobs), "skipped": True}


def _gather(ctx: WorkerContext, first: JobSpec, jobs: list[dict], message_id: str | None):
    """Jobs of other offered messages that fill this message's last render (``gather``);
    waits up to ``batch_wait_ms`` for more while it is not full. None: this message was
    gathered by another decoder."""
    room = -len(jobs) % ctx.settings.batch_max
    key = batch_key(first)
    if not message_id or key is None or not room:
        return []
    queue = get(first.model).queue("decoder")
    deadline = time.monotonic() + ctx.settings.batch_wait_ms / 1000
    while True:
        payloads = ctx.gathering.gather(queue, key, message_id, room)
        if payloads is None:
            return None
        taken = [
            {**job, "campaign_id": job.get("campaign_id") or p["campaign_id"]}
            for p in payloads
            for job in p["jobs"]
        ]
        if len(taken) >= room or time.monotonic() >= deadline:
            return taken
        time.sleep(0.005)


def _decode(ctx: WorkerContext, first: JobSpec, jobs: list[dict], ex: Execution):
    """Render and store ``jobs``; returns the finished job ids and the campaigns they finished."""
    two_stage = get(first.model).two_stage
    # A single-stage job (Kandinsky 3) arrives here straight from the queue.
    allowed = (
        (JobState.PRIOR, JobState.DECODING) if two_stage else (JobState.QUEUED, JobState.DECODING)
    )
    pipe = ctx.models.pipeline(first.model, first.task)
    embs: dict[str, object] = {}

    def call(items):
        metrics.batch("decoder", first.model, len(items), ctx.settings.batch_max)
        specs, images = _own_inputs(ctx, items)
        pad = ctx.settings.compile  # few batch shapes for a compiled UNet
        if two_stage:
            rows = [embs[j["job_id"]] for j, _ in items]
            return run_decoder_batch(pipe, specs, rows, images, pad=pad)
        return run_single_batch(pipe, specs, images, pad=pad)

    def run(items):
        if ctx.settings.batch_exact:
            # One call per job: its pixels are its lone render's, whatever shares its message
            # (a batched call moves them by a few /255: kernels round by batch shape).
            return [rows for item in items for rows in call([item])]
        return call(items)

    finishing: list[
        Future[tuple[list[str], set[str]]]
    ] = []  # one per render, in order: its stores, then its jobs marked done
    # One finisher thread: a render's jobs turn done as soon as their objects are stored
    # (progress and the gallery do not wait for the next render), in the order they ran.
    with (
        ThreadPoolExecutor(max_workers=8) as pool,
        ThreadPoolExecutor(max_workers=8) as puts,
        ThreadPoolExecutor(max_workers=1) as finisher,
    ):
        for part in split(jobs, ctx.settings.batch_max):
            for earlier in finishing:
                if earlier.done():
                    earlier.result()  # a render's stores failed: stop here, as the last would
            chunk = [
                item
                for cid, mine in _by_campaign(part).items()
                for item in _started(ctx, cid, mine, "decoder", JobState.DECODING, allowed, ex)
            ]
            if two_stage and chunk:
                chunk = _with_embeddings(ctx, chunk, embs, ex)
            if not chunk:
                continue
            recs = {r.job_id: r for r in ctx.records.get_many([j["job_id"] for j, _ in chunk]) if r}
            waits = _waits(recs.values(), "prior_end_at" if two_stage else "created_at")
            t0 = time.perf_counter()
            # A line as each render starts and ends: the chaos suite counts executions per job
            # (started, and completed: a killed one only starts) from these.
            log.info("rendering %s", " ".join(job["job_id"] for job, _ in chunk))
            rendered = _per_job(ctx, run, chunk, ex)
            log.info("rendered %s", " ".join(job["job_id"] for (job, _), _p in rendered))
            each = (time.perf_counter() - t0) / len(chunk)
            timings = {
                job["job_id"]: {
                    "decode": each,
                    "decoder_batch": float(len(chunk)),
                    "wait_decoder": waits.get(job["job_id"], 0.0),
                }
                for (job, _), _pictures in rendered
            }
            # PNG encoding and uploads run in threads (zlib and sockets release the GIL) while
            # the next render starts; a job is done only once its objects exist.
            stores = [
                pool.submit(store, ctx, job, spec, pictures, recs, timings, puts)
                for (job, spec), pictures in rendered
            ]
            finishing.append(finisher.submit(finish, ctx, stores, timings, recs, ex.token))
        results = [f.result() for f in finishing]
    finished = [job for ids, _ in results for job in ids]
    return finished, {cid for _, done in results for cid in done}


def _own_inputs(ctx: WorkerContext, items: list) -> tuple[list[JobSpec], dict]:
    """The jobs' specs and decoded inputs, keyed by stored object rather than by reference:
    "job:0" of two campaigns gathered into one render are two pictures, not one."""
    specs, images = [], {}
    for job, spec in items:
        inputs = job.get("inputs") or {}
        own = _images(ctx, spec, inputs, "decoder")
        images.update({inputs[ref]: image for ref, image in own.items()})
        refs = {f: inputs[getattr(spec, f)] for f in ("image", "mask") if getattr(spec, f) in own}
        specs.append(spec.model_copy(update=refs) if refs else spec)
    return specs, images


def _with_embeddings(ctx, chunk, embs: dict, ex: Execution) -> list:
    """The jobs whose embeddings are there (fetched into ``embs``); the others go back to the
    prior (expired, or Redis restarted): recomputed, never borrowed from another job."""
    got = ctx.embeddings.get_many([job["job_id"] for job, _ in chunk])
    embs.update({job["job_id"]: e for (job, _), e in zip(chunk, got, strict=True) if e})
    lost = [job for job, _ in chunk if job["job_id"] not in embs]
    if lost:
        log.warning("%d jobs' embeddings are gone: sending them back to the prior", len(lost))
        for cid, mine in _by_campaign(lost).items():
            back: list[tuple[str, dict[str, Any]]] = [(j["job_id"], {}) for j in mine]
            ctx.records.moves(
                cid, back, JobState.QUEUED, (JobState.DECODING,), fence=own_fence(ex.token)
            )
            _send(ctx, keys.PRIOR_TASK, cid, mine)
    return [(j, s) for j, s in chunk if j["job_id"] in embs]
