"""Uploaded input images (img2img sources, inpainting masks, interpolation images).

Checked before they are stored: a byte cap, an allow-list of formats, and Pillow's
decompression-bomb guard made an error. Stored under their content hash, so a re-upload is free
and a job's reference (``in:<sha256>``) can never point at other bytes.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image

from farm.errors import InvalidJob

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 4096 * 4096
FORMATS = {"PNG", "JPEG", "WEBP"}


@dataclass(frozen=True)
class CheckedImage:
    ref: str
    sha256: str
    width: int
    height: int
    format: str


def check_image(data: bytes, field: str = "image") -> CheckedImage:
    """Validate uploaded bytes as an image.

    Raises:
        InvalidJob: too large, not an allowed image format, or a decompression bomb.
    """
    if len(data) > MAX_BYTES:
        raise InvalidJob(field, f"upload is {len(data)} bytes; at most {MAX_BYTES}")
    if not data:
        raise InvalidJob(field, "upload is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (width, height) = im.format, im.size
                if width * height > MAX_PIXELS:
                    raise InvalidJob(field, f"{width}x{height} pixels; at most {MAX_PIXELS}")
                im.verify()
    except InvalidJob:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidJob(field, f"refused as a decompression bomb: {e}") from None
    except Exception:
        raise InvalidJob(field, "not a readable PNG, JPEG or WebP image") from None
    if fmt not in FORMATS:
        raise InvalidJob(field, f"format {fmt} not accepted; use PNG, JPEG or WebP")
    sha = hashlib.sha256(data).hexdigest()
    return CheckedImage(f"in:{sha}", sha, width, height, fmt)


def load(data: bytes, mode: str = "RGB") -> Image.Image:
    """Decode stored input bytes for a pipeline."""
    with Image.open(io.BytesIO(data)) as im:
        return im.convert(mode)
