"""How the API reads a JSON body and answers what the routes never see: one error shape.

Every error body is ``{"error", "message", "detail"?}`` (``ErrorBody``), for the farm's own
errors and for Starlette's too (an unknown path, a method the path does not take). A body that
is not JSON is the documented 422 naming ``body``, never an undocumented 400.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from farm.errors import InvalidJob


class ErrorResponse(JSONResponse):
    """Error bodies are ASCII JSON: they quote the sender's input, which may hold characters
    that UTF-8 cannot encode (a lone surrogate), and an error must never become a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


async def json_body(request: Request) -> Any:
    """The request's body as JSON, read as written (validated by the farm, on the same path as
    the client's and the CLI's submissions).

    Raises:
        InvalidJob: on ``body`` when it is not JSON.
    """
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        # ValueError covers bad JSON, bad UTF-8 and integers past Python's 4,300 digits.
        raise InvalidJob("body", f"not valid JSON: {str(e)[:200]}") from None


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path (not only the first route's, as Starlette's
    405 says): the ``Allow`` header lists what the OpenAPI document lists."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


async def http_error(request: Request, exc: StarletteHTTPException) -> ErrorResponse:
    """Starlette's own errors (404 no such path, 405 method) in the API's one error shape."""
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    try:
        name = HTTPStatus(exc.status_code).phrase.replace(" ", "")
    except ValueError:
        name = "HTTPError"
    return ErrorResponse(
        {"error": name, "message": str(exc.detail)}, status_code=exc.status_code, headers=headers
    )
