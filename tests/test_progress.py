"""The progress bar: done/total, rate and ETA from one clock, consistent with each other."""

from __future__ import annotations

import io

import pytest

from farm.progress import Rate, clock_text, wait_for_campaign


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_rate_and_eta_come_from_the_same_samples():
    clock = FakeClock()
    r = Rate(100, window_s=10, clock=clock)
    r.add(0)
    assert r.rate is None and r.eta is None  # one sample: unknown, not a guess
    for _ in range(20):
        clock.sleep(1)
        r.add(r.done + 2)  # 2 images a second
    assert r.rate == pytest.approx(2.0)
    assert r.eta == pytest.approx((100 - 40) / r.rate)
    # It slows down: the window forgets the old pace, and the ETA follows the same rate.
    for _ in range(10):
        clock.sleep(1)
        r.add(r.done + 1)
    assert r.rate == pytest.approx(1.0)
    assert r.eta == pytest.approx((100 - r.done) / r.rate)
    assert r.summary() == "1.00 img/s, ETA 0:50, elapsed 0:30"


def test_eta_is_zero_when_done_and_unknown_when_stalled():
    clock = FakeClock()
    r = Rate(4, window_s=5, clock=clock)
    r.add(0)
    clock.sleep(6)
    r.add(0)
    assert r.rate is None and r.summary().startswith("? img/s, ETA ?")  # nothing done yet
    clock.sleep(1)
    r.add(1)
    assert r.rate == pytest.approx(1 / 7)
    clock.sleep(6)
    r.add(1)  # stalled for a whole window
    assert r.rate == 0 and r.eta is None
    assert "0.00 img/s, ETA ?" in r.summary()
    clock.sleep(1)
    r.add(4)
    assert r.eta == 0.0


def test_clock_text():
    assert clock_text(7) == "0:07" and clock_text(65) == "1:05" and clock_text(3725) == "1:02:05"


def test_wait_shows_consistent_progress_and_returns_the_last_status():
    clock = FakeClock()
    done = iter([0, 2, 4, 6, 8, 10])

    def status():
        n = next(done)
        return {"counts": {"done": n, "failed": 0, "cancelled": 0}, "eta_s": 999}

    out = io.StringIO()
    st = wait_for_campaign(
        "c" * 32, status, 10, timeout=None, progress=True, poll_s=1.0,
        clock=clock, sleep=clock.sleep, file=out,
    )  # fmt: skip
    assert st["counts"]["done"] == 10
    text = out.getvalue()
    assert "6/10 [2.00 img/s, ETA 0:02, elapsed 0:03]" in text  # 4 left at 2/s: 2 s
    assert "999" not in text  # the server's own ETA is not mixed in
    assert "10/10 [2.00 img/s, ETA 0:00, elapsed 0:05]" in text


def test_wait_times_out_on_the_same_clock():
    clock = FakeClock()

    def status():
        return {"counts": {"done": 1, "failed": 0, "cancelled": 0}}

    with pytest.raises(TimeoutError, match="after 5"):
        wait_for_campaign(
            "c" * 32, status, 3, timeout=5, progress=False, poll_s=1.0,
            clock=clock, sleep=clock.sleep,
        )  # fmt: skip
    assert 1005 <= clock.now <= 1007
