"""The local stack behind ``farm up`` / ``farm down`` / ``farm status``.

Embedded Valkey and SeaweedFS (unless ``FARM_REDIS_URL`` / ``FARM_S3_ENDPOINT`` point elsewhere),
Celery workers per stage for the enabled families (``--workers prior=1,decoder=2``), Flower and
the API. What was started is written to ``<state_dir>/stack.json``
(mode 0600: it holds the generated credentials) so any later process can find and stop it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from farm import keys
from farm.errors import StackError
from farm.families import get
from farm.local.processes import (
    child_env,
    fleet_status,
    spawn_worker,
    spawn_workers,
    start_clients,
    worker_queues,
)
from farm.local.servers import Proc, free_port, port_free, start_valkey, start_weed
from farm.metrics import endpoints as metrics_endpoints
from farm.settings import Settings
from farm.stores.connect import redis_client

STATE_FILE = "stack.json"
DEFAULT_WORKERS = {"prior": 1, "decoder": 1}


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
    if ";" in url:  # Sentinel: one URL per sentinel, each with the password
        return ";".join(mask(part) for part in url.split(";"))
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
        self._progress: Callable[[str], None] = lambda line: None  # up()'s progress callback

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

    def up(
        self,
        *,
        workers: dict[str, int] | None = None,
        timeout: float = 120.0,
        progress: Callable[[str], None] | None = None,
    ) -> dict:
        """Start what is not configured externally, then workers, Flower and the API; wait.

        Args:
            workers: how many workers per stage (default one each); each serves every enabled
                family that has the stage.
            progress: called with a line as each part starts and comes up (the library prints
                nothing itself; ``farm up`` prints them).


        Returns:
            The state written to ``stack.json``.

        Raises:
            StackError: a part failed to start (everything started so far is stopped).
        """
        self._progress = progress or (lambda line: None)
        running = self.read_state() if self.running() else None
        if running is not None:
            return running
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
            families = ", ".join(settings.enabled_families)
            self._progress(f"models: checking the parts of {families}")
            self._ensure_models(settings)
            self._ensure_bucket(settings)
            self._progress(f"s3: bucket {settings.s3_bucket} ready")
            self._start_workers(settings, state, started, ports)
            state["processes"] = [p.to_dict() for p in started]
            self._write_state(state)
            self._progress("workers: loading their pipelines ...")
            self._wait_workers(settings, timeout)
        except BaseException:
            self._progress("failed: stopping what was started")
            _stop_all(started)
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
            self._progress(f"valkey: up on 127.0.0.1:{port}")
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
            self._progress(f"seaweedfs: S3 up on 127.0.0.1:{port}")
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
            # Kept in the state (0600) so that a worker started again later signs the same way.
            update["webhook_secret"] = state["webhook_secret"] = secrets.token_urlsafe(32)
        # Written now so that a crash while starting workers still leaves the servers findable.
        state["processes"] = [p.to_dict() for p in started]
        self._write_state(state)
        return Settings(**{**_raw(s), **update})

    def _ensure_models(self, settings: Settings) -> None:
        from farm.local.models import build_tiny

        built = build_tiny(settings, settings.enabled_families)
        if built:
            self._progress(f"models: built {len(built)} tiny parts (first start only)")

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

    def respawn(self, name: str) -> Proc:
        """Start one of the stack's workers again (after it died or was stopped), as it was
        started: what a process supervisor (systemd, Kubernetes) does for a fleet's workers."""
        state = self.read_state()
        if not state or name not in state.get("nodes", {}):
            raise StackError(f"{name!r} is not a worker of the running stack")
        old = next((p for p in self.procs(state) if p.name == name), None)
        if old is not None and old.alive():
            raise StackError(f"{name} is still running (pid {old.pid})")
        settings = self.settings.with_stack()
        if not settings.webhook_secret and state.get("webhook_secret"):
            secret = SecretStr(state["webhook_secret"])
            settings = settings.model_copy(update={"webhook_secret": secret})
        stage = name.split("-")[1]
        families = [f for f in settings.enabled_families if stage in get(f).stages]
        proc = spawn_worker(self.dir, state, name, families, state["pool"], child_env(settings))
        state["processes"] = [
            proc.to_dict() if p["name"] == name else p for p in state["processes"]
        ]
        self._write_state(state)
        return proc

    def _start_workers(
        self, settings: Settings, state: dict, started: list[Proc], ports: dict[str, int]
    ) -> None:
        env = child_env(settings)
        spawn_workers(self.dir, settings, state, started, env, self._progress)
        start_clients(self.dir, settings, state, started, ports, env, self._progress)

    def _wait_workers(self, settings: Settings, timeout: float) -> None:
        """Wait until each queue has a worker that answers (its models are loaded by then)."""
        deadline = time.monotonic() + timeout
        reported: set[str] = set()
        while time.monotonic() < deadline:
            for p in self.procs():
                if p.name.startswith("worker") and not p.alive():
                    log = self.dir / "logs" / f"{p.name}.log"
                    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                    raise StackError(f"{p.name} exited while starting:\n{tail}")
            nodes = (self.read_state() or {}).get("nodes", {})
            answering = set(worker_queues(settings, timeout=1.0))
            loaded = self._loaded(settings)
            ready = {name for name, node in nodes.items() if node in answering and name in loaded}
            for name in sorted(ready - reported):
                self._progress(f"{name}: ready (pipelines loaded, consuming)")
            reported |= ready
            if ready >= set(nodes):
                return
            time.sleep(0.3)
        raise StackError(f"workers did not come up within {timeout}s; see {self.dir / 'logs'}")

    def _loaded(self, settings: Settings) -> set[str]:
        """The workers of this stack that have loaded their pipelines (every pool process)."""
        import redis

        state = self.read_state() or {}
        shape = state.get("worker_shape", {})
        workers = [p for p in self.procs() if p.name.startswith("worker")]
        try:
            client = redis_client(settings)
            try:
                return {
                    p.name
                    for p in workers
                    # every one of its pool processes
                    if int(client.get(keys.worker_loaded(p.pid)) or 0)
                    >= shape.get(p.name.split("-")[1], (1, 1))[0]
                }
            finally:
                client.close()
        except redis.RedisError:
            return set()

    # -- down / status ----------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop everything the state file names: API, Flower, feeder and workers at once, then
        the servers at once (the clients first: a worker whose broker went away first would
        retry until killed). Each process gets SIGTERM, and SIGKILL if it outstays its time."""
        state = self.read_state()
        if not state:
            return []
        procs = self.procs(state)
        stopped = [p.name for p in procs if p.alive()]
        _stop_all(procs)
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
            "metrics": metrics_endpoints(state),
            "tiny_models": self.settings.uses_tiny,
        }


SERVERS = ("valkey", "seaweedfs", "sentinel")


def _stop_all(procs: list[Proc]) -> None:
    """Stop the clients (API, Flower, feeder, workers) side by side, then the servers side by
    side: the wait is the slowest one's, not the sum (a Celery worker's warm shutdown alone
    takes seconds), and no worker loses its broker while shutting down."""
    from concurrent.futures import ThreadPoolExecutor

    for wave in (
        [p for p in procs if not p.name.startswith(SERVERS)],
        [p for p in procs if p.name.startswith(SERVERS)],
    ):
        if wave:
            with ThreadPoolExecutor(len(wave)) as pool:
                for future in [pool.submit(p.stop) for p in wave]:
                    future.result()


def _raw(settings: Settings) -> dict:
    """Settings as constructor arguments (secrets unwrapped by pydantic on the way back in)."""
    return {k: v for k, v in settings.model_dump().items() if v is not None}
