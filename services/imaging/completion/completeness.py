"""Content check of a quiet study: are its volume series whole?

Pure functions over the geometry the index keeps; no database, no framework.
A *volume series* is a series of single-frame images that share one orientation
and have at least three slices; for it we require one matrix and pixel spacing,
and slice positions along the normal that are evenly stepped, without gaps (a step
larger than ``(1 + tolerance)`` times the median step) and without repeats.
Localizers (several orientations) and single-image or multi-frame series pass. A series of
*angled blocks* (several orientations, each with two slices or more: the lumbar MR's axial
T2 planned parallel to each disc) is checked block by block: within a block the slices are
evenly stepped; the distance between blocks (more than three steps) is not a gap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SliceGeometry:
    """The geometry of one stored image, as the index holds it."""

    sop_instance_uid: str
    image_position_patient: str | None
    image_orientation_patient: str | None
    rows: int | None
    columns: int | None
    pixel_spacing: str | None
    number_of_frames: int | None


@dataclass(frozen=True)
class SeriesCheck:
    series_instance_uid: str
    is_volume: bool
    problems: tuple[str, ...]


def _vector(text: str | None) -> np.ndarray | None:
    if not text:
        return None
    try:
        return np.array([float(v) for v in text.split("\\")], dtype=float)
    except ValueError:
        return None


def check_series(
    series_instance_uid: str, slices: Sequence[SliceGeometry], *, gap_tolerance: float = 0.5
) -> SeriesCheck:
    """Check one series; see the module docstring for the rules.

    Parameters
    ----------
    series_instance_uid
        The series, for the report.
    slices
        Every stored image of the series.
    gap_tolerance
        A step larger than ``(1 + gap_tolerance)`` times the median step is a gap.

    Returns
    -------
    SeriesCheck
        ``problems`` is empty when the series is whole.
    """
    orientations = [_vector(s.image_orientation_patient) for s in slices]
    positions = [_vector(s.image_position_patient) for s in slices]
    multi_frame = any((s.number_of_frames or 1) > 1 for s in slices)
    if (
        len(slices) < 3
        or multi_frame
        or any(o is None or o.size != 6 for o in orientations)
        or any(p is None or p.size != 3 for p in positions)
    ):
        return SeriesCheck(series_instance_uid, False, ())
    distinct = Counter(tuple(np.round(o, 3)) for o in orientations if o is not None)
    if len(distinct) > 1:
        if min(distinct.values()) < 2:
            # Several orientations, single images: a localizer, not a volume.
            return SeriesCheck(series_instance_uid, False, ())
        return SeriesCheck(
            series_instance_uid, True, _check_blocks(slices, orientations, gap_tolerance)
        )

    problems: list[str] = []
    if len({(s.rows, s.columns) for s in slices}) > 1:
        problems.append("slices have different matrix sizes")
    if len({s.pixel_spacing for s in slices}) > 1:
        problems.append("slices have different pixel spacing")

    orientation = orientations[0]
    assert orientation is not None
    normal = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        return SeriesCheck(series_instance_uid, True, ("degenerate ImageOrientationPatient",))
    normal /= norm
    distances = np.sort(np.array([float(np.dot(p, normal)) for p in positions if p is not None]))
    steps = np.diff(distances)
    repeats = int(np.sum(steps < 1e-3))
    if repeats:
        problems.append(f"{repeats} repeated slice position(s)")
    moving = steps[steps >= 1e-3]
    if moving.size:
        median = float(np.median(moving))
        gaps = moving[moving > (1.0 + gap_tolerance) * median]
        if gaps.size:
            missing = round(float(np.sum(gaps / median - 1.0)))
            problems.append(
                f"{gaps.size} gap(s) in slice positions (about {max(missing, 1)} slice(s) "
                f"missing; step {median:.3g} mm)"
            )
    return SeriesCheck(series_instance_uid, True, tuple(problems))


def _check_blocks(
    slices: Sequence[SliceGeometry],
    orientations: Sequence[np.ndarray | None],
    gap_tolerance: float,
) -> tuple[str, ...]:
    """Angled blocks: each orientation's slices, split where a step exceeds three typical
    steps (the next block), must be evenly stepped without repeats."""
    problems: list[str] = []
    if len({(s.rows, s.columns) for s in slices}) > 1:
        problems.append("slices have different matrix sizes")
    groups: dict[tuple[float, ...], list[np.ndarray]] = {}
    for s, o in zip(slices, orientations, strict=True):
        position = _vector(s.image_position_patient)
        if o is not None and position is not None:
            groups.setdefault(tuple(np.round(o, 3)), []).append(position)
    repeats = gaps = 0
    for orientation, positions in groups.items():
        normal = np.cross(orientation[:3], orientation[3:])
        norm = float(np.linalg.norm(normal))
        if norm < 1e-6:
            problems.append("degenerate ImageOrientationPatient")
            continue
        distances = np.sort([float(np.dot(p, normal / norm)) for p in positions])
        steps = np.diff(distances)
        repeats += int(np.sum(steps < 1e-3))
        moving = steps[steps >= 1e-3]
        if moving.size == 0:
            continue
        typical = float(np.min(moving))  # within a block; blocks are farther apart
        within = moving[moving <= 3 * typical]
        gaps += int(np.sum(within > (1.0 + gap_tolerance) * typical))
    if repeats:
        problems.append(f"{repeats} repeated slice position(s) in the angled blocks")
    if gaps:
        problems.append(f"{gaps} gap(s) within the angled blocks (a slice missing)")
    return tuple(problems)


def check_study(
    series: Mapping[str, Sequence[SliceGeometry]], *, gap_tolerance: float = 0.5
) -> list[SeriesCheck]:
    """Check every series of a study; the study is whole when no check has problems."""
    return [
        check_series(uid, slices, gap_tolerance=gap_tolerance) for uid, slices in series.items()
    ]
