"""Processes' children and listening ports; a probe of each port, without credentials, for objects.

The port list comes from the kernel (``/proc/<pid>/fd`` sockets matched against
``/proc/net/tcp``), not from what the stack says it opened: a port nobody thought of is probed
too. Every port gets every probe whatever it is meant to speak: HTTP reads and listings of a
known object (S3 paths, filer paths), HTTP writes, a Redis command, and a plaintext gRPC
(HTTP/2) handshake and a TLS handshake without a client certificate.
"""

from __future__ import annotations

import os
import socket
import ssl
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


def probe(port: int, bucket: str, key: str, content: bytes) -> list[str]:
    """What this port gave away or took without credentials (empty: nothing)."""
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
    with httpx.Client(timeout=3) as http:
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
        try:
            assign = http.get(f"{base}/dir/assign").json()
        except (httpx.HTTPError, ValueError):
            assign = {}
        if isinstance(assign, dict) and assign.get("fid"):
            try:
                resp = http.post(
                    f"http://{assign['url']}/{assign['fid']}", files={"file": ("e", b"evil")}
                )
                if resp.status_code < 300:
                    findings.append(f"{port}: volume write {assign['fid']} -> {resp.status_code}")
            except httpx.HTTPError:
                pass
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
            answer = sock.recv(200)
        if answer.startswith(b"*"):
            findings.append(f"{port}: Redis KEYS answered without a password")
    except OSError:
        pass
    if _h2_plaintext(port):
        findings.append(f"{port}: plaintext gRPC/HTTP2 without credentials")
    if _tls_without_cert(port):
        findings.append(f"{port}: TLS gRPC/HTTP2 without a client certificate")
    return findings
