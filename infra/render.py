"""Render the farm's Kubernetes manifests from the family registry (and the settings' defaults).

    python infra/render.py            write infra/k8s/base and infra/k8s/fetch-weights
    python infra/render.py --check    exit 1, naming each file, when the checked-in ones differ
    python infra/render.py --models kandinsky-2.2,kandinsky-3 --out site/   a site's own base

A Deployment per stage and family (``prior-kandinsky-2-2``, ``decoder-kandinsky-3`` ...; single-
stage families have no prior), each with a KEDA ScaledObject on its queue's backlog list
(``farm:backlog:<queue>``, which the feeder keeps as long as the queue's backlog in messages) and
a PodDisruptionBudget; the API, Flower and the feeder; a ConfigMap, Secret templates, the KEDA
TriggerAuthentication and the HF cache volume. A newly registered family gets its workers by
re-rendering; tests/test_infra.py fails while the checked-in files differ from a fresh render.
Overlays (``infra/k8s/overlays/``) set images, the namespace, secrets and per-site sizes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from farm.families import REGISTRY, Family, get

# The parts beside this script: importable whether it runs as a script or is loaded from its path.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from render_kit import (  # noqa: E402, F401 - re-exported
    API_PORT,
    CONTAINER_SECURITY,
    DECODER,
    FLOWER_PORT,
    GENERATED,
    HF_HOME,
    METRICS_DIR,
    METRICS_PORT,
    NAME,
    POD_SECURITY,
    PRIOR,
    ROOT,
    SCRATCH,
    SCRATCH_MOUNTS,
    SIZING,
    SOFT_TIME_LIMIT_S,
    TIME_LIMIT_S,
    UID,
    VISIBILITY_TIMEOUT_S,
    WORKER_GRACE_S,
    Sizing,
    comment,
    deployment,
    env_from,
    exec_probe,
    http_probe,
    image,
    labels,
    meta,
    pdb,
    scrape,
    service,
    sizing,
    slug,
)
from render_services import (  # noqa: E402
    SECRETS,
    api,
    config,
    feeder,
    fetch_job,
    flower,
    hf_cache,
    secrets,
    trigger_auth,
)
from render_workers import worker  # noqa: E402

# -- files ----------------------------------------------------------------------------------------

NOTES = {
    "config.yaml": "# Settings every farm process reads (`farm settings`). FARM_S3_ENDPOINT: your S3 store.\n"
    "# The time limits are the settings' defaults; the workers' grace period follows the hard one.\n",
    "secrets.yaml": "# Templates, no values: fill them per site (overlays/example makes them from env files).\n"
    + "".join(
        f"#   {n}.{k}: {what}\n" for n, entries in SECRETS.items() for k, what in entries.items()
    ),
    "keda-auth.yaml": "# KEDA's Redis login (address and password from the farm-redis Secret), for every\n"
    "# ScaledObject's `redis` trigger. A Sentinel fleet uses KEDA's `redis-sentinel` trigger.\n",
    "hf-cache.yaml": "# The Hugging Face cache every worker reads (read-only) and fetch-weights fills once.\n"
    "# ReadWriteMany: an NFS / Filestore / EFS class. Or bake the weights into the images\n"
    "# (docker build --build-arg BAKE_MODELS=...) and drop this volume in an overlay.\n",
    "api.yaml": "# The producer API, 2 replicas behind a ClusterIP Service (port 80); put your ingress in front.\n"
    "# Prometheus scrapes each pod's /metrics on 8470 (annotations); deny /metrics at a public\n"
    "# ingress: it has no token (docs/metrics.md).\n",
    "flower.yaml": "# Flower (basic auth from farm-flower). One replica: its history is per process; no PDB,\n"
    "# a dashboard may blink during a drain.\n",
    "feeder.yaml": "# `farm feeder`: campaigns in S3 -> queues, fair share; publishes farm:backlog:<queue>\n"
    "# (what every ScaledObject reads) and re-sends stranded jobs. Two replicas: several feeders\n"
    "# feed each job once, and a dead one's claimed ranges are re-sent by the other. It serves\n"
    "# nothing, so it has no Service and no probe; a crash restarts it.\n",
}


def render(families: list[Family] | None = None) -> dict[str, str]:
    """Every generated file, by its path under infra/k8s, as text (every registered family's
    workers unless ``families`` says)."""
    families = list(REGISTRY.values()) if families is None else families
    base: dict[str, tuple[list[dict], str]] = {
        "config.yaml": (config(families), NOTES["config.yaml"]),
        "secrets.yaml": (secrets(), NOTES["secrets.yaml"]),
        "keda-auth.yaml": (trigger_auth(), NOTES["keda-auth.yaml"]),
        "hf-cache.yaml": (hf_cache(), NOTES["hf-cache.yaml"]),
        "api.yaml": (api(), NOTES["api.yaml"]),
        "flower.yaml": (flower(), NOTES["flower.yaml"]),
        "feeder.yaml": (feeder(), NOTES["feeder.yaml"]),
    }
    for stage in ("prior", "decoder"):
        for family in families:
            if stage in family.stages:
                filename, docs, note = worker(stage, family)
                if filename in base:
                    raise ValueError(f"two families render to {filename}")
                base[filename] = (docs, note)
    out = {f"base/{name}": text(docs, note) for name, (docs, note) in base.items()}
    out["base/kustomization.yaml"] = kustomization(list(base))
    out["fetch-weights/job.yaml"] = text(
        fetch_job(),
        "# Fills the hf-cache volume with every enabled family's weights (needs hub access):\n"
        "#   kubectl apply -n <namespace> -k infra/k8s/fetch-weights\n"
        "# Gated repositories: put HF_TOKEN in a Secret named farm-hf.\n",
    )
    out["fetch-weights/kustomization.yaml"] = kustomization(["job.yaml"])
    return out


class _Dumper(yaml.SafeDumper):
    """Plain YAML: a dict used twice (security contexts ...) is written twice, not aliased."""

    def ignore_aliases(self, data) -> bool:
        return True


def dump(doc: dict) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def text(docs: list[dict], note: str = "") -> str:
    body = "---\n".join(dump(d) for d in docs)
    return GENERATED + note + body


def kustomization(resources: list[str]) -> str:
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(resources),
    }
    return GENERATED + dump(doc)


def drift(root: Path = ROOT, families: list[Family] | None = None) -> list[str]:
    """Files that differ from a fresh render, are missing, or are stale leftovers."""
    want = render(families)
    out = [p for p, t in want.items() if not (root / p).is_file() or (root / p).read_text() != t]
    for folder in {Path(p).parent for p in want}:
        for path in sorted((root / folder).glob("*.yaml")):
            rel = path.relative_to(root).as_posix()
            if rel not in want:
                out.append(f"{rel} (not rendered any more)")
    return sorted(out)


def write(root: Path = ROOT, families: list[Family] | None = None) -> list[str]:
    """Write a fresh render under ``root``; removes the YAML files it no longer renders."""
    want = render(families)
    for folder in {Path(p).parent for p in want}:
        for path in (root / folder).glob("*.yaml"):
            if path.relative_to(root).as_posix() not in want:
                path.unlink()
    for rel, body in want.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    return sorted(want)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--check", action="store_true", help="exit 1 when the files differ")
    p.add_argument(
        "--models", help="render only these families' workers, comma-separated (a site's base)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT,
        help="folder that gets base/ and fetch-weights/ (default: infra/k8s; its generated YAML "
        "files are replaced)",
    )
    args = p.parse_args(argv)
    try:
        families = [get(n.strip()) for n in args.models.split(",")] if args.models else None
    except ValueError as e:
        p.error(str(e))
    if args.check:
        stale = drift(args.out, families)
        for rel in stale:
            print(f"{args.out / rel}: differs from the registry; run `python infra/render.py`")
        return 1 if stale else 0
    for rel in write(args.out, families):
        print(f"wrote {args.out / rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
