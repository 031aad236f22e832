"""Checks across measurements that turn impossible combinations into ``needs_review``.

Each value is measured on its own; some combinations cannot all be right, and a wrong value
reported as ``ok`` is the worst outcome. These rules look at the values together, after
the per-value plausibility ranges:

- **Left and right** foraminal heights of one level differ by more than the two sides of a
  level plausibly do (both need review: which one is wrong cannot be told).
- **A disc height that jumps** above its neighbours': discs collapse with degeneration (a
  lower value is a finding), but one disc far higher than the discs beside it is a
  detection error (a vertebral body taken for a disc).
- **A disc height out of proportion to the vertebral bodies** beside it (lumbar discs are
  about a third of the body's height; beyond 60 % the endplates found are not the disc's).
- **An unreliable spine model**: when the centre line through the detected bodies scatters
  by more than a real spine can (the detector followed something else), every value of the
  study needs review.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import median

from services.common.vocabulary import QuantityName
from services.imaging.analysis.report import Measurement

SIDE_DIFFERENCE_MM = 5.0  # with the ratio below: unilateral stenosis rarely exceeds both
SIDE_RATIO = 1.4
DISC_JUMP_RATIO = 2.0  # a disc more than twice its neighbours' height
DISC_JUMP_MM = 6.0  # ... and at least this much higher
DISC_TO_BODY = 0.6  # disc height / the smaller adjacent body height
UNRELIABLE_LINE_MM = 8.0  # centre-line scatter beyond which no level can be trusted


def _values(
    measurements: Sequence[Measurement], quantity: str
) -> dict[tuple[int, str | None], Measurement]:
    return {
        (m.level_index, m.side): m
        for m in measurements
        if m.quantity == quantity and m.value is not None
    }


def lateral_asymmetry(measurements: Sequence[Measurement]) -> None:
    heights = _values(measurements, QuantityName.FORAMINAL_HEIGHT)
    for (index, side), left in heights.items():
        right = heights.get((index, "right"))
        if side != "left" or right is None or left.value is None or right.value is None:
            continue
        low, high = sorted((left.value, right.value))
        if high - low > SIDE_DIFFERENCE_MM and high > SIDE_RATIO * low:
            why = (
                f"left {left.value:.1f} mm and right {right.value:.1f} mm differ more than the "
                "two sides of one level plausibly do: check both"
            )
            left.review(why)
            right.review(why)


def disc_jumps(measurements: Sequence[Measurement]) -> None:
    discs = _values(measurements, QuantityName.DISC_HEIGHT)
    by_index = {index: m for (index, _), m in discs.items()}
    flagged = []
    for index, m in by_index.items():
        neighbours = [
            n.value
            for i in (index - 1, index + 1)
            if (n := by_index.get(i)) is not None and n.value is not None
        ]
        if not neighbours or m.value is None:
            continue
        typical = median(neighbours)
        if m.value > DISC_JUMP_RATIO * typical and m.value - typical > DISC_JUMP_MM:
            flagged.append((m, typical))
    for m, typical in flagged:  # judged on the values as measured, then flagged together
        m.review(
            f"disc height {m.value:.1f} mm is more than twice its neighbours' "
            f"({typical:.1f} mm): a vertebral body may have been taken for the disc"
        )


def disc_to_bodies(
    measurements: Sequence[Measurement], body_heights: Mapping[int, Sequence[float]]
) -> None:
    """``body_heights``: per level index, the heights of the whole vertebral bodies above and
    below its disc that are known (bounded by discs on both sides)."""
    for m in measurements:
        bodies = body_heights.get(m.level_index, ())
        if m.quantity != QuantityName.DISC_HEIGHT or m.value is None or not bodies:
            continue
        if m.value > DISC_TO_BODY * min(bodies):
            m.review(
                f"disc height {m.value:.1f} mm is out of proportion to the adjacent vertebral "
                f"body ({min(bodies):.1f} mm): the endplates found may not be the disc's"
            )


def unreliable_model(measurements: Sequence[Measurement], scatter_mm: float) -> None:
    if scatter_mm <= UNRELIABLE_LINE_MM:
        return
    for m in measurements:
        if m.value is not None:
            m.review(
                f"the spine's centre line scatters by {scatter_mm:.0f} mm: the vertebrae "
                "found may not be the spine's, so no level can be trusted"
            )


def check(
    measurements: Sequence[Measurement],
    *,
    scatter_mm: float,
    body_heights: Mapping[int, Sequence[float]] | None = None,
) -> None:
    """Every cross-measurement rule, in place."""
    unreliable_model(measurements, scatter_mm)
    lateral_asymmetry(measurements)
    disc_to_bodies(measurements, body_heights or {})
    disc_jumps(measurements)
