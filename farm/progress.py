"""Waiting on a campaign: one poll loop with a progress bar, for the Python API and the client.

Done/total, the rate and the ETA shown come from the same samples of one clock: the rate is
the images finished over a sliding window of (time, done) samples, and ETA = remaining / rate,
so the two always agree (tqdm's own rate smooths another clock, and the server's ETA averages
the whole campaign: shown side by side they contradicted each other).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

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


class Waiter:
    """One wait's state: the rate, the deadline and the bar. ``see(status)`` takes each poll's
    status and says whether the campaign has finished, so the sync and the async poll loops
    share everything but their sleep.

    Raises (from ``see``):
        TimeoutError: not finished within ``timeout`` seconds.
    """

    def __init__(
        self,
        campaign_id: str,
        total: int,
        *,
        timeout: float | None,
        progress: bool,
        clock=time.monotonic,
        file=None,
    ):
        self.campaign_id = campaign_id
        self.total = total
        self.timeout = timeout
        self.clock = clock
        self.deadline = None if timeout is None else clock() + timeout
        self.rate = Rate(total, clock=clock)
        self.bar = None
        if progress:
            self.bar = _bar()(
                total=total,
                unit="img",
                desc=f"campaign {campaign_id[:8]}",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{stats}]",
                file=file,
            )

    def see(self, status: Any) -> bool:
        c = status["counts"]
        finished = c["done"] + c["failed"] + c["cancelled"]
        self.rate.add(finished)
        if self.bar is not None:
            self.bar.stats = self.rate.summary(c["failed"])
            self.bar.update(finished - self.bar.n)
            self.bar.refresh()
        if finished >= self.total:
            return True
        if self.deadline is not None and self.clock() > self.deadline:
            counts = dict(c)
            raise TimeoutError(f"campaign {self.campaign_id}: {counts} after {self.timeout}s")
        return False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for_campaign(
    campaign_id: str,
    status: Callable[[], Any],
    total: int,
    *,
    timeout: float | None,
    progress: bool,
    poll_s: float,
    clock=time.monotonic,
    sleep=time.sleep,
    file=None,
) -> Any:
    """Poll ``status()`` until no job is queued or running; return the last status.

    Raises:
        TimeoutError: not finished within ``timeout`` seconds.
    """
    with Waiter(
        campaign_id, total, timeout=timeout, progress=progress, clock=clock, file=file
    ) as waiter:
        while True:
            st = status()
            if waiter.see(st):
                return st
            sleep(poll_s)


async def await_campaign(
    campaign_id: str,
    status: Callable[[], Awaitable[Any]],
    total: int,
    *,
    timeout: float | None,
    progress: bool,
    poll_s: float,
) -> Any:
    """``wait_for_campaign`` for an async ``status()``: the event loop runs between polls."""
    import asyncio

    with Waiter(campaign_id, total, timeout=timeout, progress=progress) as waiter:
        while True:
            st = await status()
            if waiter.see(st):
                return st
            await asyncio.sleep(poll_s)


def _bar():
    """tqdm drawing the bar, with our rate and ETA (``{stats}``) in place of its own.
    ``tqdm.auto``: a text bar in a terminal, a widget in Jupyter (where ipywidgets is there)."""
    from tqdm.auto import tqdm

    class Bar(tqdm):
        stats = ""

        @property
        def format_dict(self):
            return {**super().format_dict, "stats": self.stats}

    return Bar
