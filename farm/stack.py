"""The local stack behind ``farm up`` / ``farm down`` / ``farm status``.

Embedded Valkey and SeaweedFS (unless ``FARM_REDIS_URL`` / ``FARM_S3_ENDPOINT`` point elsewhere),
one Celery worker per queue, and Flower. What was started is written to ``<state_dir>/stack.json``
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

from farm import keys
from farm.errors import StackError
from farm.services import Proc, free_port, port_free, spawn, start_valkey, start_weed, wait_port
from farm.settings import Settings

STATE_FILE = "stack.json"


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
        self.dir.mkdir(parents=True, exist_ok=True)
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

    def up(self, *, timeout: float = 120.0) -> dict:
        """Start what is not configured externally, then workers and Flower; wait until ready.

        Returns:
            The state written to ``stack.json``.

        Raises:
            StackError: a part failed to start (everything started so far is stopped).
        """
        if self.running():
            return self.read_state()
        self.down()  # a half-dead stack from a crash: clear it before starting anew
        self.dir.mkdir(parents=True, exist_ok=True)
        started: list[Proc] = []
        state: dict = {"state_dir": str(self.dir), "started_at": time.time(), "processes": []}
        try:
            settings = self._start_servers(state, started)
            self._ensure_models(settings)
            self._ensure_bucket(settings)
            self._start_workers(settings, state, started)
            state["processes"] = [p.to_dict() for p in started]
            self._write_state(state)
            self._wait_workers(settings, timeout)
        except BaseException:
            for p in reversed(started):
                p.stop()
            self.state_path.unlink(missing_ok=True)
            raise
        return state

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
            started.append(start_weed(self.dir / "seaweedfs", port, access, secret))
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
        # Written now so that a crash while starting workers still leaves the servers findable.
        state["processes"] = [p.to_dict() for p in started]
        self._write_state(state)
        return Settings(**{**_raw(s), **update})

    def _ensure_models(self, settings: Settings) -> None:
        if not settings.uses_tiny:
            return
        from farm.models.tiny import (
            build_controlnet,
            build_k3,
            build_k21,
            build_k22,
            build_sd15,
            build_sdxl_refiner,
            is_tiny,
        )

        if not all(is_tiny(settings.tiny_dir / part) for part in ("prior", "decoder", "inpaint")):
            build_k22(settings.tiny_dir)
        if not is_tiny(settings.tiny_dir / "kandinsky3"):
            build_k3(settings.tiny_dir / "kandinsky3")
        if not all(is_tiny(settings.tiny_dir / p) for p in ("k21_decoder", "k21_inpaint")):
            build_k21(settings.tiny_dir)
        if not is_tiny(settings.tiny_dir / "sd15"):
            build_sd15(settings.tiny_dir / "sd15")
        if not is_tiny(settings.tiny_dir / "sdxl_refiner"):
            build_sdxl_refiner(settings.tiny_dir / "sdxl_refiner")
        if not all(is_tiny(settings.tiny_dir / p) for p in ("controlnet", "depth")):
            build_controlnet(settings.tiny_dir)

    def _ensure_bucket(self, settings: Settings) -> None:
        from farm.storage import ObjectStore

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

    def _start_workers(self, settings: Settings, state: dict, started: list[Proc]) -> None:
        env = self._child_env(settings)
        logs = self.dir / "logs"
        celery = [sys.executable, "-m", "celery", "-A", "workers.main"]
        pool = self._pool()
        nodes = state.setdefault("nodes", {})
        for queue in (keys.PRIOR_QUEUE, keys.DECODER_QUEUE):
            # A name of its own, so readiness waits for *these* workers, not any on the broker.
            nodes[queue] = f"{queue}@{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
            argv = [
                *celery, "worker",
                "-Q", queue,
                "-n", nodes[queue],
                "-c", "1",
                f"--pool={pool}",
                "-E", "--without-gossip", "--without-mingle",
                "--loglevel=INFO",
            ]  # fmt: skip
            started.append(spawn(f"worker-{queue}", argv, logs / f"{queue}.log", env, "celery"))
        port = settings.flower_port
        if not port or not port_free(port):
            port = free_port()
        flower_env = {**env, "FLOWER_UNAUTHENTICATED_API": "true"}
        argv = [
            *celery, "flower",
            f"--port={port}", "--address=127.0.0.1",
            "--persistent=True", f"--db={self.dir / 'flower.db'}",
            "--state_save_interval=10000",
        ]  # fmt: skip
        flower = spawn("flower", argv, logs / "flower.log", flower_env, "celery")
        started.append(flower)
        state["flower_url"] = f"http://127.0.0.1:{port}"
        state["pool"] = pool
        api = self._start_api(settings, env, state)
        started.append(api)
        wait_port(port, 30, flower)
        wait_port(int(state["api_url"].rsplit(":", 1)[1]), 30, api)

    def _start_api(self, settings: Settings, env: dict, state: dict) -> Proc:
        if settings.api_tokens:
            tokens = settings.api_tokens.get_secret_value()
        else:
            tokens = f"{keys.DEFAULT_TENANT}:{secrets.token_urlsafe(32)}"
        first = tokens.split(",")[0].partition(":")[2]
        port = settings.api_port
        if not port or not port_free(port):
            port = free_port()
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
                    log = self.dir / "logs" / f"{p.name.removeprefix('worker-')}.log"
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

        pids = [p.pid for p in self.procs() if p.name.startswith("worker")]
        try:
            client = redis.Redis.from_url(settings.redis_url)
            try:
                return all(client.exists(keys.worker_loaded(pid)) for pid in pids)
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
        order = {
            "api": 0,
            "flower": 0,
            "worker-prior": 1,
            "worker-decoder": 1,
            "seaweedfs": 2,
            "valkey": 3,
        }
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
        workers = (
            workers_per_queue(settings, timeout=1.0)
            if any(v["alive"] for v in procs.values())
            else {}
        )
        return {
            "running": all(v["alive"] for v in procs.values()),
            "state_dir": state["state_dir"],
            "redis_url": state["redis_url"],
            "s3_endpoint": state["s3_endpoint"],
            "bucket": state["bucket"],
            "flower_url": state.get("flower_url"),
            "api_url": state.get("api_url"),
            "token": state.get("token"),
            "workers": {q: workers.get(q, 0) for q in (keys.PRIOR_QUEUE, keys.DECODER_QUEUE)},
            "processes": procs,
            "tiny_models": self.settings.uses_tiny,
        }


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


def workers_per_queue(settings: Settings, timeout: float = 1.0) -> dict[str, int]:
    """How many live workers consume each queue (a Celery broadcast; empty if none answer)."""
    counts: dict[str, int] = {}
    for queues in worker_queues(settings, timeout).values():
        for q in queues:
            counts[q] = counts.get(q, 0) + 1
    return counts


def _raw(settings: Settings) -> dict:
    """Settings as constructor arguments (secrets unwrapped by pydantic on the way back in)."""
    return {k: v for k, v in settings.model_dump().items() if v is not None}
