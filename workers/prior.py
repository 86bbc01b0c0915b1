"""The prior stage's handler: a message of compatible jobs through the prior, their embeddings
stored, one decoder message for those still wanted.
"""

from __future__ import annotations

import logging
import time

from farm import keys, metrics
from farm.domain.jobs import JobState
from farm.domain.usage import usage_field
from farm.families import get
from farm.stages import (
    TEXT_PRIOR_TASKS,
    cache_zero_embed,
    run_controlnet_prior,
    run_prior,
    run_prior_batch,
)
from workers import liveness
from workers.common import Execution, _images, _per_job, _send, _started, _waits, split
from workers.context import WorkerContext

log = logging.getLogger("farm.worker")


def prior(
    ctx: WorkerContext, campaign_id: str, jobs: list[dict], ex: Execution | None = None
) -> dict:
    """A message of compatible jobs through the prior (one call for plain prompts, earlier results
    reused), their embeddings stored, one decoder message for those still wanted."""
    ex = ex or Execution.of(None, 0)
    with liveness.running(ctx.redis, ex.token, ex.message_id):
        return _prior(ctx, campaign_id, jobs, ex)


def _prior(ctx: WorkerContext, campaign_id: str, jobs: list[dict], ex: Execution) -> dict:
    jobs = [{**job, "campaign_id": job.get("campaign_id") or campaign_id} for job in jobs]
    started = _started(
        ctx, campaign_id, jobs, "prior", JobState.PRIOR, (JobState.QUEUED, JobState.PRIOR), ex
    )
    if not started:
        return {"jobs": len(jobs), "skipped": True}
    ids = [job["job_id"] for job, _ in started]
    waits = _waits([r for r in ctx.records.get_many(ids) if r], "created_at")
    first = started[0][1]
    pipe = ctx.models.pipeline(first.model, first.task)
    hits: set[str] = set()
    t0 = time.perf_counter()
    if first.task in TEXT_PRIOR_TASKS:
        cache_zero_embed(pipe)
        cached = ctx.embeddings.cached([spec for _, spec in started])
        hits = {job["job_id"] for (job, _), hit in zip(started, cached, strict=True) if hit}
        todo = [item for item in started if item[0]["job_id"] not in hits]

        def run(items):
            embs = []
            for chunk in split(items, ctx.settings.batch_max):
                for _ in chunk:  # run_prior_batch calls the prior once per prompt
                    metrics.batch("prior", first.model, 1, ctx.settings.batch_max)
                embs += run_prior_batch(pipe, [spec for _, spec in chunk])
            ctx.embeddings.cache([(spec, emb) for (_, spec), emb in zip(items, embs, strict=True)])
            return embs

        made = {job["job_id"]: emb for (job, _), emb in _per_job(ctx, run, todo, ex)}
        made |= {job["job_id"]: e for (job, _), e in zip(started, cached, strict=True) if e}
        results = [(item, made[item[0]["job_id"]]) for item in started if item[0]["job_id"] in made]
    else:
        helpers = get(first.model).tasks[first.task].helpers
        depth = ctx.models.helper(first.model, helpers[0]) if helpers else None

        def run(items):
            out = []
            for job, spec in items:
                metrics.batch("prior", first.model, 1, ctx.settings.batch_max)
                images = _images(ctx, spec, job.get("inputs") or {}, "prior")
                if spec.task.startswith("controlnet"):
                    out.append(run_controlnet_prior(pipe, depth, spec, images))
                else:
                    out.append(run_prior(pipe, spec, images))
            return out

        results = _per_job(ctx, run, started, ex)
    each, end = (time.perf_counter() - t0) / len(started), time.time()
    done = [job for (job, _), _emb in results]
    ctx.embeddings.put_many({job["job_id"]: emb for (job, _), emb in results})
    timings = {
        job["job_id"]: {
            "prior": each,
            "prior_end_at": end,
            "prior_batch": float(len(started)),
            "prior_cache_hit": float(job["job_id"] in hits),
            "wait_prior": waits.get(job["job_id"], 0.0),
        }
        for job in done
    }
    spent = {usage_field("prior", first.model, ctx.settings.device): each * len(started)}
    ctx.records.moves(campaign_id, [], JobState.PRIOR, (), timings=timings, usage=spent)
    metrics.prior_ran(first, len(started), len(hits), timings, spent)
    # Cancelled while the prior ran, or taken over by a redelivery of this message: enqueue
    # nothing new for it. (Were the cancel to land after this check, the decoder's own move out
    # of "prior" would refuse the job.)
    held = ctx.records.held([job["job_id"] for job in done], JobState.PRIOR, ex.token)
    onward = [job for job, mine in zip(done, held, strict=True) if mine]
    ctx.embeddings.delete_many([j["job_id"] for j in done if j not in onward])
    if onward:
        _send(ctx, keys.DECODER_TASK, campaign_id, onward)
    return {"jobs": [j["job_id"] for j in onward]}
