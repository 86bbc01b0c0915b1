"""Worker entry point: ``farm worker --stage decoder --models kandinsky-3`` (which runs
``celery -A workers.main worker -Q decoder.kandinsky-3,finalize`` with the worker settings).

This is a process edge: settings are built here, once, from the environment. Before consuming
anything the worker verifies every part of every family it serves and loads the resident ones; a
missing or broken part stops it with a message naming the family, the part and the fix.
"""

from __future__ import annotations

import logging
import os

from celery import signals

from farm import fleet, keys
from farm.errors import ConfigError, ModelError
from farm.families import REGISTRY, get
from farm.settings import Settings
from workers import context, holding, placement
from workers.app import create_app
from workers.tasks import register

settings = Settings.load().with_stack()
app = create_app(settings)
register(app)
app.steps["consumer"].add(placement.Placement)

# Set in the main process before the pool forks, so prefork children inherit it.
plan: placement.Plan | None = None


def _the_plan() -> placement.Plan:
    if plan is None:  # made by _on_worker_init, before anything loads
        raise RuntimeError("the worker's plan is not made yet")
    return plan


def make_plan(consumed: list[str], node: str) -> placement.Plan:
    """The worker's stage, served families and resident count, from its settings or its queues."""
    job_queues = [q for q in consumed if q != fleet.FINALIZE_QUEUE]
    stages = {q.split(".", 1)[0] for q in job_queues}
    stage = settings.worker_stage or (stages.pop() if len(stages) == 1 else None)
    if stage is None:
        raise ConfigError(
            "a worker runs one stage: set FARM_WORKER_STAGE or consume one stage's queues "
            f"(got {', '.join(job_queues) or 'none'}); use `farm worker --stage ... --models ...`"
        )
    if settings.worker_models:
        families = settings.served_families
    else:
        families = (
            tuple(q.split(".", 1)[1] for q in job_queues if q.split(".", 1)[1] in REGISTRY)
            or settings.enabled_families
        )
    families = tuple(f for f in families if stage in get(f).stages)
    if not families:
        raise ConfigError(f"none of the families this worker serves has a {stage} stage")
    resident = settings.worker_resident if 0 < settings.worker_resident < len(families) else 0
    return placement.Plan(
        node=node,
        stage=stage,
        families=families,
        redis_url=settings.redis_url,
        resident=resident,
    )


@signals.worker_init.connect
def _on_worker_init(sender, **_):
    global plan
    # Celery logs and swallows exceptions from signal handlers; SystemExit stops the worker.
    try:
        plan = make_plan(list(sender.app.amqp.queues.consume_from or {}), sender.hostname)
        verify(plan)
        placement.plan, placement.settings = plan, settings
        _start_metrics(sender)
    except (ConfigError, ModelError) as e:
        raise SystemExit(f"farm worker: cannot start: {e}") from None
    logging.getLogger("farm.worker").info(
        "serving %s for %s (resident %s)",
        plan.stage,
        ", ".join(plan.families),
        plan.resident or "all",
    )
    pool = str(getattr(sender.pool_cls, "__module__", sender.pool_cls))
    if "prefork" not in pool:
        # solo / threads run tasks in this process: load here, before consuming.
        _init_or_exit(os.getpid())
    elif not settings.device.startswith("cuda"):
        _preload_or_exit()


def _preload_or_exit() -> None:
    """Prefork on the CPU: load the weights once, before the fork; the children share them
    (``workers.memory``). CUDA cannot be initialised before a fork: GPU workers run solo."""
    from workers import memory

    try:
        plan = _the_plan()
        models = context.Models(settings, plan.stage, plan.families, plan.resident)
        memory.preload(models, plan.resident)
    except Exception:
        logging.getLogger("farm.worker").exception("farm worker: loading the pipelines failed")
        raise SystemExit(70) from None


def _start_metrics(sender) -> None:
    """Serve Prometheus metrics from the worker's main process (``farm.metrics``).

    Prefork children run the tasks: each writes its values to files in PROMETHEUS_MULTIPROC_DIR
    and this process serves their sum. The folder is this worker's own, emptied here, before the
    pool forks; when none is given, one under the state folder named after the worker.
    """
    from farm import metrics

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    prefork = "prefork" in str(getattr(sender.pool_cls, "__module__", sender.pool_cls))
    if settings.metrics_listen and prefork and not directory:
        directory = str(settings.state_dir.resolve() / "metrics" / sender.hostname)
    if directory:
        metrics.use_dir(directory)
    if settings.metrics_listen:
        host, port = metrics.serve_worker(settings.metrics_listen)
        logging.getLogger("farm.worker").info("metrics on http://%s:%d/metrics", host, port)


def verify(plan: placement.Plan) -> None:
    """Every part of every served family is there (resident or not): fail at boot, not mid-job."""
    from farm.families.loading import verify as check

    for name in plan.families:
        family = get(name)
        for part in family.parts_for(plan.stage):
            check(
                family,
                part,
                settings.location(part),
                tiny=settings.is_tiny_location(part),
            )


@signals.worker_ready.connect
def _on_worker_ready(sender, **_):
    # The main process receives and acknowledges: it says what it holds and that it is alive,
    # so the messages it held come back soon after it dies, not at the visibility timeout.
    from farm.stores.connect import redis_client

    # Timeouts: a beat stuck on a dead connection must fail and retry, not fall silent.
    client = redis_client(
        settings, health_check_interval=30, socket_timeout=5, socket_connect_timeout=5
    )
    holding.start(client, sender.hostname)


@signals.task_received.connect
def _on_task_received(request, **_):
    holding.received(request)


@signals.worker_process_init.connect
def _on_child_init(**_):
    logging.getLogger("farm.worker").setLevel(logging.INFO)
    _init_or_exit(os.getppid())


def _init_or_exit(worker_pid: int) -> None:
    try:
        plan = _the_plan()
        ctx = context.init(
            settings,
            app,
            plan.stage,
            plan.families,
            resident=plan.resident,
            preload=plan.families[: plan.resident] if plan.resident else plan.families,
            node=plan.node,
        )
        # Tell `farm up` this worker's pipelines are loaded: its main process answers pings
        # before a prefork child has finished loading. Each pool process counts itself.
        key = keys.worker_loaded(worker_pid)
        pipe = ctx.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, 86_400)
        pipe.execute()
    except Exception:
        logging.getLogger("farm.worker").exception("farm worker: loading the pipelines failed")
        raise SystemExit(70) from None


@signals.task_postrun.connect
def _after_task(**_):
    # What this process holds may have changed (a load on demand, an eviction).
    try:
        context.current().report()
    except RuntimeError:
        pass
