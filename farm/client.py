"""Typed HTTP client for the farm API (httpx); ``farm.async_client.AsyncClient`` is the same
surface for asyncio.

    from farm.client import Client

    # FARM_API_URL / FARM_API_TOKEN, else the running local stack's (`farm status --json`)
    with Client() as client:
        campaign = client.submit_campaign(grid={"prompts": ["a cat"], "seeds": 4})
        campaign.wait(progress=True)  # a bar in a terminal, a widget in Jupyter
        for job, image in campaign.images():  # fetched one at a time, page by page
            image.save(f"{job.seed}.png")

HTTP errors become the farm's own exceptions (farm.errors) carrying the server's message.
Statuses and jobs are pydantic models (``farm.client_models``) that still read as dicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from farm import client_common as common
from farm.client_models import CampaignStatus, JobStatus
from farm.errors import ServiceUnavailable
from farm.progress import wait_for_campaign


class Client:
    """A connection to one farm API, as one tenant (its bearer token).

    ``url`` and ``token`` default to FARM_API_URL and FARM_API_TOKEN, then to the running local
    stack's; given ones win (a URL given alone takes FARM_API_TOKEN, or the local stack's token
    when it is that stack's URL).

    Raises:
        ConfigError: no URL or token found (naming what to set).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        url, token = common.resolve(url, token)
        self.http = httpx.Client(**common.client_options(url, token, timeout), transport=transport)
        # Presigned S3 URLs: no bearer token (it is the farm's secret, not S3's).
        self.files = httpx.Client(timeout=common.IMAGE_TIMEOUT_S, transport=transport)

    @classmethod
    def from_settings(cls, settings: Any) -> Client:
        """The client of ``settings.api_url`` / ``api_token``, else the local stack's."""
        return cls(*common.resolve(None, None, settings))

    def __repr__(self) -> str:
        return f"Client({str(self.http.base_url)!r})"  # never the token

    def close(self) -> None:
        self.http.close()
        self.files.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call (httpx's arguments); its JSON, or the farm's error for its status."""
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise common.unreachable(self.http.base_url, e) from e
        return common.parse(resp)

    # -- submit -------------------------------------------------------------------------------

    def submit_campaign(
        self,
        jobs: list[dict] | None = None,
        *,
        grid: dict | None = None,
        defaults: dict | None = None,
        name: str | None = None,
        priority: str | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> CampaignHandle:
        """Submit a list of jobs or a grid. Seeds left unset are drawn server-side and recorded.
        ``priority`` (high, normal, low) orders it against your other campaigns in the queues.

        Raises:
            InvalidJob: a field breaks a rule (``.field`` names it; nothing was enqueued).
        """
        body = common.campaign_body(jobs, grid, defaults, name, priority, callback_url)
        return self.submit_body(body, idempotency_key=idempotency_key)

    def submit_body(self, body: dict, *, idempotency_key: str | None = None) -> CampaignHandle:
        """Submit a campaign object as written (``farm submit FILE``): the API checks every key."""
        headers = common.idempotency(idempotency_key)
        out = self.request("POST", "/v1/campaigns", json=body, headers=headers)
        return CampaignHandle(self, out["campaign_id"], out["job_count"], out["created"])

    def submit_job(self, spec: dict, *, idempotency_key: str | None = None) -> CampaignHandle:
        """One job, as a campaign of one."""
        headers = common.idempotency(idempotency_key)
        out = self.request("POST", "/v1/jobs", json=spec, headers=headers)
        return CampaignHandle(self, out["campaign_id"], out["job_count"], out["created"])

    def upload(self, image: Any) -> str:
        """Upload an input image (a path, bytes, a PIL image, or a 2-D NumPy mask array with 1 =
        repaint, as the guides build masks); returns its ``in:...`` reference."""
        data = common.upload_bytes(image)
        out = self.request("POST", "/v1/inputs", content=data, headers=common.UPLOAD_HEADERS)
        return out["input"]

    # -- read ---------------------------------------------------------------------------------

    def campaign(self, campaign_id: str) -> CampaignHandle:
        """A handle on one of your campaigns.

        Raises:
            NotFound: no such campaign (or another tenant's).
        """
        status = CampaignStatus.model_validate(self.request("GET", f"/v1/campaigns/{campaign_id}"))
        return CampaignHandle(self, campaign_id, status.total, False)

    def campaigns(self, limit: int = 100) -> list[CampaignStatus]:
        """Your campaigns' statuses, newest first."""
        rows = self.request("GET", "/v1/campaigns", params={"limit": limit})
        return [CampaignStatus.model_validate(r) for r in rows]

    def fleet(self) -> dict:
        """Every queue (depth, the workers serving it) and every live worker."""
        return self.request("GET", "/v1/fleet")

    def webhook_secret(self) -> str:
        """The secret this tenant's webhooks are signed with (``farm.webhooks.verify``)."""
        return self.request("GET", "/v1/webhook-secret")["secret"]

    def usage(self) -> dict:
        """What this tenant's campaigns used: images, compute seconds, estimated cost."""
        return self.request("GET", "/v1/usage")

    def ready(self) -> dict:
        """``/readyz``: whether Redis and S3 answer, and the workers per queue."""
        try:
            return self.http.get("/readyz").json()
        except httpx.TransportError as e:
            raise ServiceUnavailable(str(e)) from e


class CampaignHandle(common.HandleBase):
    """A submitted campaign, seen through the API."""

    client: Client

    def status(self) -> CampaignStatus:
        """Counts per state, images per second, ETA, times, usage."""
        return CampaignStatus.model_validate(self.client.request("GET", self._path()))

    def results(self, state: str | None = None, page_size: int = 500) -> Iterator[JobStatus]:
        """Every job (or every job in ``state``), page by page: a page is fetched when the
        previous one has been iterated."""
        cursor = None
        while True:
            params = common.jobs_params(state, page_size, cursor)
            page = self.client.request("GET", self._path("/jobs"), params=params)
            yield from (JobStatus.model_validate(j) for j in page["jobs"])
            cursor = page["next_cursor"]
            if not cursor:
                return

    def images(self, state: str = "done", page_size: int = 100) -> Iterator[tuple[JobStatus, Any]]:
        """``(job, PIL.Image)`` for every image of the campaign's ``done`` jobs, in job order (a
        job of several images yields each). Lazy: a page of jobs is listed, and each image
        fetched from S3, only when the iteration reaches it.

        Raises:
            ServiceUnavailable: S3 refused an image (a presigned URL lasts 15 minutes).
        """
        for job in self.results(state=state, page_size=page_size):
            for url in common.image_urls(job):
                yield job, common.open_image(self._image(url, job))

    def _image(self, url: str, job: JobStatus) -> bytes:
        try:
            resp = self.client.files.get(url)
        except httpx.TransportError as e:
            raise common.unreachable(f"S3 (image of job {job.job_id})", e) from e
        return common.image_bytes(resp, job)

    def stream(self, what: str = "jobs", state: str | None = None) -> Iterator[dict]:
        """``jobs`` (results) or ``manifest`` as one streamed response of JSON lines: a
        million jobs are read line by line, never held whole. Plain dicts (no model per line)."""
        path = common.stream_path(self.id, what)
        params = {"state": state} if state and what == "jobs" else {}
        with self.client.http.stream("GET", path, params=params) as resp:
            if resp.status_code >= 400:
                resp.read()
                common.parse(resp)  # raises the typed error
            yield from common.jsonl_lines(resp.iter_lines())

    def wait(
        self, timeout: float | None = None, *, progress: bool = False, poll_s: float = 0.5
    ) -> CampaignStatus:
        """Block until no job is queued or running; returns the final status. ``progress``
        draws done/total, rate and ETA (tqdm.auto: a terminal bar, or a Jupyter widget).

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
        """
        return wait_for_campaign(
            self.id, self.status, self.job_count, timeout=timeout, progress=progress, poll_s=poll_s
        )

    def download(self, folder: str | Path) -> list[Path]:
        """Fetch every done image (through its presigned URL) into ``folder``; returns the files."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for i, job in enumerate(self.results(state="done")):
            urls = common.image_urls(job)
            for n, url in enumerate(urls):
                path = common.image_path(folder, i, job, n, len(urls))
                path.write_bytes(self._image(url, job))
                files.append(path)
        return files

    def save_file(self, name: str, path: str | Path) -> Path | None:
        """Save a file the campaign's end wrote (``results.jsonl``, ``contact_sheet.png``) to
        ``path``, streamed; None while the campaign has not finished (no such file yet)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.client.http.stream("GET", self._path(f"/{name}")) as resp:
            if resp.status_code == 404:
                resp.read()
                self.status()  # an unknown campaign raises NotFound; a running one has no file
                return None
            if resp.status_code >= 400:
                resp.read()
                common.parse(resp)
            tmp = path.with_name(path.name + ".part")
            with tmp.open("wb") as out:
                for chunk in resp.iter_bytes():
                    out.write(chunk)
            tmp.replace(path)
        return path

    def download_all(self, folder: str | Path) -> dict:
        """Every done image, the results (results.jsonl) and the contact sheet into ``folder``.

        A campaign still running has no stored results or sheet yet: its results.jsonl is then
        the jobs as they stand (``stream("jobs")``, presigned URLs left out) and the sheet None.

        Returns:
            {"images": [paths], "results": path, "contact_sheet": path or None, "finished": bool}
        """
        folder = Path(folder)
        images = self.download(folder)
        saved = self.save_file("results.jsonl", folder / "results.jsonl")
        results = saved or self._jobs_so_far(folder / "results.jsonl")
        sheet = self.save_file("contact_sheet.png", folder / "contact_sheet.png")
        return common.downloaded(images, results, sheet, finished=saved is not None)

    def _jobs_so_far(self, path: Path) -> Path:
        with path.open("w", encoding="utf-8") as out:
            out.writelines(common.job_line(job) + "\n" for job in self.stream("jobs"))
        return path

    def export(self, out: str | Path, **options: Any) -> Any:
        """Write the campaign's done images and metadata as a dataset (``farm.export``:
        WebDataset shards or Parquet, resumable); ``options`` are ``export_campaign``'s."""
        from farm.export import export_campaign

        return export_campaign(self, out, **options)

    def cancel(self) -> CampaignStatus:
        """Stop the queued jobs (running ones finish); images and results stay readable."""
        return CampaignStatus.model_validate(self.client.request("POST", self._path("/cancel")))

    def retry_failed(self) -> int:
        """Re-enqueue the failed jobs; returns how many."""
        return self.client.request("POST", self._path("/retry-failed"))["requeued"]

    def resume(self) -> dict:
        """Mark jobs whose images exist done and re-enqueue the rest that are not:
        ``{"requeued": n, "present": m}``."""
        return self.client.request("POST", self._path("/resume"))
