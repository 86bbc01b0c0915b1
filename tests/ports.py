"""Processes' children and listening ports; a probe of each port, without credentials, for objects.

The port list comes from the kernel (``/proc/<pid>/fd`` sockets matched against
``/proc/net/tcp``), not from what the stack says it opened: a port nobody thought of is probed
too. Every port gets every probe whatever it is meant to speak: HTTP reads and listings of a
known object (S3 paths, filer paths), HTTP writes, SeaweedFS master's API (a volume token
from ``/dir/assign`` or ``/dir/lookup`` and the write or read it opens, ``/submit``,
``/col/delete``), a Redis command, and a plaintext gRPC (HTTP/2) handshake and a TLS handshake
without a client certificate.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections import Counter
from pathlib import Path

import httpx

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _parents() -> dict[int, list[int]]:
    """Parent pid -> its children's pids, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (a prefork worker's pool processes)."""
    return _parents().get(pid, [])


def tree(pids: list[int]) -> set[int]:
    """The processes and all their descendants."""
    kids = _parents()
    out, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += kids.get(pid, [])
    return out


def listening(pids: set[int]) -> dict[int, int]:
    """TCP port -> the pid listening on it, for these processes (IPv4 and IPv6)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    ports: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # LISTEN
                ports[int(local.rsplit(":", 1)[1], 16)] = inodes[inode]
    return ports


def _h2_plaintext(port: int) -> bool:
    """Whether the port speaks plaintext HTTP/2 (insecure gRPC): it answers the preface with a
    SETTINGS frame."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(H2_PREFACE)
            head = sock.recv(9)
    except OSError:
        return False
    return len(head) == 9 and head[3] == 0x04


def _tls_without_cert(port: int) -> bool:
    """Whether a TLS client with no certificate gets an answer to an HTTP/2 request."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            with ctx.wrap_socket(raw) as sock:
                sock.sendall(H2_PREFACE)
                head = sock.recv(9)
    except (OSError, ssl.SSLError):
        return False
    return len(head) == 9 and head[3] == 0x04


def _call(http: httpx.Client, method: str, url: str, **kw) -> httpx.Response | None:
    try:
        return http.request(method, url, **kw)
    except httpx.HTTPError:
        return None


def _json(resp: httpx.Response | None) -> dict:
    try:
        body = resp.json() if resp is not None else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def master_api(http: httpx.Client, base: str, port: int) -> list[str]:
    """SeaweedFS master's HTTP API, as a client with no credentials would use it: a signed
    volume token (write: ``/dir/assign``, ``/dir/lookup``; read: ``/dir/lookup?read=yes``)
    and what it opens, a write by the master itself (``/submit``), and a collection delete
    (``/col/delete`` of a collection that does not exist: reaching it is the finding)."""
    findings = []
    assign = _call(http, "GET", f"{base}/dir/assign")
    fid = _json(assign).get("fid")
    if assign is not None and fid:
        token = assign.headers.get("Authorization")
        findings.append(
            f"{port}: GET /dir/assign -> {assign.status_code} fid {fid} token {bool(token)}"
        )
        volume = f"http://{_json(assign).get('url')}/{fid}"
        auth = {"Authorization": token} if token else {}
        wrote = _call(http, "POST", volume, files={"file": ("e", b"evil")}, headers=auth)
        if wrote is not None and wrote.status_code < 300:
            findings.append(
                f"{port}: volume write {fid} with /dir/assign's token -> {wrote.status_code}"
            )
    # With no fid of its own, a client asks for the volumes every store has (1.. of mini's 7).
    fids = [fid] if fid else [f"{v},01637037d6" for v in range(1, 8)]
    for candidate in fids:
        for read in ("yes", "no"):
            params = {"fileId": candidate, "read": read}
            lookup = _call(http, "GET", f"{base}/dir/lookup", params=params)
            token = lookup.headers.get("Authorization") if lookup is not None else None
            if not token:
                continue
            kind = "read" if read == "yes" else "write"
            findings.append(
                f"{port}: /dir/lookup?fileId={candidate}&read={read} gave a {kind} token"
            )
            locations = _json(lookup).get("locations") or [{}]
            if read == "yes" and candidate == fid and locations[0].get("url"):
                got = _call(
                    http,
                    "GET",
                    f"http://{locations[0]['url']}/{fid}",
                    headers={"Authorization": token},
                )
                if got is not None and got.status_code == 200 and got.content == b"evil":
                    findings.append(
                        f"{port}: volume read {fid} with /dir/lookup's read token -> 200"
                    )
    submit = _call(http, "POST", f"{base}/submit", files={"file": ("e", b"evil")})
    if submit is not None and submit.status_code < 300 and _json(submit).get("fid"):
        findings.append(f"{port}: POST /submit -> {submit.status_code} (the master wrote it)")
    gone = _call(http, "GET", f"{base}/col/delete", params={"collection": "probe-no-such"})
    # weed answers 400 "collection ... does not exist" (204 had it existed); metrics ports
    # answer 200 to any path.
    if gone is not None and (gone.status_code == 204 or "does not exist" in gone.text):
        findings.append(f"{port}: GET /col/delete -> {gone.status_code}: deletes a bucket's data")
    return findings


def probe(
    port: int, bucket: str, key: str, content: bytes, tally: Counter | None = None
) -> list[str]:
    """What this port gave away or took without credentials (empty: nothing); ``tally``
    counts the requests sent (``http``) and the raw protocol probes (``raw``)."""
    tally = Counter() if tally is None else tally
    base = f"http://127.0.0.1:{port}"
    name = key.rsplit("/", 1)[-1]
    findings = []
    reads = [
        f"{base}/{bucket}/{key}",
        f"{base}/{bucket}?list-type=2",
        f"{base}/{bucket}/",
        f"{base}/buckets/{bucket}/{key}",
        f"{base}/buckets/{bucket}/{key.rsplit('/', 1)[0]}/",
        f"{base}/buckets/{bucket}/{key.rsplit('/', 1)[0]}/?pretty=y",
    ]
    hooks = {"request": [lambda request: tally.update(http=1)]}
    with httpx.Client(timeout=3, event_hooks=hooks) as http:
        for url in reads:
            try:
                body = http.get(url).content
            except httpx.HTTPError:
                continue
            # An error may echo the requested path: the name counts only from a listing.
            listed = name not in url and name.encode() in body
            if content in body or listed:
                findings.append(f"{port}: GET {url} gave the object or listed it")
        for method, url in (
            ("PUT", f"{base}/{bucket}/evil-{port}.txt"),
            ("POST", f"{base}/buckets/{bucket}/evil-{port}.txt"),
            ("PUT", f"{base}/buckets/{bucket}/evil-{port}.txt"),
        ):
            try:
                resp = http.request(method, url, files={"file": ("evil.txt", b"evil")})
            except httpx.HTTPError:
                continue
            if resp.status_code < 300:
                findings.append(f"{port}: {method} {url} -> {resp.status_code}")
        findings += master_api(http, base, port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
            answer = sock.recv(200)
        if answer.startswith(b"*"):
            findings.append(f"{port}: Redis KEYS answered without a password")
    except OSError:
        pass
    tally.update(raw=3)  # Redis, plaintext HTTP/2, TLS without a certificate
    if _h2_plaintext(port):
        findings.append(f"{port}: plaintext gRPC/HTTP2 without credentials")
    if _tls_without_cert(port):
        findings.append(f"{port}: TLS gRPC/HTTP2 without a client certificate")
    return findings


def probe_all(ports, bucket: str, key: str, content: bytes) -> tuple[list[str], Counter]:
    """Every probe on every port: (findings, requests sent by kind)."""
    tally: Counter = Counter()
    return [f for p in sorted(ports) for f in probe(p, bucket, key, content, tally)], tally
