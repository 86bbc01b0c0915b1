"""A campaign's gallery in the browser: thumbnails, prompts, seeds and parameters, live while the
campaign renders. Mounted on the API by ``gallery_router(get_farm)``.

Signing in. A browser cannot send the API's bearer header when it follows a link, and the token
must never travel in a URL. So ``POST /v1/campaigns/{id}/gallery-link`` (bearer) returns a
sign-in link, ``/v1/campaigns/{id}/gallery?exp=...&sig=...``, valid ``LINK_TTL_S`` and for that
campaign only (``farm gallery ID`` prints it). Opening it sets an HttpOnly, SameSite=Strict
session cookie scoped to that campaign's gallery, and the page drops the signature from the
address bar. Both are HMAC-SHA256 signatures under a key derived from the tenant's own API token:
nothing new to configure, and removing a token from FARM_API_TOKENS ends its links and sessions.
The cookie opens the gallery's read-only routes and nothing else: it never authorizes the API
(a cookie on DELETE would be a CSRF hole). A bearer header works on every gallery route too.

Images. Full images and thumbnails are served by the API, behind the same sign-in, streamed from
S3: the store (an internal SeaweedFS, MinIO, ...) is often not reachable from a user's browser,
and presigned URLs would hand out the bucket's host. Thumbnails are resized on the server (WebP,
``THUMB_SIDE`` px at most: sharp in a ~250 px cell on a 2x display) and kept in a small LRU;
an image already that small is sent as it is. A done job's image never changes (deterministic
keys; a rerun writes the same bytes), so browsers may cache them for good.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated

from botocore.exceptions import ClientError
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import gallery_page as page
from farm.domain.jobs import JobState, is_id
from farm.domain.manifest import JobIds
from farm.errors import NotFound, ServiceUnavailable, Unauthorized

LINK_TTL_S = 15 * 60  # a sign-in link: long enough to click, short if it leaks
SESSION_TTL_S = 12 * 3600  # the cookie it becomes: a working day
COOKIE = "farm_gallery"
THUMB_SIDE = 512
THUMB_CACHE_BYTES = 64 * 2**20
IMMUTABLE = "private, max-age=31536000, immutable"
_scheme = HTTPBearer(auto_error=False)


# -- signing -----------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(token: str, purpose: str, tenant: str, campaign_id: str, exp: int) -> str:
    """The signature of a link or session for one campaign, under a key derived from ``token``
    (never the token itself: a signature reveals nothing usable against the API)."""
    key = hmac.new(token.encode(), b"farm-gallery-v1", hashlib.sha256).digest()
    msg = f"{purpose}\n{tenant}\n{campaign_id}\n{exp}".encode()
    return _b64(hmac.new(key, msg, hashlib.sha256).digest())


def verify(
    tokens: dict[str, str], purpose: str, tenant: str, campaign_id: str, exp: int, sig: str
) -> bool:
    """Whether ``sig`` was made by one of ``tenant``'s current tokens and has not expired."""
    if exp < time.time():
        return False
    mine = [tok for tok, who in tokens.items() if who == tenant]
    given = sig.encode("utf-8", "replace")  # bytes: compare_digest refuses non-ASCII text
    return any(
        hmac.compare_digest(sign(tok, purpose, tenant, campaign_id, exp).encode(), given)
        for tok in mine
    )


def make_link(token: str, tenant: str, campaign_id: str, now: float | None = None) -> str:
    exp = int((now or time.time()) + LINK_TTL_S)
    sig = sign(token, "link", tenant, campaign_id, exp)
    return f"/v1/campaigns/{campaign_id}/gallery?exp={exp}&sig={sig}"


def make_session(tokens: dict[str, str], tenant: str, campaign_id: str) -> str:
    """A session cookie value: tenant, expiry and signature (by the tenant's first token)."""
    token = next(tok for tok, who in tokens.items() if who == tenant)
    exp = int(time.time() + SESSION_TTL_S)
    return f"{_b64(tenant.encode())}.{exp}.{sign(token, 'session', tenant, campaign_id, exp)}"


def session_tenant(tokens: dict[str, str], cookie: str, campaign_id: str) -> str | None:
    """The tenant a session cookie stands for on this campaign, or None."""
    try:
        who, exp, sig = cookie.split(".")
        tenant = _unb64(who).decode()
        expires = int(exp)
    except ValueError:  # also binascii.Error and UnicodeDecodeError
        return None
    return tenant if verify(tokens, "session", tenant, campaign_id, expires, sig) else None


def _bearer(request: Request) -> str | None:
    """The tenant of a bearer header; None without one; 401 for a wrong one."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    tenant = request.app.state.tenants.get(token.strip())
    if scheme.lower() != "bearer" or tenant is None:
        raise Unauthorized("missing or unknown bearer token")
    return tenant


def gallery_tenant(request: Request, campaign_id: str) -> str:
    """Who may read this campaign's gallery: a bearer header, or the gallery's session cookie."""
    tenant = _bearer(request)
    if tenant is not None:
        return tenant
    cookie = request.cookies.get(COOKIE)
    tenant = session_tenant(request.app.state.tenants, cookie, campaign_id) if cookie else None
    if tenant is None:
        raise Unauthorized(f"not signed in: run `farm gallery {campaign_id}` for a link")
    return tenant


# -- thumbnails --------------------------------------------------------------------------------


def thumbnail(data: bytes, side: int = THUMB_SIDE) -> tuple[bytes, str]:
    """A picture at most ``side`` px on its longer side, WebP; a smaller one as it is (PNG)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as src:
        if max(src.size) <= side:
            return data, "image/png"
        im = src.convert("RGBA" if "A" in src.getbands() else "RGB")
        im.thumbnail((side, side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        im.save(out, "WEBP", quality=82, method=4)
        return out.getvalue(), "image/webp"


class ThumbCache:
    """Thumbnails by image key, least recently used dropped past ``max_bytes``."""

    def __init__(self, max_bytes: int = THUMB_CACHE_BYTES):
        self.max_bytes, self.size = max_bytes, 0
        self.items: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> tuple[bytes, str] | None:
        with self.lock:
            item = self.items.get(key)
            if item is not None:
                self.items.move_to_end(key)
            return item

    def put(self, key: str, item: tuple[bytes, str]) -> None:
        with self.lock:
            if key in self.items:
                return
            self.items[key] = item
            self.size += len(item[0])
            while self.size > self.max_bytes and self.items:
                _, (old, _) = self.items.popitem(last=False)
                self.size -= len(old)


# -- pages -------------------------------------------------------------------------------------


def _csp(nonce: str) -> str:
    # Only this response's own style and script run; images come from here (data: is the
    # inline favicon: an image cannot run script); fetches go back here only.
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def _html(text: str, nonce: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        text,
        status_code=status_code,
        headers={
            "Content-Security-Policy": _csp(nonce),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


def _error_page(code: int, heading: str, message: str) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    return _html(page.render_error(code, heading, message, nonce), nonce, code)


SIGN_IN = (
    "Open this gallery with the link `farm gallery {id}` prints: it signs this browser in for "
    f"{SESSION_TTL_S // 3600} hours (a link works for {LINK_TTL_S // 60} minutes)."
)
EXPIRED = (
    f"Sign-in links work for {LINK_TTL_S // 60} minutes: run `farm gallery {{id}}` for a new one."
)


def gallery_router(get_farm: Callable) -> APIRouter:
    """The gallery's routes, on the API's farm (``get_farm`` builds it on first use)."""
    router = APIRouter()
    thumbs = ThumbCache()

    def owned(campaign_id: str, tenant: str) -> dict:
        """The campaign's record if it is the tenant's (404 otherwise, like the API)."""
        if not is_id(campaign_id):
            raise NotFound("unknown campaign: not a campaign id (32 hex digits)")
        info = get_farm().records.campaign(campaign_id)
        if info is None or info.get("tenant") != tenant:
            raise NotFound(f"unknown campaign {campaign_id}")
        return info

    @router.post(
        "/v1/campaigns/{campaign_id}/gallery-link",
        summary="A sign-in link to the campaign's gallery page",
    )
    def gallery_link(
        campaign_id: str,
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_scheme)],
    ) -> dict:
        """A link that opens the campaign's gallery in a browser, valid 15 minutes; opening it
        signs that browser in to this gallery (an HttpOnly cookie) for 12 hours."""
        tenants = request.app.state.tenants
        if creds is None or creds.credentials not in tenants:
            raise Unauthorized("missing or unknown bearer token")
        tenant = tenants[creds.credentials]
        owned(campaign_id, tenant)
        path = make_link(creds.credentials, tenant, campaign_id)
        return {
            "url": str(request.base_url).rstrip("/") + path,
            "path": path,
            "expires_in_s": LINK_TTL_S,
        }

    @router.get("/v1/campaigns/{campaign_id}/gallery", include_in_schema=False)
    def gallery(
        campaign_id: str,
        request: Request,
        state: JobState | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = page.PAGE_SIZE,
        exp: int | None = None,
        sig: Annotated[str | None, Query(max_length=100)] = None,
    ) -> HTMLResponse:
        """The page: ``state`` shows the jobs in one state, ``limit`` cards a page."""
        tenants = request.app.state.tenants
        tenant = cookie = None
        if sig is not None:
            # A sign-in link, checked against its campaign's owner's tokens.
            info = get_farm().records.campaign(campaign_id) if is_id(campaign_id) else None
            owner = (info or {}).get("tenant")
            if owner and verify(tenants, "link", owner, campaign_id, exp or 0, sig):
                tenant, cookie = owner, make_session(tenants, owner, campaign_id)
        try:
            # Without a good link, a session (an old link reopened from the history) still works.
            tenant = tenant or gallery_tenant(request, campaign_id)
            farm = get_farm()
            status = farm.status(campaign_id, tenant=tenant)
            jobs, cursor = farm.jobs_page(campaign_id, tenant=tenant, state=state, limit=limit)
        except Unauthorized:
            # An unknown campaign and a bad signature alike: nothing learned about which.
            if sig is None:
                return _error_page(401, "Sign-in needed", SIGN_IN.format(id=campaign_id))
            return _error_page(401, "This link has expired", EXPIRED.format(id=campaign_id))
        except NotFound:
            return _error_page(404, "No such campaign", "No campaign of yours has this id.")
        nonce = secrets.token_urlsafe(16)
        cards = [page.render_card(j) for j in jobs]
        state_value = state.value if state else None
        resp = _html(page.render_page(status, cards, cursor, nonce, state_value, limit), nonce)
        if cookie:
            resp.set_cookie(
                COOKIE,
                cookie,
                max_age=SESSION_TTL_S,
                path=f"/v1/campaigns/{campaign_id}/gallery",
                secure=request.url.scheme == "https",
                httponly=True,
                samesite="strict",
            )
        return resp

    @router.get("/v1/campaigns/{campaign_id}/gallery/data", include_in_schema=False)
    def gallery_data(
        campaign_id: str,
        request: Request,
        state: JobState | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=0, le=1000)] = page.PAGE_SIZE,
    ) -> JSONResponse:
        """The page's live view: status, and (limit > 0) a page of cards rendered server-side."""
        tenant = gallery_tenant(request, campaign_id)
        farm = get_farm()
        status = farm.status(campaign_id, tenant=tenant)
        jobs, nxt = [], None
        if limit:
            jobs, nxt = farm.jobs_page(
                campaign_id, tenant=tenant, state=state, cursor=cursor, limit=limit
            )
        state_value = state.value if state else None
        body = {
            "state": status["state"],
            "version": page.status_version(status),
            "title": page.page_title(status),
            "matching": page.matching(status, state_value),
            "status_html": page.render_status(status, state_value),
            "cards": [page.render_card(j) for j in jobs],
            "next_cursor": nxt,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    def image_key(campaign_id: str, tenant: str, index: int, n: int) -> str:
        info = owned(campaign_id, tenant)
        ids = JobIds(campaign_id, int(info["total"]))
        if not 0 <= index < len(ids):
            raise NotFound(f"campaign {campaign_id} has no job {index}")
        rec = get_farm().records.get_many([ids[index]])[0]
        if rec is None or rec.state != JobState.DONE or not 0 <= n < len(rec.s3_keys):
            raise NotFound(f"job {index} has no image {n} (yet)")
        return rec.s3_keys[n]

    def s3_get(key: str) -> dict:
        objects = get_farm().objects
        try:
            return objects.client.get_object(Bucket=objects.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise NotFound(f"image {key} is not in the store") from e
            raise ServiceUnavailable(f"s3: cannot get {key}: {e}") from e

    @router.get(
        "/v1/campaigns/{campaign_id}/gallery/images/{index}/{n}.png", include_in_schema=False
    )
    def full_image(campaign_id: str, index: int, n: int, request: Request) -> StreamingResponse:
        """A job's image as rendered, streamed from S3 (never read whole into memory)."""
        key = image_key(campaign_id, gallery_tenant(request, campaign_id), index, n)
        obj = s3_get(key)
        headers = {
            "Cache-Control": IMMUTABLE,
            "Content-Disposition": f'inline; filename="{key.rsplit("/", 1)[-1]}"',
            "Content-Length": str(obj["ContentLength"]),
            "Cross-Origin-Resource-Policy": "same-origin",
            "X-Content-Type-Options": "nosniff",
        }
        return StreamingResponse(
            obj["Body"].iter_chunks(256 * 1024), media_type="image/png", headers=headers
        )

    @router.get("/v1/campaigns/{campaign_id}/gallery/thumbs/{index}/{n}", include_in_schema=False)
    def thumb(campaign_id: str, index: int, n: int, request: Request) -> Response:
        key = image_key(campaign_id, gallery_tenant(request, campaign_id), index, n)
        item = thumbs.get(key)
        if item is None:
            item = thumbnail(s3_get(key)["Body"].read())
            thumbs.put(key, item)
        data, media_type = item
        headers = {
            "Cache-Control": IMMUTABLE,
            "Cross-Origin-Resource-Policy": "same-origin",
            "X-Content-Type-Options": "nosniff",
        }
        return Response(data, media_type=media_type, headers=headers)

    return router
