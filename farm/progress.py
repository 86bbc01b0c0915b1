"""Waiting on a campaign: one poll loop with a progress bar, for the Python API and the client."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for_campaign(
    campaign_id: str,
    status: Callable[[], dict],
    total: int,
    *,
    timeout: float | None,
    progress: bool,
    poll_s: float,
) -> dict:
    """Poll ``status()`` until no job is queued or running; return the last status.

    Raises:
        TimeoutError: not finished within ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc=f"campaign {campaign_id[:8]}")
    try:
        while True:
            st = status()
            c = st["counts"]
            finished = c["done"] + c["failed"] + c["cancelled"]
            if bar is not None:
                bar.update(finished - bar.n)
                eta = st.get("eta_s")
                bar.set_postfix(
                    failed=c["failed"], eta=f"{eta:.0f}s" if eta else "?", refresh=False
                )
            if finished >= total:
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"campaign {campaign_id}: {c} after {timeout}s")
            time.sleep(poll_s)
    finally:
        if bar is not None:
            bar.close()
