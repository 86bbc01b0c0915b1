"""What a worker process builds once and hands to every task: clients, stores, pipelines.

A worker runs one stage for a set of families. The parts of its resident families load when the
process starts (solo/threads pools: in the worker itself; prefork: in each child after the fork),
never on the first job: a lazy load made the first job take 13-16 s, and CUDA cannot be
initialised before a fork. A worker that serves more families than it keeps (``--resident``)
loads the others on demand and evicts the least recently used (``Models``).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property

import redis
from celery import Celery

from farm import fleet
from farm.errors import ModelError
from farm.families import get
from farm.settings import Settings
from farm.stores.connect import redis_client
from workers import memory

log = logging.getLogger("farm.worker")


def rss_bytes() -> int:
    """This process's resident set size."""
    try:
        pages = int(open("/proc/self/statm").read().split()[1])  # noqa: SIM115 - one read
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def cuda_allocated_bytes() -> int | None:
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.memory_allocated())


class Models:
    """The parts this process holds for one stage: at most ``capacity`` families, LRU-evicted.

    Every pipeline a task runs is derived from a loaded part (``loading.derive``): img2img over
    the text-to-image weights, AutoPipelines with ``from_pipe``. Never new weights per job.
    """

    def __init__(self, settings: Settings, stage: str, families, capacity: int = 0):
        self.settings = settings
        self.stage = stage
        self.families = tuple(families)
        self.capacity = capacity or len(self.families)
        self.loaded: OrderedDict[str, dict[str, object]] = OrderedDict()
        self.derived: dict[tuple[str, str, str], object] = {}
        self.loads = 0
        self.evictions = 0

    def parts(self, family: str) -> dict[str, object]:
        """The family's parts for this stage, loading them (and evicting) if needed."""
        if family not in self.families:
            raise ModelError(
                f"this {self.stage} worker does not serve {family}; it serves "
                f"{', '.join(self.families)}"
            )
        if family in self.loaded:
            self.loaded.move_to_end(family)
            return self.loaded[family]
        while len(self.loaded) >= self.capacity:
            self.evict(next(iter(self.loaded)))
        from farm.families.loading import load
        from farm.families.tiny import is_tiny

        parts = {}
        for part in get(family).parts_for(self.stage):
            location = self.settings.location(part)
            t0 = time.perf_counter()
            parts[part.name] = load(
                part,
                location,
                device=self.settings.device,
                dtype=self.settings.dtype,
                speed=self.settings.speed,
            )
            tiny = " (tiny random weights: images are noise)" if is_tiny(location) else ""
            log.info(
                "loaded %s/%s from %s in %.2fs%s",
                family,
                part.name,
                location,
                time.perf_counter() - t0,
                tiny,
            )
        self.loaded[family] = parts
        self.loads += 1
        return parts

    def evict(self, family: str) -> None:
        """Drop a family's parts and everything derived from them; free their memory."""
        self.loaded.pop(family, None)
        for k in [k for k in self.derived if k[0] == family]:
            del self.derived[k]
        self.evictions += 1
        gc.collect()
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("evicted %s", family)

    def pipeline(self, family: str, task: str):
        """The pipeline ``task`` runs on this stage for ``family``, as the family declares it."""
        spec = get(family)
        pipe = spec.pipe(task, self.stage)
        key = (family, pipe.part, pipe.cls)
        parts = self.parts(family)
        if key not in self.derived:
            from farm.families.loading import derive

            self.derived[key] = derive(parts[pipe.part], spec.part(pipe.part), pipe.cls)
        return self.derived[key]

    def helper(self, family: str, name: str):
        """Another part of the family used on this stage (the depth estimator)."""
        return self.parts(family)[name]

    def weights_bytes(self) -> int:
        """Bytes of the parameters this process holds (what a GPU would have to fit)."""
        seen, total = set(), 0
        for parts in self.loaded.values():
            for pipe in parts.values():
                modules = getattr(pipe, "components", None) or {
                    "model": getattr(pipe, "model", None)
                }
                for module in modules.values():
                    for param in getattr(module, "parameters", lambda: ())():
                        if id(param) not in seen:
                            seen.add(id(param))
                            total += param.numel() * param.element_size()
        return total

    def resident_parts(self) -> list[str]:
        return [f"{family}/{name}" for family, parts in self.loaded.items() for name in parts]


@dataclass
class WorkerContext:
    settings: Settings
    app: Celery
    redis: redis.Redis
    stage: str
    models: Models
    node: str = ""
    _objects: object = field(default=None, repr=False)

    @cached_property
    def embeddings(self):
        from farm.stores.embeddings import EmbeddingStore

        return EmbeddingStore(self.redis, self.settings.embedding_ttl_s)

    @cached_property
    def gathering(self):
        from farm.stores.gather import Gathering

        return Gathering(self.redis, self.settings.embedding_ttl_s)

    @cached_property
    def records(self):
        from farm.stores.records import RecordStore

        return RecordStore(self.redis, self.settings.record_ttl_s)

    @property
    def objects(self):
        if self._objects is None:
            from farm.stores.objects import ObjectStore

            self._objects = ObjectStore.from_settings(self.settings)
        return self._objects

    def report(self) -> None:
        """Tell the fleet what this process holds (``farm status`` reads it)."""
        if not self.node:
            return
        report = {
            "pid": os.getpid(),
            "resident": self.models.resident_parts(),
            "loads": self.models.loads,
            "evictions": self.models.evictions,
            "weights_bytes": self.models.weights_bytes(),
            **memory.fields(self.models),  # RSS, PSS, USS now and after loading; load seconds
            "cuda_allocated_bytes": cuda_allocated_bytes(),
        }
        try:
            fleet.write_heartbeat(self.redis, self.node, {f"proc.{os.getpid()}": report})
        except redis.RedisError as e:  # status is best effort; the job is what matters
            log.warning("could not report worker state: %s", e)


_current: WorkerContext | None = None


def init(
    settings: Settings,
    app: Celery,
    stage: str,
    families,
    *,
    resident: int = 0,
    preload=(),
    node: str = "",
) -> WorkerContext:
    """Build this process's context and load the parts of its first resident families."""
    global _current
    if settings.torch_threads:
        import torch

        # Several workers on one machine each using every core oversubscribe it.
        torch.set_num_threads(settings.torch_threads)
    ctx = WorkerContext(
        settings=settings,
        app=app,
        redis=redis_client(settings, health_check_interval=30),
        stage=stage,
        # A prefork child takes the weights its main process loaded before the fork (shared).
        models=memory.take(stage, families, resident)
        or Models(settings, stage, families, resident),
        node=node,
    )
    memory.load(ctx.models, preload or families)
    ctx.report()
    _current = ctx
    return ctx


def current() -> WorkerContext:
    if _current is None:
        raise RuntimeError("worker context not initialised (worker_init did not run)")
    return _current
