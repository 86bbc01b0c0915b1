"""Full-size random-weight stand-ins: each family's published architecture, no hub needed.

The configs are data, one folder per part beside the registry (``farm/families/full/<family>/
<part>/``): ``model_index.json`` names the components as the hub repo's does, and one JSON per
component holds the published ``config.json`` values. A part with such a folder has a full-size
stand-in; ``FARM_STAND_IN=full`` puts it where the tiny one would be. The build writes each
component on its own (seeded, saved in shards, freed before the next) in the layout
``save_pretrained`` writes for real weights, so ``from_pretrained`` loads it as it loads them.
Parts without a folder (inpainting, ControlNet, depth) keep their tiny stand-ins.
"""

from __future__ import annotations

import gc
import json
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import ModelMixin
    from transformers import CLIPTokenizer, PreTrainedModel

    from farm.families.base import Part

# ``farm.settings.Settings``, typed Any here: it imports this module, and the project has no
# import cycle, not even one for types.
SettingsLike = Any

CONFIGS = Path(__file__).resolve().parent / "full"
FULL_MARKER = "farm-full.json"  # beside a full-size stand-in: random weights, real shapes
SHARD = "2GB"  # safetensors serialises a file in memory: small shards keep the build's peak low
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1}


def config_dir(part: Part, *, buildable: bool = True) -> Path | None:
    """The full-size config folder of ``part`` (matched by its stand-in folder name), or None.

    ``buildable``: skip folders marked ``_counted_only`` (Kandinsky 3: its configs are there to
    count its parameters; its weights do not fit this kind of machine).
    """
    from farm.families import REGISTRY

    for family in REGISTRY.values():
        for p in family.parts:
            folder = CONFIGS / family.name / p.name
            if p.tiny != part.tiny or not (folder / "model_index.json").is_file():
                continue
            if not buildable or "_counted_only" not in _read(folder, "model_index"):
                return folder
    return None


def stand_in_folder(settings: SettingsLike, part: Part) -> Path:
    """Where a part set to 'tiny' is read from: full/ when FARM_STAND_IN=full and it has one."""
    if getattr(settings, "stand_in", "tiny") == "full" and config_dir(part) is not None:
        return Path(settings.state_dir.resolve(), "models", "full", part.tiny)
    return Path(settings.tiny_dir, part.tiny)


def is_full(folder: str | Path) -> bool:
    return (Path(folder) / FULL_MARKER).is_file()


def _read(folder: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    return data


def _public(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def components(folder: Path) -> dict[str, tuple[str, str]]:
    """Component name -> (library, class) from a config folder's model_index.json."""
    index = _read(folder, "model_index")
    return {k: tuple(v) for k, v in index.items() if not k.startswith("_")}


def model(folder: Path, name: str, *, meta: bool = False) -> ModelMixin | PreTrainedModel:
    """One model component with random weights (seeded), or on the meta device (no memory)."""
    import contextlib

    import diffusers
    import torch
    import transformers

    library, cls_name = components(folder)[name]
    config = _read(folder, name)
    torch.manual_seed(0)
    with torch.device("meta") if meta else contextlib.nullcontext():
        if library == "diffusers":
            m = getattr(diffusers, cls_name).from_config(_public(config))
        else:
            cfg = getattr(transformers, config["_config_class"])(**_public(config))
            m = getattr(transformers, cls_name)(cfg)
    if cls_name == "PriorTransformer" and not meta:
        # clip_std is zero-initialised; the prior would then return all-zero embeddings.
        m.clip_std = torch.nn.Parameter(torch.ones(m.clip_std.shape))
    return m.eval()


def is_model(library: str, cls_name: str) -> bool:
    """Whether a component holds weights (a torch module), not a scheduler or tokenizer."""
    if cls_name.endswith(("Tokenizer", "TokenizerFast", "Processor", "Scheduler")):
        return False  # asking transformers for a processor class warns about torchvision
    import diffusers
    import torch
    import transformers

    cls = getattr(diffusers if library == "diffusers" else transformers, cls_name, None)
    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def parameters(folder: Path) -> dict[str, int]:
    """Parameters of each model component, counted on the meta device (no memory, no time)."""
    return {
        name: sum(p.numel() for p in model(folder, name, meta=True).parameters())
        for name, (library, cls_name) in components(folder).items()
        if is_model(library, cls_name)
    }


def _tokenizer(spec: dict[str, Any]) -> CLIPTokenizer:
    """A CLIP BPE tokenizer of the real vocabulary size, built offline: the 512 byte tokens,
    byte-pair merges up to the size, the special tokens last (ids 49406, 49407 as in CLIP)."""
    from transformers import CLIPTokenizer

    from farm.families.tiny import _bytes_to_unicode

    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    merges: list[tuple[str, str]] = []
    size = spec["vocab_size"] - 2
    for a in chars:
        for b in chars:
            if len(vocab) >= size:
                break
            for token, pair in ((a + b + "</w>", (a, b + "</w>")), (a + b, (a, b))):
                if len(vocab) < size and token not in vocab:
                    vocab[token] = len(vocab)
                    merges.append(pair)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=spec["model_max_length"])


def _other(folder: Path, name: str, cls_name: str) -> Any:
    """A component without weights: scheduler, tokenizer, image processor."""
    import diffusers

    config = _read(folder, name)
    if cls_name == "CLIPTokenizer":
        return _tokenizer(config)
    if cls_name == "CLIPImageProcessor":
        try:  # transformers 5 without torchvision: the PIL processor, as tiny.py does
            from transformers import CLIPImageProcessorPil as processor
        except ImportError:  # pragma: no cover - older transformers
            from transformers import CLIPImageProcessor as processor
        return processor(**_public(config))
    return getattr(diffusers, cls_name).from_config(_public(config))


def build(
    folder: Path,
    out: Path,
    *,
    family: str = "",
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Write the full-size stand-in of one part, one component at a time.

    Returns:
        Component -> {"parameters", "bytes", "build_s"} for each model component.
    """
    import diffusers

    from farm.families.loading import quiet

    quiet()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": _read(folder, "model_index")["_class_name"]}
    index["_diffusers_version"] = diffusers.__version__
    stats: dict[str, dict[str, float]] = {}
    for name, (library, cls_name) in components(folder).items():
        t0 = time.perf_counter()
        if is_model(library, cls_name):
            m = model(folder, name)
            m.save_pretrained(out / name, max_shard_size=SHARD)
            n = sum(p.numel() for p in m.parameters())
            stats[name] = {"parameters": n, "bytes": weight_bytes(out / name)["bytes"]}
            del m
            gc.collect()
        else:
            obj = _other(folder, name, cls_name)
            obj.save_pretrained(out / name)
            cls_name = type(obj).__name__
        index[name] = [library, cls_name]
        if name in stats:
            stats[name]["build_s"] = round(time.perf_counter() - t0, 1)
        if progress:
            progress(f"{out.name}/{name}: {time.perf_counter() - t0:.1f}s")
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    if index["_class_name"] == "KandinskyV22Pipeline":
        # The hub's decoder repos carry a card naming their prior (AutoPipelines read it).
        card = f"---\nprior:\n- {(out.parent / 'prior').resolve()}\n---\n"
        (out / "README.md").write_text(card, encoding="utf-8")
    marker = {"family": family, "full_size": True, "note": "random weights: images are noise"}
    (out / FULL_MARKER).write_text(json.dumps({**marker, "components": stats}) + "\n", "utf-8")
    return stats


def weight_bytes(folder: str | Path) -> dict[str, int]:
    """Parameters and bytes of every safetensors file under ``folder``, read from their headers
    (a few KB each: nothing is loaded)."""
    params = size = 0
    for path in Path(folder).rglob("*.safetensors"):
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for key, t in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for d in t["shape"]:
                count *= d
            params += count
            size += count * _DTYPE_BYTES.get(t["dtype"], 4)
    return {"parameters": params, "bytes": size}


def pinned(settings: SettingsLike, other: SettingsLike, families: Iterable[str]) -> SettingsLike:
    """``other`` (settings with another state folder: ``farm bench``'s own stack) reading the
    full-size stand-ins where ``settings`` has them: GBs are built once, not per state folder."""
    from farm.families import get

    if getattr(settings, "stand_in", "tiny") != "full":
        return other
    full = {
        part.setting: settings.location(part)
        for name in families
        for part in get(name).parts
        if settings.is_tiny_location(part) and config_dir(part) is not None
    }
    return other.model_copy(update={"locations": {**other.locations, **full}})
