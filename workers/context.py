"""What a worker process builds once and hands to every task: clients, stores, pipelines.

Pipelines load when the worker process starts (solo/threads pools: in the worker itself;
prefork: in each child after the fork), never on the first job: a lazy load made the first job
take 13-16 s, and CUDA cannot be initialised before a fork.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis
from celery import Celery

from farm.settings import Settings

log = logging.getLogger("farm.worker")


@dataclass
class WorkerContext:
    settings: Settings
    app: Celery
    redis: redis.Redis
    stages: tuple[str, ...]
    pipelines: dict[str, object] = field(default_factory=dict)

    @property
    def embeddings(self):
        from farm.embeddings import EmbeddingStore

        return EmbeddingStore(self.redis, self.settings.embedding_ttl_s)

    @property
    def records(self):
        from farm.records import RecordStore

        return RecordStore(self.redis, self.settings.record_ttl_s)

    @property
    def objects(self):
        if "objects" not in self.pipelines:
            from farm.storage import ObjectStore

            self.pipelines["objects"] = ObjectStore.from_settings(self.settings)
        return self.pipelines["objects"]

    def pipeline(self, stage: str, task: str = "text2img", model: str = "kandinsky-2.2"):
        """The loaded pipeline for a stage and task (img2img shares the text2img weights)."""
        from farm.errors import ModelError

        if model == "kandinsky-2.1":
            part = {"prior": "k21_prior", "inpaint": "k21_inpaint"}.get(
                "prior" if stage == "prior" else task, "k21_decoder"
            )
            if part not in self.pipelines:
                raise ModelError(f"Kandinsky 2.1 ({part}) is not loaded on this worker")
            if stage == "decoder" and task == "img2img":
                return self._derived(
                    "k21_decoder:img2img", "KandinskyImg2ImgPipeline", "k21_decoder"
                )
            return self.pipelines[part]
        if model == "kandinsky-2.2-auto":
            part = "k22_auto_inpaint" if task == "inpaint" else "k22_auto"
            if part not in self.pipelines:
                raise ModelError(
                    f"Kandinsky 2.2 AutoPipelines ({part}) are not loaded on this worker"
                )
            if task == "img2img":
                return self._derived_auto(
                    "k22_auto:img2img", "AutoPipelineForImage2Image", "k22_auto"
                )
            return self.pipelines[part]
        if model == "sdxl-refiner":
            if "sdxl_refiner" not in self.pipelines:
                raise ModelError(
                    "the SDXL refiner is not loaded on this worker (FARM_SDXL_REFINER_MODEL)"
                )
            return self.pipelines["sdxl_refiner"]
        if model == "sd-1.5":
            if "sd15" not in self.pipelines:
                raise ModelError(
                    "Stable Diffusion 1.5 is not loaded on this worker (FARM_SD15_MODEL)"
                )
            if task == "img2img":
                return self._derived("sd15:img2img", "StableDiffusionImg2ImgPipeline", "sd15")
            return self.pipelines["sd15"]
        if model == "kandinsky-3":
            if "kandinsky3" not in self.pipelines:
                raise ModelError("Kandinsky 3 is not loaded on this worker (FARM_KANDINSKY3_MODEL)")
            if task == "img2img":
                return self._derived(
                    "kandinsky3:img2img", "Kandinsky3Img2ImgPipeline", "kandinsky3"
                )
            return self.pipelines["kandinsky3"]
        if stage == "prior" and task == "controlnet-depth-img2img":
            return self._derived("prior:emb2emb", "KandinskyV22PriorEmb2EmbPipeline", "prior")
        if stage == "decoder" and task.startswith("controlnet"):
            if "controlnet" not in self.pipelines:
                raise ModelError(
                    "no ControlNet model is loaded on this worker (FARM_CONTROLNET_MODEL)"
                )
            if task.endswith("img2img"):
                return self._derived(
                    "controlnet:img2img", "KandinskyV22ControlnetImg2ImgPipeline", "controlnet"
                )
            return self.pipelines["controlnet"]
        if stage == "decoder" and task == "inpaint":
            if "inpaint" not in self.pipelines:
                raise ModelError(
                    "no inpainting model is loaded on this worker (FARM_INPAINT_MODEL)"
                )
            return self.pipelines["inpaint"]
        if stage == "decoder" and task == "img2img":
            return self._derived("decoder:img2img", "KandinskyV22Img2ImgPipeline", "decoder")
        return self.pipelines[stage]

    def _derived_auto(self, name: str, auto_class: str, base: str):
        """An AutoPipeline of another task over loaded components (from_pipe, no new weights)."""
        if name not in self.pipelines:
            import diffusers

            pipe = getattr(diffusers, auto_class).from_pipe(self.pipelines[base])
            pipe.set_progress_bar_config(disable=True)
            self.pipelines[name] = pipe
        return self.pipelines[name]

    def _derived(self, name: str, class_name: str, base: str):
        """A pipeline of another class over already loaded components (no new weights)."""
        if name not in self.pipelines:
            import diffusers

            pipe = getattr(diffusers, class_name)(**self.pipelines[base].components)
            pipe.set_progress_bar_config(disable=True)
            self.pipelines[name] = pipe
        return self.pipelines[name]

    def load(self) -> None:
        from farm.errors import ModelError

        for stage in self.stages:
            self._load(stage, stage)
            extras = {
                "prior": ("k21_prior", "depth"),
                "decoder": (
                    "inpaint",
                    "kandinsky3",
                    "k21_decoder",
                    "k21_inpaint",
                    "sd15",
                    "sdxl_refiner",
                    "controlnet",
                    "k22_auto",
                    "k22_auto_inpaint",
                ),
            }
            if stage in extras:
                for extra in extras[stage]:
                    try:
                        self._load(extra, extra)
                    except ModelError as e:
                        # The decoder still serves the rest; these jobs fail with a clear error.
                        log.warning("%s unavailable on this worker: %s", extra, e)

    def _load(self, name: str, stage: str) -> None:
        from farm.models.registry import load_depth_estimator, load_pipeline
        from farm.models.tiny import is_tiny

        model = self.settings.model_folder(stage)
        t0 = time.perf_counter()
        if stage == "depth":
            self.pipelines[name] = load_depth_estimator(model, device=self.settings.device)
        else:
            self.pipelines[name] = load_pipeline(
                model, stage, device=self.settings.device, dtype=self.settings.dtype
            )
        tiny = " (tiny random weights: images are noise)" if is_tiny(model) else ""
        log.info("loaded %s model %s in %.2fs%s", name, model, time.perf_counter() - t0, tiny)


_current: WorkerContext | None = None


def init(settings: Settings, app: Celery, stages: tuple[str, ...]) -> WorkerContext:
    """Build this process's context and load its pipelines."""
    global _current
    ctx = WorkerContext(
        settings=settings,
        app=app,
        redis=redis.Redis.from_url(settings.redis_url, health_check_interval=30),
        stages=stages,
    )
    ctx.load()
    _current = ctx
    return ctx


def current() -> WorkerContext:
    if _current is None:
        raise RuntimeError("worker context not initialised (worker_init did not run)")
    return _current
