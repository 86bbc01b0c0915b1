"""The local stack as operators see it: `farm status --json`, Flower, and the demo end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.waiting import wait_until

pytestmark = pytest.mark.slow

FAST = {"num_inference_steps": 2, "prior_num_inference_steps": 2}


def _farm(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(extra)
    return env


def test_status_json_lists_endpoints_and_workers(stack, settings):
    res = _farm("status", "--json", env=_clean_env(FARM_STATE_DIR=str(settings.state_dir)))
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    assert status["running"] is True
    assert status["redis_url"] == settings.redis_url
    assert status["s3_endpoint"] == settings.s3_endpoint and status["bucket"] == "farm-test"
    assert status["flower_url"].startswith("http://127.0.0.1:")
    queues = {q["name"]: q for q in status["queues"]}
    assert set(queues) >= {"prior.kandinsky-2.2", "decoder.kandinsky-2.2", "decoder.kandinsky-3"}
    assert all(len(q["workers"]) == 1 for name, q in queues.items() if name != "finalize")
    assert len(queues["finalize"]["workers"]) == 2 and queues["prior.kandinsky-2.2"]["depth"] == 0
    by_stage = {w["stage"]: w for w in status["workers"]}
    assert set(by_stage) == {"prior", "decoder"}
    decoder = by_stage["decoder"]
    assert "kandinsky-3/kandinsky3" in decoder["resident_parts"]
    pool = len(decoder["processes"]) - 1  # each pool process loads the families once
    assert decoder["rss_bytes"] > 50 * 2**20 and decoder["loads"] == pool * len(decoder["families"])
    # Human output never shows the Redis password.
    human = _farm("status", env=_clean_env(FARM_STATE_DIR=str(settings.state_dir)))
    password = settings.redis_url.split(":")[2].split("@")[0]
    assert password not in human.stdout and "***" in human.stdout
    for url in status["metrics"].values():  # the scrape targets, as --json lists them
        assert url in human.stdout


def test_flower_sees_workers_and_tasks(stack, farm):
    state = stack.read_state()
    flower = state["flower_url"]
    # Without the generated login, only the health check and Prometheus metrics (counts by
    # task name and worker, no arguments) answer; pages and the API (revoke!) do not.
    for path in ("/", "/api/workers", "/api/tasks", "/tasks", "/broker"):
        assert httpx.get(f"{flower}{path}").status_code == 401, path
    auth = (state["flower_user"], state["flower_password"])
    recs = farm.submit([{"prompt": "flower", "seed": 2, "height": 64, "width": 64, **FAST}]).wait(
        timeout=60
    )
    assert httpx.get(f"{flower}/healthcheck").status_code == 200

    def names() -> set:
        tasks = httpx.get(f"{flower}/api/tasks", params={"limit": 1000}, auth=auth).json()
        return {t["name"] for t in tasks.values() if recs[0].job_id in (t.get("kwargs") or "")}

    wait_until(lambda: names() >= {"farm.prior", "farm.decoder"}, 20, 0.3, "Flower lists both")
    workers = httpx.get(f"{flower}/api/workers", params={"refresh": "true"}, auth=auth).json()
    queues = {q["name"] for w in workers.values() for q in w.get("active_queues", [])}
    assert queues >= {"prior.kandinsky-2.2", "decoder.kandinsky-2.2", "decoder.kandinsky-3"}
    assert "flower_events_total" in httpx.get(f"{flower}/metrics", auth=auth).text


def test_demo_end_to_end_on_embedded_servers(tmp_path):
    """`farm demo` starts its own Valkey + SeaweedFS + workers + Flower, renders, and stops them."""
    state, out, temp = tmp_path / "state", tmp_path / "out", tmp_path / "temp"
    temp.mkdir()  # its own temp folder: what the stack leaves there shows
    env = _clean_env(FARM_STATE_DIR=str(state), FARM_FLOWER_PORT="0", TMPDIR=str(temp))
    res = _farm("demo", "--out", str(out), "--size", "64", "--steps", "2", env=env, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "TINY RANDOM-WEIGHT" in res.stdout and "FARM_PRIOR_MODEL=" in res.stdout
    assert "s3://farm/renders/" in res.stdout and "Flower: http://127.0.0.1:" in res.stdout
    assert "valkey: up on" in res.stdout and "/gallery" in res.stdout  # steps; where to look
    with Image.open(out / "contact_sheet.png") as sheet:  # the farm's: captioned, 3 x 2
        from farm.sheet import SHEET_THUMB, Geometry

        assert sheet.size == Geometry(SHEET_THUMB, 3, 2, True, True).size
    assert len(list(out.glob("*-seed*.png"))) == 6
    # Everything it started is gone again; weed's logs stayed in the state folder.
    assert not (state / "stack.json").exists() and not list(temp.glob("*weed*"))
    assert list((state / "seaweedfs" / "logs").glob("weed.*.log.INFO.*"))
    down = _farm("status", "--json", env=env)
    assert json.loads(down.stdout)["running"] is False
    for pidfile_proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (pidfile_proc / "cmdline").read_bytes()
        except OSError:
            continue
        assert str(state).encode() not in cmd, cmd


def test_cli_campaign_commands(stack, api_url, tokens, tmp_path):
    """`farm submit / watch / ls / results / cancel / resume` against the live API."""
    env = _clean_env(
        FARM_API_URL=api_url, FARM_API_TOKEN=tokens["alice"], FARM_STATE_DIR=str(tmp_path / "none")
    )
    yml = tmp_path / "campaign.yaml"
    yml.write_text(
        "name: cli-grid\n"
        "grid:\n  prompts: [a red cat, 一只猫]\n  seeds: [1, 2]\n"
        "defaults: {height: 64, width: 64, num_inference_steps: 2, prior_num_inference_steps: 2}\n",
        encoding="utf-8",
    )
    res = _farm("submit", str(yml), "--idempotency-key", "cli-1", env=env)
    assert res.returncode == 0, res.stderr
    cid = res.stdout.split()[1].rstrip(":")
    assert "4 jobs" in res.stdout
    again = _farm("submit", str(yml), "--idempotency-key", "cli-1", env=env)
    assert cid in again.stdout and "existing campaign" in again.stdout
    watch = _farm("watch", cid, "--interval", "0.2", env=env)
    assert (
        watch.returncode == 0
        and json.loads(watch.stdout[watch.stdout.index("{") :])["counts"]["done"] == 4
    )
    assert "usage: 4 images; compute decoder" in watch.stderr
    usage = _farm("usage", "--json", env=env)
    assert json.loads(usage.stdout)["images"] >= 4
    ls = _farm("ls", env=env)
    assert cid in ls.stdout and "cli-grid" in ls.stdout
    lines = _farm("results", cid, env=env).stdout.splitlines()
    assert len(lines) == 4 and all(json.loads(x)["state"] == "done" for x in lines)
    dl = _farm("results", cid, "--download", str(tmp_path / "dl"), env=env)
    assert (
        "downloaded 4 images" in dl.stdout and len(list((tmp_path / "dl").glob("*-seed*.png"))) == 4
    )
    assert "requeued 0 jobs; 4 images already present" in _farm("resume", cid, env=env).stdout
    assert _farm("cancel", cid, env=env).returncode == 0  # a finished campaign: nothing to cancel
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text(
        '{"prompt": "one", "height": 64, "width": 64}\n{"prompt": "two", "height": 100}\n'
    )
    bad = _farm("submit", str(jsonl), env=env)
    assert bad.returncode == 2 and "jobs[1].height" in bad.stderr and "multiple of 64" in bad.stderr
    nope = _farm(
        "results", "f" * 32, env=_clean_env(FARM_API_URL=api_url, FARM_API_TOKEN=tokens["bob"])
    )
    assert nope.returncode == 2 and "unknown campaign" in nope.stderr


def test_worker_with_missing_model_refuses_to_start(settings, tmp_path):
    """A worker that cannot load its pipelines never takes a job: `up` fails, naming the model."""
    from farm.errors import StackError
    from farm.local.stack import Stack

    broken = settings.model_copy(
        update={"state_dir": tmp_path, "locations": {"prior_model": str(tmp_path / "no-such")}}
    )
    stack = Stack(broken)
    try:
        with pytest.raises(StackError) as exc:
            stack.up(timeout=60)
    finally:
        stack.down()
    msg = str(exc.value)
    assert "worker-prior-1 exited" in msg
    assert f"kandinsky-2.2: part 'prior' (FARM_PRIOR_MODEL) at {tmp_path / 'no-such'}" in msg
    assert "no such folder" in msg
    assert not (tmp_path / "stack.json").exists()


def test_up_refuses_a_taken_port_naming_it(settings, tmp_path):
    import socket

    from farm.errors import StackError
    from farm.local.stack import Stack

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        clash = settings.model_copy(update={"state_dir": tmp_path, "api_port": port})
        with pytest.raises(StackError, match=f"api: port {port} on 127.0.0.1 is taken"):
            Stack(clash).up(timeout=30)
        same = settings.model_copy(
            update={"state_dir": tmp_path, "api_port": port + 1, "flower_port": port + 1}
        )
        with pytest.raises(StackError, match="api and flower are both set to port"):
            Stack(same).up(timeout=30)
        res = _farm(
            "up", env=_clean_env(FARM_STATE_DIR=str(tmp_path / "cli"), FARM_API_PORT=str(port))
        )
    assert res.returncode != 0 and f"port {port}" in res.stderr and "FARM_API_PORT" in res.stderr
    assert not (tmp_path / "stack.json").exists()


def test_placement_end_to_end(tmp_path):
    """`farm up --models a,b --workers prior=1,decoder=0`: a family nobody serves is accepted and
    waits, naming the queue; a family not enabled is a 422 naming the enabled ones; `farm worker`
    started beside the stack finishes the waiting campaign."""
    env = _clean_env(
        FARM_STATE_DIR=str(tmp_path / "state"), FARM_API_PORT="0", FARM_FLOWER_PORT="0"
    )
    up = _farm(
        "up", "--models", "kandinsky-2.2,kandinsky-3", "--workers", "prior=1,decoder=0", env=env
    )
    worker = None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        k3 = tmp_path / "k3.yaml"
        k3.write_text(
            "jobs:\n"
            "  - {model: kandinsky-3, prompt: a cat, height: 64, width: 64, num_inference_steps: 2}\n"
        )
        k21 = tmp_path / "k21.yaml"
        k21.write_text("jobs:\n  - {model: kandinsky-2.1, prompt: a cat}\n")
        bad = _farm("submit", str(k21), env=env)
        assert bad.returncode == 2
        assert "kandinsky-2.1 is not enabled on this farm; enabled: kandinsky-2.2, kandinsky-3" in (
            bad.stderr
        )
        sub = _farm("submit", str(k3), env=env)
        assert sub.returncode == 0, sub.stderr
        cid = sub.stdout.split()[1].rstrip(":")
        ls = json.loads(_farm("ls", "--json", env=env).stdout)
        (mine,) = [c for c in ls if c["id"] == cid]
        assert mine["state"] == "waiting", mine
        assert mine["waiting_reason"] == "no worker serves decoder.kandinsky-3"
        assert mine["counts"]["failed"] == 0
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "farm.cli",
                "worker",
                "--stage",
                "decoder",
                "--models",
                "kandinsky-3",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        watch = _farm("watch", cid, "--interval", "0.2", env=env, timeout=120)
        assert watch.returncode == 0, watch.stdout + watch.stderr
        status = json.loads(_farm("status", "--json", env=env).stdout)
        (k3_worker,) = [w for w in status["workers"] if w["families"] == ["kandinsky-3"]]
        assert k3_worker["resident_parts"] == ["kandinsky-3/kandinsky3"]
        prior = next(w for w in status["workers"] if w["stage"] == "prior")
        assert prior["families"] == ["kandinsky-2.2"]  # kandinsky-3 has no prior stage
    finally:
        if worker is not None:
            os.killpg(worker.pid, 15)
            worker.wait(timeout=30)
        _farm("down", env=env)


def test_three_workers_for_two_stages_all_listed_by_flower(tmp_path):
    """`farm up --workers prior=1,decoder=2` runs three workers, and both decoders take jobs."""
    env = _clean_env(
        FARM_STATE_DIR=str(tmp_path / "state"), FARM_API_PORT="0", FARM_FLOWER_PORT="0"
    )
    up = _farm("up", "--models", "kandinsky-2.2", "--workers", "prior=1,decoder=2", env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        status = json.loads(_farm("status", "--json", env=env).stdout)
        stages = sorted(w["stage"] for w in status["workers"])
        assert stages == ["decoder", "decoder", "prior"]
        workers = httpx.get(
            f"{status['flower_url']}/api/workers",
            params={"refresh": "true"},
            auth=(status["flower_user"], status["flower_password"]),
        ).json()
        assert len(workers) == 3, list(workers)
        queues = {q: [] for q in ("prior.kandinsky-2.2", "decoder.kandinsky-2.2")}
        for name, info in workers.items():
            for q in info.get("active_queues", []):
                queues.get(q["name"], []).append(name)
        assert len(queues["prior.kandinsky-2.2"]) == 1 and len(queues["decoder.kandinsky-2.2"]) == 2
        jobs = tmp_path / "jobs.yaml"
        jobs.write_text(
            "grid: {prompts: [a, b, c, d, e, f], seeds: [1]}\n"
            "defaults: {height: 64, width: 64, num_inference_steps: 2, prior_num_inference_steps: 2}\n"
        )
        sub = _farm("submit", str(jobs), "--wait", env=env)
        assert sub.returncode == 0 and '"done": 6' in sub.stdout, sub.stdout + sub.stderr
    finally:
        _farm("down", env=env)


def test_interleaved_families_on_one_resident_slot_load_at_most_four_times(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_STATE_DIR=str(tmp_path / "state"), FARM_API_PORT="0", FARM_FLOWER_PORT="0")
    up = _farm("up", "--models", "kandinsky-3,sd-1.5", "--workers", "prior=0,decoder=0", env=env)
    worker = None
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed in finally
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "farm.cli", "worker", "--stage", "decoder",
                "--models", "kandinsky-3,sd-1.5", "--resident", "1", "--name", "mux@test",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip
        small = {"height": 64, "width": 64, "num_inference_steps": 2}
        jobs = [
            {"model": ("kandinsky-3", "sd-1.5")[i % 2], "prompt": f"job {i}", "seed": i, **small}
            for i in range(40)
        ]
        (tmp_path / "mix.json").write_text(json.dumps({"jobs": jobs}))
        sub = _farm("submit", str(tmp_path / "mix.json"), "--wait", env=env, timeout=400)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        assert '"done": 40' in sub.stdout, sub.stdout
        status = json.loads(_farm("status", "--json", env=env).stdout)
        (mux,) = [w for w in status["workers"] if w["node"] == "mux@test"]
        assert mux["families"] == ["kandinsky-3", "sd-1.5"]
        assert 2 <= mux["loads"] <= 4, mux
        assert mux["switches"] in (1, 2, 3), mux
        assert len(mux["resident_families"]) == 1 and len(mux["resident_parts"]) == 1
        assert set(mux["serves"]) == {"decoder.kandinsky-3", "decoder.sd-1.5", "finalize"}
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        log.close()
        _farm("down", env=env)


def test_state_folder_is_private(stack, settings):
    """Credentials, logs, AOF and object data: the state folder is 0700 and what the stack's
    processes write in it is readable by this user only."""
    import stat

    root = settings.state_dir
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    loose = []
    for path in root.rglob("*"):
        if {"tiny", "models"} & set(path.relative_to(root).parts) or path.is_symlink():
            continue  # model weights we build: public data, inside the private folder
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            loose.append(str(path.relative_to(root)))
    assert not loose, loose[:10]


def test_no_port_of_the_stack_serves_or_takes_an_object_without_credentials(
    stack, farm, server_pids, seaweed_ports
):
    """Every port the stack's processes and its servers listen on (read from the kernel, not
    from the stack's own list) is probed with no credentials: HTTP reads, listings and writes,
    SeaweedFS master's token paths (/dir/assign -> write, /dir/lookup?read=yes -> read,
    /submit, /col/delete), a Redis command, plaintext and TLS gRPC. None reads, lists or
    writes an object, or hands out a token that would."""
    import redis as redis_lib

    from tests import ports as probe

    (rec,) = farm.submit([{"prompt": "probe", "seed": 5, "height": 64, "width": 64, **FAST}]).wait(
        timeout=60
    )
    state = stack.read_state()
    bucket, key = state["bucket"], rec.s3_key
    content = farm.objects.get(key)
    pids = probe.tree([p.pid for p in stack.procs()] + server_pids)
    listening = probe.listening(pids)
    # S3, filer, volume, master, admin and their gRPC ports; Valkey; API; Flower; metrics.
    assert len(listening) >= 12, listening
    assert set(seaweed_ports.values()) <= set(listening), (seaweed_ports, listening)
    findings, tally = probe.probe_all(listening, bucket, key, content)
    print(f"probed {len(listening)} ports without credentials ({tally}): {findings}")
    assert findings == []
    assert not [k for k in farm.objects.list_keys("") if "evil" in k]
    # And the ones that must answer do refuse: Valkey its password, the API its token,
    # Flower its login.
    port = int(state["redis_url"].rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(redis_lib.AuthenticationError):
        redis_lib.Redis(port=port, socket_timeout=5).get("farm:feed:epoch")
    assert httpx.get(f"{state['api_url']}/v1/campaigns").status_code == 401
    assert httpx.get(f"{state['flower_url']}/api/tasks").status_code == 401
