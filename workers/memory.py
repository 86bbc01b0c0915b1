"""A worker's memory and load time, and weights loaded once before the prefork pool forks.

At full size a Kandinsky 2.2 decoder is 5 GB of fp32 weights. A prefork pool whose children each
load their own copy holds that once per child; loaded in the main process before the fork, the
children share its pages copy-on-write (nothing writes to weights at inference). RSS counts a
shared page in every process that maps it, so the farm reports PSS (each shared page divided
among its sharers: the processes' PSS add up to what the machine holds) and USS (private pages:
what a process would free by exiting) beside it, from ``/proc/<pid>/smaps_rollup``.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("farm.worker")

# The main process's models, loaded before the pool forks (prefork on the CPU); the children
# take them instead of loading their own.
shared = None
_after_load: dict[str, int] | None = None


def usage(pid: int | str = "self") -> dict[str, int]:
    """RSS, PSS and USS of a process, in bytes (zeros where /proc cannot tell)."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    fields[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return {
        "rss_bytes": fields.get("Rss", 0),
        "pss_bytes": fields.get("Pss", 0),
        "uss_bytes": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def load(models, families) -> None:
    """Load ``families`` into ``models``, timing it (``load_s``); memory after it is kept."""
    global _after_load
    t0 = time.perf_counter()
    for family in families:
        models.parts(family)
    models.load_s = getattr(models, "load_s", 0.0) + time.perf_counter() - t0
    _after_load = usage()


def fields(models) -> dict:
    """What a process reports to ``farm status``: memory now, after loading, and load seconds."""
    now = usage()
    after = _after_load or now
    return {
        **now,
        "rss_after_load_bytes": after["rss_bytes"],
        "pss_after_load_bytes": after["pss_bytes"],
        "load_s": round(getattr(models, "load_s", 0.0), 2),
        "shared_weights": shared is not None and models is shared,
    }


def preload(models, resident: int) -> None:
    """Main process of a prefork CPU worker: load every served family once, before the fork.

    Only when every family stays resident: a child that evicts a shared family frees nothing
    (the main process still holds it), so ``--resident`` workers load in their children.
    """
    global shared
    if resident:
        return
    import torch

    # The caller builds ``models`` (a workers.context.Models): context imports this module.
    settings, families = models.settings, models.families
    threads = torch.get_num_threads()
    # One thread while loading: an OpenMP pool started before fork() can hang the children.
    torch.set_num_threads(1)
    try:
        load(models, families)
    finally:
        torch.set_num_threads(settings.torch_threads or threads)
    shared = models
    log.info(
        "loaded %s before forking the pool (%.1fs): the pool processes share the weights",
        ", ".join(families),
        models.load_s,
    )


def take(stage: str, families, resident: int):
    """The preloaded models, when they are what this process needs; else None."""
    m = shared
    if m is not None and (m.stage, m.families) == (stage, tuple(families)) and not resident:
        return m
    return None


def pid_usage(pids) -> dict[int, dict[str, int]]:
    """``usage`` of several processes (bench: a worker and its pool)."""
    return {int(p): usage(p) for p in pids if os.path.exists(f"/proc/{p}")}
