"""Bounded parallel GETs of presigned image URLs, handed back in the order they were asked for.

A thread pool does the GETs; at most ``window`` are in flight or waiting to be written, so an
export holds a few dozen images at a time whatever the campaign's size, and writes them in job
order (the order that makes a shard's contents, and so a resumed export, deterministic).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from farm.errors import ServiceUnavailable

T = TypeVar("T")

Fetch = Callable[[str], bytes]


class MissingObject(Exception):
    """The image's object is gone from S3 (404): the job is skipped, not the export."""


class HttpFetcher:
    """GET a presigned URL with a shared connection pool; retries transient failures."""

    def __init__(
        self,
        concurrency: int,
        *,
        timeout: float = 60.0,
        attempts: int = 4,
        transport: httpx.BaseTransport | None = None,
    ):
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.http = httpx.Client(timeout=timeout, limits=limits, transport=transport)
        self.attempts = attempts

    def close(self) -> None:
        self.http.close()

    def __call__(self, url: str) -> bytes:
        last: str = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(min(0.1 * 2**attempt, 5.0))
            try:
                resp = self.http.get(url)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if resp.status_code == 200:
                return resp.content
            if resp.status_code == 404:
                raise MissingObject(_object_name(url))
            if resp.status_code == 403:
                # Presigned URLs last 15 minutes from when the API listed the job; an export
                # stalled longer than that holds stale ones. Its finished shards are kept.
                raise ServiceUnavailable(
                    f"S3 refused {_object_name(url)} (403: presigned URL expired or not valid "
                    "for this S3): rerun the same export to resume from its last finished shard"
                )
            last = f"HTTP {resp.status_code}"
            if resp.status_code < 500 and resp.status_code != 429:
                break
        raise ServiceUnavailable(
            f"cannot fetch {_object_name(url)} from S3 ({last}) after {self.attempts} tries: "
            "rerun the same export to resume from its last finished shard"
        )


def _object_name(url: str) -> str:
    """The object's path in a presigned URL, without its signature (never logged)."""
    return httpx.URL(url).path


def ordered(
    items: Iterable[T],
    urls_of: Callable[[T], list[str]],
    fetch: Fetch,
    *,
    concurrency: int,
    window: int,
) -> Generator[tuple[T, list[bytes | MissingObject]], None, None]:
    """Each item with the bodies of its URLs (or the MissingObject each raised), in order.

    At most ``window`` URLs are fetched or held ahead of the item being yielded.
    """
    pending: deque[tuple[T, list[Future[Any]]]] = deque()
    in_flight = 0
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="export-get") as pool:
        try:
            for item in items:
                futures = [pool.submit(_guarded, fetch, url) for url in urls_of(item)]
                pending.append((item, futures))
                in_flight += len(futures)
                while pending and (in_flight >= window or not pending[0][1]):
                    head, done = pending.popleft()
                    in_flight -= len(done)
                    yield head, [f.result() for f in done]
            while pending:
                head, done = pending.popleft()
                yield head, [f.result() for f in done]
        finally:
            for _, futures in pending:
                for f in futures:
                    f.cancel()


def _guarded(fetch: Fetch, url: str) -> bytes | MissingObject:
    try:
        return fetch(url)
    except MissingObject as e:
        return e
