"""Pixel primitives shared by every synthetic product and defect.

Images are float32 ``(H, W, 3)`` arrays in 0..1 while they are being painted and
only become ``uint8`` in :func:`finish`. Shapes are drawn with PIL (fast, in C)
into masks and composited with numpy, which keeps a 256 px image in a few ms.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Color = Sequence[float]


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (float32, pixels) of a ``size`` x ``size`` image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def smooth_noise(rng: np.random.Generator, size: int, cells: int, stretch: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Value noise in 0..1: a ``cells`` grid of random values upsampled bicubically.

    ``stretch`` multiplies the grid resolution per axis (rows, cols), which gives
    anisotropic streaks such as brushed metal or wood fibres.
    """
    rows, cols = max(2, cells * stretch[0]), max(2, cells * stretch[1])
    grid = rng.random((rows, cols), dtype=np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((size, size), Image.BICUBIC))


def fractal_noise(rng: np.random.Generator, size: int, base_cells: int = 4, octaves: int = 4) -> np.ndarray:
    """Sum of value-noise octaves, normalised to mean 0 and roughly unit range."""
    total = np.zeros((size, size), np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        total += amplitude * (smooth_noise(rng, size, base_cells * 2**octave) - 0.5)
        norm += amplitude
        amplitude *= 0.5
    return total / norm * 2.0


def draw_mask(size: int, paint: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    """Boolean mask of whatever ``paint`` draws with fill 255 on a black canvas."""
    canvas = Image.new("L", (size, size), 0)
    paint(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 127


def _as_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(mask.astype(np.uint8) * 255, "L")


def soften(mask: np.ndarray, radius: float) -> np.ndarray:
    """Float alpha 0..1 from a boolean mask with edges blurred by ``radius`` pixels.

    Small radii (anti-aliasing) use a box blur, which is three times cheaper than a Gaussian.
    """
    image = _as_image(mask)
    if radius > 0:
        image = image.filter(ImageFilter.BoxBlur(radius) if radius <= 1.0 else ImageFilter.GaussianBlur(radius))
    return np.asarray(image, dtype=np.float32) / 255.0


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a boolean mask by ``pixels`` (square element, via a constant-time box blur)."""
    if pixels <= 0:
        return mask
    return np.asarray(_as_image(mask).filter(ImageFilter.BoxBlur(pixels))) > 0


def erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Shrink a boolean mask by ``pixels`` (square element, via a constant-time box blur)."""
    if pixels <= 0:
        return mask
    return np.asarray(_as_image(mask).filter(ImageFilter.BoxBlur(pixels))) >= 255


def _bounds(alpha: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding rows/cols where ``alpha`` is non-zero, or None when it is all zero."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(alpha.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def blend(rgb: np.ndarray, alpha: np.ndarray, color: Color | np.ndarray) -> None:
    """In place: ``rgb = rgb * (1 - alpha) + color * alpha`` (color may be an image).

    Only the bounding box of the non-zero alpha is touched, which is most of the
    speed-up for small defects and parts.
    """
    box = _bounds(alpha)
    if box is None:
        return
    color = np.asarray(color, np.float32)
    if color.ndim == 3:
        color = color[box]
    a = alpha[box][..., None]
    target = rgb[box]
    target *= 1.0 - a
    target += color * a


def shade(rgb: np.ndarray, factor: np.ndarray) -> None:
    """In place: multiply brightness by a per-pixel factor."""
    rgb *= factor[..., None]


def irregular_blob(rng: np.random.Generator, size: int, center: tuple[float, float], radius: float,
                   roughness: float = 0.35, stretch: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """Boolean blob: a circle whose radius wobbles with a few random harmonics.

    Only a window around the centre that can hold the blob is evaluated.
    """
    harmonics = range(2, 6)
    reach = radius * (1 + roughness * sum(1 / h for h in harmonics)) / min(1.0, stretch) + 2
    top, left = max(0, int(center[0] - reach)), max(0, int(center[1] - reach))
    bottom, right = min(size, int(center[0] + reach) + 1), min(size, int(center[1] + reach) + 1)
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))
    blob = np.zeros((size, size), bool)
    if top >= bottom or left >= right:
        return blob
    yy, xx = pixel_grid(size)
    dy, dx = yy[top:bottom, left:right] - center[0], xx[top:bottom, left:right] - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = dx * cos + dy * sin, (-dx * sin + dy * cos) * stretch
    theta = np.arctan2(v, u)
    boundary = np.ones_like(theta)
    for harmonic, phase in zip(harmonics, phases):
        boundary += roughness / harmonic * np.cos(harmonic * theta + phase)
    blob[top:bottom, left:right] = np.hypot(u, v) <= radius * boundary
    return blob


def rotate_points(points: np.ndarray, angle: float, center: tuple[float, float]) -> list[tuple[float, float]]:
    """Rotate ``(N, 2)`` ``(x, y)`` points about ``center`` and return PIL-ready tuples."""
    cos, sin = np.cos(angle), np.sin(angle)
    x = points[:, 0] * cos - points[:, 1] * sin + center[0]
    y = points[:, 0] * sin + points[:, 1] * cos + center[1]
    return list(zip(x.tolist(), y.tolist()))


def pick_point(rng: np.random.Generator, region: np.ndarray) -> tuple[float, float]:
    """A random ``(row, col)`` inside ``region`` (the image centre when it is empty)."""
    rows, cols = np.nonzero(region)
    if rows.size == 0:
        half = region.shape[0] / 2
        return half, half
    index = int(rng.integers(rows.size))
    return float(rows[index]), float(cols[index])


def finish(rgb: np.ndarray, rng: np.random.Generator, noise_sigma: float = 0.012) -> np.ndarray:
    """Apply camera lighting (gain, gradient, vignette) and sensor noise; return ``uint8``.

    Lighting varies per image so that two normal images never match pixel for pixel.
    """
    size = rgb.shape[0]
    yy, xx = pixel_grid(size)
    gain = rng.uniform(0.9, 1.08)
    direction = rng.uniform(0, 2 * np.pi)
    slope = rng.uniform(0.0, 0.12)
    ramp = ((xx - size / 2) * np.cos(direction) + (yy - size / 2) * np.sin(direction)) / size
    radius2 = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (size * size)
    light = (gain * 255.0) * (1.0 + slope * ramp) * (1.0 - rng.uniform(0.05, 0.2) * radius2)
    out = rgb * light[..., None]
    out += rng.standard_normal((size, size, 1), dtype=np.float32) * (noise_sigma * 255.0) + 0.5
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)
