"""The producer HTTP API: a thin FastAPI layer over farm.service.Farm.

Errors map by the status each class of the farm's error tree declares (``farm.errors``):
InvalidJob 422 (field + message), NotFound 404, Unauthorized 401, Conflict 409, and 503 when
Redis, S3, a model or the configuration cannot serve. Bad input never gives a 500.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import openapi
from api.errors import ErrorResponse, http_error, json_body
from api.gallery import gallery_router
from farm.domain.jobs import JobState, field_path
from farm.errors import Conflict, FarmError, InvalidJob, NotFound, ServiceUnavailable, Unauthorized
from farm.settings import Settings

STATUS = {InvalidJob: 422, NotFound: 404, Unauthorized: 401, Conflict: 409, ServiceUnavailable: 503}


class ErrorDetail(BaseModel):
    field: str
    message: str
    index: int | None = None


class ErrorBody(BaseModel):
    """Every error the API returns has this shape (422s list each bad field in ``detail``)."""

    error: str
    message: str
    detail: list[ErrorDetail] | None = None


# Documented on every route: the statuses any of them may return, one body shape.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown bearer token"},
    404: {"model": ErrorBody, "description": "no such campaign (for this tenant)"},
    409: {"model": ErrorBody, "description": "Idempotency-Key reused for another request"},
    422: {"model": ErrorBody, "description": "invalid input: the field and the limit"},
    429: {"model": ErrorBody, "description": "over the tenant's queued-jobs quota"},
    503: {"model": ErrorBody, "description": "Redis or S3 unreachable"},
}


class Readiness(BaseModel):
    ready: bool
    redis: bool | str
    s3: bool | str
    workers: dict[str, int] | None = None


class Submitted(BaseModel):
    campaign_id: str
    job_count: int
    created: bool


_bearer = HTTPBearer(auto_error=False)


def current_tenant(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The tenant a bearer token stands for; 401 without one."""
    tenants = request.app.state.tenants
    if creds is None or creds.credentials not in tenants:
        raise Unauthorized("missing or unknown bearer token")
    return tenants[creds.credentials]


Tenant = Annotated[str, Depends(current_tenant)]


def create_app(settings: Settings | None = None, farm=None) -> FastAPI:
    """Build the API. Settings are read here, once, when none are given (the process edge)."""
    settings = settings or Settings.load()
    tenants = settings.tenants()
    app = FastAPI(title="Kandinsky render farm", version="0.1.0", responses=ERRORS)
    state: dict[str, Any] = {"farm": farm, "ready": (0.0, None)}

    def get_farm():
        if state["farm"] is None:
            from farm.service import Farm

            state["farm"] = Farm(settings)
        return state["farm"]

    app.state.tenants = tenants

    @app.exception_handler(FarmError)
    async def _farm_error(request: Request, exc: FarmError):
        code = exc.http_status
        body: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, InvalidJob):
            body["detail"] = [exc.to_dict()]
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        return ErrorResponse(body, status_code=code, headers=headers)

    async def _unavailable(request: Request, exc: Exception):
        # A store error that escaped the service's own mapping is still an outage, not a bug.
        return ErrorResponse(
            {"error": "ServiceUnavailable", "message": f"{type(exc).__name__}: {exc}"},
            status_code=503,
        )

    import redis
    from botocore.exceptions import BotoCoreError

    app.add_exception_handler(redis.RedisError, _unavailable)
    app.add_exception_handler(BotoCoreError, _unavailable)
    # Starlette types a handler as taking any Exception; each gets the class it is registered for.
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        detail = [
            {"field": field_path(e["loc"]) or "body", "message": e["msg"]} for e in exc.errors()
        ]
        first = detail[0] if detail else {"field": "body", "message": "invalid"}
        return ErrorResponse(
            {
                "error": "InvalidJob",
                "message": f"{first['field']}: {first['message']}",
                "detail": detail,
            },
            status_code=422,
        )

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request):
        """Prometheus exposition, with no token, as Flower's and most exporters' (README,
        Metrics): farm-wide counts and queue depths, nothing of any tenant's."""
        from fastapi.responses import Response

        from farm import metrics as exported

        if "metrics" not in state:
            queues = exported.QueueCollector(lambda: get_farm().redis, settings.enabled_families)
            state["metrics"] = exported.api_registry(queues)
        body, media_type = exported.exposition(state["metrics"], request.headers.get("accept"))
        return Response(body, media_type=media_type)

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Redis or S3 not ready"}},
    )
    def readyz() -> JSONResponse:
        """Ready = Redis and S3 answer. Workers are reported, not required: a fleet may scale to
        zero, and jobs submitted meanwhile wait for it (their campaigns say so)."""
        checked_at, cached = state["ready"]
        if cached is not None and time.monotonic() - checked_at < 5:
            return cached
        checks: dict[str, Any] = {}
        farm = get_farm()
        try:
            checks["redis"] = bool(farm.redis.ping())
        except Exception as e:  # any failure means not ready; say which
            checks["redis"] = f"down: {type(e).__name__}"
        try:
            farm.objects.client.head_bucket(Bucket=farm.objects.bucket)
            checks["s3"] = True
        except Exception as e:
            checks["s3"] = f"down: {type(e).__name__}"
        if checks["redis"] is True:
            queues = farm.fleet()["queues"]
            checks["workers"] = {q["name"]: len(q["workers"]) for q in queues}
        ok = checks["redis"] is True and checks["s3"] is True
        resp = JSONResponse({"ready": ok, **checks}, status_code=200 if ok else 503)
        state["ready"] = (time.monotonic(), resp)
        return resp

    @app.get("/v1/fleet")
    def fleet_status(tenant: Tenant) -> dict:
        """Every queue (depth, the workers that serve it) and every live worker (stage, families,
        resident parts, memory)."""
        return get_farm().fleet()

    @app.get("/v1/webhook-secret")
    def webhook_secret(tenant: Tenant) -> dict:
        """The secret this tenant's webhooks are signed with (HMAC-SHA256; see the README)."""
        from farm.webhooks import tenant_secret

        secret = get_farm().settings.webhook_secret
        if secret is None:
            raise ServiceUnavailable("webhooks are not configured (FARM_WEBHOOK_SECRET)")
        return {"tenant": tenant, "secret": tenant_secret(secret.get_secret_value(), tenant)}

    @app.get("/v1/usage")
    def usage(tenant: Tenant) -> dict:
        """What the tenant's campaigns used: images, compute seconds per stage and family, and
        the estimated cost (FARM_PRICE_CPU_HOUR / FARM_PRICE_GPU_HOUR)."""
        return get_farm().usage(tenant=tenant)

    @app.get("/v1/models")
    def models(tenant: Tenant) -> dict:
        """The families this farm accepts, with their tasks, stages and limits."""
        from farm.families import get

        out = {}
        for name in settings.enabled_families:
            family = get(name)
            out[name] = {
                "title": family.title,
                "stages": list(family.stages),
                "tasks": list(family.tasks),
                "limits": vars(family.limits),
                "defaults": family.defaults,
            }
        return out

    # The bodies are read as written and checked by the farm (CampaignSpec.parse), the path the
    # client's and the CLI's submissions take: no rule of one path is missing from another.
    # Their schemas are the farm's rules (api/openapi.py).
    @app.post("/v1/campaigns", status_code=201, openapi_extra=openapi.body("Campaign"))
    async def submit_campaign(
        request: Request,
        tenant: Tenant,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Submitted:
        """A job list or a grid (prompts x seeds x parameter lists), with shared defaults."""
        body = await json_body(request)
        return await run_in_threadpool(
            get_farm().submit_campaign, body, tenant=tenant, idempotency_key=idempotency_key
        )

    @app.post("/v1/jobs", status_code=201, openapi_extra=openapi.body("Job"))
    async def submit_job(
        request: Request,
        tenant: Tenant,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Submitted:
        """One job: a campaign of one."""
        body = await json_body(request)
        if not isinstance(body, dict):
            raise InvalidJob("body", f"must be a JSON object (one job), got {type(body).__name__}")
        return await run_in_threadpool(
            get_farm().submit_campaign,
            {"jobs": [body]},
            tenant=tenant,
            idempotency_key=idempotency_key,
        )

    @app.post("/v1/inputs", status_code=201, openapi_extra=openapi.UPLOAD)
    async def upload_input(request: Request, tenant: Tenant) -> dict:
        """An input image (PNG, JPEG or WebP, raw body) for img2img, inpainting, interpolation."""
        from farm.stores.inputs import MAX_BYTES

        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_BYTES:
            raise InvalidJob("image", f"upload is {declared} bytes; at most {MAX_BYTES}")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BYTES:
                raise InvalidJob("image", f"upload exceeds {MAX_BYTES} bytes")
        return get_farm().upload_input(bytes(data), tenant=tenant)

    @app.get("/v1/campaigns")
    def list_campaigns(
        tenant: Tenant, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[dict]:
        return get_farm().list_campaigns(tenant=tenant, limit=limit)

    @app.get("/v1/campaigns/{campaign_id}")
    def campaign_status(campaign_id: str, tenant: Tenant) -> dict:
        return get_farm().status(campaign_id, tenant=tenant)

    @app.get("/v1/campaigns/{campaign_id}/jobs.jsonl")
    def campaign_jobs_stream(
        campaign_id: str, tenant: Tenant, state: JobState | None = None
    ) -> StreamingResponse:
        """Every job (or every job in one state) as JSON lines, streamed a page at a time."""
        farm = get_farm()
        farm.status(campaign_id, tenant=tenant)  # 404 before the stream starts
        lines = (
            json.dumps(job, ensure_ascii=False) + "\n"
            for job in farm.iter_jobs(campaign_id, tenant=tenant, state=state)
        )
        return StreamingResponse(lines, media_type="application/x-ndjson")

    @app.get("/v1/campaigns/{campaign_id}/manifest.jsonl")
    def campaign_manifest_stream(campaign_id: str, tenant: Tenant) -> StreamingResponse:
        """The campaign's jobs as submitted (index, job id, spec, image key), JSON lines."""
        farm = get_farm()
        farm.status(campaign_id, tenant=tenant)
        lines = (
            json.dumps(job, ensure_ascii=False) + "\n"
            for job in farm.iter_manifest(campaign_id, tenant=tenant)
        )
        return StreamingResponse(lines, media_type="application/x-ndjson")

    def _stored(campaign_id: str, tenant: str, key_of, media_type: str) -> StreamingResponse:
        """A file the campaign's end wrote to S3, streamed through the API (404 until then)."""
        farm = get_farm()
        farm.status(campaign_id, tenant=tenant)  # 404 for an unknown or another tenant's id
        key = key_of(farm.settings.s3_prefix, tenant, campaign_id)
        if farm.objects.head(key) is None:
            name = key.rsplit("/", 1)[1]
            raise NotFound(f"campaign {campaign_id} has no {name} yet: written when it finishes")
        body = farm.objects.client.get_object(Bucket=farm.objects.bucket, Key=key)["Body"]
        return StreamingResponse(body.iter_chunks(1 << 16), media_type=media_type)

    @app.get("/v1/campaigns/{campaign_id}/results.jsonl")
    def campaign_results_file(campaign_id: str, tenant: Tenant) -> StreamingResponse:
        """The finished campaign's results (every job: state, spec, seed, image keys, timings,
        error), the results.jsonl written beside its images."""
        from farm.keys import results_object

        return _stored(campaign_id, tenant, results_object, "application/x-ndjson")

    @app.get("/v1/campaigns/{campaign_id}/contact_sheet.png")
    def campaign_contact_sheet(campaign_id: str, tenant: Tenant) -> StreamingResponse:
        """The finished campaign's contact sheet: rows by prompt, columns by seed, captioned."""
        from farm.keys import contact_sheet_object

        return _stored(campaign_id, tenant, contact_sheet_object, "image/png")

    @app.get("/v1/campaigns/{campaign_id}/jobs")
    def campaign_jobs(
        campaign_id: str,
        tenant: Tenant,
        state: JobState | None = None,
        cursor: Annotated[str | None, Query(max_length=24, pattern=openapi.CURSOR)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict:
        items, nxt = get_farm().jobs_page(
            campaign_id, tenant=tenant, state=state, cursor=cursor, limit=limit
        )
        return {"jobs": items, "next_cursor": nxt}

    @app.post("/v1/campaigns/{campaign_id}/cancel")
    def cancel(campaign_id: str, tenant: Tenant) -> dict:
        """Stop the campaign's queued jobs; a render under way finishes. The campaign, its
        finished images and results stay readable (``resume`` runs the rest). A POST verb, as
        OpenAI's and Replicate's cancels: DELETE would promise the campaign is gone."""
        return get_farm().cancel(campaign_id, tenant=tenant)

    @app.post("/v1/campaigns/{campaign_id}/retry-failed")
    def retry_failed(campaign_id: str, tenant: Tenant) -> dict:
        return {"requeued": get_farm().retry_failed(campaign_id, tenant=tenant)}

    @app.post("/v1/campaigns/{campaign_id}/resume")
    def resume(campaign_id: str, tenant: Tenant) -> dict:
        return get_farm().resume(campaign_id, tenant=tenant)

    app.include_router(gallery_router(get_farm))  # the campaign gallery page (api/gallery.py)
    openapi.install(app, settings.enabled_families)
    return app
