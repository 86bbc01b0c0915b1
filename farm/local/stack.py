"""The local stack behind ``farm up`` / ``farm down`` / ``farm status``.

Embedded Valkey and SeaweedFS (unless ``FARM_REDIS_URL`` / ``FARM_S3_ENDPOINT`` point elsewhere),
Celery workers per stage for the enabled families (``--workers prior=1,decoder=2``), Flower and
the API. What was started is written to ``<state_dir>/stack.json``
(mode 0600: it holds the generated credentials) so any later process can find and stop it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from farm import fleet, keys
from farm.errors import StackError
from farm.families import get
from farm.local.servers import (
    Proc,
    free_port,
    port_free,
    spawn,
    start_valkey,
    start_weed,
    wait_http,
)
from farm.settings import Settings

STATE_FILE = "stack.json"
DEFAULT_WORKERS = {"prior": 1, "decoder": 1}


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


def parse_workers(text: str | None) -> dict[str, int]:
    """``prior=1,decoder=2`` -> {"prior": 1, "decoder": 2} (stages left out keep one worker)."""
    out = dict(DEFAULT_WORKERS)
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        stage, sep, count = item.partition("=")
        if not sep or stage not in out or not count.isdigit() or int(count) > 16:
            raise StackError(
                f"--workers: {item!r} is not stage=count (stages: prior, decoder; 0-16 each)"
            )
        out[stage] = int(count)
    return out


def mask(url: str) -> str:
    """The URL with its password replaced, for logs and human output."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class Stack:
    """Starts, inspects and stops the local stack for one state folder."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dir = settings.state_dir.resolve()
        self.state_path = self.dir / STATE_FILE

    # -- state file -------------------------------------------------------------------------

    def read_state(self) -> dict | None:
        if not self.state_path.is_file():
            return None
        return json.loads(self.state_path.read_text(encoding="utf-8"))

    def _write_state(self, state: dict) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.state_path)

    def procs(self, state: dict | None = None) -> list[Proc]:
        state = state or self.read_state() or {}
        return [Proc(**p) for p in state.get("processes", [])]

    def running(self) -> bool:
        """Whether every process the state file names is alive."""
        procs = self.procs()
        return bool(procs) and all(p.alive() for p in procs)

    # -- up ---------------------------------------------------------------------------------

    def up(self, *, workers: dict[str, int] | None = None, timeout: float = 120.0) -> dict:
        """Start what is not configured externally, then workers, Flower and the API; wait.

        Args:
            workers: how many workers per stage (default one each); each serves every enabled
                family that has the stage.


        Returns:
            The state written to ``stack.json``.

        Raises:
            StackError: a part failed to start (everything started so far is stopped).
        """
        if self.running():
            return self.read_state()
        self.down()  # a half-dead stack from a crash: clear it before starting anew
        ports = self._check_ports()
        # Credentials, logs, AOF and object data: readable by this user only.
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        started: list[Proc] = []
        state: dict = {
            "state_dir": str(self.dir),
            "started_at": time.time(),
            "processes": [],
            "models": list(self.settings.enabled_families),
            "worker_counts": dict(workers or DEFAULT_WORKERS),
        }
        try:
            settings = self._start_servers(state, started)
            self._ensure_models(settings)
            self._ensure_bucket(settings)
            self._start_workers(settings, state, started, ports)
            state["processes"] = [p.to_dict() for p in started]
            self._write_state(state)
            self._wait_workers(settings, timeout)
        except BaseException:
            for p in reversed(started):
                p.stop()
            self.state_path.unlink(missing_ok=True)
            raise
        return state

    def _check_ports(self) -> dict[str, int]:
        """The API's and Flower's ports, refused before anything starts if taken or shared.

        0 means any free port; a set port that is taken is an error naming it (silently moving
        would leave scripts talking to whatever holds it).
        """
        s = self.settings
        wanted = {
            "api": (s.api_port, "FARM_API_PORT"),
            "flower": (s.flower_port, "FARM_FLOWER_PORT"),
        }
        if s.api_port and s.api_port == s.flower_port:
            raise StackError(
                f"api and flower are both set to port {s.api_port} (FARM_API_PORT, "
                "FARM_FLOWER_PORT): give them different ports, or 0 for any free port"
            )
        out = {}
        for name, (port, variable) in wanted.items():
            if port and not port_free(port):
                raise StackError(
                    f"{name}: port {port} on 127.0.0.1 is taken ({variable}); stop what holds "
                    f"it, or set {variable}=0 for any free port"
                )
            out[name] = port
        return out

    def _start_servers(self, state: dict, started: list[Proc]) -> Settings:
        s = self.settings
        update: dict = {}
        if s.redis_url:
            state["redis_url"] = s.redis_url
            state["embedded_redis"] = False
        else:
            port, password = free_port(), secrets.token_urlsafe(24)
            started.append(start_valkey(self.dir / "valkey", port, password))
            state["redis_url"] = f"redis://:{password}@127.0.0.1:{port}/0"
            state["embedded_redis"] = True
            update["redis_url"] = state["redis_url"]
        if s.s3_endpoint:
            state["s3_endpoint"] = s.s3_endpoint
            state["embedded_s3"] = False
            state["s3_access_key"] = s.s3_access_key.get_secret_value() if s.s3_access_key else ""
            state["s3_secret_key"] = s.s3_secret_key.get_secret_value() if s.s3_secret_key else ""
        else:
            port = free_port()
            access, secret = "farm" + secrets.token_hex(8), secrets.token_urlsafe(32)
            weed = start_weed(self.dir / "seaweedfs", port, access, secret)
            started.append(weed)
            state["seaweed_ports"] = weed.ports  # all need credentials (a test probes them)
            state.update(
                s3_endpoint=f"http://127.0.0.1:{port}",
                embedded_s3=True,
                s3_access_key=access,
                s3_secret_key=secret,
            )
            update.update(
                s3_endpoint=state["s3_endpoint"], s3_access_key=access, s3_secret_key=secret
            )
        state["bucket"] = s.s3_bucket
        if not s.webhook_secret:
            # Tenants' webhook secrets derive from it (GET /v1/webhook-secret gives each its own).
            update["webhook_secret"] = secrets.token_urlsafe(32)
        # Written now so that a crash while starting workers still leaves the servers findable.
        state["processes"] = [p.to_dict() for p in started]
        self._write_state(state)
        return Settings(**{**_raw(s), **update})

    def _ensure_models(self, settings: Settings) -> None:
        from farm.local.models import build_tiny

        build_tiny(settings, settings.enabled_families)

    def _ensure_bucket(self, settings: Settings) -> None:
        from farm.stores.objects import ObjectStore

        store = ObjectStore.from_settings(settings)
        deadline = time.monotonic() + 30
        while True:
            try:
                store.ensure_bucket()
                return
            except Exception as e:  # S3 answers ~1 s after its port opens
                if time.monotonic() > deadline:
                    raise StackError(f"S3 at {settings.s3_endpoint} not ready: {e}") from e
                time.sleep(0.2)

    def _pool(self) -> str:
        if self.settings.worker_pool != "auto":
            return self.settings.worker_pool
        # CUDA cannot be initialised in a forked child: GPU workers run solo.
        return "solo" if self.settings.device.startswith("cuda") else "prefork"

    def _child_env(self, settings: Settings) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env.update(settings.worker_env())
        env["PYTHONUNBUFFERED"] = "1"
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        if settings.uses_tiny:
            env["HF_HUB_OFFLINE"] = "1"
        return env

    def _spawn_workers(self, settings: Settings, state: dict, started: list[Proc], env: dict):
        """Workers per stage, each serving every enabled family with that stage."""
        celery = [sys.executable, "-m", "celery", "-A", "workers.main"]
        pool = self._pool()
        nodes = state.setdefault("nodes", {})
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
            concurrency, threads = shape[stage]
            for n in range(1, count + 1):
                name = f"worker-{stage}-{n}"
                # A name of its own, so readiness waits for *these* workers, not any on the broker.
                nodes[name] = f"{stage}{n}@{tag}"
                argv = fleet.worker_argv(
                    stage=stage,
                    families=families,
                    node=nodes[name],
                    pool=pool,
                    concurrency=concurrency,
                )
                worker_env = {
                    **env,
                    "FARM_WORKER_STAGE": stage,
                    "FARM_WORKER_MODELS": ",".join(families),
                    "FARM_TORCH_THREADS": str(threads),
                }
                log = self.dir / "logs" / f"{name}.log"
                started.append(spawn(name, [*celery, *argv], log, worker_env, "celery"))
        state["pool"] = pool

    def _start_workers(
        self, settings: Settings, state: dict, started: list[Proc], ports: dict[str, int]
    ) -> None:
        env = self._child_env(settings)
        self._spawn_workers(settings, state, started, env)
        celery = [sys.executable, "-m", "celery", "-A", "workers.main"]
        logs = self.dir / "logs"
        port = ports["flower"] or free_port()
        # Basic auth on every page and API route (anyone reaching the port could revoke tasks),
        # through the environment: argv is world-readable in /proc.
        user, password = "farm", secrets.token_urlsafe(18)
        state["flower_user"], state["flower_password"] = user, password
        flower_env = {**env, "FLOWER_BASIC_AUTH": f"{user}:{password}"}
        argv = [
            *celery, "flower",
            f"--port={port}", "--address=127.0.0.1",
            "--persistent=True", f"--db={self.dir / 'flower.db'}",
            "--state_save_interval=10000",
        ]  # fmt: skip
        flower = spawn("flower", argv, logs / "flower.log", flower_env, "celery")
        started.append(flower)
        state["flower_url"] = f"http://127.0.0.1:{port}"
        api_port = ports["api"] or free_port()
        while api_port == port:
            api_port = free_port()
        api = self._start_api(settings, env, state, api_port)
        started.append(api)
        # The feeder tops the queues up from the campaigns in S3 as the workers drain them.
        feeder = [sys.executable, "-m", "farm.feeder"]
        started.append(spawn("feeder", feeder, logs / "feeder.log", env, "farm.feeder"))
        # Each must answer as itself: a port merely open may be another server's.
        wait_http(f"http://127.0.0.1:{port}/healthcheck", "OK", 30, flower)
        wait_http(f"http://127.0.0.1:{api_port}/healthz", '"ok":true', 30, api)

    def _start_api(self, settings: Settings, env: dict, state: dict, port: int) -> Proc:
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
        return spawn("api", argv, self.dir / "logs" / "api.log", api_env, "uvicorn")

    def _wait_workers(self, settings: Settings, timeout: float) -> None:
        """Wait until each queue has a worker that answers (its models are loaded by then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs():
                if p.name.startswith("worker") and not p.alive():
                    log = self.dir / "logs" / f"{p.name}.log"
                    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                    raise StackError(f"{p.name} exited while starting:\n{tail}")
            nodes = (self.read_state() or {}).get("nodes", {})
            if set(nodes.values()) <= set(worker_queues(settings, timeout=1.0)) and self._loaded(
                settings
            ):
                return
            time.sleep(0.3)
        raise StackError(f"workers did not come up within {timeout}s; see {self.dir / 'logs'}")

    def _loaded(self, settings: Settings) -> bool:
        """Whether every worker of this stack has loaded its pipelines."""
        import redis

        state = self.read_state() or {}
        shape = state.get("worker_shape", {})
        workers = [p for p in self.procs() if p.name.startswith("worker")]
        try:
            client = redis.Redis.from_url(settings.redis_url)
            try:
                for p in workers:
                    stage = p.name.split("-")[1]
                    expected = shape.get(stage, (1, 1))[0]  # its pool processes
                    if int(client.get(keys.worker_loaded(p.pid)) or 0) < expected:
                        return False
                return True
            finally:
                client.close()
        except redis.RedisError:
            return False

    # -- down / status ----------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop everything the state file names: Flower, workers, then the servers."""
        state = self.read_state()
        if not state:
            return []
        order = {"api": 0, "flower": 0, "feeder": 0, "seaweedfs": 2, "valkey": 3}  # workers: 1
        stopped = []
        for p in sorted(self.procs(state), key=lambda p: order.get(p.name, 1)):
            if p.alive():
                stopped.append(p.name)
            p.stop()
        self.state_path.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict:
        """Endpoints and state, machine-readable (``farm status --json``)."""
        state = self.read_state()
        if not state:
            return {"running": False, "state_dir": str(self.dir)}
        procs = {p.name: {"pid": p.pid, "alive": p.alive()} for p in self.procs(state)}
        settings = self.settings.with_stack()
        fleet_state: dict = {"queues": [], "workers": []}
        if any(v["alive"] for v in procs.values()):
            fleet_state = fleet_status(settings)
        return {
            "running": all(v["alive"] for v in procs.values()),
            "state_dir": state["state_dir"],
            "redis_url": state["redis_url"],
            "s3_endpoint": state["s3_endpoint"],
            "bucket": state["bucket"],
            "flower_url": state.get("flower_url"),
            "flower_user": state.get("flower_user"),
            "flower_password": state.get("flower_password"),
            "api_url": state.get("api_url"),
            "token": state.get("token"),
            "models": state.get("models", []),
            "queues": fleet_state["queues"],
            "workers": fleet_state["workers"],
            "processes": procs,
            "tiny_models": self.settings.uses_tiny,
        }


def fleet_status(settings: Settings) -> dict:
    """Queues (depth, consumers) and live workers, read from Redis; empty if it is away."""
    import redis

    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
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


def _raw(settings: Settings) -> dict:
    """Settings as constructor arguments (secrets unwrapped by pydantic on the way back in)."""
    return {k: v for k, v in settings.model_dump().items() if v is not None}
