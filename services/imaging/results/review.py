"""A reader's read of an automatic value, checked against the result it reviews (pure).

The reader accepts the value, rejects it (with a reason), or corrects it: by moving the
construction on the review image (the two end points of a height, or the sac's contour),
whose value is computed here from the image's pixel size, never taken from the client; or
by typing a value. Each read is a new row (append-only); the latest read of a reader for
one measurement is the one that counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.contracts import Measurement, key_image_name
from services.common.vocabulary import QUANTITIES, QuantityName
from services.imaging.errors import InvalidRead

Point = tuple[float, float]


def line_length(points: Sequence[Point], mm_per_pixel: float) -> float:
    (x0, y0), (x1, y1) = points
    return math.hypot(x1 - x0, y1 - y0) * mm_per_pixel


def polygon_area(points: Sequence[Point], mm_per_pixel: float) -> float:
    """The shoelace area of a closed contour (its last point joins its first)."""
    twice = sum(
        x0 * y1 - x1 * y0
        for (x0, y0), (x1, y1) in zip(points, [*points[1:], points[0]], strict=True)
    )
    return abs(twice) / 2 * mm_per_pixel**2


def value_of(geometry: dict[str, Any], points: Sequence[Point]) -> float:
    """The value of a construction drawn on a review image of ``geometry``'s kind."""
    kind, mm = geometry.get("kind"), float(geometry["mm_per_pixel"])
    scale = float(geometry.get("scale", 1.0))  # see KeyImage.scale
    if kind == "line":
        if len(points) != 2:
            raise InvalidRead("a height is drawn with its two end points")
        return line_length(points, mm) * scale
    if kind == "contour":
        if len(points) < 3:
            raise InvalidRead("a contour needs at least three points")
        return polygon_area(points, mm) * scale
    raise InvalidRead(f"the review image has no construction of kind {kind!r}")


@dataclass(frozen=True)
class Checked:
    value: float | None
    automatic_value: float | None
    key_image: str | None


def check(
    *,
    action: str,
    quantity: QuantityName,
    level: str,
    side: str | None,
    value: float | None,
    points: Sequence[Point] | None,
    automatic: Measurement | None,
    geometry: dict[str, Any] | None,
) -> Checked:
    """The value a read records, or :class:`InvalidRead` when it does not fit."""
    name = key_image_name(quantity.value, level, side)
    automatic_value = automatic.value if automatic is not None else None
    if action in ("accepted", "corrected", "rejected") and automatic is None:
        verb = {"accepted": "accept", "corrected": "correct", "rejected": "reject"}[action]
        raise InvalidRead(f"there is no automatic {quantity.value} at {level} to {verb}")
    if action == "accepted":
        if automatic_value is None:
            raise InvalidRead("an automatic result without a value cannot be accepted")
        return Checked(automatic_value, automatic_value, None)
    if action == "rejected":
        return Checked(None, automatic_value, None)
    if points is not None:
        if geometry is None:
            raise InvalidRead(f"{name} has no review image to draw on (analyse the study again)")
        measured = value_of(geometry, points)
    elif value is not None:
        measured = value
    else:
        raise InvalidRead("a corrected or measured read needs a value or a construction")
    q = QUANTITIES[quantity]
    if measured <= 0:
        raise InvalidRead("the construction has no length or area (points on top of each other)")
    low, high = q.accepted
    if not low <= measured <= high:
        raise InvalidRead(
            f"{quantity.value} of {measured:.2f} {q.unit} is outside {low:g}-{high:g} {q.unit}"
        )
    return Checked(round(measured, 2), automatic_value, name if points is not None else None)
