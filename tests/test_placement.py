"""Multiplexing: one worker serving more families than it keeps loaded does not thrash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _farm(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_interleaved_families_on_one_resident_slot_load_at_most_four_times(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_STATE_DIR=str(tmp_path / "state"), FARM_API_PORT="0", FARM_FLOWER_PORT="0")
    up = _farm("up", "--models", "kandinsky-3,sd-1.5", "--workers", "prior=0,decoder=0", env=env)
    worker = None
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed in finally
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "farm.cli", "worker", "--stage", "decoder",
                "--models", "kandinsky-3,sd-1.5", "--resident", "1", "--name", "mux@test",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip
        small = {"height": 64, "width": 64, "num_inference_steps": 2}
        jobs = [
            {"model": ("kandinsky-3", "sd-1.5")[i % 2], "prompt": f"job {i}", "seed": i, **small}
            for i in range(40)
        ]
        (tmp_path / "mix.json").write_text(json.dumps({"jobs": jobs}))
        sub = _farm("submit", str(tmp_path / "mix.json"), "--wait", env=env, timeout=400)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        assert '"done": 40' in sub.stdout, sub.stdout
        status = json.loads(_farm("status", "--json", env=env).stdout)
        (mux,) = [w for w in status["workers"] if w["node"] == "mux@test"]
        assert mux["families"] == ["kandinsky-3", "sd-1.5"]
        assert 2 <= mux["loads"] <= 4, mux
        assert 1 <= mux["switches"] <= 3, mux
        assert len(mux["resident_families"]) == 1 and len(mux["resident_parts"]) == 1
        assert set(mux["serves"]) == {"decoder.kandinsky-3", "decoder.sd-1.5", "finalize"}
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        log.close()
        _farm("down", env=env)
