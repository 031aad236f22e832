"""Checks across measurements that turn impossible combinations into ``needs_review``.

Each value is measured on its own; some combinations cannot all be right, and a wrong value
reported as ``ok`` is the worst outcome. These rules look at the values together, after
the per-value plausibility ranges:

- **Left and right** foraminal heights of one level differ by more than the two sides of a
  level plausibly do, even with a one-sided stenosis (both need review: which one is wrong
  cannot be told).
- **A disc height that jumps** above the discs on both sides: discs collapse with
  degeneration (a lower value is a finding), but one disc far higher than both its
  neighbours is a detection error (a vertebral body taken for a disc).
- **A disc height out of proportion to the vertebral bodies** beside it (lumbar discs are
  about a third of the body's height; beyond 60 % of the taller body — the other may be
  fractured — the endplates found are not the disc's).

Every rule judges the values as measured (one flag does not change what another rule
sees); a value flagged by several gets all the reasons.
- **An unreliable spine model**: when the centre line through the detected bodies scatters
  by more than a real spine can (the detector followed something else), every value of the
  study needs review.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import median

from services.common.vocabulary import QuantityName
from services.imaging.analysis.report import Measurement

SIDE_DIFFERENCE_MM = 8.0  # with the ratio below: wider than unilateral stenosis goes
SIDE_RATIO = 1.6  # (20 / 13 mm is a real one-sided stenosis and is left alone)
DISC_JUMP_RATIO = 2.5  # a disc more than 2.5 times the height of the discs on both sides
DISC_JUMP_MM = 8.0  # ... and at least this much higher
MIN_NEIGHBOUR_MM = 4.0  # a neighbour lower than this may itself be wrong: no comparison
DISC_TO_BODY = 0.6  # disc height / the taller adjacent body (one body may be fractured)
UNRELIABLE_LINE_MM = 8.0  # centre-line scatter beyond which no level can be trusted

Flag = tuple[Measurement, str]


def _values(
    measurements: Sequence[Measurement], quantity: str
) -> dict[tuple[int, str | None], Measurement]:
    return {
        (m.level_index, m.side): m
        for m in measurements
        if m.quantity == quantity and m.value is not None
    }


def lateral_asymmetry(measurements: Sequence[Measurement]) -> list[Flag]:
    heights = _values(measurements, QuantityName.FORAMINAL_HEIGHT)
    flags: list[Flag] = []
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
            flags += [(left, why), (right, why)]
    return flags


def disc_jumps(measurements: Sequence[Measurement]) -> list[Flag]:
    by_index = {
        index: m for (index, _), m in _values(measurements, QuantityName.DISC_HEIGHT).items()
    }
    flags: list[Flag] = []
    for index, m in by_index.items():
        above, below = by_index.get(index - 1), by_index.get(index + 1)
        if above is None or below is None or m.value is None:
            continue  # judged against the discs on both sides only
        neighbours = [above.value or 0.0, below.value or 0.0]
        if min(neighbours) < MIN_NEIGHBOUR_MM:
            continue
        typical = median(neighbours)
        if m.value > DISC_JUMP_RATIO * typical and m.value - typical > DISC_JUMP_MM:
            flags.append(
                (
                    m,
                    f"disc height {m.value:.1f} mm is far above its neighbours' "
                    f"({typical:.1f} mm): a vertebral body may have been taken for the disc",
                )
            )
    return flags


def disc_to_bodies(
    measurements: Sequence[Measurement], body_heights: Mapping[int, Sequence[float]]
) -> list[Flag]:
    """``body_heights``: per level index, the heights of the whole vertebral bodies above and
    below its disc that are known (bounded by discs on both sides)."""
    flags: list[Flag] = []
    for m in measurements:
        bodies = body_heights.get(m.level_index, ())
        if m.quantity != QuantityName.DISC_HEIGHT or m.value is None or not bodies:
            continue
        if m.value > DISC_TO_BODY * max(bodies):
            flags.append(
                (
                    m,
                    f"disc height {m.value:.1f} mm is out of proportion to the adjacent "
                    f"vertebral bodies ({max(bodies):.1f} mm): the endplates found may not be "
                    "the disc's",
                )
            )
    return flags


def unreliable_model(measurements: Sequence[Measurement], scatter_mm: float) -> list[Flag]:
    if scatter_mm <= UNRELIABLE_LINE_MM:
        return []
    why = (
        f"the spine's centre line scatters by {scatter_mm:.0f} mm: the vertebrae found may "
        "not be the spine's, so no level can be trusted"
    )
    return [(m, why) for m in measurements if m.value is not None]


def apply(flags: Sequence[Flag]) -> None:
    """Every flagged value needs review, with all its reasons."""
    reasons: dict[int, list[str]] = {}
    flagged: dict[int, Measurement] = {}
    for m, why in flags:
        flagged[id(m)] = m
        if why not in reasons.setdefault(id(m), []):
            reasons[id(m)].append(why)
    for key, m in flagged.items():
        m.review("; ".join(reasons[key]))


def check(
    measurements: Sequence[Measurement],
    *,
    scatter_mm: float,
    body_heights: Mapping[int, Sequence[float]] | None = None,
) -> None:
    """Every cross-measurement rule, each judged on the values as measured, in place."""
    flags = [
        *unreliable_model(measurements, scatter_mm),
        *lateral_asymmetry(measurements),
        *disc_to_bodies(measurements, body_heights or {}),
        *disc_jumps(measurements),
    ]
    apply(flags)
