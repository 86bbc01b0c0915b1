"""Settings and the Celery configuration that decides whether jobs are lost or duplicated."""

from __future__ import annotations

import json

import pytest

from farm.errors import ConfigError
from farm.settings import Settings
from workers.app import celery_config, create_app


def test_env_prefix_and_defaults(monkeypatch):
    monkeypatch.setenv("FARM_S3_BUCKET", "renders-x")
    monkeypatch.setenv("FARM_EMBEDDING_TTL_S", "60")
    s = Settings.load()
    assert s.s3_bucket == "renders-x" and s.embedding_ttl_s == 60
    assert s.prior_model == "tiny" and s.device == "cpu" and s.dtype == "float32"


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
    s = Settings(state_dir=tmp_path)
    assert s.model_folder("prior") == str(tmp_path.resolve() / "models" / "tiny-k22" / "prior")
    real = Settings(state_dir=tmp_path, decoder_model="kandinsky-community/kandinsky-2-2-decoder")
    assert real.model_folder("decoder") == "kandinsky-community/kandinsky-2-2-decoder"


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
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    assert conf["worker_cancel_long_running_tasks_on_connection_loss"]
    assert conf["broker_connection_max_retries"] is None
    assert conf["worker_proc_alive_timeout"] >= 120  # a child loading models must not be killed
    routes = conf["task_routes"]
    assert routes["farm.prior"]["queue"] == "prior" and routes["farm.decoder"]["queue"] == "decoder"


def test_app_refuses_pickle(tmp_path):
    app = create_app(Settings(state_dir=tmp_path, redis_url="redis://127.0.0.1:1/0"))
    assert "pickle" not in app.conf.accept_content
    assert "application/x-python-serialize" not in app.conf.accept_content


def test_readme_lists_every_setting_with_its_default():
    from pathlib import Path

    readme = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
    assert Settings.markdown_table() in readme, (
        "README settings table is stale: paste `farm settings`"
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

    from farm.capabilities import markdown_matrix

    readme = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
    assert markdown_matrix() in readme, (
        "README capability matrix is stale: paste `farm capabilities`"
    )
