"""Rendered images (WADO-RS ``rendered`` and ``thumbnail``, PS3.18 8.3.5 and 9.5.1.2).

A frame goes through the Modality LUT (rescale), then the VOI window — the query's
``window=center,width[,function]`` or else the data set's first Window Center/Width, or
else the frame's own range — then MONOCHROME1 is inverted, and the result is scaled to
fit ``viewport=width,height`` and encoded as JPEG or PNG.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array

from services.imaging.errors import InvalidQuery, NotAcceptable

MAX_VIEWPORT = 4096
THUMBNAIL_SIZE = 128
FUNCTIONS = ("linear", "linear_exact", "sigmoid")


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class RenderOptions:
    window: Window | None = None
    viewport: tuple[int, int] | None = None
    quality: int = 90


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidQuery(f"{name} {text[:20]!r} is not a number") from None
    if not np.isfinite(value):
        raise InvalidQuery(f"{name} must be finite")
    return value


def parse_options(
    window: str | None, viewport: str | None, quality: str | None, *, thumbnail: bool = False
) -> RenderOptions:
    """The rendering query parameters; 400 on a malformed value."""
    parsed_window = None
    if window:
        parts = [p.strip() for p in window.split(",")]
        if len(parts) not in (2, 3):
            raise InvalidQuery("window is center,width[,function]")
        function = parts[2].lower().replace("-", "_") if len(parts) == 3 else "linear"
        if function not in FUNCTIONS:
            raise InvalidQuery(f"window function must be one of {', '.join(FUNCTIONS)}")
        width = _number(parts[1], "window width")
        if width <= 0 or (function == "linear" and width < 1):
            raise InvalidQuery("window width must be positive (at least 1 for linear)")
        parsed_window = Window(_number(parts[0], "window center"), width, function)
    size: tuple[int, int] | None = (THUMBNAIL_SIZE, THUMBNAIL_SIZE) if thumbnail else None
    if viewport:
        parts = [p.strip() for p in viewport.split(",")]
        if len(parts) not in (2, 6) or not all(p.isascii() and p.isdigit() for p in parts[:2]):
            raise InvalidQuery("viewport is width,height (crop parameters are not supported)")
        if len(parts) == 6:
            raise InvalidQuery("viewport cropping (sx,sy,sw,sh) is not supported")
        w, h = int(parts[0]), int(parts[1])
        if not (1 <= w <= MAX_VIEWPORT and 1 <= h <= MAX_VIEWPORT):
            raise InvalidQuery(f"viewport width and height are 1 to {MAX_VIEWPORT}")
        size = (w, h)
    q = 90
    if quality:
        if not (quality.isascii() and quality.isdigit()) or not 1 <= int(quality) <= 100:
            raise InvalidQuery("quality is an integer from 1 to 100")
        q = int(quality)
    return RenderOptions(parsed_window, size, q)


def _first(value: object) -> float | None:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        return float(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _dataset_window(ds: Dataset) -> Window | None:
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR")).lower()
    return Window(center, width, function if function in FUNCTIONS else "linear")


def _apply_window(values: np.ndarray, w: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 (linear, linear exact) and C.11.2.1.3.1 (sigmoid), to [0, 1]."""
    if w.function == "linear_exact":
        out = (values - w.center) / w.width + 0.5
    elif w.function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - w.center) / w.width))
    else:
        out = (values - (w.center - 0.5)) / (w.width - 1) + 0.5
    return np.clip(out, 0.0, 1.0)


def has_pixels(ds: Dataset) -> bool:
    return "PixelData" in ds


def render(ds: Dataset, frame: int, options: RenderOptions, media_type: str) -> bytes:
    """Frame ``frame`` (1-based) of ``ds`` as ``media_type`` bytes; 406 when the instance
    has no pixel data or its pixel data cannot be decoded."""
    if not has_pixels(ds):
        raise NotAcceptable(f"the instance has no pixel data to render as {media_type}")
    try:
        return _render(ds, frame, options, media_type)
    except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError, RuntimeError):
        raise NotAcceptable(f"the stored pixel data cannot be rendered as {media_type}") from None


def _render(ds: Dataset, frame: int, options: RenderOptions, media_type: str) -> bytes:
    arr = pixel_array(ds, index=frame - 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3:  # colour: pydicom has converted to RGB; windowing applies to grey only
        image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")
    else:
        values = apply_modality_lut(arr, ds).astype(np.float64)
        window = options.window or _dataset_window(ds)
        if window is None:
            lo, hi = float(values.min()), float(values.max())
            window = Window((lo + hi) / 2, max(hi - lo, 1.0), "linear_exact")
        grey = _apply_window(values, window)
        if photometric == "MONOCHROME1":
            grey = 1.0 - grey
        image = Image.fromarray(np.round(grey * 255).astype(np.uint8), mode="L")
    if options.viewport:
        # Scaled to fit the viewport, aspect ratio kept (PS3.18 8.3.5.1.3).
        scale = min(options.viewport[0] / image.width, options.viewport[1] / image.height)
        size = (max(round(image.width * scale), 1), max(round(image.height * scale), 1))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if media_type == "image/png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=options.quality)
    return buffer.getvalue()
