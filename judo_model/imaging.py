"""Image decoding and encoding shared by every stage that touches pixels.

One decoder for files on disk and for frame bytes from Kafka, so that a camera
frame and a dataset image go through exactly the same checks (size, pixel cap,
channels) and come out in the same layout: ``uint8`` RGB, shape ``(H, W, 3)``.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

#: Largest frame we decode (pixels). Guards against decompression bombs.
DEFAULT_MAX_PIXELS = 40_000_000

SUPPORTED_ENCODINGS = ("png", "jpeg", "bmp", "raw_rgb8")


class ImageDecodeError(ValueError):
    """The bytes are not an image we accept; the message says why."""


def decode_image(
    data: bytes,
    encoding: str | None = None,
    *,
    width: int | None = None,
    height: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode image bytes to an RGB ``uint8`` array of shape ``(H, W, 3)``.

    ``encoding`` is ``png``/``jpeg``/``bmp`` (sniffed from the bytes when None) or
    ``raw_rgb8`` (then ``width`` and ``height`` are required). Grayscale, palette
    and alpha images are converted to RGB. Raises :class:`ImageDecodeError`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"image data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) == 0:
        raise ImageDecodeError("image data is empty (0 bytes)")
    if encoding is not None and encoding not in SUPPORTED_ENCODINGS:
        raise ImageDecodeError(
            f"unsupported encoding {encoding!r}; expected one of {', '.join(SUPPORTED_ENCODINGS)}"
        )
    if encoding == "raw_rgb8":
        return _decode_raw_rgb8(data, width, height, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if w <= 0 or h <= 0:
                    raise ImageDecodeError(f"image has zero size ({w}x{h})")
                if w * h > max_pixels:
                    raise ImageDecodeError(
                        f"image is {w}x{h} = {w * h} pixels, above the cap of {max_pixels}"
                    )
                fmt = (img.format or "").lower()
                if encoding is not None and _format_name(fmt) != encoding:
                    raise ImageDecodeError(
                        f"declared encoding {encoding!r} but the bytes are {fmt or 'unknown'}"
                    )
                img.load()
                return _to_rgb_array(img)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb rejected: {exc}") from exc
    except Exception as exc:  # PIL raises many types for corrupt input
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from exc


def _format_name(pil_format: str) -> str:
    return {"jpeg": "jpeg", "jpg": "jpeg", "png": "png", "bmp": "bmp"}.get(pil_format, pil_format)


def _decode_raw_rgb8(data: bytes, width: int | None, height: int | None, max_pixels: int) -> np.ndarray:
    if not width or not height or width <= 0 or height <= 0:
        raise ImageDecodeError("raw_rgb8 needs positive width and height")
    if width * height > max_pixels:
        raise ImageDecodeError(f"image is {width}x{height} pixels, above the cap of {max_pixels}")
    expected = width * height * 3
    if len(data) != expected:
        raise ImageDecodeError(
            f"raw_rgb8 {width}x{height} needs {expected} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max()) or 1.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB ``uint8`` ``(H, W, 3)``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read {path}: {exc}") from exc
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from exc


def load_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as a boolean ``(H, W)`` array (``value > 0`` is defect).

    Palette images (KolektorSDD's BMPs) are read by index, not by colour, so index 1
    counts as defect whatever colour the palette gives it.
    """
    with Image.open(path) as img:
        img.load()
        if img.mode == "P":
            arr = np.asarray(img)
        elif img.mode in ("L", "1", "I", "I;16", "F"):
            arr = np.asarray(img)
        else:
            arr = np.asarray(img.convert("L"))
    return np.asarray(arr) > 0


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode an RGB or grayscale ``uint8`` array as PNG bytes.

    ``compress_level`` 1 is several times faster than the default 6 for slightly larger
    files: what a camera streaming frames wants.
    """
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Encode an RGB ``uint8`` array as JPEG bytes (what most cameras send)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def resize_map(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float score map (anomaly map, mask) bilinearly resized to ``height`` x ``width``, as float32."""
    array = np.asarray(array, dtype=np.float32)
    if array.shape == (height, width):
        return array
    return np.asarray(Image.fromarray(array, "F").resize((width, height), Image.BILINEAR))


def peak_crop_box(score_map: np.ndarray, fraction: float) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a square crop, ``fraction`` of the short side, centred on the
    map's maximum and kept inside the image: where to look closer at an anomaly."""
    height, width = score_map.shape
    side = max(8, int(round(min(height, width) * fraction)))
    row, col = np.unravel_index(int(np.argmax(score_map)), score_map.shape)
    top = int(np.clip(row - side // 2, 0, height - side))
    left = int(np.clip(col - side // 2, 0, width - side))
    return top, left, top + side, left + side
