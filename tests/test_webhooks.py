"""Webhooks: signing, refusing internal URLs, and delivery through a real stack."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from farm import webhooks
from farm.errors import InvalidJob
from tests.waiting import wait_until

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


def test_signature_round_trip_and_tampering():
    body = b'{"event":"campaign.done"}'
    header = webhooks.sign("s3cret", body)
    assert webhooks.verify("s3cret", body, header)
    assert not webhooks.verify("other", body, header)
    assert not webhooks.verify("s3cret", body + b" ", header)
    old = webhooks.sign("s3cret", body, at=int(time.time()) - 3600)
    assert not webhooks.verify("s3cret", body, old)  # a replay an hour later
    assert not webhooks.verify("s3cret", body, "garbage")


def test_tenant_secrets_differ_and_are_stable():
    a, b = webhooks.tenant_secret("farm", "alice"), webhooks.tenant_secret("farm", "bob")
    assert a != b and a == webhooks.tenant_secret("farm", "alice") and len(a) == 64


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://127.0.0.1:9/hook", "internal address"),
        ("http://localhost/hook", "internal address"),
        ("http://169.254.169.254/latest/meta-data", "internal address"),
        ("http://10.0.0.7/hook", "internal address"),
        ("http://192.168.1.1/hook", "internal address"),
        ("http://[::1]/hook", "internal address"),
        ("http://[::ffff:127.0.0.1]/hook", "internal address"),
        ("http://0.0.0.0/hook", "internal address"),
        ("ftp://example.com/hook", "http:// or https://"),
        ("http://user:pw@8.8.8.8/hook", "credentials"),
        ("not a url", "http:// or https://"),
        ("http://K]F\u008e\u0093", "not a URL"),  # a stray bracket: urlsplit raises (was a 500)
        ("http://example.com:99999/hook", "not a URL"),
    ],
)
def test_internal_or_odd_callback_urls_are_refused(url, words):
    with pytest.raises(InvalidJob) as e:
        webhooks.check_url(url, allow_private=False)
    assert e.value.field == "callback_url" and words in e.value.reason


def test_public_addresses_pass_and_the_setting_allows_loopback():
    webhooks.check_url("https://8.8.8.8/hook", allow_private=False)
    webhooks.check_url("http://127.0.0.1:9/hook", allow_private=True)


def test_a_campaign_naming_an_internal_callback_is_refused_with_nothing_enqueued(settings):
    from farm.service import Farm

    strict = Farm(settings.model_copy(update={"webhook_allow_private": False}))
    with pytest.raises(InvalidJob) as e:
        strict.submit_campaign(
            {"jobs": [{"prompt": "x", **TINY}], "callback_url": "http://169.254.169.254/"}
        )
    assert e.value.field == "callback_url"


class _Receiver:
    """An HTTP server on 127.0.0.1 that fails its first ``failures`` POSTs with 500."""

    def __init__(self, failures: int):
        self.failures, self.got = failures, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((dict(self.headers), body))
                code = 500 if len(outer.got) <= outer.failures else 200
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_webhook_is_signed_retried_after_a_failure_and_delivered_once(alice):
    receiver = _Receiver(failures=1)
    try:
        handle = alice.submit_campaign(
            grid={"prompts": ["hooked"], "seeds": 3}, defaults=TINY, callback_url=receiver.url
        )
        handle.wait(timeout=120)
        # The retry chain ends at the first success (logged); then no request is left to come.
        wait_until(lambda: any(d["ok"] for d in handle.status()["webhook"]["deliveries"]), 30)
        assert len(receiver.got) == 2  # one failure, one success: delivered once
        secret = alice.webhook_secret()
        for headers, body in receiver.got:
            assert webhooks.verify(secret, body, headers["Farm-Signature"])
        assert receiver.got[0][1] == receiver.got[1][1]  # the same delivery, retried
        assert receiver.got[0][0]["Farm-Delivery"] == receiver.got[1][0]["Farm-Delivery"]
        payload = json.loads(receiver.got[1][1])
        assert payload["event"] == "campaign.done" and payload["campaign_id"] == handle.id
        assert payload["counts"]["done"] == 3 and payload["results"].endswith("results.jsonl")
        log = wait_until(
            lambda: len(handle.status()["webhook"]["deliveries"]) == 2 and handle.status()
        )
        attempts = log["webhook"]["deliveries"]
        assert [a["status"] for a in attempts] == [500, 200] and attempts[1]["ok"]
    finally:
        receiver.close()


@pytest.mark.slow
def test_a_cancelled_campaign_sends_a_cancelled_event(alice):
    receiver = _Receiver(failures=0)
    try:
        handle = alice.submit_campaign(
            grid={"prompts": ["hook then cancel"], "seeds": 2000},
            defaults=TINY,
            callback_url=receiver.url,
        )
        alice.request("POST", f"/v1/campaigns/{handle.id}/cancel")
        handle.wait(timeout=120)
        wait_until(lambda: receiver.got)
        payload = json.loads(receiver.got[0][1])
        assert payload["event"] == "campaign.cancelled" and payload["counts"]["cancelled"] > 0
    finally:
        receiver.close()
