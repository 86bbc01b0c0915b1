"""Prometheus metrics: the names the code exports, the Grafana dashboard that reads them, the
README table, and a real stack's API, workers and Flower scraped after a campaign."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from farm import fleet, metrics
from farm.errors import ConfigError
from farm.settings import Settings
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "infra" / "grafana" / "farm.json"

# Exported metrics that have no panel, each with the reason. Every other one must have a panel.
NOT_ON_DASHBOARD: dict[str, str] = {}

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip


# -- the dashboard and the README against the code ---------------------------------------------


def expressions(node) -> list[str]:
    """Every PromQL expression of a dashboard: its panels' targets (``expr``, nested rows
    included) and its query variables."""
    out = []
    if isinstance(node, dict):
        if node.get("type") == "query" and "query" in node:  # a template variable
            query = node["query"]
            out.append(query["query"] if isinstance(query, dict) else query)
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                out.append(value)
            elif key != "query":
                out += expressions(value)
    elif isinstance(node, list):
        for item in node:
            out += expressions(item)
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not its functions, labels or keywords)."""
    found = set(re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)", expr))
    expr = re.sub(r"label_values\([^)]*\)", " ", expr)
    expr = re.sub(r'"[^"]*"', " ", expr)  # strings: label values, regexes
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        name, call = match.groups()
        if not call and name.lower() not in PROMQL_WORDS:
            found.add(name)
    return found


def flower_series() -> set[str]:
    """The sample names Flower's /metrics can show (from Flower's own definitions)."""
    from flower.events import get_prometheus_metrics

    out = set()
    for metric in vars(get_prometheus_metrics()).values():
        for family in getattr(metric, "describe", list)():
            if family.type == "histogram":
                out |= {family.name + s for s in ("_bucket", "_sum", "_count")}
            elif family.type == "counter":
                out.add(family.name + "_total")
            else:
                out.add(family.name)
    return out


def dashboard_names() -> set[str]:
    exprs = expressions(json.loads(DASHBOARD.read_text(encoding="utf-8")))
    assert exprs, "the dashboard has no queries"
    return {name for expr in exprs for name in metric_names(expr)}


def test_promql_names_are_found():
    expr = (
        'histogram_quantile(0.95, sum by (le, stage) (rate(farm_x_bucket{family=~"$f"}[5m]))) '
        "/ on (stage) group_left max(flower_y) * 60 + farm_z offset 1h"
    )
    assert metric_names(expr) == {"farm_x_bucket", "flower_y", "farm_z"}
    assert metric_names("label_values(farm_queue_depth, queue)") == {"farm_queue_depth"}


def test_dashboard_reads_only_metrics_the_farm_or_flower_exports():
    exported, flower = metrics.series_names(), flower_series()
    unknown = {n for n in dashboard_names() if n not in exported and n not in flower}
    assert not unknown, f"the dashboard reads metrics nothing exports: {sorted(unknown)}"


def test_every_exported_metric_is_on_the_dashboard():
    used = dashboard_names()
    for m in metrics.CATALOG:
        names = {m["name"]}
        if m["type"] == "histogram":
            names = {m["name"] + s for s in ("_bucket", "_sum", "_count")}
        if m["name"] not in NOT_ON_DASHBOARD:
            assert names & used, f"{m['name']} is on no dashboard panel (or NOT_ON_DASHBOARD)"
    assert set(NOT_ON_DASHBOARD) <= {m["name"] for m in metrics.CATALOG}


def test_readme_documents_every_metric():
    section = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    for m in metrics.CATALOG:
        assert f"`{m['name']}`" in section, f"docs/metrics.md Metrics table lacks {m['name']}"


# -- recording, in this process ----------------------------------------------------------------


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_decoded_counts_images_timings_and_compute_seconds():
    settings = Settings(device="cpu")
    stored = [
        ({"job_id": "u1", "spec": {"model": "sd-1.5", "task": "img2img"}}, "k1"),
        ({"job_id": "u2", "spec": {"model": "sd-1.5", "task": "img2img", "num_images_per_prompt": 3}}, "k2"),
    ]  # fmt: skip
    timings = {
        "u1": {"decode": 0.5, "encode": 0.01, "upload": 0.02, "store": 0.0, "latency": 2.0},
        "u2": {"decode": 0.25, "wait_decoder": 1.0},
    }
    images = value("farm_images_rendered_total", family="sd-1.5", task="img2img")
    seconds = value("farm_compute_seconds_total", stage="decoder", family="sd-1.5", device="cpu")
    decodes = value("farm_stage_duration_seconds_count", stage="decode", family="sd-1.5")
    waits = value("farm_queue_wait_seconds_count", stage="decoder", family="sd-1.5")
    metrics.decoded(settings, stored, timings)
    assert value("farm_images_rendered_total", family="sd-1.5", task="img2img") == images + 4
    assert value(
        "farm_compute_seconds_total", stage="decoder", family="sd-1.5", device="cpu"
    ) == pytest.approx(seconds + 0.75)
    assert (
        value("farm_stage_duration_seconds_count", stage="decode", family="sd-1.5") == decodes + 2
    )
    assert value("farm_queue_wait_seconds_count", stage="decoder", family="sd-1.5") == waits + 1
    assert value("farm_job_latency_seconds_sum", family="sd-1.5") >= 2.0


def test_prior_batches_cache_failures_and_uploads():
    from farm.domain.jobs import JobSpec

    spec = JobSpec(prompt="p", model="kandinsky-2.1")
    hits = value("farm_prior_cache_requests_total", family="kandinsky-2.1", result="hit")
    misses = value("farm_prior_cache_requests_total", family="kandinsky-2.1", result="miss")
    charged = value(
        "farm_compute_seconds_total", stage="prior", family="kandinsky-2.1", device="gpu"
    )
    metrics.prior_ran(
        spec, 5, 2, {"a": {"prior": 0.1, "wait_prior": 3.0}}, {"prior:kandinsky-2.1:gpu": 1.5}
    )
    assert (
        value("farm_prior_cache_requests_total", family="kandinsky-2.1", result="hit") == hits + 2
    )
    assert (
        value("farm_prior_cache_requests_total", family="kandinsky-2.1", result="miss")
        == misses + 3
    )
    assert value(
        "farm_compute_seconds_total", stage="prior", family="kandinsky-2.1", device="gpu"
    ) == pytest.approx(charged + 1.5)

    calls = value("farm_batch_fill_ratio_count", stage="prior", family="kandinsky-2.1")
    full = value("farm_batch_fill_ratio_bucket", stage="prior", family="kandinsky-2.1", le="0.5")
    metrics.batch("prior", "kandinsky-2.1", 2, 4)
    assert value("farm_batch_fill_ratio_count", stage="prior", family="kandinsky-2.1") == calls + 1
    assert (
        value("farm_batch_fill_ratio_bucket", stage="prior", family="kandinsky-2.1", le="0.5")
        == full + 1
    )

    failed = value("farm_jobs_failed_total", stage="decoder", error="ZeroDivisionError")
    metrics.job_failed("decoder", ZeroDivisionError("x"))
    assert value("farm_jobs_failed_total", stage="decoder", error="ZeroDivisionError") == failed + 1

    sent = value("farm_uploaded_bytes_total", content_type="image/webp")
    metrics.uploaded("image/webp; q=1", 1234)
    assert value("farm_uploaded_bytes_total", content_type="image/webp") == sent + 1234


def test_a_metric_never_fails_a_job(caplog):
    # A job entry without its spec: the metric is lost, logged, and the caller goes on.
    metrics.decoded(Settings(), [({"job_id": "x"}, "k")], {})
    assert "could not record metrics" in caplog.text


def test_listen_address():
    assert metrics.parse_listen("9464") == ("0.0.0.0", 9464)
    assert metrics.parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert metrics.parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("", "host", "1.2.3.4:0", "1.2.3.4:70000", ":x"):
        with pytest.raises(ConfigError, match="FARM_METRICS_LISTEN"):
            metrics.parse_listen(bad)


def test_queue_metrics_say_when_redis_is_away():
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from farm.local.servers import free_port

    client = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    collector = metrics.QueueCollector(lambda: client, ["kandinsky-2.2"])
    families = {f.name: f for f in collector.collect()}
    assert set(families) == {"farm_redis_up"}
    assert families["farm_redis_up"].samples[0].value == 0


FORKED = """
import multiprocessing, sys
import prometheus_client  # first, as in a `celery` command (Flower's plugin imports it)
from farm import metrics

metrics.use_dir(sys.argv[1])

def child(n):
    metrics.uploaded("image/png", n)
    metrics.batch("decoder", "kandinsky-3", n, 4)

ctx = multiprocessing.get_context("fork")
procs = [ctx.Process(target=child, args=(n,)) for n in (1, 2, 3)]
for p in procs:
    p.start()
for p in procs:
    p.join()
registry = metrics.process_registry()
print(registry.get_sample_value("farm_uploaded_bytes_total", {"content_type": "image/png"}))
print(registry.get_sample_value(
    "farm_batch_size_count", {"stage": "decoder", "family": "kandinsky-3"}
))
"""


def test_forked_processes_are_summed(tmp_path):
    """A prefork pool: each child writes its values to the folder, the parent serves the sum;
    the folder is emptied first (a stale file of an earlier run would be added)."""
    import subprocess
    import sys

    (tmp_path / "counter_99999.db").write_bytes(b"stale")
    out = subprocess.run(
        [sys.executable, "-c", FORKED, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    assert out.stdout.split() == ["6.0", "3.0"], out.stderr
    assert not (tmp_path / "counter_99999.db").exists()


def test_stack_endpoints():
    state = {
        "api_url": "http://127.0.0.1:1",
        "flower_url": "http://127.0.0.1:2",
        "metrics_ports": {"worker-prior-1": 3},
    }
    assert metrics.endpoints(state) == {
        "api": "http://127.0.0.1:1/metrics",
        "flower": "http://127.0.0.1:2/metrics",
        "worker-prior-1": "http://127.0.0.1:3/metrics",
    }


# -- a real stack ------------------------------------------------------------------------------

FAST = {"num_inference_steps": 2, "prior_num_inference_steps": 2, "height": 64, "width": 64}


def scrape(url: str) -> dict[str, list[tuple[dict, float]]]:
    """Sample name -> (labels, value) of one /metrics page, read by Prometheus's own parser."""
    resp = httpx.get(url, timeout=10)
    assert resp.status_code == 200, f"{url}: {resp.status_code}"
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(pages: list[dict], name: str, **labels) -> float:
    """A sample summed over pages (the workers) and over the label values not given."""
    return sum(
        v
        for page in pages
        for got, v in page.get(name, [])
        if all(got.get(k) == str(want) for k, want in labels.items())
    )


@pytest.mark.slow
def test_a_campaign_shows_on_every_metrics_endpoint(stack, alice, api_url, settings):
    endpoints = stack.status()["metrics"]
    workers = [url for name, url in endpoints.items() if name.startswith("worker-")]
    assert endpoints["api"] == f"{api_url}/metrics" and endpoints["flower"].endswith("/metrics")
    assert len(workers) == sum(stack.read_state()["worker_counts"].values())

    def worker_pages():
        return [scrape(url) for url in workers]

    before = worker_pages()
    api_before = [scrape(endpoints["api"])]
    spec = {**FAST, "num_images_per_prompt": 2}
    first = alice.submit_campaign(grid={"prompts": ["m-a", "m-b"], "seeds": [1, 2]}, defaults=spec)
    ended = [first.wait(timeout=120)]
    assert ended[0]["counts"]["done"] == 4
    # The same prompt and seed again: the prior's cache answers.
    second = alice.submit_campaign(jobs=[{"prompt": "m-a", "seed": 1}], defaults=spec)
    ended.append(second.wait(timeout=120))
    jobs, images = 5, 5 * 2

    def grew(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    def rendered():
        nonlocal after
        after = worker_pages()
        return grew("farm_images_rendered_total") >= images

    after: list[dict] = []
    wait_until(rendered, timeout=30, what="the workers' image counters")
    assert grew("farm_images_rendered_total", family="kandinsky-2.2", task="text2img") == images
    assert grew("farm_images_rendered_total") == images
    # Every job has each stage's timing (the cached one's prior: its share of the lookup).
    for stage in ("prior", "decode", "encode", "upload", "store"):
        assert grew("farm_stage_duration_seconds_count", stage=stage) == jobs, stage
    assert grew("farm_stage_duration_seconds_sum", stage="decode") > 0
    assert grew("farm_queue_wait_seconds_count", stage="decoder") == jobs
    assert grew("farm_job_latency_seconds_count", family="kandinsky-2.2") == jobs
    assert grew("farm_prior_cache_requests_total", result="hit") == 1
    assert grew("farm_prior_cache_requests_total", result="miss") == 4
    # Every job went through exactly one decoder call; fill is jobs per call over the maximum.
    assert grew("farm_batch_size_sum", stage="decoder") == jobs
    assert (
        0
        < grew("farm_batch_fill_ratio_sum", stage="decoder")
        <= grew("farm_batch_fill_ratio_count", stage="decoder")
    )
    assert grew("farm_batch_size_count", stage="prior") >= 1
    assert grew("farm_jobs_failed_total") == 0
    # Compute seconds are the seconds the campaigns were charged (usage rounds to 1 ms).
    for stage in ("prior", "decoder"):
        charged = sum(status["usage"]["compute_s"][stage]["kandinsky-2.2"] for status in ended)
        counted = grew("farm_compute_seconds_total", stage=stage, family="kandinsky-2.2")
        assert counted == pytest.approx(charged, abs=0.005), stage
        assert counted > 0
    assert grew("farm_uploaded_bytes_total", content_type="image/png") > images * 100
    assert grew("farm_uploaded_bytes_total", content_type="application/json") > 0

    def finalized():
        nonlocal after
        after = worker_pages()
        return grew("farm_uploaded_bytes_total", content_type="application/x-ndjson") > 0

    wait_until(finalized, timeout=30, what="results.jsonl uploads counted")

    # The API: no token needed; every queue's depth, backlog and consumers, read from Redis.
    api = [scrape(endpoints["api"])]
    assert total(api, "farm_redis_up") == 1
    queues = fleet.all_queues(settings.enabled_families)
    for name in ("farm_queue_depth", "farm_queue_backlog", "farm_queue_workers"):
        assert sorted(labels["queue"] for labels, _ in api[0][name]) == sorted(queues), name
    assert total(api, "farm_queue_workers", queue="prior.kandinsky-2.2") >= 1
    assert total(api, "farm_queue_depth", queue="decoder.kandinsky-2.2") >= 0
    # The API's own uploads: the campaigns' manifests.
    manifests = total(api, "farm_uploaded_bytes_total") - total(
        api_before, "farm_uploaded_bytes_total"
    )
    assert manifests > 0

    # Flower's /metrics answers without its login and names the farm's tasks.
    flower = [scrape(endpoints["flower"])]
    assert total(flower, "flower_events_total", type="task-succeeded") > 0
    read = {n for n in dashboard_names() if n.startswith("flower_")}
    assert read <= set(flower[0]), f"Flower does not show {sorted(read - set(flower[0]))}"
