"""Tiny random-weight pipelines for every family's parts, built locally for tests and the demo.

No model hub is reachable here, so the farm builds its own pipelines the way diffusers' test
suite builds "dummy components", saves them with ``save_pretrained`` and loads them back with
``from_pretrained(folder)`` exactly as it loads real weights. Everything is seeded: two builds
give identical files. The pictures they render are noise.
"""

from __future__ import annotations

# The builders live by family beside this module (``tiny_k2``: Kandinsky 2.1 and 2.2, ``tiny_k3``,
# ``tiny_sd``: SD 1.5 and the SDXL refiner; ``tiny_common``: what they share); every name the
# family modules, tests and benches use is importable from here.
from farm.families.tiny_common import EMBED_DIM, TINY_MARKER, _bytes_to_unicode, is_tiny
from farm.families.tiny_k2 import (
    _decoder_components,
    build_controlnet,
    build_depth,
    build_k21_decoder,
    build_k21_inpaint,
    build_k22_decoder,
    build_k22_inpaint,
    build_k22_prior,
    k22_scheduler,
)
from farm.families.tiny_k3 import build_k3
from farm.families.tiny_sd import build_sd15, build_sdxl_refiner

__all__ = [
    "EMBED_DIM",
    "TINY_MARKER",
    "_bytes_to_unicode",  # farm.families.fullsize
    "_decoder_components",  # bench/gpu_decoder.py
    "build_controlnet",
    "build_depth",
    "build_k21_decoder",
    "build_k21_inpaint",
    "build_k22_decoder",
    "build_k22_inpaint",
    "build_k22_prior",
    "build_k3",
    "build_sd15",
    "build_sdxl_refiner",
    "is_tiny",
    "k22_scheduler",
]
