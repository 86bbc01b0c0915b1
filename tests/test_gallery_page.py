"""The gallery page without servers: escaping of user text, the sign-in signatures, thumbnails,
and the routes' auth on a stand-in farm (the live page is tests/browser/test_gallery.py)."""

from __future__ import annotations

import io
import time
from html.parser import HTMLParser

import pytest
from PIL import Image

from api import gallery
from api.gallery_page import render_card, render_page, render_status

HOSTILE = '<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2">\'&'
CID = "0123456789abcdef0123456789abcdef"
# Every tag the page's fragments may hold; anything else came from user text.
TAGS = {
    "li", "span", "a", "img", "div", "p", "bdi", "b", "details", "summary", "dl", "dt", "dd",
    "code", "progress", "nav",
}  # fmt: skip


class Tree(HTMLParser):
    """Tags, attributes, and the text inside elements of a given class."""

    def __init__(self, text_of: str = "prompt"):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text_of, self.depth, self.texts = text_of, 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if self.depth:
            self.depth += 1
        elif self.text_of in (attrs.get("class") or "").split():
            self.depth = 1
            self.texts.append("")

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.texts[-1] += data


def job(index=0, state="done", prompt=HOSTILE, **spec) -> dict:
    return {
        "job_id": f"{CID}-{index}",
        "state": state,
        "seed": 42,
        "spec": {
            "prompt": prompt,
            "negative_prompt": HOSTILE,
            "seed": 42,
            "width": 64,
            "height": 64,
            "num_inference_steps": 2,
            "guidance_scale": 4.0,
            "model": "kandinsky-2.2",
            "task": "text2img",
            "scheduler": HOSTILE,
            "strength": 0.3,
            "prior_strength": 0.3,
            **spec,
        },
        "s3_key": f"renders/alice/{CID}/{CID}-{index}.png",
        "s3_keys": [f"renders/alice/{CID}/{CID}-{index}.png"],
        "timings": {"prior": 0.5},
        "error": {"type": "Boom<b>", "message": HOSTILE} if state == "failed" else None,
    }


def status(**extra) -> dict:
    return {
        "id": CID,
        "name": HOSTILE,
        "state": "running",
        "waiting_reason": HOSTILE,
        "total": 3,
        "counts": {"queued": 1, "prior": 0, "decoding": 0, "done": 1, "failed": 1},
        "images_per_second": 0.5,
        "eta_s": 4.0,
        "started_at": 1.0,
        "finished_at": None,
        **extra,
    }


def assert_inert(markup: str) -> Tree:
    """No tag, attribute or handler that user text could have brought in."""
    tree = Tree()
    tree.feed(markup)
    for tag, attrs in tree.tags:
        assert tag in TAGS, tag
        assert not any(name.startswith("on") for name in attrs), attrs
        for url in (attrs.get("src"), attrs.get("href")):
            assert url is None or url.startswith("gallery"), url  # only the gallery's own
    assert "<script" not in markup and "<img src=x" not in markup
    return tree


@pytest.mark.parametrize("state", ["done", "failed", "queued", "decoding"])
def test_card_escapes_every_piece_of_user_text(state):
    card = render_card(job(3, state))
    tree = assert_inert(card["html"])
    assert tree.texts == [HOSTILE]  # the prompt, shown literally
    assert card["id"] == "job-3" and card["version"] == f"{state}:{int(state == 'done')}"
    prompt = next(a for t, a in tree.tags if "prompt" in (a.get("class") or ""))
    assert prompt["dir"] == "auto" and prompt["title"] == HOSTILE
    if state == "done":
        img = next(a for t, a in tree.tags if t == "img")
        assert img["src"] == "gallery/thumbs/3/0" and img["alt"] == HOSTILE
    if state == "failed":
        error = Tree("error")
        error.feed(card["html"])
        assert error.texts == [f"Boom<b>: {HOSTILE}"]


def test_card_shows_seed_parameters_and_every_image():
    card = render_card(job(5, num_images_per_prompt=3, s3_keys=None) | {"s3_keys": ["a", "b", "c"]})
    tree = assert_inert(card["html"])
    links = [a["href"] for t, a in tree.tags if t == "a"]
    assert links == [f"gallery/images/5/{n}.png" for n in (0, 0, 1, 2)]
    seed = Tree("seed")
    seed.feed(card["html"])
    assert seed.texts == ["seed 42"]
    for text in ("64×64", "2 steps", "cfg 4", "kandinsky-2.2", "scheduler", "prior time"):
        assert text in card["html"]
    # Parameters its task never reads are left out.
    assert "<dt>strength</dt>" not in card["html"] and "<dt>prior_strength</dt>" not in card["html"]
    img2img = render_card(job(task="img2img", image="in:" + "0" * 64, strength=0.5))["html"]
    assert "<dt>strength</dt>" in img2img and "<dt>image</dt>" in img2img


def test_multilingual_prompts_keep_their_text_and_direction():
    for prompt in ("قطة حمراء على سطح", "빨간 고양이", "红色的猫"):
        tree = assert_inert(render_card(job(prompt=prompt))["html"])
        assert tree.texts == [prompt]


def test_page_and_status_escape_the_name_and_reasons():
    nonce = "n0nce"
    markup = render_page(status(), [render_card(job(0))], "abc", nonce)
    head, _, rest = markup.partition("<body")
    assert "<title>(1/3) &lt;script&gt;" in head  # the name, in the title too
    body, _, script = rest.partition("<script")
    assert HOSTILE not in body and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in body
    assert script.startswith(f' nonce="{nonce}">') and f'<style nonce="{nonce}">' in head
    assert body.count("<script") == 0 and '<h1 dir="auto">' in body
    tree = Tree("waiting")
    tree.feed(render_status(status(), None))
    assert tree.texts == [f"Waiting: {HOSTILE}"]


def test_signatures_bind_tenant_campaign_purpose_and_expiry():
    tokens = {"a" * 20: "alice", "b" * 20: "bob"}
    exp = int(time.time()) + 60
    sig = gallery.sign("a" * 20, "link", "alice", CID, exp)
    assert gallery.verify(tokens, "link", "alice", CID, exp, sig)
    assert not gallery.verify(tokens, "session", "alice", CID, exp, sig)  # not a cookie
    assert not gallery.verify(tokens, "link", "alice", CID[::-1], exp, sig)  # one campaign
    assert not gallery.verify(tokens, "link", "bob", CID, exp, sig)  # one tenant
    assert not gallery.verify(tokens, "link", "alice", CID, exp + 1, sig)  # its expiry
    assert not gallery.verify({"b" * 20: "bob"}, "link", "alice", CID, exp, sig)  # token revoked
    old = int(time.time()) - 1
    assert not gallery.verify(
        tokens, "link", "alice", CID, old, gallery.sign("a" * 20, "link", "alice", CID, old)
    )
    cookie = gallery.make_session(tokens, "alice", CID)
    assert gallery.session_tenant(tokens, cookie, CID) == "alice"
    assert gallery.session_tenant(tokens, cookie, CID[::-1]) is None
    assert not gallery.verify(tokens, "link", "alice", CID, exp, "é" + sig[1:])
    for bad in ("", "x", "a.b.c", "!!.1.x", cookie + "x", "YWxpY2U.notanint.x", cookie + "é"):
        assert gallery.session_tenant(tokens, bad, CID) is None
    link = gallery.make_link("a" * 20, "alice", CID)
    assert "a" * 20 not in link and link.startswith(f"/v1/campaigns/{CID}/gallery?exp=")


def _png(w: int, h: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def test_thumbnails_shrink_large_images_and_pass_small_ones():
    small = _png(64, 64)
    assert gallery.thumbnail(small) == (small, "image/png")
    data, media = gallery.thumbnail(_png(1024, 768))
    assert media == "image/webp" and Image.open(io.BytesIO(data)).size == (512, 384)
    cache = gallery.ThumbCache(max_bytes=10)
    cache.put("a", (b"12345", "x"))
    cache.put("b", (b"12345", "x"))
    assert cache.get("a")  # a is now the most recently used
    cache.put("c", (b"12345", "x"))
    assert cache.get("b") is None and cache.get("a") and cache.get("c") and cache.size == 10


class FakeRecords:
    def campaign(self, cid):
        return {"tenant": "alice", "total": 3} if cid == CID else None

    def get_many(self, ids):
        return [None for _ in ids]


class FakeFarm:
    """The three reads the gallery makes, for one campaign of alice's."""

    records = FakeRecords()

    def status(self, cid, *, tenant):
        from farm.errors import NotFound

        if cid != CID or tenant != "alice":
            raise NotFound(f"unknown campaign {cid}")
        return status(name="grid")

    def jobs_page(self, cid, *, tenant, state=None, cursor=None, limit=100):
        self.status(cid, tenant=tenant)
        return [job(0), job(1, "failed"), job(2, "queued")][:limit], None


@pytest.fixture
def client():
    from fastapi.testclient import TestClient

    from api.app import create_app
    from farm.settings import Settings

    settings = Settings(
        api_tokens=f"alice:{'a' * 20},bob:{'b' * 20}",
        redis_url="redis://127.0.0.1:1/0",
        s3_endpoint="http://127.0.0.1:1",
    )
    with TestClient(create_app(settings, farm=FakeFarm())) as c:
        yield c


def test_link_signs_a_browser_in_with_a_scoped_strict_cookie(client):
    page = f"/v1/campaigns/{CID}/gallery"
    anonymous = client.get(page)
    assert anonymous.status_code == 401 and "farm gallery" in anonymous.text
    assert "default-src 'none'" in anonymous.headers["content-security-policy"]
    bob = {"Authorization": f"Bearer {'b' * 20}"}
    assert client.post(f"{page}-link", headers=bob).status_code == 404
    assert client.get(page, headers=bob).status_code == 404
    assert client.post(f"{page}-link").status_code == 401
    link = client.post(f"{page}-link", headers={"Authorization": f"Bearer {'a' * 20}"}).json()
    assert link["expires_in_s"] == 900 and link["url"].endswith(link["path"])
    assert client.get(link["path"].replace("sig=", "sig=x")).status_code == 401
    assert client.get(link["path"].replace("sig=", "sig=%C3%A9")).status_code == 401
    opened = client.get(link["path"])
    assert opened.status_code == 200 and "<title>(1/3) grid · gallery</title>" in opened.text
    cookie = opened.headers["set-cookie"]
    for part in ("HttpOnly", "SameSite=strict", f"Path=/v1/campaigns/{CID}/gallery", "Max-Age="):
        assert part in cookie, cookie
    csp = opened.headers["content-security-policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in opened.text and "unsafe-inline" not in csp
    # The cookie opens the gallery's reads, not the API.
    data = client.get(f"{page}/data", params={"limit": 2})
    assert data.status_code == 200 and [c["id"] for c in data.json()["cards"]] == ["job-0", "job-1"]
    assert client.get(f"/v1/campaigns/{CID}").status_code == 401
    assert client.get(f"{page}/thumbs/0/0").status_code == 404  # no record: no image yet
    forged = link["path"].replace("sig=", "sig=x")
    assert client.get(forged).status_code == 200  # signed in already: an old link still opens
    client.cookies.clear()
    assert client.get(f"{page}/data").status_code == 401
    expired = client.get(forged)
    assert expired.status_code == 401 and "expired" in expired.text
