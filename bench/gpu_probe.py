"""What a GPU machine has, for bench/gpu_farm.py: the stack's needs it lacks, the GPU's busy
share and memory (nvidia-smi, sampled in a thread), one CPU core's matmul rates."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time

# -- what this machine has --------------------------------------------------------------------


def missing_for_stack() -> list[str]:
    """What the whole stack needs and this machine lacks (empty: the stack can run)."""
    import importlib.util

    lacks = [m for m in ("celery", "redis", "boto3", "fastapi", "uvicorn", "flower") if not
             importlib.util.find_spec(m)]  # fmt: skip
    try:
        from farm.local.servers import valkey_binary, weed_binary

        valkey_binary()
        weed_binary()
    except Exception as e:  # noqa: BLE001 - any reason is a reason to fall back
        lacks.append(str(e).splitlines()[0])
    return lacks


class GpuSampler:
    """nvidia-smi's utilisation.gpu and memory.used every ``every`` seconds, in a thread."""

    def __init__(self, every: float = 0.5):
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    @staticmethod
    def query(what: str, kind: str = "gpu") -> list[list[str]]:
        out = subprocess.run(
            ["nvidia-smi", f"--query-{kind}={what}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                util, mem = self.query("utilization.gpu,memory.used")[0][:2]
                self.samples.append((time.time(), float(util), float(mem)))
            except (OSError, IndexError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def busy(self, t0: float, t1: float) -> float | None:
        inside = [u for t, u, _ in self.samples if t0 <= t <= t1]
        return statistics.fmean(inside) / 100 if inside else None

    def vram_by_pid(self) -> dict[int, float]:
        """GiB each process holds on the GPU (empty where the driver shows no processes)."""
        if not self.available:
            return {}
        try:
            rows = self.query("pid,used_memory", kind="compute-apps")
            return {int(pid): float(mib) / 1024 for pid, mib, *_ in rows}
        except (OSError, ValueError, subprocess.SubprocessError):
            return {}

    def used_gib(self) -> float | None:
        if not self.available:
            return None
        try:
            return float(self.query("memory.used")[0][0]) / 1024
        except (OSError, IndexError, ValueError, subprocess.SubprocessError):
            return None


def cpu_rates() -> dict[str, float]:
    from farm.plan_cli import measure_cpu

    return {dt: round(measure_cpu(dt, seconds=0.5), 1) for dt in ("float32", "bfloat16")}
