"""The Celery app factory and every Celery setting the farm relies on (docs/architecture.md,
Reliability settings)."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from farm import fleet
from farm.settings import Settings
from farm.stores.connect import transport_options


def route(name, args, kwargs, options, task=None, **_):
    """Celery router: a job goes to its stage's queue of its family (``decoder.kandinsky-3``)."""
    if not name.startswith("farm."):
        return None
    return {"queue": fleet.route(name, kwargs)}


def celery_config(settings: Settings) -> dict:
    """Celery settings for at-least-once delivery without pickle. Each line says why."""
    transport = {
        # kombu stamps a delivery once and never refreshes it: a task running longer than this
        # is delivered again (celery#5935). Settings refuse a value below the hard time limit.
        "visibility_timeout": settings.visibility_timeout_s,
        # A message held by a worker that vanished (host down, link cut) goes back to its queue
        # at the first sweep after the visibility timeout. kombu sweeps every interval x
        # throttle seconds (100 s by default): sweep every tenth of the timeout, at most 10 s.
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 10)),
        "unacked_restore_throttle": 1,
        # Campaign priorities (fleet.level); spelled out so they cannot drift from kombu's.
        "priority_steps": fleet.PRIORITY_STEPS,
        "sep": fleet.PRIORITY_SEP,
        # Sentinel URL (sentinel://...;sentinel://...): the primary's name, the sentinels'
        # password. kombu asks the sentinels for the primary on every (re)connection.
        **transport_options(settings),
    }
    return {
        # JSON only: a pickle message would be code execution on the worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "result_accept_content": ["json"],
        # One queue per stage and enabled family, and "finalize" (light work every worker
        # takes). Flower lists these; a worker consumes only those of the families it serves.
        "task_queues": [Queue(q) for q in fleet.all_queues(settings.enabled_families)],
        "task_default_queue": fleet.FINALIZE_QUEUE,
        "task_default_priority": fleet.NORMAL,
        "task_routes": (route,),
        # Ack after the task ran; a crashed or killed worker's task is delivered again.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # With late acks a worker reserves only the task it runs.
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "visibility_timeout": settings.visibility_timeout_s,
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Late-ack tasks would otherwise run twice per connection loss.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Each restart reloads the models: recycle rarely, but do recycle leaks.
        "worker_max_tasks_per_child": 10_000,
        # A prefork child loads its pipelines before it reports "up"; with the default 4 s a
        # respawned child (after a crash or a recycle) is killed mid-load, forever.
        "worker_proc_alive_timeout": 600,
        # Flower reads the workers' events (received, started, succeeded with the result's
        # repr). Each "task-sent" event would be a Redis PUBLISH outside the publish pipeline
        # (it halved bulk submission) and one more round trip on every hop. The job records
        # are the results: a backend write per task would be a round trip nobody reads.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "task_ignore_result": True,
        "result_expires": 86_400,
        "worker_hijack_root_logger": False,
        "broker_connection_timeout": 5,
        "redis_socket_connect_timeout": 5,
    }


def create_app(settings: Settings) -> Celery:
    """A Celery app bound to the settings' Redis (broker and result backend)."""
    settings.require_endpoints("redis_url")
    app = Celery(
        "farm", broker=settings.redis_url, backend=settings.redis_url, set_as_current=False
    )
    app.conf.update(celery_config(settings))
    return app
