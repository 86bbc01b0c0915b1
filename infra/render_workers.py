"""The workers' manifests: per stage and family a Deployment, its KEDA ScaledObject on the
queue's backlog list and a PodDisruptionBudget."""

from __future__ import annotations

from render_kit import (
    CONTAINER_SECURITY,
    HF_HOME,
    METRICS_DIR,
    METRICS_PORT,
    POD_SECURITY,
    SCRATCH,
    SCRATCH_MOUNTS,
    TIME_LIMIT_S,
    WORKER_GRACE_S,
    Sizing,
    comment,
    deployment,
    env_from,
    exec_probe,
    image,
    meta,
    pdb,
    scrape,
    sizing,
    slug,
)

from farm import keys, plan
from farm.families import Family


def worker_pod(stage: str, family: Family, size: Sizing) -> dict:
    # Where each of the stage's parts is: its hub id, read from the HF cache (HF_HUB_OFFLINE=1).
    parts = {p.env: p.hub_id for p in family.parts_for(stage)}
    resources: dict[str, dict[str, str | int]] = {
        "requests": {"cpu": size.cpu, "memory": size.memory},
        "limits": {"memory": size.memory_limit},
    }
    if stage == "decoder":
        resources["requests"]["nvidia.com/gpu"] = 1
        resources["limits"]["nvidia.com/gpu"] = 1
    container = {
        "name": "worker",
        "image": image(stage),
        "command": ["farm", "worker", "--stage", stage, "--models", family.name],
        "envFrom": env_from("farm-secrets"),
        "env": [{"name": k, "value": v} for k, v in sorted(parts.items())]
        + [
            {"name": "FARM_METRICS_LISTEN", "value": str(METRICS_PORT)},
            {"name": "PROMETHEUS_MULTIPROC_DIR", "value": METRICS_DIR},
        ],
        # Prometheus scrapes each worker here (docs/metrics.md); the API and Flower serve theirs
        # on their own ports.
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": resources,
        # Loading real weights takes minutes: up to 15 min before the heartbeat must appear.
        "startupProbe": exec_probe(period=10, failures=90),
        # The heartbeat thread runs beside the task, so a busy solo-pool decoder stays live.
        "livenessProbe": exec_probe(period=30, failures=3),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [
            {"name": "hf-cache", "mountPath": HF_HOME, "readOnly": True},
            {"name": "metrics", "mountPath": METRICS_DIR},
            *SCRATCH_MOUNTS,
        ],
    }
    pod = {
        "terminationGracePeriodSeconds": WORKER_GRACE_S,
        "securityContext": POD_SECURITY,
        "containers": [container],
        "volumes": [
            {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}},
            # A file per metric kind and pool process, mostly sparse: a few MiB in all.
            {"name": "metrics", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            *SCRATCH,
        ],
    }
    if stage == "decoder":
        # Labels of NVIDIA's GPU feature discovery (GPU operator); patch them in an overlay on
        # clusters that label GPU nodes otherwise.
        pod["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        pod["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "nvidia.com/gpu.memory",
                                    "operator": "Gt",
                                    "values": [str(size.gpu_memory_mib)],
                                }
                            ]
                        }
                    ]
                }
            }
        }
        pod["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    return pod


def redis_trigger(name: str, queue: str, target: int) -> dict:
    return {
        "type": "redis",
        "name": name,
        # KEDA reads every value as a string.
        "metadata": {
            "listName": keys.backlog_list(queue),
            "listLength": str(target),
            "activationListLength": "0",
            "databaseIndex": "0",
        },
        "authenticationRef": {"name": "farm-redis"},
    }


def scaled_object(name: str, stage: str, family: Family, size: Sizing) -> dict:
    triggers = [redis_trigger(f"{stage}-backlog", family.queue(stage), size.target)]
    if stage == "decoder" and family.two_stage:
        # Jobs waiting for the prior are coming to this decoder: start loading weights now.
        triggers.append(redis_trigger("prior-backlog", family.queue("prior"), size.target))
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta(name, stage, family.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": size.min_replicas,
            "maxReplicaCount": size.max_replicas,
            "pollingInterval": 15,
            # To zero only after 5 idle minutes: a burst right after costs no weight reload.
            "cooldownPeriod": 300,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        # One pod a minute, after 5 minutes lower: each start reloads weights.
                        "scaleDown": {
                            "stabilizationWindowSeconds": 300,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                        }
                    }
                }
            },
            "triggers": triggers,
        },
    }


def worker(stage: str, family: Family) -> tuple[str, list[dict], str]:
    name = f"{stage}-{slug(family.name)}"
    size = sizing(stage, family.name)
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    if stage == "decoder":
        # No spare GPU is assumed: replace one pod at a time in place.
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    docs = [
        # No `replicas`: KEDA owns it (the ScaledObject below).
        deployment(
            name,
            stage,
            worker_pod(stage, family, size),
            family.name,
            annotations=scrape(METRICS_PORT),
            strategy=strategy,
        ),
        # A drain evicts one at a time; each gets its grace period to finish its task.
        pdb(name, stage, family.name, maxUnavailable=1),
        scaled_object(name, stage, family, size),
    ]
    queues = family.queue(stage) + (
        f" (and {family.queue('prior')})" if stage == "decoder" and family.two_stage else ""
    )
    note = comment(
        f"`farm worker --stage {stage} --models {family.name}`: consumes {family.queue(stage)} "
        f"and finalize. Scales {size.min_replicas}..{size.max_replicas} on the backlog of "
        f"{queues}, {size.target} messages per replica. terminationGracePeriodSeconds "
        f"{WORKER_GRACE_S} = FARM_TASK_TIME_LIMIT_S ({TIME_LIMIT_S}) + 60: SIGTERM starts "
        "Celery's warm shutdown, which lets the running task end, bounded only by the hard "
        "time limit (no worker_soft_shutdown_timeout is set). Prometheus scrapes each pod's "
        f"/metrics on {METRICS_PORT} (annotations); its pool processes sum their values through "
        f"PROMETHEUS_MULTIPROC_DIR, an emptyDir in memory."
    )
    if stage == "prior" and family.name in plan.REFERENCE_FLOP:
        decoders = sizing("decoder", family.name).max_replicas
        note += comment(plan.prior_replicas(family.name, int(size.cpu), decoders)[1])
    return f"{name}.yaml", docs, note


# -- the rest ---------------------------------------------------------------------------------
