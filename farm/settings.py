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

from farm.errors import ConfigError

TINY = "tiny"  # model setting meaning "the tiny random-weight pipelines the farm builds itself"


class Settings(BaseSettings):
    """The farm's settings; the README lists each with its default."""

    model_config = SettingsConfigDict(env_prefix="FARM_", frozen=True, extra="ignore")

    state_dir: Path = Field(
        Path(".farm"), description="Local stack state: server data, logs, pids, tiny models."
    )
    redis_url: str | None = Field(
        None, description="Broker + embedding store. Unset: the local stack's embedded Valkey."
    )
    s3_endpoint: str | None = Field(
        None, description="S3-compatible endpoint URL. Unset: the local stack's embedded SeaweedFS."
    )
    s3_bucket: str = Field("farm", min_length=3, description="Bucket for images and manifests.")
    s3_access_key: SecretStr | None = Field(None, description="S3 access key id.")
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret key.")
    s3_region: str = Field("us-east-1", description="S3 region name (most local stores ignore it).")
    s3_prefix: str = Field("renders", description="Key prefix for job outputs in the bucket.")
    prior_model: str = Field(
        TINY, description="Prior pipeline: hub id (from the HF cache), local folder, or 'tiny'."
    )
    decoder_model: str = Field(
        TINY, description="Decoder pipeline: hub id (from the HF cache), local folder, or 'tiny'."
    )
    inpaint_model: str = Field(
        TINY, description="Inpainting decoder: hub id (from the HF cache), local folder, or 'tiny'."
    )
    k21_prior_model: str = Field(
        TINY,
        description="Kandinsky 2.1 prior: hub id (from the HF cache), local folder, or 'tiny'.",
    )
    k21_decoder_model: str = Field(
        TINY,
        description="Kandinsky 2.1 decoder: hub id (from the HF cache), local folder, or 'tiny'.",
    )
    k21_inpaint_model: str = Field(
        TINY, description="Kandinsky 2.1 inpainting decoder: hub id, local folder, or 'tiny'."
    )
    sdxl_refiner_model: str = Field(
        TINY, description="SDXL refiner (img2img, single stage): hub id, local folder, or 'tiny'."
    )
    controlnet_model: str = Field(
        TINY, description="Kandinsky 2.2 ControlNet depth decoder: hub id, local folder, or 'tiny'."
    )
    depth_model: str = Field(
        TINY,
        description="Depth estimator for ControlNet hints (transformers): hub id, folder, or 'tiny'.",
    )
    sd15_model: str = Field(
        TINY, description="Stable Diffusion 1.5 (single stage): hub id, local folder, or 'tiny'."
    )
    kandinsky3_model: str = Field(
        TINY,
        description="Kandinsky 3 (single stage): hub id (from the HF cache), local folder, or 'tiny'.",
    )
    device: str = Field("cpu", description="Torch device for the pipelines: cpu, cuda, cuda:1 ...")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="Torch dtype the pipelines are loaded in."
    )
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
        8470, ge=0, le=65535, description="API port for the local stack (0 or busy: any free port)."
    )
    flower_port: int = Field(
        5555,
        ge=0,
        le=65535,
        description="Flower port for the local stack (0 or busy: any free port).",
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
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
        if self.redis_url and self.s3_endpoint and self.api_url:
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
        if not self.api_url and stack.get("api_url"):
            update["api_url"] = stack["api_url"]
            if not self.api_token:
                update["api_token"] = SecretStr(stack["token"])
        return self.model_copy(update=update)

    @classmethod
    def markdown_table(cls) -> str:
        """Every setting with its default, as the README's table (`farm settings`)."""
        rows = ["| variable | default | what it is |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            default = "unset" if field.default is None else f"`{field.default}`"
            rows.append(f"| `FARM_{name.upper()}` | {default} | {field.description} |")
        return "\n".join(rows)

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
            names = ", ".join("FARM_" + n.upper() for n in missing)
            raise ConfigError(f"{names} not set and no local stack is running: run `farm up`")

    def model_folder(self, stage: str) -> str:
        """The model id or folder for a stage, with 'tiny' resolved to the built folder."""
        value = {
            "prior": self.prior_model,
            "decoder": self.decoder_model,
            "inpaint": self.inpaint_model,
            "kandinsky3": self.kandinsky3_model,
            "k21_prior": self.k21_prior_model,
            "k21_decoder": self.k21_decoder_model,
            "k21_inpaint": self.k21_inpaint_model,
            "sd15": self.sd15_model,
            "sdxl_refiner": self.sdxl_refiner_model,
            # The AutoPipelines load the same decoder folders (and the prior their card names).
            "k22_auto": self.decoder_model,
            "k22_auto_inpaint": self.inpaint_model,
            "controlnet": self.controlnet_model,
            "depth": self.depth_model,
        }[stage]
        if value == TINY:
            # The tiny 2.1 prior is the tiny 2.2 prior: the same components.
            folder = {"k21_prior": "prior", "k22_auto": "decoder", "k22_auto_inpaint": "inpaint"}
            return str(self.tiny_dir / folder.get(stage, stage))
        return value

    @property
    def tiny_dir(self) -> Path:
        return self.state_dir.resolve() / "models" / "tiny-k22"

    @property
    def uses_tiny(self) -> bool:
        return TINY in (
            self.prior_model,
            self.decoder_model,
            self.inpaint_model,
            self.kandinsky3_model,
            self.k21_prior_model,
            self.k21_decoder_model,
            self.k21_inpaint_model,
            self.sd15_model,
            self.sdxl_refiner_model,
            self.controlnet_model,
            self.depth_model,
        )

    def worker_env(self) -> dict[str, str]:
        """Environment that hands these exact settings to a child process (a worker, Flower)."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env["FARM_" + name.upper()] = str(value)
        env["FARM_STATE_DIR"] = str(self.state_dir.resolve())
        return env
