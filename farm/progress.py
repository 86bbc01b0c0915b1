"""Waiting on a campaign: one poll loop with a progress bar, for the Python API and the client.

Done/total, the rate and the ETA shown come from the same samples of one clock: the rate is
the images finished over a sliding window of (time, done) samples, and ETA = remaining / rate,
so the two always agree (tqdm's own rate smooths another clock, and the server's ETA averages
the whole campaign: shown side by side they contradicted each other).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 30.0


class Rate:
    """Images per second and time left, from (time, done) samples over a sliding window."""

    def __init__(self, total: int, *, window_s: float = WINDOW_S, clock=time.monotonic):
        self.total = total
        self.window_s = window_s
        self.clock = clock
        self.start = clock()
        self.samples: deque[tuple[float, int]] = deque()
        self.first: int | None = None  # done at the first sample: a rate needs progress since

    def add(self, done: int, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.first = done if self.first is None else self.first
        self.samples.append((now, done))
        # Keep one sample at or before the window's start, so the rate spans the whole window.
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window_s:
            self.samples.popleft()

    @property
    def done(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    @property
    def rate(self) -> float | None:
        """Images per second over the window; None until an image has finished (a campaign
        that has not started yet has no rate, rather than a rate of 0)."""
        if len(self.samples) < 2 or self.done == self.first:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate: 0 when all are done; None while unknown or stalled."""
        remaining = self.total - self.done
        if remaining <= 0:
            return 0.0
        rate = self.rate
        return remaining / rate if rate else None

    def elapsed(self, now: float | None = None) -> float:
        return (self.clock() if now is None else now) - self.start

    def summary(self, failed: int = 0) -> str:
        """``0.85 img/s, ETA 0:07, elapsed 0:12`` (and the failures, if any)."""
        rate, eta = self.rate, self.eta
        parts = [
            f"{rate:.2f} img/s" if rate is not None else "? img/s",
            f"ETA {clock_text(eta)}" if eta is not None else "ETA ?",
            f"elapsed {clock_text(self.elapsed())}",
        ]
        if failed:
            parts.append(f"{failed} failed")
        return ", ".join(parts)


def clock_text(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour."""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def wait_for_campaign(
    campaign_id: str,
    status: Callable[[], dict],
    total: int,
    *,
    timeout: float | None,
    progress: bool,
    poll_s: float,
    clock=time.monotonic,
    sleep=time.sleep,
    file=None,
) -> dict:
    """Poll ``status()`` until no job is queued or running; return the last status.

    Raises:
        TimeoutError: not finished within ``timeout`` seconds.
    """
    deadline = None if timeout is None else clock() + timeout
    rate = Rate(total, clock=clock)
    bar = None
    if progress:
        bar = _bar()(
            total=total,
            unit="img",
            desc=f"campaign {campaign_id[:8]}",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{stats}]",
            file=file,
        )
    try:
        while True:
            st = status()
            c = st["counts"]
            finished = c["done"] + c["failed"] + c["cancelled"]
            rate.add(finished)
            if bar is not None:
                bar.stats = rate.summary(c["failed"])
                bar.update(finished - bar.n)
                bar.refresh()
            if finished >= total:
                return st
            if deadline is not None and clock() > deadline:
                raise TimeoutError(f"campaign {campaign_id}: {c} after {timeout}s")
            sleep(poll_s)
    finally:
        if bar is not None:
            bar.close()


def _bar():
    """tqdm drawing the bar, with our rate and ETA (``{stats}``) in place of its own."""
    from tqdm import tqdm

    class Bar(tqdm):
        stats = ""

        @property
        def format_dict(self):
            return {**super().format_dict, "stats": self.stats}

    return Bar
