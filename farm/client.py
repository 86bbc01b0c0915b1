"""Typed HTTP client for the farm API (httpx).

    from farm.client import Client
    from farm.settings import Settings

    # FARM_API_URL / FARM_API_TOKEN, or the running local stack's (`farm status --json`)
    client = Client.from_settings(Settings.load())
    campaign = client.submit_campaign(grid={"prompts": ["a cat"], "seeds": 4})
    campaign.wait(progress=True)
    campaign.download_all("out/")  # images, results.jsonl, contact_sheet.png

HTTP errors become the farm's own exceptions (farm.errors) carrying the server's message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from farm.errors import (
    Conflict,
    FarmError,
    InputNotFound,
    InvalidJob,
    NotFound,
    QuotaExceeded,
    ServiceUnavailable,
    Unauthorized,
)
from farm.progress import wait_for_campaign

ERRORS = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    429: QuotaExceeded,
    503: ServiceUnavailable,
}


class Client:
    """A connection to one farm API, as one tenant (its bearer token)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings) -> Client:
        settings = settings.with_stack()
        if not settings.api_url or not settings.api_token:
            from farm.errors import ConfigError

            raise ConfigError(
                "FARM_API_URL / FARM_API_TOKEN not set and no local stack is running: run `farm up`"
            )
        return cls(settings.api_url, settings.api_token.get_secret_value())

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ServiceUnavailable(
                f"farm API at {self.http.base_url} unreachable ({e or type(e).__name__}): "
                "`farm up` starts the local one; FARM_API_URL names another"
            ) from e
        if resp.status_code < 400:
            return resp.json()
        try:
            body = resp.json()
        except ValueError:
            body = {"message": resp.text}
        message = body.get("message") or str(body)
        if resp.status_code == 422 or body.get("error") == "InputNotFound":
            first = (body.get("detail") or [{}])[0]
            cls = InputNotFound if resp.status_code == 404 else InvalidJob
            raise cls(
                first.get("field") or "request",
                first.get("message") or message,
                index=first.get("index"),
            )
        raise ERRORS.get(resp.status_code, FarmError)(message)

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
        ``priority`` (high, normal, low) orders it against your other campaigns in the queues."""
        body: dict[str, Any] = {"defaults": defaults or {}}
        if name:
            body["name"] = name
        if priority:
            body["priority"] = priority
        if callback_url:
            body["callback_url"] = callback_url
        if jobs is not None:
            body["jobs"] = jobs
        if grid is not None:
            body["grid"] = grid
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        out = self.request("POST", "/v1/campaigns", json=body, headers=headers)
        return CampaignHandle(self, out["campaign_id"], out["job_count"], out["created"])

    def submit_job(self, spec: dict, *, idempotency_key: str | None = None) -> CampaignHandle:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        out = self.request("POST", "/v1/jobs", json=spec, headers=headers)
        return CampaignHandle(self, out["campaign_id"], out["job_count"], out["created"])

    def upload(self, image) -> str:
        """Upload an input image (a path, bytes, a PIL image, or a 2-D NumPy mask array with 1 =
        repaint, as the guides build masks); returns its ``in:...`` reference."""
        if hasattr(image, "ndim") and hasattr(image, "dtype"):
            import io

            import numpy as np

            buf = io.BytesIO()
            np.save(buf, image, allow_pickle=False)
            data = buf.getvalue()
        elif hasattr(image, "save"):
            import io

            buf = io.BytesIO()
            image.save(buf, format="PNG")
            data = buf.getvalue()
        elif isinstance(image, bytes | bytearray):
            data = bytes(image)
        else:
            data = Path(image).read_bytes()
        out = self.request(
            "POST", "/v1/inputs", content=data, headers={"Content-Type": "application/octet-stream"}
        )
        return out["input"]

    def campaign(self, campaign_id: str) -> CampaignHandle:
        status = self.request("GET", f"/v1/campaigns/{campaign_id}")
        return CampaignHandle(self, campaign_id, status["total"], False)

    def fleet(self) -> dict:
        """Every queue (depth, the workers serving it) and every live worker."""
        return self.request("GET", "/v1/fleet")

    def webhook_secret(self) -> str:
        """The secret this tenant's webhooks are signed with (``farm.webhooks.verify``)."""
        return self.request("GET", "/v1/webhook-secret")["secret"]

    def usage(self) -> dict:
        """What this tenant's campaigns used: images, compute seconds, estimated cost."""
        return self.request("GET", "/v1/usage")

    def campaigns(self, limit: int = 100) -> list[dict]:
        return self.request("GET", "/v1/campaigns", params={"limit": limit})

    def ready(self) -> dict:
        try:
            return self.http.get("/readyz").json()
        except httpx.TransportError as e:
            raise ServiceUnavailable(str(e)) from e


class CampaignHandle:
    """A submitted campaign, seen through the API."""

    def __init__(self, client: Client, campaign_id: str, job_count: int, created: bool):
        self.client = client
        self.id = campaign_id
        self.job_count = job_count
        self.created = created

    def __repr__(self) -> str:
        return f"CampaignHandle({self.id!r}, jobs={self.job_count})"

    def status(self) -> dict:
        return self.client.request("GET", f"/v1/campaigns/{self.id}")

    def results(self, state: str | None = None, page_size: int = 500) -> Iterator[dict]:
        """Every job (or every job in ``state``), page by page."""
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if state:
                params["state"] = state
            if cursor:
                params["cursor"] = cursor
            page = self.client.request("GET", f"/v1/campaigns/{self.id}/jobs", params=params)
            yield from page["jobs"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def stream(self, what: str = "jobs", state: str | None = None) -> Iterator[dict]:
        """``jobs`` (results) or ``manifest`` as one streamed response of JSON lines: a
        million jobs are read line by line, never held whole."""
        import json

        params = {"state": state} if state and what == "jobs" else {}
        path = f"/v1/campaigns/{self.id}/{what}.jsonl"
        with self.client.http.stream("GET", path, params=params) as resp:
            if resp.status_code >= 400:
                resp.read()
                self.client.request("GET", f"/v1/campaigns/{self.id}")  # raises the typed error
                resp.raise_for_status()
            for line in resp.iter_lines():
                if line:
                    yield json.loads(line)

    def wait(
        self, timeout: float | None = None, *, progress: bool = False, poll_s: float = 0.5
    ) -> dict:
        """Block until no job is queued or running; returns the final status.

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
        with httpx.Client(timeout=60) as http:
            for i, job in enumerate(self.results(state="done")):
                urls = job.get("urls") or [job["url"]]
                for n, url in enumerate(urls):
                    suffix = f"-{n}" if len(urls) > 1 else ""
                    path = folder / f"{i:05d}-seed{job['seed']}-{job['job_id'][:8]}{suffix}.png"
                    resp = http.get(url)
                    resp.raise_for_status()
                    path.write_bytes(resp.content)
                    files.append(path)
        return files

    def save_file(self, name: str, path: str | Path) -> Path | None:
        """Save a file the campaign's end wrote (``results.jsonl``, ``contact_sheet.png``) to
        ``path``, streamed; None while the campaign has not finished (no such file yet)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.client.http.stream("GET", f"/v1/campaigns/{self.id}/{name}") as resp:
            if resp.status_code == 404:
                resp.read()
                self.status()  # an unknown campaign raises NotFound; a running one has no file
                return None
            if resp.status_code >= 400:
                resp.read()
                self.client.request("GET", f"/v1/campaigns/{self.id}/{name}")  # typed error
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
        import json

        folder = Path(folder)
        images = self.download(folder)
        results = self.save_file("results.jsonl", folder / "results.jsonl")
        finished = results is not None
        if results is None:
            results = folder / "results.jsonl"
            with results.open("w", encoding="utf-8") as out:
                for job in self.stream("jobs"):
                    job = {k: v for k, v in job.items() if k not in ("url", "urls")}
                    out.write(json.dumps(job, ensure_ascii=False) + "\n")
        sheet = self.save_file("contact_sheet.png", folder / "contact_sheet.png")
        return {"images": images, "results": results, "contact_sheet": sheet, "finished": finished}

    def cancel(self) -> dict:
        return self.client.request("POST", f"/v1/campaigns/{self.id}/cancel")

    def retry_failed(self) -> int:
        return self.client.request("POST", f"/v1/campaigns/{self.id}/retry-failed")["requeued"]

    def resume(self) -> dict:
        return self.client.request("POST", f"/v1/campaigns/{self.id}/resume")
