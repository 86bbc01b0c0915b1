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


def array_to_png(data: bytes, field: str = "mask") -> bytes:
    """A mask sent as a NumPy array (.npy; 2-D, floats in [0, 1] or uint8, 1/255 = repaint) as a
    greyscale PNG. Read with allow_pickle=False: an object array is refused, never unpickled."""
    import numpy as np
    from numpy.lib import format as npy

    # The header first: its shape and dtype decide the allocation, so they are checked before
    # any array exists (a header claiming 100000 x 100000 float64 asks for 80 GB).
    head = io.BytesIO(data)
    try:
        version = npy.read_magic(head)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(head)
        elif version == (2, 0):
            shape, _, dtype = npy.read_array_header_2_0(head)
        else:
            raise ValueError(f"format version {version} not accepted")
    except Exception as e:  # noqa: BLE001 - any malformed header is the sender's error
        raise InvalidJob(field, f"not a plain NumPy array: {e}") from None
    if dtype.hasobject:
        raise InvalidJob(field, "not a plain NumPy array: objects (pickles) are not accepted")
    count = 1
    for n in shape:
        count *= n
    if len(shape) != 2 or count > MAX_PIXELS or count == 0:
        raise InvalidJob(
            field, f"a mask array must be 2-D, at most {MAX_PIXELS} values (got {shape})"
        )
    if count * dtype.itemsize > len(data):
        raise InvalidJob(field, "not a plain NumPy array: its data is shorter than its header says")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - truncated or inconsistent: the sender's error
        raise InvalidJob(field, f"not a plain NumPy array: {e}") from None
    if array.ndim != 2 or array.shape[0] * array.shape[1] > MAX_PIXELS or 0 in array.shape:
        raise InvalidJob(
            field, f"a mask array must be 2-D, at most {MAX_PIXELS} values (got {array.shape})"
        )
    if array.dtype == np.uint8:
        grey = array
    elif array.dtype.kind in "fb":
        if array.dtype.kind == "f" and (
            np.isnan(array).any() or array.min() < 0 or array.max() > 1
        ):
            raise InvalidJob(field, "float mask values must be within [0, 1]")
        grey = (array.astype(np.float32) * 255).round().astype(np.uint8)
    else:
        raise InvalidJob(field, f"mask dtype {array.dtype} not accepted; use uint8, bool or float")
    buf = io.BytesIO()
    Image.fromarray(grey, "L").save(buf, format="PNG")
    return buf.getvalue()


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
