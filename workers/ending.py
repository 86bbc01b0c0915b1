"""What runs when a campaign ends: its results written (finalize), its webhook queued once per
end and each delivery attempt logged on the campaign.
"""

from __future__ import annotations

import json
import time
import uuid

from farm import keys
from workers.context import WorkerContext


def finalize(ctx: WorkerContext, campaign_id: str, retries: int) -> dict:
    from farm.finalize import finalize as write

    out = write(ctx.records, ctx.objects, ctx.settings.s3_prefix, campaign_id)
    _announce(ctx, campaign_id, out["results"])
    return out


def _announce(ctx: WorkerContext, campaign_id: str, results_key: str) -> None:
    """The campaign ended: queue its webhook, once per end (a finalize run twice sends one)."""
    from farm import webhooks
    from farm.domain.usage import summary as usage_summary

    info = ctx.records.campaign(campaign_id)
    if not info or not info.get("callback_url") or not info.get("finished_at"):
        return
    info["campaign_id"] = campaign_id
    prices = {"cpu": ctx.settings.price_cpu_hour, "gpu": ctx.settings.price_gpu_hour}
    usage = usage_summary(ctx.records.usage([campaign_id]), prices, ctx.settings.currency)
    payload = webhooks.summary(info, usage, results_key)
    claim = keys.webhook_claim(campaign_id, payload["state"], info["finished_at"])
    if not ctx.redis.set(claim, "1", nx=True, ex=ctx.settings.record_ttl_s):
        return
    ctx.app.send_task(
        keys.WEBHOOK_TASK,
        kwargs={
            "campaign_id": campaign_id,
            "url": info["callback_url"],
            "body": webhooks.encode(payload).decode(),
            "delivery_id": uuid.uuid4().hex,
        },
    )


def webhook(
    ctx: WorkerContext, campaign_id: str, url: str, body: str, delivery_id: str, attempt: int
) -> tuple[bool, str]:
    """One delivery attempt, logged on the campaign. Returns (done, what happened): done is
    False when it is worth trying again (no answer, 5xx, 408, 429)."""
    from farm import webhooks
    from farm.errors import InvalidJob

    info = ctx.records.campaign(campaign_id) or {}
    secret = ctx.settings.webhook_secret
    status, done = None, False
    try:
        if secret is None:
            raise RuntimeError("FARM_WEBHOOK_SECRET is not set: cannot sign")
        webhooks.check_url(url, ctx.settings.webhook_allow_private)
        tenant_secret = webhooks.tenant_secret(secret.get_secret_value(), info.get("tenant", ""))
        status = webhooks.deliver(url, body.encode(), tenant_secret, delivery_id)
        done = status < 500 and status not in (408, 429)
        outcome = f"HTTP {status}"
    except InvalidJob as e:
        done, outcome = True, f"refused: {e}"  # the URL turned internal: never retried
    except Exception as e:  # noqa: BLE001 - no answer: log it, try again later
        outcome = f"{type(e).__name__}: {e}"[:300]
    entry = {
        "delivery_id": delivery_id,
        "attempt": attempt,
        "at": time.time(),
        "status": status,
        "outcome": outcome,
        "ok": status is not None and 200 <= status < 300,
    }
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.rpush(keys.webhook_log(campaign_id), json.dumps(entry))
    pipe.ltrim(keys.webhook_log(campaign_id), -100, -1)
    pipe.expire(keys.webhook_log(campaign_id), ctx.settings.record_ttl_s)
    pipe.execute()
    return done, outcome
