"""Image decoding to the one pixel format the model reads: 8-bit RGB (method.md section 2).

Transparency is composited over WHITE (documents and scans mostly sit on white paper, and
dropping alpha would expose whatever colour hides under transparent pixels). 16-bit
samples keep their top 8 bits (v >> 8). Metadata (EXIF, ICC) is applied or dropped: the
shards hold pixels only. Pillow's decompression-bomb guard stays on; a bomb is a skip.
"""

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadInput

# Suffixes worth mentioning in help texts; the image builder still tries every file.
IMAGE_EXTS = frozenset(
    {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WHITE = (255, 255, 255, 255)


STORE_MODES = ("original", "png")
_ORIENTATION = 0x0112  # EXIF tag; 1 (or absent) means the pixels are stored upright


@dataclass(frozen=True)
class StoredImage:
    """One image as it goes into a shard: its file bytes, pixel size and member suffix."""

    data: bytes
    width: int
    height: int
    ext: str  # "png" (re-encoded pixels) or "jpg" (the input's own bytes)
    resized: bool = False  # downscaled here (--max-side, Lanczos): the loader's resize is not the only one


def load_rgb(src: str | Path | bytes, max_side: int = 0) -> Image.Image:
    """Decode `src` (a path or the file's bytes) fully into an 8-bit RGB image.

    `max_side` > 0 downscales (Lanczos) so the longer side is at most `max_side`, the
    short side rounded down as the training loader does. Raises BadInput for empty,
    non-image, truncated or unreadable data and for decompression bombs.
    """
    return _load(src, max_side)[0]


def shard_image(src: str | Path | bytes, max_side: int = 0, store: str = "original") -> StoredImage:
    """Decode, check and (if needed) downscale `src`, then pick what the shard stores.

    store="original" keeps the input's bytes when they already are what the loader
    should see: a baseline/progressive JPEG of 8-bit RGB, upright (no EXIF rotation),
    not downscaled. The loader decodes them with the same Pillow, so the pixels equal
    those of the PNG path while the file stays several times smaller. Anything else, or
    store="png", is re-encoded as PNG. The file is always fully decoded here, so a
    truncated JPEG is skipped at prep time either way.
    """
    if store not in STORE_MODES:
        raise ValueError(f"store must be one of {STORE_MODES}, not {store!r}")
    rgb, data, as_is, resized = _load(src, max_side)
    if store == "original" and as_is:
        return StoredImage(data, rgb.width, rgb.height, "jpg")
    return StoredImage(png_bytes(rgb), rgb.width, rgb.height, "png", resized)


def _load(src: str | Path | bytes, max_side: int) -> tuple[Image.Image, bytes, bool, bool]:
    """(8-bit RGB image, the input bytes, whether those bytes decode to exactly it, whether
    it was downscaled here)."""
    name = "<bytes>" if isinstance(src, bytes) else str(src)
    try:
        data = src if isinstance(src, bytes) else Path(src).read_bytes()
    except OSError as e:
        raise BadInput(f"{name}: cannot read: {e}", "unreadable_image") from e
    if not data:
        raise BadInput(f"{name}: empty file", "empty_file")
    with warnings.catch_warnings():
        # Above MAX_IMAGE_PIXELS Pillow only warns; make that a skip too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadInput(f"{name}: decompression bomb: {e}", "decompression_bomb") from e
        except UnidentifiedImageError as e:
            raise BadInput(f"{name}: not an image", "not_an_image") from e
        except Exception as e:  # any decoder failure is a property of the file
            raise _decode_error(name, e) from e
        try:
            img.load()  # decode now so truncation shows up here, not in a later step
            as_is = (
                img.format == "JPEG"
                and img.mode == "RGB"
                and img.getexif().get(_ORIENTATION, 1) == 1
            )
            img = ImageOps.exif_transpose(img)
            rgb = to_rgb(img)
        except Exception as e:
            raise _decode_error(name, e) from e
    if max_side and max(rgb.size) > max_side:
        w, h = rgb.size
        # Short side rounded down like the loader's resize (pixword_lit/data/elements.py), so a
        # shard prepared at --max-side S is used at image size S without a second resize.
        size = (max_side, max(1, int(max_side * h / w))) if w >= h else (
            max(1, int(max_side * w / h)), max_side)  # fmt: skip
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        as_is, resized = False, True
    else:
        resized = False
    rgb.info = {}  # no ICC/EXIF/transparency keys leak into the written PNG
    return rgb, data, as_is, resized


def _decode_error(name: str, e: Exception) -> BadInput:
    kind = "truncated_image" if "truncat" in str(e).lower() else "unreadable_image"
    return BadInput(f"{name}: {kind.replace('_', ' ')}: {e}", kind)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an already loaded image of any common mode to 8-bit RGB."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's own I -> L conversion clips at 255 instead of scaling.
        arr = np.asarray(img).astype(np.int64)
        return Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8)).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return img.convert("RGB")


def png_bytes(img: Image.Image) -> bytes:
    """Encode as PNG with fixed settings and no metadata, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
