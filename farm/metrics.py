"""Every Prometheus metric the farm exports, in one place (docs/metrics.md).

Two sources:

- **workers** (and any process that uploads): counters and histograms recorded as jobs run,
  served by each worker's main process on ``FARM_METRICS_LISTEN``. Celery's prefork pool runs
  tasks in child processes, so with ``PROMETHEUS_MULTIPROC_DIR`` set every process writes its
  values to files there and the main process serves their sum (prometheus_client's
  multiprocess mode; the folder is emptied when the worker starts).
- **the API** (``GET /metrics``): the same process-wide metrics (its uploads: manifests,
  inputs) and, read from Redis at scrape time, each queue's depth, backlog and live consumers
  (``QueueCollector``): queue depth is the broker's, not any one worker's.

Labels are bounded sets (stage, family, task, device, queue, exception class, content type):
never a tenant, a campaign or a job id. Recording a metric never fails a job: a broken metrics
folder is logged once and the job goes on.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from farm.domain.usage import usage_field
from farm.errors import ConfigError
from farm.families import DEFAULT_FAMILY

log = logging.getLogger("farm.metrics")

# Seconds: tiny CPU models take milliseconds a stage, real ones on a GPU seconds, a full-size
# render on a CPU minutes; one set of buckets covers all three.
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, 900)
# Queue waits and end-to-end latency run longer: a campaign of a million jobs waits hours.
LONG_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86_400)
BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
FILL = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)

CATALOG: list[dict] = []  # every metric: name, type, labels, help (docs/metrics.md's table, tests)


def _define(kind, name: str, text: str, labels: list[str], **kwargs):
    metric = kind(name, text, labels, **kwargs)
    # Counters are exposed with the _total suffix (prometheus_client adds it).
    shown = name + "_total" if kind is Counter else name
    kind_name = {Counter: "counter", Histogram: "histogram"}[kind]
    CATALOG.append({"name": shown, "type": kind_name, "labels": labels, "help": text})
    return metric


IMAGES = _define(
    Counter,
    "farm_images_rendered",
    "Images rendered and stored in S3 (a job with num_images_per_prompt N counts N; a job "
    "rendered again after a redelivery counts again).",
    ["family", "task"],
)
FAILED = _define(
    Counter,
    "farm_jobs_failed",
    "Jobs moved to failed, by the stage that failed them and the exception class "
    "(PoisonJob: delivered more than FARM_MAX_ATTEMPTS times).",
    ["stage", "error"],
)
STAGE = _define(
    Histogram,
    "farm_stage_duration_seconds",
    "Seconds one job spent in a stage: prior and decode are its share of a batched call, "
    "encode the PNG encoding, upload its objects' uploads, store the part of the upload the "
    "next render did not hide (the job record's timings).",
    ["stage", "family"],
    buckets=SECONDS,
)
WAIT = _define(
    Histogram,
    "farm_queue_wait_seconds",
    "Seconds a job waited for a stage: from submission (prior, single-stage decoder) or from "
    "its prior's end (decoder).",
    ["stage", "family"],
    buckets=LONG_SECONDS,
)
LATENCY = _define(
    Histogram,
    "farm_job_latency_seconds",
    "Seconds from a job's submission to its images stored.",
    ["family"],
    buckets=LONG_SECONDS,
)
BATCH_SIZE = _define(
    Histogram,
    "farm_batch_size",
    "Jobs per pipeline call (a batch that fails is run again a job at a time: calls of 1).",
    ["stage", "family"],
    buckets=BATCH,
)
BATCH_FILL = _define(
    Histogram,
    "farm_batch_fill_ratio",
    "Jobs per pipeline call over FARM_BATCH_MAX (1: full batches).",
    ["stage", "family"],
    buckets=FILL,
)
CACHE = _define(
    Counter,
    "farm_prior_cache_requests",
    "Prior embedding cache lookups of text-prompted jobs, by result (hit: the prior did not run).",
    ["family", "result"],
)
UPLOADED = _define(
    Counter,
    "farm_uploaded_bytes",
    "Bytes put to S3, by content type (images, records, manifests, results).",
    ["content_type"],
)
COMPUTE = _define(
    Counter,
    "farm_compute_seconds",
    "Compute seconds charged to campaigns (the usage figures: a batch's wall time shared by its "
    "jobs), by stage, family and device (cpu or gpu).",
    ["stage", "family", "device"],
)

# Read from Redis at scrape time by the API's collector.
QUEUE_GAUGES = {
    "farm_queue_depth": "Messages waiting in the queue (every priority step).",
    "farm_queue_backlog": "Messages queued plus those the feeder has not fed yet.",
    "farm_queue_workers": "Live workers that serve the queue (heartbeat within 20 s).",
}
REDIS_UP = "farm_redis_up"
REDIS_UP_HELP = "1 if the API read the queues from Redis at this scrape, else 0."
CATALOG += [
    {"name": name, "type": "gauge", "labels": ["queue"], "help": text}
    for name, text in QUEUE_GAUGES.items()
]
CATALOG.append({"name": REDIS_UP, "type": "gauge", "labels": [], "help": REDIS_UP_HELP})

# Which job timings are stage durations, waits (by the stage waited for), and the latency.
STAGE_TIMINGS = ("prior", "decode", "encode", "upload", "store")
WAIT_TIMINGS = {"wait_prior": "prior", "wait_decoder": "decoder"}


def series_names() -> set[str]:
    """Every sample name a scrape can show (histograms as _bucket, _sum, _count)."""
    out = set()
    for m in CATALOG:
        if m["type"] == "histogram":
            out |= {m["name"] + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            out.add(m["name"])
    return out


# -- recording (the worker stages (workers/prior.py, decoder.py, common.py) call these, one line each) ---------------------------------


def _never_fails(fn: Callable) -> Callable:
    """Metrics are best effort: a job never fails because a metric could not be written."""
    warned: list[bool] = []

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - logged once; the job matters more than its metric
            if not warned:
                warned.append(True)
                log.warning("could not record metrics (%s)", fn.__name__, exc_info=True)

    return wrapper


@_never_fails
def job_failed(stage: str, exc: BaseException) -> None:
    FAILED.labels(stage, type(exc).__name__).inc()


@_never_fails
def batch(stage: str, family: str, jobs: int, batch_max: int) -> None:
    """One pipeline call of ``jobs`` jobs."""
    BATCH_SIZE.labels(stage, family).observe(jobs)
    BATCH_FILL.labels(stage, family).observe(jobs / max(batch_max, 1))


def _timings(family: str, timings: dict[str, float]) -> None:
    for name in STAGE_TIMINGS:
        if name in timings:
            STAGE.labels(name, family).observe(timings[name])
    for name, stage in WAIT_TIMINGS.items():
        if name in timings:
            WAIT.labels(stage, family).observe(timings[name])
    if "latency" in timings:
        LATENCY.labels(family).observe(timings["latency"])


def _charge(usage: dict[str, float]) -> None:
    """Compute seconds as the usage hash has them (``<stage>:<family>:<device>``)."""
    for field, seconds in usage.items():
        if field.count(":") == 2:
            stage, family, device = field.split(":")
            COMPUTE.labels(stage, family, device).inc(seconds)


@_never_fails
def prior_ran(spec, jobs: int, hits: int, timings: dict, usage: dict) -> None:
    """A prior message ran.

    Args:
        spec: the message's first job spec (its jobs share the family and the task).
        jobs: the jobs that started the stage.
        hits: how many of them the embedding cache answered.
        timings: job id -> the timings recorded on it.
        usage: what the campaign was charged (``usage_field`` -> seconds).
    """
    from farm.stages import TEXT_PRIOR_TASKS  # a prior worker has torch loaded already

    if spec.task in TEXT_PRIOR_TASKS:
        CACHE.labels(spec.model, "hit").inc(hits)
        CACHE.labels(spec.model, "miss").inc(jobs - hits)
    for times in timings.values():
        _timings(spec.model, times)
    _charge(usage)


@_never_fails
def decoded(settings, stored: Iterable[tuple[dict, str]], timings: dict[str, dict]) -> None:
    """One render's jobs stored: their images, timings and compute seconds (the same seconds
    as their usage: each job's share of the render).

    Args:
        settings: the worker's settings (its device).
        stored: (message entry of the job, image key) for each job whose objects are stored.
        timings: job id -> the timings recorded on it.
    """
    usage: dict[str, float] = {}
    for job, _key in stored:
        spec, times = job["spec"], timings.get(job["job_id"], {})
        family = spec.get("model") or DEFAULT_FAMILY
        images = spec.get("num_images_per_prompt") or 1
        IMAGES.labels(family, spec.get("task") or "text2img").inc(images)
        _timings(family, times)
        field = usage_field("decoder", family, settings.device)
        usage[field] = usage.get(field, 0.0) + times.get("decode", 0.0)
    _charge(usage)


@_never_fails
def uploaded(content_type: str, size: int) -> None:
    UPLOADED.labels(content_type.split(";")[0].strip() or "unknown").inc(size)


# -- exposition ---------------------------------------------------------------------------------


def multiprocess() -> bool:
    """Whether this process writes its values to PROMETHEUS_MULTIPROC_DIR (decided by
    prometheus_client when it was imported)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def process_registry() -> CollectorRegistry:
    """What this process exports: the sum over every process of the folder in multiprocess
    mode (a prefork worker, an API under several uvicorn workers), else its own metrics."""
    if not multiprocess():
        return REGISTRY
    from prometheus_client import multiprocess as mp

    registry = CollectorRegistry()
    mp.MultiProcessCollector(registry)
    return registry


class QueueCollector:
    """Each queue's depth, backlog and live workers, read from Redis when Prometheus scrapes.

    Args:
        client: returns the Redis client to read with (built lazily by the API).
        families: the enabled families (their queues, and ``finalize``).
    """

    def __init__(self, client: Callable[[], object], families: Iterable[str]):
        self.client = client
        self.families = tuple(families)

    def collect(self):
        from farm import fleet

        up = GaugeMetricFamily(REDIS_UP, REDIS_UP_HELP)
        try:
            queues = fleet.fleet(self.client(), self.families)["queues"]
        except Exception as e:  # noqa: BLE001 - Redis away: say so, as exporters do
            log.warning("metrics: cannot read the queues: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        fields = {"farm_queue_depth": "depth", "farm_queue_backlog": "backlog"}
        for name, text in QUEUE_GAUGES.items():
            family = GaugeMetricFamily(name, text, labels=["queue"])
            for q in queues:
                value = len(q["workers"]) if name == "farm_queue_workers" else q[fields[name]]
                family.add_metric([q["name"]], value)
            yield family


class _Union:
    """A collector that yields what other collectors (or registries) yield."""

    def __init__(self, *parts):
        self.parts = parts

    def collect(self):
        for part in self.parts:
            yield from part.collect()


def api_registry(queues: QueueCollector) -> CollectorRegistry:
    """The API's exposition: this process's metrics and the queues."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Union(process_registry(), queues))
    return registry


def exposition(registry, accept: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper asked for (Prometheus text or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


# -- the worker's endpoint ----------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (all interfaces) -> (host, port)."""
    host, _, port = listen.strip().rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"FARM_METRICS_LISTEN: {listen!r} is not HOST:PORT or PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def use_dir(directory: str | Path) -> None:
    """Write this process's values, and its forks', to files in ``directory`` (emptied first:
    an earlier run's values would add to this run's) for ``process_registry`` to sum.

    prometheus_client picks its mode from PROMETHEUS_MULTIPROC_DIR when first imported, and a
    ``celery`` command has imported it by then (Flower's command plugin), so the mode is picked
    again here: every farm metric has labels, so none holds a value yet.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for f in path.glob("*.db"):
        f.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    values.ValueClass = values.get_value_class()


def serve_worker(listen: str) -> tuple[str, int]:
    """Serve this worker's metrics (every pool process's, summed, after ``use_dir``) on
    ``listen``, in a thread of the calling process: the worker's main process, before the pool
    forks.

    Raises:
        ConfigError: ``listen`` is malformed or taken.
    """
    from prometheus_client import start_http_server

    host, port = parse_listen(listen)
    try:
        start_http_server(port, addr=host, registry=process_registry())
    except OSError as e:
        raise ConfigError(f"FARM_METRICS_LISTEN: cannot listen on {host}:{port}: {e}") from e
    return host, port


def endpoints(state: dict) -> dict[str, str]:
    """Every /metrics URL of a local stack (``stack.json``): the API's, Flower's, each worker's."""
    out = {}
    if state.get("api_url"):
        out["api"] = state["api_url"] + "/metrics"
    if state.get("flower_url"):
        out["flower"] = state["flower_url"] + "/metrics"
    for name, port in sorted((state.get("metrics_ports") or {}).items()):
        out[name] = f"http://127.0.0.1:{port}/metrics"
    return out
