"""Webhooks: when a campaign ends, a signed JSON summary is POSTed to the URL it named.

Signing (the recipe a receiver follows; docs/campaigns.md, Webhooks, has it too): the request carries
``Farm-Signature: t=<unix seconds>,v1=<hex>`` where ``hex`` is
HMAC-SHA256(secret, f"{t}.{raw body}"). The receiver recomputes it with its tenant's secret,
compares in constant time and refuses timestamps older than a few minutes (replays).
A tenant's secret is derived from the farm's ``FARM_WEBHOOK_SECRET``:
HMAC-SHA256(farm secret, tenant) in hex; ``GET /v1/webhook-secret`` gives a tenant its own.

Each end of a campaign (done, failed, cancelled; again if it is resumed and ends again) is
delivered once: a Redis key claims it. A failed delivery (connection error, 5xx, 429) is
retried with exponential backoff; each attempt goes into the campaign's delivery log
(``webhook`` in its status).

Callback URLs that resolve to loopback, link-local, private or otherwise internal addresses are
refused (at submission and again at delivery, in case DNS changed) unless
``FARM_WEBHOOK_ALLOW_PRIVATE`` is set: a farm must not become a way into its own network.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
import uuid
from urllib.parse import urlsplit

from farm.errors import InvalidJob

SIGNATURE_HEADER = "Farm-Signature"
DELIVERY_HEADER = "Farm-Delivery"
TIMEOUT_S = 10.0


def tenant_secret(farm_secret: str, tenant: str) -> str:
    return hmac.new(farm_secret.encode(), tenant.encode(), hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, at: int | None = None) -> str:
    at = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance_s: int = 300) -> bool:
    """The receiver's side of ``sign`` (tests use it; receivers copy it)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        at = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - at) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, at), header)


def _internal(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str, allow_private: bool, field: str = "callback_url") -> None:
    """Refuse a callback URL that is not http(s) or that resolves to an internal address.

    Raises:
        InvalidJob: naming the field and why.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed lazily: a bad port raises here, not mid-delivery
    except ValueError as e:  # "Invalid IPv6 URL" (a stray bracket), a port out of range
        raise InvalidJob(field, f"not a URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidJob(field, "must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise InvalidJob(field, "must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError) as e:
        raise InvalidJob(field, f"host {parts.hostname!r} does not resolve ({e})") from None
    if allow_private:
        return
    for info in infos:
        if _internal(str(info[4][0])):  # an IPv4/IPv6 address string (typeshed allows an int)
            raise InvalidJob(
                field,
                f"{parts.hostname} resolves to {info[4][0]}, an internal address "
                "(loopback, link-local or private); FARM_WEBHOOK_ALLOW_PRIVATE allows it",
            )


def summary(info: dict, usage: dict, results_key: str | None) -> dict:
    """The body of a campaign's webhook."""
    counts = info["counts"]
    if info.get("cancelled"):
        state = "cancelled"
    elif counts.get("failed"):
        state = "failed"
    else:
        state = "done"
    return {
        "event": f"campaign.{state}",
        "campaign_id": info["campaign_id"],
        "tenant": info["tenant"],
        "name": info.get("name") or None,
        "state": state,
        "total": int(info["total"]),
        "counts": counts,
        "finished_at": float(info["finished_at"]) if info.get("finished_at") else None,
        "results": results_key,
        "usage": usage,
    }


def deliver(url: str, body: bytes, secret: str, delivery_id: str | None = None) -> int:
    """POST once; returns the HTTP status (raises OSError-like httpx errors on no answer)."""
    import httpx

    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, body),
        DELIVERY_HEADER: delivery_id or uuid.uuid4().hex,
        "User-Agent": "kandinsky-farm-webhook/1",
    }
    resp = httpx.post(url, content=body, headers=headers, timeout=TIMEOUT_S, follow_redirects=False)
    return resp.status_code


def encode(payload: dict) -> bytes:
    return json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()
