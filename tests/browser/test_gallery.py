"""The campaign gallery and the Flower dashboard in a real browser: headless Chromium (Debian's
package, `make browser`) driven by Playwright, against the session's stack after a small
campaign. Screenshots are kept in out/test-artifacts/."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from farm.errors import NotFound

CHROMIUM = os.environ.get("FARM_CHROMIUM", "/usr/bin/chromium")
# Checked before any fixture starts the stack.
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)"
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no Chromium at {CHROMIUM}: `make browser` installs Debian's (root + apt-get)",
    ),
]
# What Chromium needs on these machines: no sandbox as root, no GPU, and no background traffic
# (the network is closed; Playwright adds --headless and a fresh --user-data-dir itself).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "test-artifacts"
FAST = {"num_inference_steps": 2, "prior_num_inference_steps": 2, "height": 64, "width": 64}
HOSTILE = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
ARABIC = "قطة حمراء تجلس على سطح المنزل عند الغروب"
JOBS = [
    {"prompt": HOSTILE, "seed": 11},
    {"prompt": ARABIC, "seed": 12, "negative_prompt": "ضبابي"},
    {"prompt": "지붕 위에 앉아 있는 빨간 고양이", "seed": 13},
    {"prompt": "坐在屋顶上的红猫，日落时分", "seed": 14},
    {"prompt": "a red cat on a roof at sunset, oil on canvas", "seed": 15, "guidance_scale": 7.5},
    {"prompt": "a wide landscape", "seed": 16, "width": 640, "height": 384},
    {"prompt": "two of a kind", "seed": 17, "num_images_per_prompt": 2},
]
WIDE, PAIR = 5, 6
# Whether, for every name, a table row holds it and the word ([names, word]).
ROWS_SAY = """([names, word]) => {
  const rows = [...document.querySelectorAll("tr")].map(r => r.textContent.replace(/\\s+/g, ""));
  return names.every(n => rows.some(r => r.includes(n) && r.includes(word)));
}"""


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


def _cli_link(campaign_id: str, settings, monkeypatch, capsys) -> str:
    """The sign-in link as a user gets it: `farm gallery ID` on the stack's state."""
    from farm import cli

    for name in [n for n in os.environ if n.startswith("FARM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FARM_STATE_DIR", str(settings.state_dir))
    assert cli.main(["gallery", campaign_id]) == 0
    return capsys.readouterr().out.strip()


def _all(page, selector: str, script: str) -> list:
    return page.eval_on_selector_all(selector, script)


def test_gallery_shows_every_job_live_and_safely(
    browser, alice, bob, api_url, tokens, settings, monkeypatch, capsys
):
    handle = alice.submit_campaign(JOBS, defaults=FAST, name="gallery <b>test</b> — 갤러리")
    link = _cli_link(handle.id, settings, monkeypatch, capsys)
    page_url = f"{api_url}/v1/campaigns/{handle.id}/gallery"
    assert link.startswith(f"{page_url}?exp=") and tokens["alice"] not in link

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    response = page.goto(link)
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "unsafe" not in csp and "default-src 'none'" in csp
    assert page.url == page_url  # the signature left the address bar (a cookie now)
    done_at_first = page.locator("#grid > .card[data-state=done]").count()
    page.screenshot(path=ARTIFACTS / "gallery-live.png", full_page=True)
    page.evaluate("window.__sameDocument = true")

    # Live: every card turns done, and the campaign finished, without reloading the page.
    page.wait_for_function(
        "n => document.querySelectorAll('#grid > .card[data-state=done]').length === n"
        " && document.body.dataset.state === 'finished'",
        arg=len(JOBS),
        timeout=120_000,
    )
    assert page.evaluate("window.__sameDocument") is True
    assert done_at_first < len(JOBS), "opened after the campaign ended: nothing was live"
    assert "7 of 7 done" in page.inner_text("#status") and page.title().startswith("gallery <b>")

    # Every job, in order, with its prompt shown as text (never markup), seed and parameters.
    ids = _all(page, "#grid > .card", "els => els.map(e => e.dataset.job)")
    assert ids == [f"{handle.id}-{i}" for i in range(len(JOBS))]
    prompts = _all(page, "#grid .prompt", "els => els.map(e => e.textContent)")
    assert prompts == [j["prompt"] for j in JOBS]
    assert _all(page, "#grid .seed b", "els => els.map(e => e.textContent)") == [
        str(j["seed"]) for j in JOBS
    ]
    assert page.evaluate("window.__xss") is None
    assert page.locator("#grid script, #grid img[src=x], #grid [onerror]").count() == 0
    assert "640×384" in page.inner_text(f"#job-{WIDE} .meta")
    page.click(f"#job-{WIDE} summary")
    assert "num_images_per_prompt" in page.inner_text(f"#job-{WIDE} dl")
    # Right-to-left text reads right to left; the others left to right.
    directions = _all(page, "#grid .prompt", "els => els.map(e => getComputedStyle(e).direction)")
    assert directions == ["rtl" if j["prompt"] == ARABIC else "ltr" for j in JOBS]

    # Thumbnails: small images as they are, a large one shrunk on the server.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth)"
    )
    sizes = _all(page, "#grid .card img", "els => els.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[512, 307] if i == WIDE else [64, 64] for i in range(len(JOBS))]
    # Full images through the API, on the browser's session cookie.
    href = page.get_attribute(f"#job-{WIDE} a.shot", "href")
    full = context.request.get(f"{page_url}/{href.removeprefix('gallery/')}")
    assert full.status == 200 and full.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(full.body())).size == (640, 384)
    pair = _all(page, f"#job-{PAIR} .links a", "els => els.map(a => a.getAttribute('href'))")
    assert pair == [f"gallery/images/{PAIR}/{n}.png" for n in range(2)]
    for href in pair:
        got = context.request.get(f"{page_url}/{href.removeprefix('gallery/')}")
        assert got.status == 200 and Image.open(io.BytesIO(got.body())).size == (64, 64)
    page.screenshot(path=ARTIFACTS / "gallery.png", full_page=True)

    # A page at a time (the session cookie opens it now): "Show more" adds the next, in order.
    page.goto(f"{page_url}?limit=3")
    assert page.locator("#grid > .card").count() == 3
    assert page.inner_text("#shown") == "Showing 3 of 7"
    for count in (6, 7):
        page.click("#more")
        # (a function, not an expression: the page's CSP forbids eval, which polling one uses)
        page.wait_for_function(
            "n => document.querySelectorAll('#grid > .card').length === n", arg=count
        )
    assert _all(page, "#grid > .card", "els => els.map(e => e.dataset.job)") == ids
    assert page.locator("#more").is_hidden() and page.inner_text("#shown") == ""
    page.goto(f"{page_url}?state=failed")
    assert page.locator("#grid > .card").count() == 0 and page.locator(".empty").is_visible()
    assert not errors, errors

    # Nobody else sees it: no session, a forged link, or another tenant's token.
    stranger = browser.new_context().new_page()
    shown = stranger.goto(page_url)
    assert shown.status == 401 and "farm gallery" in stranger.inner_text("body")
    assert stranger.goto(link.replace("sig=", "sig=A")).status == 401
    stranger.context.close()
    with pytest.raises(NotFound):
        bob.request("POST", f"/v1/campaigns/{handle.id}/gallery-link")
    for path in ("", "/data", "/thumbs/0/0", "/images/0/0.png"):
        assert bob.http.get(f"/v1/campaigns/{handle.id}/gallery{path}").status_code == 404, path
    context.close()


def test_flower_dashboard_lists_workers_and_queues(browser, stack, farm):
    status = stack.status()  # what `farm status --json` prints: the URL and the generated login
    flower = status["flower_url"]
    anonymous = browser.new_context()
    assert anonymous.request.get(flower).status == 401  # no page without the login
    anonymous.close()
    farm.submit([{"prompt": "for flower", "seed": 3, **FAST}]).wait(timeout=60)

    login = {"username": status["flower_user"], "password": status["flower_password"]}
    context = browser.new_context(http_credentials=login, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    nodes = sorted(stack.read_state()["nodes"].values())
    assert page.goto(f"{flower}/workers").status == 200
    # Each worker of the stack has a row saying it is online (Flower breaks long names over
    # lines: compared without white space).
    page.wait_for_function(ROWS_SAY, arg=[nodes, "Online"])
    page.screenshot(path=ARTIFACTS / "flower-workers.png", full_page=True)

    queues = sorted(q["name"] for q in status["queues"] if q["workers"])
    assert {"finalize", "prior.kandinsky-2.2", "decoder.kandinsky-2.2"} <= set(queues)
    assert page.goto(f"{flower}/broker").status == 200
    page.wait_for_function(ROWS_SAY, arg=[queues, ""])
    page.screenshot(path=ARTIFACTS / "flower-broker.png", full_page=True)
    context.close()
