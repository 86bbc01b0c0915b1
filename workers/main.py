"""Worker entry point: ``celery -A workers.main worker -Q prior`` (or ``-Q decoder``).

This is a process edge: settings are built here, once, from the environment.
"""

from __future__ import annotations

import logging
import os

from celery import signals

from farm import keys
from farm.settings import Settings
from workers import context
from workers.app import create_app
from workers.tasks import register

settings = Settings.load().with_stack()
app = create_app(settings)
register(app)

_stages: tuple[str, ...] = ()
STAGE_BY_QUEUE = {keys.PRIOR_QUEUE: "prior", keys.DECODER_QUEUE: "decoder"}


@signals.worker_init.connect
def _on_worker_init(sender, **_):
    global _stages
    queues = sender.app.amqp.queues.consume_from or {}
    _stages = tuple(STAGE_BY_QUEUE[q] for q in queues if q in STAGE_BY_QUEUE)
    # Check every configured model before consuming anything: a worker that cannot load its
    # pipelines must not take jobs off the queue. (Celery logs and swallows exceptions from
    # signal handlers; SystemExit is what stops the worker.)
    from farm.errors import ModelError
    from farm.models.registry import resolve

    for stage in _stages:
        try:
            resolve(settings.model_folder(stage), stage)
        except ModelError as e:
            raise SystemExit(f"farm worker: cannot serve the {stage} queue: {e}") from None
    pool = str(getattr(sender.pool_cls, "__module__", sender.pool_cls))
    if "prefork" not in pool:
        # solo / threads run tasks in this process: load here, before consuming.
        _init_or_exit(os.getpid())


@signals.worker_process_init.connect
def _on_child_init(**_):
    logging.getLogger("farm.worker").setLevel(logging.INFO)
    _init_or_exit(os.getppid())


def _init_or_exit(worker_pid: int) -> None:
    try:
        ctx = context.init(settings, app, _stages)
        # Tell `farm up` this worker's pipelines are loaded: its main process answers pings
        # before a prefork child has finished loading.
        ctx.redis.set(keys.worker_loaded(worker_pid), "1", ex=86_400)
    except Exception:
        logging.getLogger("farm.worker").exception("farm worker: loading the pipelines failed")
        raise SystemExit(70) from None
