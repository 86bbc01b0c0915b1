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


def _run(task, handler_name: str, **kwargs) -> dict:
    from workers import handlers

    ctx = context.current()
    try:
        return getattr(handlers, handler_name)(ctx, retries=task.request.retries, **kwargs)
    except ServiceUnavailable as e:
        if task.request.retries >= RETRY["max_retries"] and "job_id" in kwargs:
            handlers.fail(ctx, kwargs["job_id"], kwargs["campaign_id"], e)
        raise
    except (Exception, SoftTimeLimitExceeded) as e:
        # Record it for the client, then let Celery mark the task failed (Flower shows it).
        if "job_id" in kwargs:
            handlers.fail(ctx, kwargs["job_id"], kwargs["campaign_id"], e)
        raise


def register(app: Celery) -> None:
    """Define the farm's tasks on ``app``."""

    @app.task(name=keys.PRIOR_TASK, bind=True, **RETRY)
    def prior(
        self, job_id: str, campaign_id: str, spec: dict, key: str, inputs: dict | None = None
    ) -> dict:
        return _run(
            self,
            "prior",
            job_id=job_id,
            campaign_id=campaign_id,
            spec=spec,
            key=key,
            inputs=inputs or {},
        )

    @app.task(name=keys.DECODER_TASK, bind=True, **RETRY)
    def decoder(
        self,
        job_id: str,
        campaign_id: str,
        spec: dict,
        key: str,
        emb_key: str | None,
        inputs: dict | None = None,
    ) -> dict:
        return _run(
            self,
            "decoder",
            job_id=job_id,
            campaign_id=campaign_id,
            spec=spec,
            key=key,
            emb_key=emb_key,
            inputs=inputs or {},
        )

    @app.task(name=keys.FINALIZE_TASK, bind=True, **RETRY)
    def finalize(self, campaign_id: str) -> dict:
        return _run(self, "finalize", campaign_id=campaign_id)
