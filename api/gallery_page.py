"""The campaign gallery's HTML: the page, its status block and job cards, from Jinja templates.

The markup lives in ``api/templates/`` and is rendered with autoescaping on: every piece of user
text (prompts, names, parameters, error messages) is escaped on its way into the page, and only
fragments rendered here are marked safe. The page's script only swaps those fragments and never
builds markup from data itself. The CSS and script are inline, allowed by a per-response nonce in
the Content-Security-Policy (no inline handlers, nothing external).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

PAGE_SIZE = 48  # cards per page: fills rows of 2, 3, 4 or 6 columns
POLL_MS = 2000
COUNT_STATES = ("queued", "prior", "decoding", "done", "failed", "cancelled")
TERMINAL = ("finished", "cancelled")
FILTERS = (("all", None), ("done", "done"), ("failed", "failed"))
# Shown on every card; everything else a job was given is under "parameters".
KEY_PARAMS = ("prompt", "negative_prompt", "seed")
# The job's timings worth a line (the record holds more: batch sizes, timestamps).
TIMINGS = (("prior", "prior time"), ("decode", "decode time"), ("latency", "end to end"))
TEMPLATES = Path(__file__).resolve().parent / "templates"


class _Loader(FileSystemLoader):
    """Fragments (``*.frag.html``) are written a tag a line for reading; their line breaks and
    indentation are not markup, so they are dropped as the template loads."""

    def get_source(self, environment, template):
        source, filename, uptodate = super().get_source(environment, template)
        if template.endswith(".frag.html"):
            source = re.sub(r"\n[ \t]*", "", source)
        return source, filename, uptodate


_env = Environment(
    loader=_Loader(TEMPLATES),
    autoescape=True,  # every template: user text is escaped unless it is a rendered fragment
    keep_trailing_newline=True,
    undefined=StrictUndefined,  # a name missing from the context is a bug, not an empty string
)
_env.filters["thousands"] = lambda n: f"{n:,}"


def _render(template: str, **context: Any) -> str:
    return _env.get_template(template).render(**context)


def job_index(job_id: str) -> int:
    return int(job_id.rsplit("-", 1)[1])


def unused(spec: dict) -> set[str]:
    """Fields every spec carries (with defaults) that its task never reads (farm/stages.py)."""
    out = set()
    if spec.get("task") not in ("img2img", "controlnet-depth-img2img"):
        out.add("strength")
    if spec.get("task") != "controlnet-depth-img2img":
        out.add("prior_strength")
    return out


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def status_version(status: dict) -> str:
    """Changes whenever something the page shows about the campaign's jobs changes."""
    counts = ",".join(str(status["counts"].get(s, 0)) for s in COUNT_STATES)
    return f"{status['state']}:{counts}"


def page_title(status: dict) -> str:
    name = status.get("name") or f"Campaign {status['id'][:8]}"
    if status["state"] in TERMINAL:
        return f"{name} · gallery"
    return f"({status['counts'].get('done', 0):,}/{status['total']:,}) {name} · gallery"


def matching(status: dict, state_filter: str | None) -> int:
    """How many jobs the page lists: all of them, or those in the filtered state."""
    return status["total"] if state_filter is None else status["counts"].get(state_filter, 0)


def render_status(status: dict, state_filter: str | None) -> str:
    """The campaign's state, progress, rate and the job filters (refreshed while it runs)."""
    counts, total = status["counts"], status["total"]
    rate = []
    if status.get("images_per_second"):
        rate.append(f"{status['images_per_second']:.2f} images/s")
    if status["state"] in ("running", "waiting") and status.get("eta_s"):
        rate.append(f"about {_duration(status['eta_s'])} left")
    if status.get("finished_at") and status.get("started_at"):
        rate.append(f"took {_duration(status['finished_at'] - status['started_at'])}")
    return _render(
        "status.frag.html",
        state=status["state"],
        total=total,
        done=counts.get("done", 0),
        failed=counts.get("failed", 0),
        rendering=counts.get("prior", 0) + counts.get("decoding", 0),
        queued=counts.get("queued", 0),
        cancelled=counts.get("cancelled", 0),
        rate=" · ".join(rate),
        waiting_reason=status.get("waiting_reason"),
        filters=[
            (label, value, total if value is None else counts.get(value, 0))
            for label, value in FILTERS
        ],
        state_filter=state_filter,
    )


def render_card(job: dict) -> dict:
    """One job's card: ``{"id", "version", "html"}`` (the page replaces a card whose version
    changed and keeps the others, so loaded thumbnails stay)."""
    index = job_index(job["job_id"])
    spec, state = job["spec"], job["state"]
    images = len(job.get("s3_keys") or []) if state == "done" else 0
    prompt = spec.get("prompt") or " + ".join(
        i.get("text") or i.get("image") or "" for i in spec.get("interpolate") or []
    )
    version = f"{state}:{images}"
    width, height = spec.get("width"), spec.get("height")
    error = job.get("error") or {}
    error_text = ""
    if state == "failed" and error:
        error_text = f"{error.get('type', 'Error')}: {error.get('message', '')}"
    skip = set(KEY_PARAMS) | unused(spec)
    rows = [(k, _value(v)) for k, v in spec.items() if k not in skip and v is not None]
    timings = job.get("timings") or {}
    rows += [(label, f"{timings[k]:.2f} s") for k, label in TIMINGS if k in timings]
    rows.append(("job", job["job_id"]))
    guidance = spec.get("guidance_scale")
    card = _render(
        "card.frag.html",
        index=index,
        job_id=job["job_id"],
        state=state,
        version=version,
        images=images,
        prompt=prompt,
        width=width,
        height=height,
        size=f"{width}×{height}",
        label={"prior": "prior…", "decoding": "decoding…"}.get(state, state),
        error_text=error_text,
        negative=spec.get("negative_prompt"),
        seed=job.get("seed"),
        steps=spec.get("num_inference_steps"),
        cfg=None if guidance is None else _value(guidance),
        model=spec.get("model", ""),
        task=spec.get("task", "text2img"),
        rows=rows,
    )
    return {"id": f"job-{index}", "version": version, "html": card}


def render_page(
    status: dict,
    cards: list[dict],
    next_cursor: str | None,
    nonce: str,
    state_filter: str | None = None,
    page_size: int = PAGE_SIZE,
) -> str:
    """The whole gallery page, its first page of cards rendered in (it works without script;
    with it, it stays live until the campaign ends)."""
    return _render(
        "gallery.html",
        icon=Markup(ICON),  # a constant data URL, not user text
        title=page_title(status),
        nonce=nonce,
        campaign_id=status["id"],
        state=status["state"],
        version=status_version(status),
        state_filter=state_filter or "",
        matching=matching(status, state_filter),
        poll_ms=POLL_MS,
        page_size=page_size,
        name=status.get("name") or f"Campaign {status['id'][:8]}",
        # Fragments rendered (and escaped) by their own templates.
        status_html=Markup(render_status(status, state_filter)),
        grid=Markup("".join(c["html"] for c in cards)),
        next_cursor=next_cursor or "",
    )


def render_error(status_code: int, heading: str, message: str, nonce: str) -> str:
    """A plain page for a gallery that cannot be shown (expired link, unknown campaign)."""
    return _render(
        "error.html", status_code=status_code, heading=heading, message=message, nonce=nonce
    )


# A 2x2 grid of tiles, inline: no request, nothing to serve.
ICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
    "%3Crect width='7' height='7' rx='1.5' fill='%234f46e5'/%3E"
    "%3Crect x='9' width='7' height='7' rx='1.5' fill='%23f59e0b'/%3E"
    "%3Crect y='9' width='7' height='7' rx='1.5' fill='%2310b981'/%3E"
    "%3Crect x='9' y='9' width='7' height='7' rx='1.5' fill='%23ef4444'/%3E%3C/svg%3E"
)
