"""The campaign gallery's HTML: the page, its status block and job cards, escaped in one place.

Every piece of user text (prompts, names, parameters, error messages) goes through ``_e``
(``html.escape`` with quotes) before it reaches the page; the page's script only swaps fragments
rendered here and never builds markup from data itself. The CSS and script are inline, allowed
by a per-response nonce in the Content-Security-Policy (no inline handlers, nothing external).
"""

from __future__ import annotations

import html
import json
from typing import Any

PAGE_SIZE = 48  # cards per page: fills rows of 2, 3, 4 or 6 columns
POLL_MS = 2000
COUNT_STATES = ("queued", "prior", "decoding", "done", "failed", "cancelled")
TERMINAL = ("finished", "cancelled")
FILTERS = (("all", None), ("done", "done"), ("failed", "failed"))
# Shown on every card; everything else a job was given is under "parameters".
KEY_PARAMS = ("prompt", "negative_prompt", "seed")
# The job's timings worth a line (the record holds more: batch sizes, timestamps).
TIMINGS = (("prior", "prior time"), ("decode", "decode time"), ("latency", "end to end"))


def _e(value: Any) -> str:
    """Text or an attribute value, escaped (``<``, ``>``, ``&``, both quotes)."""
    return html.escape(str(value), quote=True)


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
    done, failed = counts.get("done", 0), counts.get("failed", 0)
    rendering = counts.get("prior", 0) + counts.get("decoding", 0)
    parts = [f"<b>{done:,}</b> of {total:,} done"]
    if failed:
        parts.append(f'<span class="bad">{failed:,} failed</span>')
    if rendering:
        parts.append(f"{rendering:,} rendering")
    if counts.get("queued"):
        parts.append(f"{counts['queued']:,} queued")
    if counts.get("cancelled"):
        parts.append(f"{counts['cancelled']:,} cancelled")
    rate = []
    if status.get("images_per_second"):
        rate.append(f"{status['images_per_second']:.2f} images/s")
    if status["state"] in ("running", "waiting") and status.get("eta_s"):
        rate.append(f"about {_duration(status['eta_s'])} left")
    if status.get("finished_at") and status.get("started_at"):
        rate.append(f"took {_duration(status['finished_at'] - status['started_at'])}")
    out = [
        '<div class="line">',
        f'<span class="badge s-{_e(status["state"])}">{_e(status["state"])}</span>',
        f'<span class="counts">{" · ".join(parts)}</span>',
        "</div>",
        f'<progress max="{max(total, 1)}" value="{done}" aria-label="jobs done"></progress>',
    ]
    if rate:
        out.append(f'<p class="rate">{_e(" · ".join(rate))}</p>')
    if status.get("waiting_reason"):
        out.append(f'<p class="waiting">Waiting: {_e(status["waiting_reason"])}</p>')
    links = []
    for label, value in FILTERS:
        n = total if value is None else counts.get(value, 0)
        href = "gallery" if value is None else f"gallery?state={value}"
        current = ' aria-current="page"' if value == state_filter else ""
        links.append(f'<a href="{href}"{current}>{label} <span>{n:,}</span></a>')
    out.append(f'<nav class="filters" aria-label="show">{"".join(links)}</nav>')
    return "".join(out)


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
    size = _e(f"{width}×{height}")
    shot: list[str]
    if images:
        shot = [
            f'<a class="shot" href="gallery/images/{index}/0.png" target="_blank" rel="noopener"'
            f' title="Open the full image ({size})">',
            f'<img src="gallery/thumbs/{index}/0" alt="{_e(prompt[:300])}" width="{_e(width)}"'
            f' height="{_e(height)}" loading="lazy" decoding="async">',
        ]
        if images > 1:
            shot.append(f'<span class="count">×{images}</span>')
        shot.append("</a>")
    else:
        label = {"prior": "prior…", "decoding": "decoding…"}.get(state, state)
        shot = [f'<div class="shot pending s-{_e(state)}"><span>{_e(label)}</span>']
        error = job.get("error") or {}
        if state == "failed" and error:
            text = f"{error.get('type', 'Error')}: {error.get('message', '')}"
            shot.append(f'<p class="error" dir="auto" title="{_e(text)}">{_e(text)}</p>')
        shot.append("</div>")
    body = [
        f'<p class="prompt" dir="auto" title="{_e(prompt)}">{_e(prompt)}</p>',
    ]
    if spec.get("negative_prompt"):
        body.append(
            f'<p class="negative" dir="auto"><span class="label">not</span> '
            f"<bdi>{_e(spec['negative_prompt'])}</bdi></p>"
        )
    chips = [f'<span class="seed">seed <b>{_e(job.get("seed"))}</b></span>', f"<span>{size}</span>"]
    if spec.get("num_inference_steps") is not None:
        chips.append(f"<span>{_e(spec['num_inference_steps'])} steps</span>")
    if spec.get("guidance_scale") is not None:
        chips.append(f"<span>cfg {_e(_value(spec['guidance_scale']))}</span>")
    chips.append(f'<span class="model">{_e(spec.get("model", ""))}</span>')
    if spec.get("task", "text2img") != "text2img":
        chips.append(f"<span>{_e(spec['task'])}</span>")
    body.append(f'<p class="meta">{"".join(chips)}</p>')
    if images > 1:
        links = " ".join(
            f'<a href="gallery/images/{index}/{n}.png" target="_blank" rel="noopener">{n + 1}</a>'
            for n in range(images)
        )
        body.append(f'<p class="links">full size: {links}</p>')
    skip = set(KEY_PARAMS) | unused(spec)
    rows = [(k, _value(v)) for k, v in spec.items() if k not in skip and v is not None]
    timings = job.get("timings") or {}
    rows += [(label, f"{timings[k]:.2f} s") for k, label in TIMINGS if k in timings]
    rows.append(("job", job["job_id"]))
    rows_html = "".join(f'<div><dt>{_e(k)}</dt><dd dir="auto">{_e(v)}</dd></div>' for k, v in rows)
    body.append(f"<details><summary>parameters</summary><dl>{rows_html}</dl></details>")
    card = (
        f'<li class="card" id="job-{index}" data-job="{_e(job["job_id"])}" data-state="{_e(state)}"'
        f' data-version="{_e(version)}"><span class="index">#{index}</span>{"".join(shot)}'
        f'<div class="body">{"".join(body)}</div></li>'
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
    title = status.get("name") or f"Campaign {status['id'][:8]}"
    grid = "".join(c["html"] for c in cards)
    more_hidden = "" if next_cursor else " hidden"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="{ICON}">
<title>{_e(page_title(status))}</title>
<style nonce="{nonce}">{CSS}</style>
</head>
<body data-campaign="{_e(status["id"])}" data-state="{_e(status["state"])}"
 data-version="{_e(status_version(status))}" data-filter="{_e(state_filter or "")}"
 data-matching="{matching(status, state_filter)}" data-poll="{POLL_MS}"
 data-page="{page_size}">
<header>
<div class="title">
<h1 dir="auto">{_e(title)}</h1>
<code class="cid">{_e(status["id"])}</code>
</div>
<div id="status" aria-live="polite">{render_status(status, state_filter)}</div>
</header>
<p id="notice" role="status" hidden></p>
<main>
<ul id="grid" class="grid">{grid}</ul>
<p class="empty">No jobs to show here.</p>
<div class="more">
<button id="more" type="button" data-cursor="{_e(next_cursor or "")}"{more_hidden}>Show more</button>
<span id="shown"></span>
</div>
</main>
<footer><span id="live"></span></footer>
<script nonce="{nonce}">{SCRIPT}</script>
</body>
</html>
"""


def render_error(status_code: int, heading: str, message: str, nonce: str) -> str:
    """A plain page for a gallery that cannot be shown (expired link, unknown campaign)."""
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{status_code} · gallery</title><style nonce="{nonce}">{CSS}</style></head>
<body><main class="error-page"><h1>{_e(heading)}</h1><p>{_e(message)}</p></main></body>
</html>
"""


# A 2x2 grid of tiles, inline: no request, nothing to serve.
ICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
    "%3Crect width='7' height='7' rx='1.5' fill='%234f46e5'/%3E"
    "%3Crect x='9' width='7' height='7' rx='1.5' fill='%23f59e0b'/%3E"
    "%3Crect y='9' width='7' height='7' rx='1.5' fill='%2310b981'/%3E"
    "%3Crect x='9' y='9' width='7' height='7' rx='1.5' fill='%23ef4444'/%3E%3C/svg%3E"
)

CSS = """
:root{color-scheme:light dark;--bg:#f4f4f6;--fg:#1d1d22;--muted:#6b6b76;--card:#fff;
--line:#e2e2e8;--shot:#e9e9ee;--accent:#4f46e5;--ok:#15803d;--bad:#b91c1c;--warn:#b45309}
@media (prefers-color-scheme:dark){:root{--bg:#121216;--fg:#ececf1;--muted:#9a9aa6;
--card:#1c1c22;--line:#2c2c35;--shot:#26262e;--accent:#8b85ff;--ok:#4ade80;--bad:#f87171;
--warn:#fbbf24}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,"Noto Sans","Noto Sans Arabic","Noto Sans CJK SC","Noto Sans CJK KR",sans-serif}
header{position:sticky;top:0;z-index:2;background:var(--card);border-bottom:1px solid var(--line);
padding:14px 24px 10px;display:flex;flex-wrap:wrap;gap:8px 32px;align-items:flex-start}
.title{flex:1 1 260px;min-width:0}
h1{font-size:20px;margin:0 0 2px;overflow-wrap:anywhere}
.cid{color:var(--muted);font-size:12px}
#status{flex:2 1 420px;min-width:0}
#status .line{display:flex;gap:10px;align-items:center;flex-wrap:wrap}
progress{width:100%;height:8px;margin:8px 0 4px;appearance:none;border:0;border-radius:4px;
background:var(--shot);overflow:hidden}
progress::-webkit-progress-bar{background:var(--shot)}
progress::-webkit-progress-value{background:var(--accent);transition:width .4s}
progress::-moz-progress-bar{background:var(--accent)}
.rate,.waiting{margin:0;font-size:13px;color:var(--muted)}
.waiting{color:var(--warn)}
.bad{color:var(--bad)}
.badge{font-size:12px;font-weight:600;text-transform:uppercase;letter-spacing:.04em;
padding:2px 8px;border-radius:999px;background:var(--shot);color:var(--muted)}
.badge.s-running{background:#4f46e522;color:var(--accent)}
.badge.s-finished{background:#15803d22;color:var(--ok)}
.badge.s-waiting{background:#b4530922;color:var(--warn)}
.badge.s-cancelled{background:#b91c1c22;color:var(--bad)}
.filters{display:flex;gap:6px;margin-top:6px}
.filters a{font-size:13px;color:var(--muted);text-decoration:none;padding:2px 10px;
border:1px solid var(--line);border-radius:999px}
.filters a span{opacity:.7}
.filters a[aria-current]{color:var(--fg);border-color:var(--accent)}
#notice{margin:12px 24px 0;padding:8px 12px;border-radius:8px;background:#b4530922;
color:var(--warn)}
main{padding:20px 24px 8px}
.grid{list-style:none;margin:0;padding:0;display:grid;gap:16px;
grid-template-columns:repeat(auto-fill,minmax(min(230px,calc(50% - 8px)),1fr))}
@media (max-width:600px){header{position:static;padding:12px}main{padding:12px}
.grid{gap:10px}}
.card{position:relative;background:var(--card);border:1px solid var(--line);border-radius:12px;
overflow:hidden;display:flex;flex-direction:column;box-shadow:0 1px 2px #0000000d}
.index{position:absolute;top:8px;left:8px;z-index:1;font-size:11px;font-weight:600;
padding:1px 7px;border-radius:999px;background:#000000a0;color:#fff}
.shot{display:flex;flex-direction:column;align-items:center;justify-content:center;gap:8px;
aspect-ratio:1;background:var(--shot);position:relative;overflow:hidden}
.shot img{width:100%;height:100%;object-fit:contain;display:block}
a.shot:hover img{opacity:.92}
.count{position:absolute;right:8px;bottom:8px;font-size:12px;padding:1px 7px;border-radius:999px;
background:#000000a0;color:#fff}
.pending span{font-size:13px;color:var(--muted);text-transform:lowercase}
.pending.s-prior,.pending.s-decoding{background:linear-gradient(100deg,var(--shot) 30%,
var(--line) 50%,var(--shot) 70%) 0 0/300% 100%;animation:shimmer 1.4s linear infinite}
.pending.s-failed span{color:var(--bad);font-weight:600}
@keyframes shimmer{to{background-position:-150% 0}}
@media (prefers-reduced-motion:reduce){.pending{animation:none!important}}
.error{margin:0 14px;font-size:12px;color:var(--bad);text-align:center;max-height:6em;
overflow:hidden;overflow-wrap:anywhere}
.body{padding:10px 12px 12px;display:flex;flex-direction:column;gap:6px;min-width:0}
.prompt{margin:0;font-size:14px;display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical;
overflow:hidden;overflow-wrap:anywhere;unicode-bidi:plaintext}
.negative{margin:0;font-size:12px;color:var(--muted);overflow-wrap:anywhere}
.label{font-size:10px;text-transform:uppercase;letter-spacing:.05em;padding:0 5px;
border:1px solid var(--line);border-radius:4px}
.meta{margin:0;display:flex;flex-wrap:wrap;gap:4px}
.meta span{font-size:11.5px;color:var(--muted);background:var(--bg);border-radius:5px;
padding:1px 6px;font-variant-numeric:tabular-nums}
.meta .seed b{color:var(--fg);font-weight:600}
.links{margin:0;font-size:12px}
a{color:var(--accent)}
details{font-size:12px;color:var(--muted)}
summary{cursor:pointer;user-select:none}
dl{margin:6px 0 0;font-size:11.5px}
dl div{display:flex;justify-content:space-between;gap:10px;padding:2px 0;
border-bottom:1px dashed var(--line)}
dt{color:var(--muted);white-space:nowrap}
dd{margin:0;min-width:0;color:var(--fg);text-align:end;overflow-wrap:anywhere;font-variant-numeric:tabular-nums}
.more{display:flex;gap:12px;align-items:center;justify-content:center;padding:20px 0}
#more{font:inherit;padding:6px 18px;border-radius:8px;border:1px solid var(--line);
background:var(--card);color:var(--fg);cursor:pointer}
#shown,footer{font-size:12px;color:var(--muted)}
footer{padding:0 24px 20px;text-align:center}
.empty{display:none;color:var(--muted);text-align:center}
.grid:empty+.empty{display:block}
.error-page{max-width:560px;margin:12vh auto;padding:0 24px}
"""

# Only fragments rendered above reach innerHTML (a <template>, so nothing runs while parsing);
# the script never turns data into markup itself.
SCRIPT = """
(() => {
  "use strict";
  const here = new URL(location.href);
  if (here.searchParams.has("sig")) {
    // The sign-in link has done its job (the session is a cookie now): keep it out of the
    // history, bookmarks and anything copied from the address bar.
    here.searchParams.delete("sig");
    here.searchParams.delete("exp");
    history.replaceState(null, "", here.pathname + here.search + here.hash);
  }
  const body = document.body, grid = document.getElementById("grid");
  const statusBox = document.getElementById("status"), more = document.getElementById("more");
  const shown = document.getElementById("shown"), live = document.getElementById("live");
  const notice = document.getElementById("notice");
  const PAGE = Number(body.dataset.page) || 48, POLL = Number(body.dataset.poll) || 2000;
  const filter = body.dataset.filter;
  let version = body.dataset.version, state = body.dataset.state;
  let matching = Number(body.dataset.matching), cursor = more.dataset.cursor || null;
  let failures = 0, timer = null;
  const ended = () => state === "finished" || state === "cancelled";

  const fragment = (html) => {
    const t = document.createElement("template");
    t.innerHTML = html;  // a fragment rendered and escaped by the server
    return t.content;
  };
  const say = (text) => { notice.textContent = text; notice.hidden = !text; };

  async function data(from, limit) {
    const q = new URLSearchParams({limit: String(limit)});
    if (from) q.set("cursor", from);
    if (filter) q.set("state", filter);
    const r = await fetch("gallery/data?" + q, {cache: "no-store", credentials: "same-origin",
                                                headers: {accept: "application/json"}});
    if (r.status === 401 || r.status === 404) {
      const err = new Error("HTTP " + r.status);
      err.final = true;
      throw err;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    return r.json();
  }

  // A card whose job changed is rendered anew; an unchanged one is kept with its thumbnail.
  function card(c) {
    const old = document.getElementById(c.id);
    if (old && old.dataset.version === c.version) return old;
    const el = fragment(c.html).firstElementChild;
    if (old && old.querySelector("details[open]")) el.querySelector("details").open = true;
    return el;
  }

  function showStatus(d) {
    statusBox.replaceChildren(fragment(d.status_html));
    document.title = d.title;
    version = d.version;
    state = d.state;
    matching = d.matching;
    body.dataset.state = state;
  }

  function footer() {
    const n = grid.children.length;
    shown.textContent = n < matching ? `Showing ${n.toLocaleString()} of ${matching.toLocaleString()}` : "";
    more.hidden = !cursor;
    live.textContent = ended() ? "The campaign has ended." : `Live: updates every ${POLL / 1000} s.`;
  }

  // Every card on the page again, in order (the jobs a filter shows change as they run).
  async function refresh() {
    const want = Math.max(grid.children.length, PAGE), els = [];
    let from = null, d;
    do {
      d = await data(from, Math.min(want - els.length, 1000));
      for (const c of d.cards) els.push(card(c));
      from = d.next_cursor;
    } while (from && els.length < want);
    grid.replaceChildren(...els);
    cursor = from;
    showStatus(d);
  }

  async function tick() {
    timer = null;
    if (document.hidden) return;  // resumed by visibilitychange
    try {
      const d = await data(null, 0);
      if (d.version !== version) await refresh(); else showStatus(d);
      failures = 0;
      say("");
    } catch (err) {
      if (err.final) {
        say("This gallery session has ended (" + err.message + "): run `farm gallery " +
            body.dataset.campaign + "` for a new link.");
        state = "finished";
        return;
      }
      failures += 1;
      say("Cannot reach the farm (" + err.message + "); retrying…");
    }
    footer();
    if (!ended()) timer = setTimeout(tick, Math.min(POLL * 2 ** Math.min(failures, 4), 30000));
  }

  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const d = await data(cursor, PAGE);
      grid.append(...d.cards.map(card));
      cursor = d.next_cursor;
      showStatus(d);
    } catch (err) {
      say("Cannot load more (" + err.message + ").");
    }
    more.disabled = false;
    footer();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null && !ended()) tick();
  });
  footer();
  if (!ended()) timer = setTimeout(tick, POLL);
})();
"""
