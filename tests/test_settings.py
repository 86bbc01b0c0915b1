"""Settings and the Celery configuration that decides whether jobs are lost or duplicated."""

from __future__ import annotations

import json

import pytest

from farm.errors import ConfigError
from farm.families import REGISTRY, get
from farm.settings import Settings
from workers.app import celery_config, create_app


def test_env_prefix_and_defaults(monkeypatch):
    monkeypatch.setenv("FARM_S3_BUCKET", "renders-x")
    monkeypatch.setenv("FARM_EMBEDDING_TTL_S", "60")
    s = Settings.load()
    assert s.s3_bucket == "renders-x" and s.embedding_ttl_s == 60
    assert s.locations == {} and s.device == "cpu" and s.dtype == "float32"


def test_part_locations_come_from_their_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("FARM_DECODER_MODEL", "/weights/k22-decoder")
    monkeypatch.setenv("FARM_KANDINSKY3_MODEL", "kandinsky-community/kandinsky-3")
    s = Settings.load(state_dir=tmp_path)
    k22 = get("kandinsky-2.2")
    assert s.location(k22.part("decoder")) == "/weights/k22-decoder"
    assert s.location(get("kandinsky-3").part("kandinsky3")) == "kandinsky-community/kandinsky-3"
    assert s.location(k22.part("prior")) == str(tmp_path.resolve() / "models" / "tiny" / "prior")
    env = s.worker_env()
    assert env["FARM_DECODER_MODEL"] == "/weights/k22-decoder" and "FARM_LOCATIONS" not in env


def test_enabled_families_are_checked(monkeypatch):
    monkeypatch.setenv("FARM_MODELS", "kandinsky-2.2, kandinsky-3")
    assert Settings.load().enabled_families == ("kandinsky-2.2", "kandinsky-3")
    monkeypatch.setenv("FARM_MODELS", "kandinsky-2.2,dalle")
    with pytest.raises(
        ConfigError, match="FARM_MODELS: unknown model family dalle; known: kandinsky-2.2"
    ):
        Settings.load()
    monkeypatch.delenv("FARM_MODELS")
    monkeypatch.setenv("FARM_WORKER_MODELS", "kandinsky-3")
    s = Settings.load()
    assert s.served_families == ("kandinsky-3",) and len(s.enabled_families) == len(REGISTRY)


def test_visibility_timeout_must_exceed_time_limit():
    with pytest.raises(ConfigError, match="visibility_timeout_s must exceed"):
        Settings.load(task_time_limit_s=4000, task_soft_time_limit_s=3900)


def test_bad_value_names_the_setting(monkeypatch):
    monkeypatch.setenv("FARM_DTYPE", "float64")
    with pytest.raises(ConfigError, match="dtype"):
        Settings.load()


def test_missing_endpoints_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="farm up"):
        Settings(state_dir=tmp_path).with_stack().require_endpoints()


def test_stack_file_fills_endpoints(tmp_path):
    (tmp_path / "stack.json").write_text(
        json.dumps(
            {
                "redis_url": "redis://:pw@127.0.0.1:1/0",
                "s3_endpoint": "http://127.0.0.1:2",
                "s3_access_key": "a",
                "s3_secret_key": "b",
                "bucket": "bkt",
            }
        )
    )
    s = Settings(state_dir=tmp_path).with_stack()
    assert s.redis_url.endswith(":1/0") and s.s3_bucket == "bkt"
    assert s.s3_secret_key.get_secret_value() == "b"
    assert "b" not in repr(s.s3_secret_key)  # secrets never printed


def test_worker_env_round_trips(tmp_path):
    s = Settings(state_dir=tmp_path, redis_url="redis://x:1/0", s3_secret_key="sekrit")
    env = s.worker_env()
    assert env["FARM_S3_SECRET_KEY"] == "sekrit"
    again = Settings(**{k.removeprefix("FARM_").lower(): v for k, v in env.items()})
    assert again.model_dump() == s.model_dump() | {"state_dir": tmp_path.resolve()}


def test_tiny_resolves_to_state_folder(tmp_path):
    k22 = get("kandinsky-2.2")
    s = Settings(state_dir=tmp_path)
    assert s.location(k22.part("prior")) == str(tmp_path.resolve() / "models" / "tiny" / "prior")
    hub = k22.part("decoder").hub_id
    real = Settings(state_dir=tmp_path, decoder_model=hub)
    assert real.location(k22.part("decoder")) == hub and not real.is_tiny_location(
        k22.part("decoder")
    )
    # The 2.1 prior's tiny build is the 2.2 prior (the same components).
    assert s.location(get("kandinsky-2.1").part("prior")) == s.location(k22.part("prior"))


def test_celery_config_is_safe(tmp_path):
    s = Settings(state_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")
    conf = celery_config(s)
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["result_accept_content"] == ["json"]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    vt = conf["broker_transport_options"]["visibility_timeout"]
    assert (
        vt
        == conf["result_backend_transport_options"]["visibility_timeout"]
        == conf["visibility_timeout"]
    )
    assert vt > conf["task_time_limit"] > conf["task_soft_time_limit"]
    # Flower sees tasks through the workers' events; nothing waits on task results.
    assert conf["worker_send_task_events"] and conf["task_ignore_result"]
    assert conf["worker_cancel_long_running_tasks_on_connection_loss"]
    assert conf["broker_connection_max_retries"] is None
    assert conf["worker_proc_alive_timeout"] >= 120  # a child loading models must not be killed
    assert {q.name for q in conf["task_queues"]} >= {
        "prior.kandinsky-2.2",
        "decoder.kandinsky-2.2",
        "decoder.kandinsky-3",
        "finalize",
    }
    assert "prior.kandinsky-3" not in {q.name for q in conf["task_queues"]}  # no prior stage
    (route,) = conf["task_routes"]
    spec = {"spec": {"model": "kandinsky-2.1"}}
    assert route("farm.prior", (), spec, {}) == {"queue": "prior.kandinsky-2.1"}
    assert route("farm.decoder", (), spec, {}) == {"queue": "decoder.kandinsky-2.1"}
    assert route("farm.finalize", (), {"campaign_id": "c"}, {}) == {"queue": "finalize"}
    only = celery_config(Settings(state_dir=tmp_path, models="kandinsky-3"))
    assert [q.name for q in only["task_queues"]] == ["decoder.kandinsky-3", "finalize"]


def test_app_refuses_pickle(tmp_path):
    app = create_app(Settings(state_dir=tmp_path, redis_url="redis://127.0.0.1:1/0"))
    assert "pickle" not in app.conf.accept_content
    assert "application/x-python-serialize" not in app.conf.accept_content


def test_readme_lists_every_setting_with_its_default():
    from pathlib import Path

    readme = Path(__file__).resolve().parent.parent.joinpath("docs", "settings.md").read_text()
    assert Settings.markdown_table() in readme, (
        "docs/settings.md settings table is stale: paste `farm settings`"
    )


def test_api_tokens_parse_and_refuse_weak_ones():
    s = Settings(api_tokens="alice:" + "a" * 20 + ", bob:" + "b" * 16)
    assert s.tenants() == {"a" * 20: "alice", "b" * 16: "bob"}
    with pytest.raises(ConfigError, match="16"):
        Settings(api_tokens="eve:short").tenants()
    with pytest.raises(ConfigError, match="tenant:token"):
        Settings(api_tokens="no-colon-here-at-all").tenants()


def test_readme_shows_the_capability_matrix():
    from pathlib import Path

    from farm.families import markdown_matrix

    readme = Path(__file__).resolve().parent.parent.joinpath("docs", "capabilities.md").read_text()
    assert markdown_matrix() in readme, (
        "docs/capabilities.md capability matrix is stale: paste `farm capabilities`"
    )
