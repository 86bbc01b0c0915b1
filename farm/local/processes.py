"""The local stack's processes: how each is started (its argv, environment, ports and shape):
Celery workers per stage, Flower, the API and the feeder, and which workers answer.

``farm.local.stack`` orchestrates them (order, state file, readiness, stopping); the servers they
talk to are ``farm.local.servers``.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from farm import fleet, keys
from farm.families import get
from farm.local.servers import Proc, free_port, spawn, wait_http
from farm.settings import Settings
from farm.stores.connect import redis_client


def worker_shape(settings: Settings, counts: dict[str, int], pool: str) -> dict[str, tuple]:
    """(pool processes, torch threads each) per worker of each stage: the stack's workers share
    the machine's cores instead of each using all of them.

    On the CPU a decoder worker runs one single-threaded pool process per core it gets: whole
    batches side by side beat one batch split over threads (small tensors scale badly across
    threads, and a busy neighbour stalls every thread of a split one). A prior worker is a few
    percent of the decoders' compute: one process, one thread. On CUDA (solo pool) one process
    drives the GPU. FARM_TORCH_THREADS, when set, is every worker's thread count.
    """
    cores = os.cpu_count() or 1
    share = max(1, cores // max(counts.get("decoder", 0), 1))
    threads = settings.torch_threads or 1
    if pool != "prefork":
        return {"prior": (1, threads), "decoder": (1, settings.torch_threads or share)}
    return {"prior": (1, threads), "decoder": (share, threads)}


def worker_pool(settings: Settings) -> str:
    if settings.worker_pool != "auto":
        return settings.worker_pool
    # CUDA cannot be initialised in a forked child: GPU workers run solo.
    return "solo" if settings.device.startswith("cuda") else "prefork"


def child_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(settings.worker_env())
    env["PYTHONUNBUFFERED"] = "1"
    # The checkout root (farm/local/processes.py -> the folder holding farm/ and workers/), so a
    # child imports this checkout's packages; farm/ itself there would turn its modules into
    # top-level ones (``metrics``, ``plan``) that shadow any of the same name.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    if settings.uses_tiny:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def spawn_workers(
    folder: Path,
    settings: Settings,
    state: dict,
    started: list[Proc],
    env: dict,
    progress: Callable[[str], None],
) -> None:
    """Workers per stage, each serving every enabled family with that stage."""
    pool = worker_pool(settings)
    nodes = state.setdefault("nodes", {})
    metrics_ports = state.setdefault("metrics_ports", {})  # farm.metrics: one per worker
    tag = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    counts = {
        stage: count
        for stage, count in state["worker_counts"].items()
        if any(stage in get(f).stages for f in settings.enabled_families)
    }
    shape = worker_shape(settings, counts, pool)
    state["worker_shape"] = shape
    for stage, count in state["worker_counts"].items():
        families = [f for f in settings.enabled_families if stage in get(f).stages]
        if not families:
            state["worker_counts"][stage] = 0  # no enabled family has this stage
            continue
        for n in range(1, count + 1):
            name = f"worker-{stage}-{n}"
            metrics_ports[name] = free_port()
            # A name of its own, so readiness waits for *these* workers, not any on the broker.
            nodes[name] = f"{stage}{n}@{tag}"
            started.append(spawn_worker(folder, state, name, families, pool, env))
            progress(f"{name}: started, serving {', '.join(families)}")
    state["pool"] = pool


def spawn_worker(
    folder: Path, state: dict, name: str, families: list[str], pool: str, env: dict
) -> Proc:
    """One worker process as ``state`` describes it (its node name, shape, metrics port)."""
    stage = name.split("-")[1]
    concurrency, threads = state["worker_shape"][stage]
    argv = fleet.worker_argv(
        stage=stage,
        families=families,
        node=state["nodes"][name],
        pool=pool,
        concurrency=concurrency,
    )
    worker_env = {
        **env,
        "FARM_WORKER_STAGE": stage,
        "FARM_WORKER_MODELS": ",".join(families),
        "FARM_TORCH_THREADS": str(threads),
        "FARM_METRICS_LISTEN": f"127.0.0.1:{state['metrics_ports'][name]}",
        "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics" / name),
    }
    celery = [sys.executable, "-m", "celery", "-A", "workers.main"]
    log = folder / "logs" / f"{name}.log"
    return spawn(name, [*celery, *argv], log, worker_env, "celery")


def start_clients(
    folder: Path,
    settings: Settings,
    state: dict,
    started: list[Proc],
    ports: dict[str, int],
    env: dict,
    progress: Callable[[str], None],
) -> None:
    """Flower, the API and the feeder, each waited for until it answers as itself."""
    celery = [sys.executable, "-m", "celery", "-A", "workers.main"]
    logs = folder / "logs"
    port = ports["flower"] or free_port()
    # Basic auth on every page and API route (anyone reaching the port could revoke tasks),
    # through the environment: argv is world-readable in /proc.
    user, password = "farm", secrets.token_urlsafe(18)
    state["flower_user"], state["flower_password"] = user, password
    flower_env = {**env, "FLOWER_BASIC_AUTH": f"{user}:{password}"}
    argv = [
        *celery, "flower",
        f"--port={port}", "--address=127.0.0.1",
        "--persistent=True", f"--db={folder / 'flower.db'}",
        "--state_save_interval=10000",
    ]  # fmt: skip
    flower = spawn("flower", argv, logs / "flower.log", flower_env, "celery")
    started.append(flower)
    state["flower_url"] = f"http://127.0.0.1:{port}"
    api_port = ports["api"] or free_port()
    while api_port == port:
        api_port = free_port()
    api = _start_api(folder, settings, env, state, api_port)
    started.append(api)
    # The feeder tops the queues up from the campaigns in S3 as the workers drain them.
    feeder = [sys.executable, "-m", "farm.feeder"]
    started.append(spawn("feeder", feeder, logs / "feeder.log", env, "farm.feeder"))
    # Each must answer as itself: a port merely open may be another server's.
    progress("flower, api, feeder: started")
    wait_http(f"http://127.0.0.1:{port}/healthcheck", "OK", 30, flower)
    progress(f"flower: up on {state['flower_url']}")
    wait_http(f"http://127.0.0.1:{api_port}/healthz", '"ok":true', 30, api)
    progress(f"api: up on {state['api_url']}")


def _start_api(folder: Path, settings: Settings, env: dict, state: dict, port: int) -> Proc:
    if settings.api_tokens:
        tokens = settings.api_tokens.get_secret_value()
    else:
        tokens = f"{keys.DEFAULT_TENANT}:{secrets.token_urlsafe(32)}"
    first = tokens.split(",")[0].partition(":")[2]
    argv = [
        sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "info", "--no-access-log",
    ]  # fmt: skip
    api_env = {**env, "FARM_API_TOKENS": tokens}
    state["api_url"] = f"http://127.0.0.1:{port}"
    state["token"] = first
    return spawn("api", argv, folder / "logs" / "api.log", api_env, "uvicorn")


def fleet_status(settings: Settings) -> dict:
    """Queues (depth, consumers) and live workers, read from Redis; empty if it is away."""
    import redis

    try:
        client = redis_client(settings, socket_connect_timeout=2)
        try:
            return fleet.fleet(client, settings.enabled_families)
        finally:
            client.close()
    except redis.RedisError:
        return {"queues": [], "workers": []}


def worker_queues(settings: Settings, timeout: float = 1.0) -> dict[str, list[str]]:
    """Live workers (node name -> queues it consumes); empty if none answer or no broker."""
    from workers.app import create_app

    app = create_app(settings)
    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:  # broker not reachable yet
        return {}
    finally:
        app.close()
    return {node: [q["name"] for q in queues] for node, queues in replies.items()}
