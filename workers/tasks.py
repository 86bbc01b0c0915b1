"""Celery task adapters: unpack the message, call the handler, map errors to Celery's control flow.

Heavy imports (torch, diffusers) happen inside the tasks so that Flower and the producer can load
this app cheaply.
"""

from __future__ import annotations

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from farm import keys
from farm.errors import ServiceUnavailable
from workers import context

RETRY = {
    # Redis or S3 briefly away: retry with backoff; anything else fails the job.
    "autoretry_for": (ServiceUnavailable,),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 8,
}


def _jobs(kwargs: dict) -> list[dict]:
    """The jobs of a message: a list (``jobs``), or one job in the single-job form earlier
    versions sent (still accepted, so messages queued across an upgrade run)."""
    if "jobs" in kwargs and kwargs["jobs"] is not None:
        return kwargs["jobs"]
    return [{k: kwargs.get(k) for k in ("job_id", "spec", "key", "inputs")}]


def _run(task, handler_name: str, **kwargs) -> dict:
    from workers import handlers

    ctx = context.current()
    jobs = kwargs.get("jobs") or []
    last_try = task.request.retries >= RETRY["max_retries"]
    token = ""
    if handler_name in ("prior", "decoder"):
        # The fencing token of this execution: a job it started cannot be finished or failed
        # by an earlier execution of the same message that is still running somewhere.
        ex = handlers.Execution.of(task.request.id, task.request.retries, last_try)
        kwargs["ex"], token = ex, ex.token
    else:
        kwargs["retries"] = task.request.retries
    try:
        return getattr(handlers, handler_name)(ctx, **kwargs)
    except ServiceUnavailable as e:
        if last_try:
            for job in jobs:
                handlers.fail(ctx, job["job_id"], kwargs["campaign_id"], e, token)
        raise
    except (Exception, SoftTimeLimitExceeded) as e:
        # Record it for the client, then let Celery mark the task failed (Flower shows it).
        for job in jobs:
            handlers.fail(ctx, job["job_id"], kwargs["campaign_id"], e, token)
        raise


def register(app: Celery) -> None:
    """Define the farm's tasks on ``app``."""

    @app.task(name=keys.PRIOR_TASK, bind=True, **RETRY)
    def prior(self, campaign_id: str, jobs: list[dict] | None = None, **single) -> dict:
        return _run(self, "prior", campaign_id=campaign_id, jobs=_jobs({"jobs": jobs, **single}))

    @app.task(name=keys.DECODER_TASK, bind=True, **RETRY)
    def decoder(self, campaign_id: str, jobs: list[dict] | None = None, **single) -> dict:
        return _run(
            self,
            "decoder",
            campaign_id=campaign_id,
            jobs=_jobs({"jobs": jobs, **single}),
        )

    @app.task(name=keys.FINALIZE_TASK, bind=True, **RETRY)
    def finalize(self, campaign_id: str) -> dict:
        return _run(self, "finalize", campaign_id=campaign_id)

    @app.task(name=keys.WEBHOOK_TASK, bind=True)
    def webhook(self, campaign_id: str, url: str, body: str, delivery_id: str) -> dict:
        from workers import handlers

        ctx = context.current()
        attempt = self.request.retries + 1
        done, outcome = handlers.webhook(ctx, campaign_id, url, body, delivery_id, attempt)
        if not done and attempt < ctx.settings.webhook_max_attempts:
            # Exponential backoff: 1, 2, 4 ... s, at most five minutes between tries.
            raise self.retry(countdown=min(2 ** (attempt - 1), 300), max_retries=None)
        return {"delivery_id": delivery_id, "attempts": attempt, "outcome": outcome}
