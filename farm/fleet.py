"""Placement: which queue a job goes to, which queues a worker consumes, and who is serving what.

Queues are per stage and family (``prior.kandinsky-2.2``, ``decoder.kandinsky-3``), so a worker
placed on some families never receives another family's job; ``finalize`` (results and contact
sheets, light) is consumed by every worker. Workers publish a heartbeat record (stage, families,
queues, resident parts, memory) that ``farm status`` and the API read; a campaign whose queue no
live worker serves is *waiting*, with that reason, never failed (fleets scale to zero and back).
"""

from __future__ import annotations

import json
import time

from farm import keys
from farm.families import DEFAULT_FAMILY, REGISTRY, get

FINALIZE_QUEUE = "finalize"

# Campaign priorities as broker priorities. The Redis transport keeps one list per step
# (``queue``, ``queue<SEP>1`` ...) and pops the lowest step first, over every queue a worker
# consumes. Each priority has two steps: the lower for a tenant below its fair share when its
# jobs were fed (they go before the queued jobs of tenants above theirs), the upper otherwise.
# A high campaign's messages go before normal ones already queued; nothing running is
# preempted. Unmarked messages (finalize, re-sends) are normal.
PRIORITY_STEPS = [0, 1, 2, 3, 4, 5]
PRIORITY_SEP = "\x06\x16"
RANKS = {"high": 0, "normal": 2, "low": 4}
NORMAL = 3


def level(priority: str | int | None, boosted: bool = False) -> int:
    """The broker priority of a campaign's messages (an int is already one)."""
    if isinstance(priority, int):
        return priority
    return RANKS.get(priority or "normal", RANKS["normal"]) + (0 if boosted else 1)


def priority_lists(queue: str) -> list[str]:
    """The Redis lists that hold a queue's messages, one per priority step."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def depths(client, queues: list[str]) -> list[int]:
    """Messages waiting in each queue, over its priority lists (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for q in queues:
        for name in priority_lists(q):
            pipe.llen(name)
    counts = pipe.execute()
    n = len(PRIORITY_STEPS)
    return [sum(counts[i * n : (i + 1) * n]) for i in range(len(queues))]


HEARTBEAT_S = 5.0
HEARTBEAT_TTL_S = 20


def job_queue(task_name: str, model: str) -> str:
    """The queue of a job message: its stage's queue of its family."""
    stage = "prior" if task_name == keys.PRIOR_TASK else "decoder"
    return get(model).queue(stage)


def route(task_name: str, kwargs: dict | None) -> str:
    """The queue for any farm message (a Celery router calls this)."""
    if task_name in (keys.FINALIZE_TASK, keys.WEBHOOK_TASK):
        return FINALIZE_QUEUE
    kwargs = kwargs or {}
    jobs = kwargs.get("jobs") or [kwargs]
    # A spec without a known model still goes somewhere its validation will fail it, visibly.
    model = (jobs[0].get("spec") or {}).get("model", DEFAULT_FAMILY)
    return job_queue(task_name, model if model in REGISTRY else DEFAULT_FAMILY)


def first_task(model: str) -> str:
    """Two-stage families start on the prior; single-stage ones on the decoder."""
    return keys.PRIOR_TASK if get(model).two_stage else keys.DECODER_TASK


def queues(families, stages=("prior", "decoder")) -> list[str]:
    """The job queues of these families for these stages (families without a stage have none)."""
    return [get(f).queue(s) for f in families for s in stages if s in get(f).stages]


def all_queues(families) -> list[str]:
    return [*queues(families), FINALIZE_QUEUE]


def worker_argv(
    *,
    stage: str,
    families,
    node: str,
    pool: str,
    concurrency: int = 1,
    resident: int = 0,
) -> list[str]:
    """The ``celery worker`` arguments of a worker for one stage and a set of families.

    With ``resident`` below the number of families, the worker starts on the first ``resident``
    families' queues and switches when they run dry (``workers.multiplex``).
    """
    served = queues(families, (stage,))
    if not served:
        raise ValueError(f"none of {', '.join(families)} has a {stage} stage")
    start = served[:resident] if resident else served
    return [
        "worker",
        "-Q", ",".join([*start, FINALIZE_QUEUE]),
        "-n", node,
        "-c", str(concurrency),
        f"--pool={pool}",
        "-E", "--without-gossip", "--without-mingle",
        "--loglevel=INFO",
    ]  # fmt: skip


# -- heartbeats ---------------------------------------------------------------------------------


def write_heartbeat(client, node: str, fields: dict) -> None:
    """Merge ``fields`` into a worker's record and keep it alive for HEARTBEAT_TTL_S."""
    key = keys.worker(node)
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping={k: json.dumps(v) for k, v in fields.items()})
    pipe.hset(key, "heartbeat_at", json.dumps(time.time()))
    pipe.expire(key, HEARTBEAT_TTL_S)
    pipe.sadd(keys.WORKERS, node)
    pipe.execute()


def remove_heartbeat(client, node: str) -> None:
    client.delete(keys.worker(node))
    client.srem(keys.WORKERS, node)


_PROC_FIELDS = (
    "pid", "rss_bytes", "pss_bytes", "uss_bytes", "rss_after_load_bytes",
    "pss_after_load_bytes", "load_s", "shared_weights", "resident",
)  # fmt: skip


def _weights(children: list[dict]) -> int:
    """Bytes of weights a worker holds: pool processes sharing the main process's count once."""
    own = sum(c.get("weights_bytes") or 0 for c in children if not c.get("shared_weights"))
    shared = max(
        (c.get("weights_bytes") or 0 for c in children if c.get("shared_weights")), default=0
    )
    return own + shared


def live_workers(client) -> list[dict]:
    """Every worker whose heartbeat is fresh, with its pool processes' reports merged."""
    nodes = sorted(n.decode() for n in client.smembers(keys.WORKERS))
    pipe = client.pipeline(transaction=False)
    for node in nodes:
        pipe.hgetall(keys.worker(node))
    out, gone = [], []
    for node, raw in zip(nodes, pipe.execute(), strict=True):
        if not raw:
            gone.append(node)
            continue
        rec = {k.decode(): json.loads(v) for k, v in raw.items()}
        children = [rec.pop(k) for k in sorted(rec) if k.startswith("proc.")]
        resident = sorted({p for c in children for p in c.get("resident", [])})
        out.append(
            {
                "node": node,
                "stage": rec.get("stage"),
                "families": rec.get("families", []),
                "serves": rec.get("serves", []),
                "consuming": rec.get("consuming", []),
                "resident_families": rec.get("resident_families", []),
                "resident_parts": resident,
                "loads": sum(c.get("loads", 0) for c in children),
                "evictions": sum(c.get("evictions", 0) for c in children),
                "switches": rec.get("switches", 0),
                "rss_bytes": rec.get("rss_bytes", 0) + sum(c.get("rss_bytes", 0) for c in children),
                "weights_bytes": _weights(children),
                # PSS adds up to what the machine holds (a prefork pool shares the main
                # process's weights; RSS counts them once per process): workers.memory.
                "pss_bytes": rec.get("pss_bytes", 0) + sum(c.get("pss_bytes", 0) for c in children),
                "load_s": max((c.get("load_s") or 0 for c in children), default=0),
                "cuda_allocated_bytes": sum(c.get("cuda_allocated_bytes") or 0 for c in children)
                or None,
                "processes": [
                    {"pid": rec.get("pid"), "role": "main"}
                    | {k: rec.get(k) for k in ("rss_bytes", "pss_bytes", "uss_bytes")}
                ]
                + [{k: c.get(k) for k in _PROC_FIELDS} for c in children],
                "heartbeat_at": rec.get("heartbeat_at"),
            }
        )
    if gone:
        client.srem(keys.WORKERS, *gone)
    return out


def fleet(client, families) -> dict:
    """Every queue of the enabled families with its depth and consumers, and every live worker."""
    workers = live_workers(client)
    names = all_queues(families)
    waiting = depths(client, names)
    pipe = client.pipeline(transaction=False)
    for q in names:
        pipe.llen(keys.backlog_list(q))
    backlog = pipe.execute()
    return {
        "queues": [
            {
                "name": q,
                "depth": int(depth),
                # Queued plus not fed yet, in messages (the feeder publishes it for KEDA).
                "backlog": int(behind),
                "workers": [w["node"] for w in workers if q in w["serves"]],
            }
            for q, depth, behind in zip(names, waiting, backlog, strict=True)
        ],
        "workers": workers,
    }


def render_slots(client, queue: str, workers: list[dict] | None = None) -> int:
    """How many renders of ``queue`` can run at once: the pool processes of its live workers
    (``workers``: ``live_workers`` already read, to spare a caller that asks for each queue)."""
    workers = live_workers(client) if workers is None else workers
    return sum(max(len(w["processes"]) - 1, 1) for w in workers if queue in w["serves"])


def waiting_reasons(client, families) -> list[str]:
    """Why jobs of these families cannot run now: the queues no live worker serves."""
    served = {q for w in live_workers(client) for q in w["serves"]}
    return [f"no worker serves {q}" for q in queues(families) if q not in served]
