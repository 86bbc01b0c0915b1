"""The manifests beside the workers: the API, Flower, the feeder, the ConfigMap, Secret
templates, KEDA's TriggerAuthentication, the HF cache volume and the fetch-weights Job."""

from __future__ import annotations

from render_kit import (
    API_PORT,
    CONTAINER_SECURITY,
    FLOWER_PORT,
    HF_HOME,
    POD_SECURITY,
    SCRATCH,
    SCRATCH_MOUNTS,
    SOFT_TIME_LIMIT_S,
    TIME_LIMIT_S,
    VISIBILITY_TIMEOUT_S,
    deployment,
    env_from,
    http_probe,
    image,
    labels,
    meta,
    pdb,
    scrape,
    service,
)

from farm.families import Family


def api() -> list[dict]:
    container = {
        "name": "api",
        "image": image("api"),
        "ports": [{"name": "http", "containerPort": API_PORT, "protocol": "TCP"}],
        "envFrom": env_from("farm-secrets", "farm-api"),
        "resources": {
            "requests": {"cpu": "500m", "memory": "512Mi"},
            "limits": {"memory": "1Gi"},
        },
        # Ready = Redis and S3 answer; live = the process answers.
        "readinessProbe": http_probe("/readyz", "http"),
        "livenessProbe": http_probe("/healthz", "http", period=20),
        # The endpoint leaves the Service before uvicorn stops taking connections.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": SCRATCH_MOUNTS,
    }
    pod = {
        "terminationGracePeriodSeconds": 30,
        "securityContext": POD_SECURITY,
        "containers": [container],
        "volumes": SCRATCH,
    }
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    return [
        # /metrics is on the API's own port: queue depths (read from Redis) and its uploads.
        deployment("api", "api", pod, annotations=scrape(API_PORT), replicas=2, strategy=strategy),
        service("api", "api", 80, "http"),
        pdb("api", "api", minAvailable=1),
    ]


def flower() -> list[dict]:
    container = {
        "name": "flower",
        "image": image("flower"),
        "ports": [{"name": "http", "containerPort": FLOWER_PORT, "protocol": "TCP"}],
        "envFrom": env_from("farm-secrets", "farm-flower"),
        "resources": {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"memory": "2Gi"},
        },
        "readinessProbe": http_probe("/healthcheck", "http"),
        "livenessProbe": http_probe("/healthcheck", "http", period=30),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "flower-data", "mountPath": "/var/lib/flower"}, *SCRATCH_MOUNTS],
    }
    pod = {
        "securityContext": POD_SECURITY,
        "containers": [container],
        # Task history survives a container restart (not a reschedule): it is a dashboard, the
        # job records in Redis are the truth.
        "volumes": [{"name": "flower-data", "emptyDir": {}}, *SCRATCH],
    }
    return [
        # Flower's /metrics (Celery's events) needs no login, like its /healthcheck.
        deployment(
            "flower",
            "flower",
            pod,
            annotations=scrape(FLOWER_PORT),
            replicas=1,
            strategy={"type": "Recreate"},
        ),
        service("flower", "flower", FLOWER_PORT, "http"),
    ]


def feeder() -> list[dict]:
    container = {
        "name": "feeder",
        "image": image("feeder"),
        "envFrom": env_from("farm-secrets"),
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": SCRATCH_MOUNTS,
    }
    pod = {
        "terminationGracePeriodSeconds": 30,
        "securityContext": POD_SECURITY,
        "containers": [container],
        "volumes": SCRATCH,
    }
    return [
        deployment("feeder", "feeder", pod, replicas=2),
        pdb("feeder", "feeder", maxUnavailable=1),
    ]


def config(families: list[Family]) -> list[dict]:
    data = {
        "FARM_S3_ENDPOINT": "http://seaweedfs-s3:8333",
        "FARM_S3_BUCKET": "farm",
        "FARM_MODELS": ",".join(f.name for f in families),
        "FARM_TASK_TIME_LIMIT_S": str(TIME_LIMIT_S),
        "FARM_TASK_SOFT_TIME_LIMIT_S": str(SOFT_TIME_LIMIT_S),
        "FARM_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
        "HF_HUB_OFFLINE": "1",
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta("farm-config", "config"),
            "data": data,
        }
    ]


SECRETS = {
    # name: {key: what it is}
    "farm-secrets": {
        "FARM_REDIS_URL": "redis://:<password>@<host>:6379/0 (or sentinel://...)",
        "FARM_S3_ACCESS_KEY": "S3 access key id",
        "FARM_S3_SECRET_KEY": "S3 secret key",
        "FARM_WEBHOOK_SECRET": "the secret every tenant's webhook signing secret derives from",
    },
    "farm-api": {"FARM_API_TOKENS": "tenant:token pairs, comma-separated (tokens of 16+ chars)"},
    "farm-flower": {"FLOWER_BASIC_AUTH": "user:password of Flower's basic auth"},
    "farm-redis": {
        "address": "host:port of the farm's Redis, for KEDA's scaler",
        "password": "its password (the one in FARM_REDIS_URL)",
    },
}


def secrets() -> list[dict]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta(name, "secrets"),
            "type": "Opaque",
            "stringData": dict.fromkeys(entries, ""),
        }
        for name, entries in SECRETS.items()
    ]


def trigger_auth() -> list[dict]:
    refs = [{"parameter": key, "name": "farm-redis", "key": key} for key in SECRETS["farm-redis"]]
    return [
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "TriggerAuthentication",
            "metadata": meta("farm-redis", "autoscaling"),
            "spec": {"secretTargetRef": refs},
        }
    ]


def hf_cache() -> list[dict]:
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": meta("hf-cache", "models"),
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "500Gi"}},
            },
        }
    ]


def fetch_job() -> list[dict]:
    container = {
        "name": "fetch",
        "image": image("prior"),
        # Every enabled family's parts (FARM_MODELS), into the shared cache.
        "command": ["farm", "models", "fetch"],
        "envFrom": [{"configMapRef": {"name": "farm-config"}}],
        "env": [
            {"name": "HF_HUB_OFFLINE", "value": "0"},
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": "farm-hf", "key": "HF_TOKEN", "optional": True}
                },
            },
        ],
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "hf-cache", "mountPath": HF_HOME}, *SCRATCH_MOUNTS],
    }
    return [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta("models-fetch", "models"),
            "spec": {
                "backoffLimit": 3,
                "ttlSecondsAfterFinished": 86_400,
                "template": {
                    "metadata": {"labels": labels("models")},
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "securityContext": POD_SECURITY,
                        "containers": [container],
                        "volumes": [
                            {
                                "name": "hf-cache",
                                "persistentVolumeClaim": {"claimName": "hf-cache"},
                            },
                            *SCRATCH,
                        ],
                    },
                },
            },
        }
    ]
