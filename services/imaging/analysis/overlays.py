"""Key images: what a reader checks in two seconds.

A para-sagittal section through the pedicles with the foraminal height drawn between the
two pedicle edges, a mid-sagittal section with the disc height, and the axial slice with
the dural sac's contour and its area. At least 512 pixels a side, with the level and the
value, orientation letters on each edge and a 10 mm scale bar. Pure drawing on sampled
planes (Pillow, with matplotlib's DejaVu font for units such as mm²), PNG bytes.

A study's key images are drawn and encoded on :data:`DRAW_THREADS` threads
(:func:`encoded`): the sampling, the resizing and zlib release the GIL; the text, FreeType,
is drawn by one thread at a time (a FreeType face is not to be used by two at once).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from services.common import contracts
from services.imaging.analysis.plane import Plane
from services.imaging.analysis.report import Measurement
from services.imaging.analysis.sampling import FloatArray, Sampler, unit

STEP_MM = 0.25
SCALE = 2  # output pixels per sample, for legible lines and text
SCALE_BAR_MM = 10.0
MM_PER_PIXEL = STEP_MM / SCALE  # isotropic: key-image distances in pixels times this are mm


_TEXT = threading.Lock()  # held while FreeType renders: one thread at a time


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib): it has the glyphs the units need (mm², mm³)."""
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default()


def _annotate(
    image: Image.Image, axes: FloatArray, lines: list[tuple[str, tuple[int, int, int]]]
) -> None:
    """Text in the top left, orientation letters on the edges, a scale bar bottom left
    (FreeType under :data:`_TEXT`)."""
    with _TEXT:
        draw = ImageDraw.Draw(image)
        width, height = image.size
        font, small = _font(18), _font(16)
        y = 8
        for text, colour in lines:
            draw.text((10, y), text, fill=colour, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
            y += 24
        right, down = _letter(axes[0]), _letter(axes[1])
        opposite = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}
        markers = (
            (right, (width - 22, height // 2 - 9)),
            (opposite[right], (8, height // 2 - 9)),
            (down, (width // 2 - 6, height - 26)),
            (opposite[down], (width // 2 - 6, 8 if len(lines) == 0 else 8 + 24 * len(lines))),
        )
        for letter, position in markers:
            draw.text(
                position,
                letter,
                fill=(255, 255, 0),
                font=small,
                stroke_width=2,
                stroke_fill=(0, 0, 0),
            )
        bar = SCALE_BAR_MM / STEP_MM * SCALE
        x0, y0 = 14, height - 18
        draw.line([(x0, y0), (x0 + bar, y0)], fill=(255, 255, 255), width=3)
        for x in (x0, x0 + bar):
            draw.line([(x, y0 - 6), (x, y0 + 6)], fill=(255, 255, 255), width=2)
        draw.text((x0 + bar + 8, y0 - 10), f"{SCALE_BAR_MM:g} mm", fill=(255, 255, 255), font=small)


@dataclass(frozen=True)
class KeyImage:
    name: str  # file-safe: quantity_level-or-index_side
    caption: str
    png: bytes
    # The construction drawn, in the image's own (column, row) coordinates with (0, 0) the
    # top left corner of the first pixel: the SR points a viewer at it on the key image.
    graphic: tuple[tuple[float, float], ...] = ()
    # Patient Orientation (0020,0020): where the rows and the columns of the image point.
    orientation: tuple[str, str] = ("", "")
    # The same section for a reader to measure on: orientation letters and scale bar, but
    # no construction and no value (a blinded reader must not see them); ``graphic`` is the
    # automatic construction on it, a ``line`` (two end points) or a closed ``contour``.
    review_png: bytes = b""
    kind: str = "line"
    plane: Plane | None = None  # where the section lies: neighbouring sections are parallel
    # The value per unit drawn (mm, or mm² for a contour): the automatic value over its own
    # construction's length or area on the section. It carries what the section does not
    # show — a line's component across the plane, a slice's obliquity to the canal, the
    # partial-volume border — so a reader's construction is valued as the automatic one.
    scale: float = 1.0

    def review_geometry(self) -> dict[str, object]:
        """The review image's geometry (JSON): the construction, its kind, the pixel size,
        and the section's plane in patient space (to render its neighbours)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "points": [list(p) for p in self.graphic],
            "mm_per_pixel": MM_PER_PIXEL,
            "orientation": list(self.orientation),
            "plane": None if self.plane is None else self.plane.as_json(),
            "scale": round(self.scale, 4),
        }


# Window presets (lower, upper) of a section read on CT; MR is windowed on its own signal.
WINDOWS: dict[str, tuple[float, float]] = {"bone": (-250.0, 1250.0), "soft": (-160.0, 240.0)}


def section_png(sampler: Sampler, plane: Plane, offset_mm: float, window: str) -> bytes:
    """The section ``offset_mm`` along the plane's normal from a key image's, on the same
    pixel grid (its constructions fit it), with orientation letters and the scale bar."""
    right, down = np.array(plane.right), np.array(plane.down)
    normal = unit(np.cross(right, down))
    origin = np.array(plane.origin) + offset_mm * normal
    chosen = WINDOWS.get(window) if plane.modality == "CT" else None
    image, axes = _render(sampler, origin, right, down, plane.size_mm, plane.modality, chosen)
    _annotate(image, axes, [])
    return _png(image)


def key_image_name(m: Measurement) -> str:
    return contracts.key_image_name(m.quantity, m.level or f"index{m.level_index}", m.side)


CT_WINDOW = WINDOWS["bone"]  # the key images' window; MR is windowed on its own signal


def _render(
    sampler: Sampler,
    origin: FloatArray,
    right: FloatArray,
    down: FloatArray,
    size: tuple[float, float],
    modality: str,
    window: tuple[float, float] | None = None,
) -> tuple[Image.Image, FloatArray]:
    u = np.arange(0, size[0], STEP_MM)
    v = np.arange(0, size[1], STEP_MM)
    vv, uu = np.meshgrid(v, u, indexing="ij")
    pts = origin + uu[..., None] * right + vv[..., None] * down
    values = sampler(pts)
    values[np.isnan(values)] = sampler.floor  # beyond the volume: black, as before
    if window is not None:
        lo, hi = window
    elif modality == "CT":
        lo, hi = CT_WINDOW
    else:
        lo, hi = float(np.percentile(values, 1)), float(np.percentile(values, 99.5))
    grey = np.clip((values - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    image = Image.fromarray(grey).resize((grey.shape[1] * SCALE, grey.shape[0] * SCALE))
    return image.convert("RGB"), np.stack([right, down])


def _to_pixels(
    points: FloatArray, origin: FloatArray, axes: FloatArray
) -> list[tuple[float, float]]:
    rel = (np.asarray(points) - origin) @ axes.T / STEP_MM * SCALE
    return [(float(a), float(b)) for a, b in rel]


def _letter(direction: FloatArray) -> str:
    """A direction in LPS patient space as its dominant Patient Orientation letter."""
    names = (("L", "R"), ("P", "A"), ("H", "F"))
    axis = int(np.argmax(np.abs(direction)))
    return names[axis][0 if direction[axis] > 0 else 1]


def _orientation(axes: FloatArray) -> tuple[str, str]:
    return _letter(axes[0]), _letter(axes[1])


def _graphic(pixels: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Drawing positions as image coordinates: a sample's centre is half a sample (SCALE
    output pixels wide) in from its corner."""
    return tuple((x + SCALE / 2, y + SCALE / 2) for x, y in pixels)


def _polygon_area(points: list[tuple[float, float]]) -> float:
    xy = np.asarray(points, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _scale(value: float | None, drawn: float) -> float:
    """The automatic value per unit of its drawn construction (1 without a value); a ratio
    far from 1 means the drawing does not show the value, and is not used."""
    if value is None or drawn <= 0:
        return 1.0
    ratio = value / drawn
    return ratio if 0.5 <= ratio <= 1.5 else 1.0


PNG_LEVEL = 3  # zlib level: within 5 % of the smallest file, 12x faster than optimize=True
DRAW_THREADS = 2  # a CT's 15 key images and their review images: 0.7 s on one thread


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


@dataclass(frozen=True)
class Drawn:
    """A key image drawn but not yet encoded: the image with its construction and value,
    the same section without them (the review image), and everything else it carries."""

    key: KeyImage  # its png and review_png still empty
    image: Image.Image
    plain: Image.Image


def _finish(draw: Callable[[], Drawn]) -> KeyImage:
    drawn = draw()
    return replace(drawn.key, png=_png(drawn.image), review_png=_png(drawn.plain))


def encoded(drawings: Iterable[Callable[[], Drawn]]) -> list[KeyImage]:
    """The key images drawn by ``drawings`` (each a call that draws one), encoded, in order;
    on :data:`DRAW_THREADS` threads."""
    with ThreadPoolExecutor(DRAW_THREADS, thread_name_prefix="key-image") as pool:
        return list(pool.map(_finish, drawings))


def height_image(sampler: Sampler, m: Measurement, axis: FloatArray, modality: str) -> KeyImage:
    """Section containing the height line and the spine's axis, the line and its value drawn."""
    return _finish(lambda: draw_height(sampler, m, axis, modality))


def area_image(sampler: Sampler, m: Measurement, normal: FloatArray, modality: str) -> KeyImage:
    """The slice through the sac at the disc's middle, its contour and area."""
    return _finish(lambda: draw_area(sampler, m, normal, modality))


def draw_height(sampler: Sampler, m: Measurement, axis: FloatArray, modality: str) -> Drawn:
    """:func:`height_image`, not yet encoded."""
    a, b = (np.array(p) for p in m.points)
    mid = (a + b) / 2
    up = unit(axis)
    left = np.array([1.0, 0.0, 0.0])
    posterior = unit(np.cross(up, unit(left - (left @ up) * up)))
    # Image rows go down (caudal), columns go posterior: anterior on the left as readers expect.
    origin = mid - 35 * posterior + 40 * up
    image, axes = _render(sampler, origin, posterior, -up, (80, 80), modality)
    plane = Plane.of(origin, posterior, -up, (80, 80), m.series_instance_uid, modality)
    plain = image.copy()
    _annotate(plain, axes, [])
    draw = ImageDraw.Draw(image)
    pa, pb = _to_pixels(np.stack([a, b]), origin, axes)
    colour = (255, 200, 0) if m.status == "ok" else (255, 64, 64)
    draw.line([pa, pb], fill=colour, width=3)
    for x, y in (pa, pb):
        draw.line([(x - 14, y), (x + 14, y)], fill=(0, 220, 255), width=3)
    text = f"{m.level or f'level #{m.level_index}'} {m.side or ''} {m.quantity.replace('_', ' ')}"
    value = f"{m.value:.1f} mm" if m.value is not None else f"review: {m.reason}"
    _annotate(image, axes, [(text, (255, 255, 255)), (value, colour)])
    key = KeyImage(
        key_image_name(m),
        f"{text}: {value}",
        b"",
        _graphic([pa, pb]),
        _orientation(axes),
        b"",
        "line",
        plane,
        _scale(m.value, float(np.hypot(pb[0] - pa[0], pb[1] - pa[1])) * MM_PER_PIXEL),
    )
    return Drawn(key, image, plain)


def draw_area(sampler: Sampler, m: Measurement, normal: FloatArray, modality: str) -> Drawn:
    """:func:`area_image`, not yet encoded."""
    contour = np.array(m.points)
    centre = contour.mean(axis=0)
    n = unit(normal)
    left = unit(np.array([1.0, 0.0, 0.0]) - n[0] * n)
    posterior = unit(np.cross(n, left))
    # Radiological convention: patient's left on the image's right, anterior up.
    origin = centre - 32 * left - 32 * posterior
    image, axes = _render(sampler, origin, left, posterior, (64, 64), modality)
    plane = Plane.of(origin, left, posterior, (64, 64), m.series_instance_uid, modality)
    plain = image.copy()
    _annotate(plain, axes, [])
    draw = ImageDraw.Draw(image)
    outline = _to_pixels(contour, origin, axes)
    draw.line([*outline, outline[0]], fill=(255, 200, 0), width=2)
    where = m.level or f"level #{m.level_index}"
    value = f"{m.value:.0f} mm²" if m.value is not None else f"review: {m.reason}"
    _annotate(image, axes, [(f"{where} dural sac", (255, 255, 255)), (value, (255, 200, 0))])
    caption = f"{where} dural sac area: {value}"
    key = KeyImage(
        key_image_name(m),
        caption,
        b"",
        _graphic(outline),
        _orientation(axes),
        b"",
        "contour",
        plane,
        _scale(m.value, _polygon_area(outline) * MM_PER_PIXEL**2),
    )
    return Drawn(key, image, plain)
