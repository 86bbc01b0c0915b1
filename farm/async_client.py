"""The farm API client for asyncio, on ``httpx.AsyncClient``: ``farm.client.Client``'s surface,
each call awaited and each iterator an async one.

    from farm.async_client import AsyncClient

    async with AsyncClient() as client:  # FARM_API_URL / FARM_API_TOKEN, else the local stack
        campaign = await client.submit_campaign(grid={"prompts": ["a cat"], "seeds": 4})
        await campaign.wait(progress=True)
        async for job, image in campaign.images():
            image.save(f"{job.seed}.png")

Requests, errors and the result models are ``farm.client_common`` and ``farm.client_models``,
shared with the sync client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from farm import client_common as common
from farm.client_models import CampaignStatus, JobStatus
from farm.errors import ServiceUnavailable
from farm.progress import await_campaign


class AsyncClient:
    """A connection to one farm API, as one tenant, for asyncio. URL and token as ``Client``'s:
    given, else FARM_API_URL / FARM_API_TOKEN, else the running local stack's.

    Raises:
        ConfigError: no URL or token found (naming what to set).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        url, token = common.resolve(url, token)
        self._where = (url, token, timeout)  # for export, which runs a sync client in a thread
        self.http = httpx.AsyncClient(
            **common.client_options(url, token, timeout), transport=transport
        )
        # Presigned S3 URLs: no bearer token (it is the farm's secret, not S3's).
        self.files = httpx.AsyncClient(timeout=common.IMAGE_TIMEOUT_S, transport=transport)

    @classmethod
    def from_settings(cls, settings: Any) -> AsyncClient:
        """The client of ``settings.api_url`` / ``api_token``, else the local stack's."""
        return cls(*common.resolve(None, None, settings))

    def __repr__(self) -> str:
        return f"AsyncClient({str(self.http.base_url)!r})"  # never the token

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.files.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call (httpx's arguments); its JSON, or the farm's error for its status."""
        try:
            resp = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise common.unreachable(self.http.base_url, e) from e
        return common.parse(resp)

    async def submit_campaign(
        self,
        jobs: list[dict] | None = None,
        *,
        grid: dict | None = None,
        defaults: dict | None = None,
        name: str | None = None,
        priority: str | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncCampaignHandle:
        """``Client.submit_campaign``, awaited."""
        body = common.campaign_body(jobs, grid, defaults, name, priority, callback_url)
        return await self.submit_body(body, idempotency_key=idempotency_key)

    async def submit_body(
        self, body: dict, *, idempotency_key: str | None = None
    ) -> AsyncCampaignHandle:
        """A campaign object as written: the API checks every key."""
        headers = common.idempotency(idempotency_key)
        out = await self.request("POST", "/v1/campaigns", json=body, headers=headers)
        return AsyncCampaignHandle(self, out["campaign_id"], out["job_count"], out["created"])

    async def submit_job(
        self, spec: dict, *, idempotency_key: str | None = None
    ) -> AsyncCampaignHandle:
        """One job, as a campaign of one."""
        headers = common.idempotency(idempotency_key)
        out = await self.request("POST", "/v1/jobs", json=spec, headers=headers)
        return AsyncCampaignHandle(self, out["campaign_id"], out["job_count"], out["created"])

    async def upload(self, image: Any) -> str:
        """``Client.upload``, awaited: returns the ``in:...`` reference."""
        data = common.upload_bytes(image)
        out = await self.request("POST", "/v1/inputs", content=data, headers=common.UPLOAD_HEADERS)
        return out["input"]

    async def campaign(self, campaign_id: str) -> AsyncCampaignHandle:
        """A handle on one of your campaigns (NotFound if there is none)."""
        got = await self.request("GET", f"/v1/campaigns/{campaign_id}")
        status = CampaignStatus.model_validate(got)
        return AsyncCampaignHandle(self, campaign_id, status.total, False)

    async def campaigns(self, limit: int = 100) -> list[CampaignStatus]:
        """Your campaigns' statuses, newest first."""
        rows = await self.request("GET", "/v1/campaigns", params={"limit": limit})
        return [CampaignStatus.model_validate(r) for r in rows]

    async def fleet(self) -> dict:
        """Every queue (depth, the workers serving it) and every live worker."""
        return await self.request("GET", "/v1/fleet")

    async def webhook_secret(self) -> str:
        """The secret this tenant's webhooks are signed with."""
        return (await self.request("GET", "/v1/webhook-secret"))["secret"]

    async def usage(self) -> dict:
        """What this tenant's campaigns used: images, compute seconds, estimated cost."""
        return await self.request("GET", "/v1/usage")

    async def ready(self) -> dict:
        """``/readyz``: whether Redis and S3 answer, and the workers per queue."""
        try:
            return (await self.http.get("/readyz")).json()
        except httpx.TransportError as e:
            raise ServiceUnavailable(str(e)) from e


class AsyncCampaignHandle(common.HandleBase):
    """A submitted campaign, for asyncio: ``CampaignHandle``'s methods, awaited."""

    client: AsyncClient

    async def status(self) -> CampaignStatus:
        """Counts per state, images per second, ETA, times, usage."""
        return CampaignStatus.model_validate(await self.client.request("GET", self._path()))

    async def results(
        self, state: str | None = None, page_size: int = 500
    ) -> AsyncIterator[JobStatus]:
        """Every job (or every job in ``state``), a page fetched as the iteration reaches it."""
        cursor = None
        while True:
            params = common.jobs_params(state, page_size, cursor)
            page = await self.client.request("GET", self._path("/jobs"), params=params)
            for job in page["jobs"]:
                yield JobStatus.model_validate(job)
            cursor = page["next_cursor"]
            if not cursor:
                return

    async def images(
        self, state: str = "done", page_size: int = 100
    ) -> AsyncIterator[tuple[JobStatus, Any]]:
        """``(job, PIL.Image)`` for every image of the done jobs, each fetched when reached."""
        async for job in self.results(state=state, page_size=page_size):
            for url in common.image_urls(job):
                yield job, common.open_image(await self._image(url, job))

    async def _image(self, url: str, job: JobStatus) -> bytes:
        try:
            resp = await self.client.files.get(url)
        except httpx.TransportError as e:
            raise common.unreachable(f"S3 (image of job {job.job_id})", e) from e
        return common.image_bytes(resp, job)

    async def stream(self, what: str = "jobs", state: str | None = None) -> AsyncIterator[dict]:
        """``jobs`` or ``manifest`` as streamed JSON lines, plain dicts, read line by line."""
        path = common.stream_path(self.id, what)
        params = {"state": state} if state and what == "jobs" else {}
        async with self.client.http.stream("GET", path, params=params) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                common.parse(resp)  # raises the typed error
            async for line in resp.aiter_lines():
                if line:
                    yield json.loads(line)

    async def wait(
        self, timeout: float | None = None, *, progress: bool = False, poll_s: float = 0.5
    ) -> CampaignStatus:
        """Until no job is queued or running (other tasks run between polls); the final status.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
        """
        return await await_campaign(
            self.id, self.status, self.job_count, timeout=timeout, progress=progress, poll_s=poll_s
        )

    async def download(self, folder: str | Path) -> list[Path]:
        """Every done image into ``folder``; returns the files."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        i = 0
        async for job in self.results(state="done"):
            urls = common.image_urls(job)
            for n, url in enumerate(urls):
                path = common.image_path(folder, i, job, n, len(urls))
                path.write_bytes(await self._image(url, job))
                files.append(path)
            i += 1
        return files

    async def save_file(self, name: str, path: str | Path) -> Path | None:
        """``results.jsonl`` or ``contact_sheet.png`` to ``path``; None until the end wrote it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        async with self.client.http.stream("GET", self._path(f"/{name}")) as resp:
            if resp.status_code == 404:
                await resp.aread()
                await self.status()  # an unknown campaign raises NotFound
                return None
            if resp.status_code >= 400:
                await resp.aread()
                common.parse(resp)
            tmp = path.with_name(path.name + ".part")
            with tmp.open("wb") as out:
                async for chunk in resp.aiter_bytes():
                    out.write(chunk)
            tmp.replace(path)
        return path

    async def download_all(self, folder: str | Path) -> dict:
        """``CampaignHandle.download_all``: images, results.jsonl, contact sheet."""
        folder = Path(folder)
        images = await self.download(folder)
        saved = await self.save_file("results.jsonl", folder / "results.jsonl")
        results = saved or await self._jobs_so_far(folder / "results.jsonl")
        sheet = await self.save_file("contact_sheet.png", folder / "contact_sheet.png")
        return common.downloaded(images, results, sheet, finished=saved is not None)

    async def _jobs_so_far(self, path: Path) -> Path:
        with path.open("w", encoding="utf-8") as out:
            async for job in self.stream("jobs"):
                out.write(common.job_line(job) + "\n")
        return path

    async def export(self, out: str | Path, **options: Any) -> Any:
        """``CampaignHandle.export`` in a worker thread (its fetches are a thread pool already)."""
        import asyncio

        from farm.client import CampaignHandle, Client

        def run() -> Any:
            url, token, timeout = self.client._where
            with Client(url, token, timeout=timeout) as client:
                handle = CampaignHandle(client, self.id, self.job_count, self.created)
                return handle.export(out, **options)

        return await asyncio.to_thread(run)

    async def cancel(self) -> CampaignStatus:
        """Stop the queued jobs (running ones finish); images and results stay readable."""
        got = await self.client.request("POST", self._path("/cancel"))
        return CampaignStatus.model_validate(got)

    async def retry_failed(self) -> int:
        """Re-enqueue the failed jobs; returns how many."""
        return (await self.client.request("POST", self._path("/retry-failed")))["requeued"]

    async def resume(self) -> dict:
        """``{"requeued": n, "present": m}``: missing images re-enqueued."""
        return await self.client.request("POST", self._path("/resume"))
