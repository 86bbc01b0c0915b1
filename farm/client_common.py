"""What the sync and async clients share: where the API is, how a request is built, and how a
response becomes a value or one of the farm's errors. Pure functions, no IO but reading the
settings, so ``Client`` and ``AsyncClient`` differ only in how they send."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from farm.errors import (
    ConfigError,
    Conflict,
    FarmError,
    InputNotFound,
    InvalidJob,
    NotFound,
    QuotaExceeded,
    ServiceUnavailable,
    Unauthorized,
)

ERRORS: dict[int, type[FarmError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    429: QuotaExceeded,
    503: ServiceUnavailable,
}
NO_API = (
    "no farm API to talk to: FARM_API_URL / FARM_API_TOKEN not set and no local stack is "
    "running: run `farm up`, or set both (or pass url= and token=)"
)
IMAGE_TIMEOUT_S = 60.0


def resolve(url: str | None, token: str | None, settings: Any = None) -> tuple[str, str]:
    """The API's URL and token: the arguments, else FARM_API_URL / FARM_API_TOKEN, else the
    running local stack's (``farm status --json``), as httpx reads its proxy from the env.

    Raises:
        ConfigError: no URL or no token found, naming what to set.
    """
    if url and token:
        return url, token
    if settings is None:
        from farm.settings import Settings

        settings = Settings.load()
    if url:
        # Only a token meant for this URL: the local stack's token never goes to another host.
        secret = settings.api_token
        if secret is None:
            stack = settings.with_stack()
            if (stack.api_url or "").rstrip("/") == url.rstrip("/"):
                secret = stack.api_token
        if secret is None:
            raise ConfigError(f"no API token for {url}: set FARM_API_TOKEN or pass token=")
        return url, secret.get_secret_value()
    settings = settings.with_stack()
    if not settings.api_url or not (token or settings.api_token):
        raise ConfigError(NO_API)
    return settings.api_url, token or settings.api_token.get_secret_value()


def client_options(url: str, token: str, timeout: float) -> dict[str, Any]:
    """The keyword arguments of the API's httpx client (sync or async)."""
    return {
        "base_url": url.rstrip("/"),
        "headers": {"Authorization": f"Bearer {token}"},
        "timeout": timeout,
    }


def unreachable(base_url: Any, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"farm API at {base_url} unreachable ({exc or type(exc).__name__}): "
        "`farm up` starts the local one; FARM_API_URL names another"
    )


def parse(resp: httpx.Response) -> Any:
    """The response's JSON; an error status becomes the farm's own exception, with the
    server's message (the body must have been read)."""
    if resp.status_code < 400:
        return resp.json()
    try:
        body = resp.json()
    except ValueError:
        body = {"message": resp.text}
    if not isinstance(body, dict):
        body = {"message": str(body)}
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


def idempotency(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key else {}


def campaign_body(
    jobs: list[dict] | None,
    grid: dict | None,
    defaults: dict | None,
    name: str | None,
    priority: str | None,
    callback_url: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"defaults": defaults or {}}
    optional = {"name": name, "priority": priority, "callback_url": callback_url}
    body.update({k: v for k, v in optional.items() if v})
    if jobs is not None:
        body["jobs"] = jobs
    if grid is not None:
        body["grid"] = grid
    return body


def upload_bytes(image: Any) -> bytes:
    """A path, bytes, a PIL image (as PNG) or a 2-D NumPy mask (as .npy, no pickle)."""
    buf = io.BytesIO()
    if hasattr(image, "ndim") and hasattr(image, "dtype"):
        import numpy as np

        np.save(buf, image, allow_pickle=False)
        return buf.getvalue()
    if hasattr(image, "save"):
        image.save(buf, format="PNG")
        return buf.getvalue()
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    return Path(image).read_bytes()


UPLOAD_HEADERS = {"Content-Type": "application/octet-stream"}


def jobs_params(state: str | None, page_size: int, cursor: str | None) -> dict[str, Any]:
    if not 1 <= page_size <= 1000:
        raise InvalidJob("page_size", f"must be between 1 and 1000 (got {page_size})")
    params: dict[str, Any] = {"limit": page_size}
    if state:
        params["state"] = state
    if cursor:
        params["cursor"] = cursor
    return params


def stream_path(campaign_id: str, what: str) -> str:
    if what not in ("jobs", "manifest"):
        raise InvalidJob("what", f"must be 'jobs' or 'manifest' (got {what!r})")
    return f"/v1/campaigns/{campaign_id}/{what}.jsonl"


def image_urls(job: Any) -> list[str]:
    """A job's image URLs: one per image it made (``num_images_per_prompt``)."""
    return list(job.get("urls") or ([job["url"]] if job.get("url") else []))


def image_path(folder: Path, index: int, job: Any, n: int, count: int) -> Path:
    """``00003-seed42-1a2b3c4d.png`` (``-1`` etc. after it for a job's further images)."""
    suffix = f"-{n}" if count > 1 else ""
    return folder / f"{index:05d}-seed{job['seed']}-{job['job_id'][:8]}{suffix}.png"


def image_bytes(resp: httpx.Response, job: Any) -> bytes:
    """The image body of a presigned GET, or an error naming the job and what to do."""
    if resp.status_code == 200:
        return resp.content
    hint = (
        "its presigned URL expired (they last 15 minutes): iterate again for fresh ones"
        if resp.status_code == 403
        else "the object is gone from S3: `farm resume` renders it again"
        if resp.status_code == 404
        else "S3 failed: try again"
    )
    error = NotFound if resp.status_code == 404 else ServiceUnavailable
    raise error(f"image of job {job['job_id']}: HTTP {resp.status_code} from S3; {hint}")


def open_image(data: bytes) -> Any:
    """A PIL image, decoded now (a broken file fails here, not at first use)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def jsonl_lines(lines: Iterable[str]) -> Iterable[dict]:
    return (json.loads(line) for line in lines if line)


def job_line(job: dict) -> str:
    """A job for a running campaign's results.jsonl: presigned URLs left out (they expire)."""
    return json.dumps(
        {k: v for k, v in job.items() if k not in ("url", "urls")}, ensure_ascii=False
    )


def downloaded(images: list[Path], results: Path, sheet: Path | None, finished: bool) -> dict:
    return {"images": images, "results": results, "contact_sheet": sheet, "finished": finished}


class HandleBase:
    """What a campaign handle is, sync or async: its client, id, job count, and whether this
    submission created it (False: an Idempotency-Key's earlier campaign)."""

    def __init__(self, client: Any, campaign_id: str, job_count: int, created: bool):
        self.client = client
        self.id = campaign_id
        self.job_count = job_count
        self.created = created

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, jobs={self.job_count})"

    def _path(self, tail: str = "") -> str:
        return f"/v1/campaigns/{self.id}{tail}"
