"""One settings object, built once at each process edge (CLI, worker boot, tests) and passed down.

Every field reads from the environment with the ``FARM_`` prefix (``FARM_REDIS_URL`` ...). The
library below this module never reads ``os.environ`` itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from farm import settings_parts
from farm.errors import ConfigError

TINY = "tiny"  # model setting meaning "the tiny random-weight pipelines the farm builds itself"


class Settings(BaseSettings):
    """The farm's settings; docs/settings.md lists each with its default."""

    model_config = SettingsConfigDict(env_prefix="FARM_", frozen=True, extra="ignore")

    state_dir: Path = Field(
        Path(".farm"), description="Local stack state: server data, logs, pids, tiny models."
    )
    redis_url: str | None = Field(
        None, description="Broker + embedding store. Unset: the local stack's embedded Valkey."
    )
    redis_master: str = Field(
        "mymaster",
        min_length=1,
        description="Sentinel: the name the sentinels monitor the primary under, when "
        "FARM_REDIS_URL is `sentinel://:pw@host1:26379;sentinel://:pw@host2:26379`.",
    )
    redis_sentinel_password: SecretStr | None = Field(
        None,
        description="Sentinel: the sentinels' own password (their requirepass); the URL's is "
        "the data servers'. Unset: sentinels without a password.",
    )
    s3_endpoint: str | None = Field(
        None, description="S3-compatible endpoint URL. Unset: the local stack's embedded SeaweedFS."
    )
    s3_bucket: str = Field("farm", min_length=3, description="Bucket for images and manifests.")
    s3_access_key: SecretStr | None = Field(None, description="S3 access key id.")
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret key.")
    s3_region: str = Field("us-east-1", description="S3 region name (most local stores ignore it).")
    s3_prefix: str = Field("renders", description="Key prefix for job outputs in the bucket.")
    models: str | None = Field(
        None,
        description="Model families the farm accepts, comma-separated (`farm capabilities`). "
        "Unset: every family. Jobs for others get a 422 naming the enabled ones.",
    )
    worker_models: str | None = Field(
        None,
        description="Worker: the families it serves, comma-separated. Unset: every enabled family.",
    )
    worker_stage: Literal["prior", "decoder"] | None = Field(
        None, description="Worker: the stage it runs. Unset: read from the queues it consumes."
    )
    worker_resident: int = Field(
        0,
        ge=0,
        description="Worker: families kept loaded at once; others load on demand, the least "
        "recently used evicted. 0: every served family stays loaded.",
    )
    stand_in: Literal["tiny", "full"] = Field(
        "tiny",
        description="What a part set to 'tiny' loads: the tiny random-weight build, or `full`: "
        "random weights of the published architecture (`farm models build --full-size`; "
        "parts without a full-size config stay tiny).",
    )
    locations: dict[str, str] = Field(
        default_factory=dict,
        description="Where each part's weights are, by its setting name; filled from the "
        "per-part variables below.",
    )
    batch_max: int = Field(
        8,
        ge=1,
        le=64,
        description="Most compatible jobs per render: one message's render unit, and one pipeline "
        "call with FARM_BATCH_EXACT=false (1: a job at a time).",
    )
    batch_exact: bool = Field(
        True,
        description="Decoder: each job of a batch rendered by a call of its own, pixel-identical "
        "to the job rendered alone whatever jobs share its message. false: compatible jobs share "
        "one pipeline call (fewer, larger calls) and a job's pixels move with its batch (measured "
        "up to 3/255 at 128², 20 steps; docs/architecture.md).",
    )
    tenant_max_queued: int = Field(
        5_000_000,
        ge=1,
        description="Most jobs one tenant may have queued (not started) at once; a submission "
        "beyond it gets 429 with the limit.",
    )
    tenant_weights: str | None = Field(
        None,
        description="Feeder fair share: tenant:weight pairs, comma-separated (others weigh 1); "
        "a tenant of weight 2 gets twice the in-flight jobs of one of weight 1.",
    )
    feed_depth: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Jobs in flight (fed, not finished) per family; 0: twice what its decoders "
        "hold (a message of 4 renders each). The rest of every campaign waits in S3, not Redis.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Farm secret each tenant's webhook signing secret derives from. Unset with "
        "`farm up`: generated.",
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow callback URLs that resolve to loopback, link-local or private "
        "addresses (a farm must not be a way into its own network).",
    )
    webhook_max_attempts: int = Field(
        8, ge=1, le=20, description="Deliveries tried per webhook (backoff 1, 2, 4 ... s)."
    )
    batch_wait_ms: int = Field(
        0,
        ge=0,
        le=10_000,
        description="Decoder: how long a render with room waits for compatible jobs of other "
        "messages (any campaign) before it starts; 0: it takes those already queued and starts.",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Torch threads per worker process; 0: torch's default (every core), and the "
        "local stack divides the cores among its workers.",
    )
    attention: Literal["sdpa", "eager"] = Field(
        "sdpa", description="Attention kernel: sdpa (torch's fused one) or eager (reference)."
    )
    channels_last: bool = Field(
        False, description="UNet/VAE in channels-last memory format (faster on GPUs)."
    )
    compile: bool = Field(
        False,
        description="torch.compile the UNet (batches padded to powers of two: few shapes).",
    )
    cpu_offload: bool = Field(
        False, description="CUDA: keep weights on the CPU, move each model in when it runs."
    )
    device: str = Field("cpu", description="Torch device for the pipelines: cpu, cuda, cuda:1 ...")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="Torch dtype the pipelines are loaded in."
    )
    price_cpu_hour: float = Field(
        0.0,
        ge=0,
        description="Price of one hour of a CPU worker's compute, for cost estimates "
        "(status, usage); 0: no cost shown.",
    )
    price_gpu_hour: float = Field(
        0.0,
        ge=0,
        description="Price of one hour of a GPU worker's compute, for cost estimates.",
    )
    currency: str = Field("USD", max_length=8, description="Currency of the prices above.")
    embedding_ttl_s: int = Field(
        86_400, gt=0, description="Seconds the prior's embeddings live in Redis."
    )
    record_ttl_s: int = Field(
        30 * 86_400, gt=0, description="Seconds job records and campaign lists live in Redis."
    )
    task_time_limit_s: int = Field(1800, gt=0, description="Hard time limit of one task.")
    task_soft_time_limit_s: int = Field(1740, gt=0, description="Soft time limit of one task.")
    visibility_timeout_s: int = Field(
        3600,
        gt=0,
        description="Seconds before an unacknowledged task is delivered again; must exceed the "
        "hard time limit or long tasks run twice.",
    )
    max_attempts: int = Field(
        3, ge=1, description="Deliveries of one job stage before it is failed as a poison job."
    )
    reconcile_interval_s: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="Feeder: seconds between checks for jobs in flight that no message carries.",
    )
    reconcile_grace_s: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="Feeder: a job idle and carried by no message (queued, held by a worker, "
        "or running) this long is sent again.",
    )
    worker_pool: Literal["auto", "solo", "threads", "prefork"] = Field(
        "auto", description="Celery pool of the local workers; auto = solo on CUDA, else prefork."
    )
    api_tokens: SecretStr | None = Field(
        None,
        description="API server: comma-separated tenant:token pairs; each token is a tenant. "
        "Unset with `farm up`: one generated token for tenant 'default'.",
    )
    api_url: str | None = Field(
        None, description="Client: the farm API's URL. Unset: the local stack's."
    )
    api_token: SecretStr | None = Field(
        None, description="Client: the bearer token to send. Unset: the local stack's."
    )
    api_port: int = Field(
        8470,
        ge=0,
        le=65535,
        description="API port for the local stack (0: any free port; `farm up` refuses a taken one).",
    )
    flower_port: int = Field(
        5555,
        ge=0,
        le=65535,
        description="Flower port for the local stack (0: any free port; `farm up` refuses a taken "
        "one).",
    )
    metrics_listen: str | None = Field(
        None,
        description="Worker: serve Prometheus metrics on HOST:PORT, or PORT on every interface "
        "(docs/metrics.md). Unset: not served; `farm up` gives each worker a free port.",
    )

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (
            init_settings,
            env_settings,
            settings_parts.PartLocations(settings_cls),
            file_secret_settings,
        )

    @model_validator(mode="before")
    @classmethod
    def _part_kwargs(cls, data):
        return settings_parts.file_part_kwargs(data)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        settings_parts.families(self.models, "FARM_MODELS")
        settings_parts.families(self.worker_models, "FARM_WORKER_MODELS")
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError("task_soft_time_limit_s must be below task_time_limit_s")
        if self.visibility_timeout_s <= self.task_time_limit_s:
            # kombu never refreshes a delivery's timestamp: a shorter timeout re-delivers
            # tasks that are still running (celery#5935).
            raise ValueError("visibility_timeout_s must exceed task_time_limit_s")
        return self

    @classmethod
    def load(cls, **overrides) -> Settings:
        """Build settings from the environment (and overrides).

        Raises:
            ConfigError: when a value is invalid, naming the variable.
        """
        try:
            return cls(**overrides)
        except ValueError as e:
            raise ConfigError(f"invalid FARM_* setting: {e}") from e

    def with_stack(self) -> Settings:
        """Fill unset endpoints and credentials from the local stack's state file, if it runs."""
        if self.redis_url and self.s3_endpoint and self.api_url and self.models:
            return self
        state = self.state_dir / "stack.json"
        if not state.is_file():
            return self
        stack = json.loads(state.read_text(encoding="utf-8"))
        update: dict = {}
        if not self.redis_url:
            update["redis_url"] = stack["redis_url"]
        if not self.s3_endpoint:
            update["s3_endpoint"] = stack["s3_endpoint"]
            update["s3_access_key"] = SecretStr(stack["s3_access_key"])
            update["s3_secret_key"] = SecretStr(stack["s3_secret_key"])
            update["s3_bucket"] = stack.get("bucket", self.s3_bucket)
        if not self.models and stack.get("models"):
            # The stack's families: what its API accepts and its workers serve.
            update["models"] = ",".join(stack["models"])
        if not self.api_url and stack.get("api_url"):
            update["api_url"] = stack["api_url"]
            if not self.api_token:
                update["api_token"] = SecretStr(stack["token"])
        return self.model_copy(update=update)

    @classmethod
    def markdown_table(cls) -> str:
        """Every setting with its default, as docs/settings.md's table (`farm settings`)."""
        return settings_parts.markdown_table(cls)

    def tenants(self) -> dict[str, str]:
        """API server: token -> tenant, from ``api_tokens``."""
        out: dict[str, str] = {}
        raw = self.api_tokens.get_secret_value() if self.api_tokens else ""
        for pair in filter(None, (p.strip() for p in raw.split(","))):
            tenant, sep, token = pair.partition(":")
            if not sep or not tenant or len(token) < 16:
                raise ConfigError(
                    "FARM_API_TOKENS: each entry must be tenant:token, tokens of 16+ characters"
                )
            out[token] = tenant
        return out

    def require_endpoints(self, *names: str) -> None:
        """Raise a clear error when Redis or S3 (or only ``names``) is not configured."""
        missing = [n for n in names or ("redis_url", "s3_endpoint") if not getattr(self, n)]
        if missing:
            shown = ", ".join("FARM_" + n.upper() for n in missing)
            raise ConfigError(f"{shown} not set and no local stack is running: run `farm up`")

    def weights(self) -> dict[str, float]:
        """Feeder fair share weights by tenant (``tenant_weights``; a tenant not named: 1)."""
        out: dict[str, float] = {}
        for pair in filter(None, (p.strip() for p in (self.tenant_weights or "").split(","))):
            tenant, sep, weight = pair.partition(":")
            try:
                value = float(weight)
            except ValueError:
                value = 0.0
            if not sep or not tenant or not value > 0:
                raise ConfigError(
                    "FARM_TENANT_WEIGHTS: each entry must be tenant:weight, weight > 0"
                )
            out[tenant] = value
        return out

    @property
    def enabled_families(self) -> tuple[str, ...]:
        """The families this farm accepts jobs for (``FARM_MODELS``)."""
        return settings_parts.families(self.models, "FARM_MODELS")

    @property
    def served_families(self) -> tuple[str, ...]:
        """The families a worker serves (``FARM_WORKER_MODELS``, else every enabled one)."""
        if self.worker_models:
            return settings_parts.families(self.worker_models, "FARM_WORKER_MODELS")
        return self.enabled_families

    def location(self, part) -> str:
        """Where a part's weights are: its setting's value, with 'tiny' as the built folder."""
        value = self.locations.get(part.setting, TINY)
        if value != TINY:
            return value
        from farm.families.fullsize import stand_in_folder  # FARM_STAND_IN=full: full/

        return str(stand_in_folder(self, part))

    def is_tiny_location(self, part) -> bool:
        return self.locations.get(part.setting, TINY) == TINY

    @property
    def speed(self):
        """The speed switches of the pipelines this process loads."""
        from farm.families.loading import Speed

        return Speed(
            **self.model_dump(include={"attention", "channels_last", "compile", "cpu_offload"})
        )

    @property
    def tiny_dir(self) -> Path:
        return self.state_dir.resolve() / "models" / "tiny"

    def uses_tiny_for(self, families) -> bool:
        from farm.families import get

        return any(self.is_tiny_location(p) for f in families for p in get(f).parts)

    @property
    def uses_tiny(self) -> bool:
        return self.uses_tiny_for(self.enabled_families)

    def worker_env(self) -> dict[str, str]:
        """Environment that hands these exact settings to a child process (a worker, Flower)."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if name == "locations":
                env.update({"FARM_" + k.upper(): v for k, v in value.items()})
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env["FARM_" + name.upper()] = str(value)
        env["FARM_STATE_DIR"] = str(self.state_dir.resolve())
        return env
