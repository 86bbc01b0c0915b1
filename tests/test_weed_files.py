"""The embedded SeaweedFS keeps its files in its own folder: nothing left in the temp folder."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from farm.local.servers import free_port, start_weed
from tests.waiting import wait_until


def test_weed_logs_in_its_folder_and_leaves_no_socket_in_tmp(tmp_path, monkeypatch):
    """glog's files (weed.<host>.<user>.log.INFO...) go to the temp folder unless told; the
    gRPC sockets weed always puts in /tmp are removed once it is stopped."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # weed inherits it: Go's os.TempDir reads it
    folder = tmp_path / "seaweed"
    proc = start_weed(folder, free_port(), "t" + secrets.token_hex(4), secrets.token_urlsafe(24))
    sockets = [Path(f"/tmp/seaweedfs-{n}-grpc-{p + 10000}.sock") for n, p in proc.ports.items()]
    try:
        # All five are there while it runs (the admin's last): the check below means something.
        wait_until(lambda: all(s.is_socket() for s in sockets), 30, 0.1, "weed's gRPC sockets")
    finally:
        proc.stop()
    assert sorted(os.listdir(temp)) == []
    assert [s for s in sockets if s.exists()] == []
    logs = [p.name for p in (folder / "logs").iterdir()]
    assert any(name.startswith("weed.") and ".log.INFO." in name for name in logs), logs
