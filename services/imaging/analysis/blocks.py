"""The lumbar MR protocols of practice: axial T2 acquired as **angled blocks** (a few slices
per disc, each block parallel to its disc; all in one series, or one series per level), and
the **sagittal T2** of the whole lumbar spine that names the levels.

- A block is a run of evenly stepped slices of one orientation, within 45° of axial, in a
  T2 series that is not one contiguous stack. Each is its own little volume.
- The dural sac area is measured in the block's middle (the middle slice, or the mean of
  the two middle ones), in the block's own plane — already perpendicular to the canal as
  the technologist planned it; when the sagittal series gives the canal's axis, the area is
  projected perpendicular to it (the block's tilt off the canal corrected).
- The level of a block is the sagittal series' disc nearest its centre along the canal
  (within 10 mm), named from the sacrum the sagittal series shows. Without a sagittal T2
  (or without its sacrum) blocks keep ``level: null`` and their craniocaudal index, with a
  warning — never a guess.
- The dural sac **volume** needs contiguous coverage over the level: blocks do not have it,
  so it is ``not_measurable`` with that reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from pydicom import Dataset

from services.common.vocabulary import QuantityName
from services.imaging.analysis import mr
from services.imaging.analysis.overlays import KeyImage, area_image
from services.imaging.analysis.report import Measurement
from services.imaging.analysis.sampling import FloatArray, Sampler, resample_world
from services.imaging.analysis.selection import MIN_SLICES, SeriesCandidate
from services.imaging.analysis.spine import CentreLine
from services.imaging.analysis.volume import VolumeError, load_series

AXIAL_WITHIN_DEG = 45.0
MAX_BLOCK_SLICES = 12
LEVEL_TOLERANCE_MM = 10.0


@dataclass
class Block:
    series_instance_uid: str
    datasets: list[Dataset]  # ordered along the slice normal


def _orientation(ds: Dataset) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in ds.ImageOrientationPatient)


def _runs(members: list[Dataset], normal: FloatArray) -> list[list[Dataset]]:
    """Evenly stepped runs of slices (a new run where the step jumps)."""
    ordered = sorted(members, key=lambda d: float(np.dot(_position(d), normal)))
    positions = np.array([float(np.dot(_position(d), normal)) for d in ordered])
    if len(ordered) < 2:
        return [ordered]
    steps = np.diff(positions)
    typical = float(np.median(steps))
    runs, current = [], [ordered[0]]
    for ds, step in zip(ordered[1:], steps, strict=True):
        if step > 1.5 * typical or step < 0.5 * typical:
            runs.append(current)
            current = []
        current.append(ds)
    runs.append(current)
    return runs


def _position(ds: Dataset) -> FloatArray:
    return np.array([float(v) for v in ds.ImagePositionPatient])


def find_blocks(by_series: Mapping[str, Sequence[Dataset]]) -> list[Block]:
    """The angled axial T2 blocks of a study (none when its axial T2 is a contiguous stack)."""
    blocks: list[Block] = []
    for uid, group in by_series.items():
        if not group or str(group[0].get("Modality", "")) != "MR":
            continue
        candidate = SeriesCandidate.from_datasets(list(group))
        if not candidate.is_t2 or "LOCALIZER" in candidate.image_type:
            continue
        by_orientation: dict[tuple[float, ...], list[Dataset]] = defaultdict(list)
        for ds in group:
            by_orientation[_orientation(ds)].append(ds)
        runs: list[list[Dataset]] = []
        for iop, members in by_orientation.items():
            normal = np.cross(iop[:3], iop[3:])
            normal = normal / (np.linalg.norm(normal) or 1.0)
            if abs(normal[2]) < np.cos(np.radians(AXIAL_WITHIN_DEG)):
                continue  # sagittal or coronal
            runs += _runs(members, normal)
        if len(runs) == 1 and len(runs[0]) >= MIN_SLICES:
            continue  # one contiguous stack: the stack path measures it
        blocks += [Block(uid, run) for run in runs if 2 <= len(run) <= MAX_BLOCK_SLICES]
    return blocks


@dataclass
class SagittalLevels:
    """The discs the sagittal T2 shows, with their names when it shows the sacrum."""

    line: CentreLine
    discs: list[tuple[str | None, float]]  # (name, z of the disc's middle on the line)
    sacrum: bool
    warnings: list[str] = field(default_factory=list)

    def level_at(self, point: FloatArray) -> tuple[str | None, float]:
        """The name of the disc nearest ``point`` along the canal, and that distance."""
        if not self.discs:
            return None, float("inf")
        z = float(point[2])
        name, middle = min(self.discs, key=lambda d: abs(d[1] - z))
        return name, abs(middle - z)


def sagittal_levels(datasets: Sequence[Dataset]) -> SagittalLevels | None:
    """Discs and sacrum on the sagittal T2 (resampled to an axial grid, where the MR model
    follows the sac and finds the discs in front of it); None when it cannot be read."""
    try:
        volume = load_series(list(datasets))
        axial = resample_world(volume.image, 1.0, default=0.0)
        model = mr.build_model(axial)
    except (VolumeError, mr.SacNotFound, ValueError):
        return None
    named = [
        (name, disc.middle)
        for disc, name in zip(model.discs, model.names, strict=True)
        if name != "T"
    ]
    return SagittalLevels(model.centre, named, model.sacrum, list(model.warnings))


def name_from_sagittal(
    model: mr.MrModel, measurements: list[Measurement], sagittal: SagittalLevels
) -> list[str]:
    """Name the discs of an axial stack that does not reach the sacrum from the sagittal
    T2 that does (each stack disc to the sagittal disc within 10 mm along the canal); the
    stack's warnings, without the one the naming answers."""
    names: dict[int, str | None] = {}
    for index, disc in enumerate(model.discs):
        name, distance = sagittal.level_at(model.centre.point(disc.middle))
        names[index] = name if distance <= LEVEL_TOLERANCE_MM else None
    taken = [n for n in names.values() if n is not None]
    duplicated = {n for n in taken if taken.count(n) > 1}
    for m in measurements:
        name = names.get(m.level_index)
        m.level = None if name in duplicated else name
    warnings = [w for w in model.warnings if not w.startswith("sacrum not in the field of view")]
    unnamed = sum(1 for n in names.values() if n is None or n in duplicated)
    warnings.append(
        "the axial stack does not show the sacrum: its levels are named from the sagittal T2"
        + (f" ({unnamed} disc(s) could not be matched and stay unnamed)" if unnamed else "")
    )
    return warnings


@dataclass
class BlockAnalysis:
    measurements: list[Measurement]
    key_images: list[KeyImage]
    warnings: list[str]
    evidence: list[Dataset]


def measure_blocks(
    blocks: Sequence[Block], sagittal: SagittalLevels | None, *, key_images: bool = True
) -> BlockAnalysis:
    """Dural sac area per block, named from the sagittal series; no volume."""
    warnings: list[str] = []
    if sagittal is None:
        warnings.append(
            "the axial T2 is acquired as angled blocks and no sagittal T2 names the levels: "
            "blocks are numbered craniocaudally (level_index) and not named"
        )
    elif not sagittal.sacrum:
        warnings.append(
            "the sagittal T2 does not show the sacrum (or it is not recognised): the blocks' "
            "levels are not named"
        )
    loaded = []
    for block in blocks:
        try:
            volume = load_series(block.datasets)
        except VolumeError as exc:
            warnings.append(f"a block of series {block.series_instance_uid} left out: {exc}")
            continue
        size = volume.image.GetSize()
        centre = np.array(
            volume.image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size])
        )
        loaded.append((block, volume, centre))
    loaded.sort(key=lambda loaded_block: -float(loaded_block[2][2]))  # cranial first
    measurements: list[Measurement] = []
    evidence: list[Dataset] = []
    seen: dict[str, int] = {}
    pixels: dict[int, float] = {}  # each measured area's in-plane pixel size
    drawings: list[tuple[Measurement, sitk.Image, FloatArray]] = []  # drawn once final
    slices: list[mr.SliceSac] = []  # every block's slices where its sac was measured
    for index, (block, volume, centre) in enumerate(loaded):
        evidence += block.datasets
        image = volume.image
        found = mr.block_sac(image)
        point = found[1].centroid if found else centre
        name: str | None = None
        if sagittal is not None and sagittal.sacrum:
            name, distance = sagittal.level_at(point)
            if distance > LEVEL_TOLERANCE_MM:
                warnings.append(
                    f"block {index + 1} lies {distance:.0f} mm from the nearest disc of the "
                    "sagittal series: not named"
                )
                name = None
        series = volume.series_instance_uid
        area = Measurement(QuantityName.DURAL_SAC_AREA, name, index, None, None, series)
        sac_volume = Measurement(QuantityName.DURAL_SAC_VOLUME, name, index, None, None, series)
        sac_volume.outside(
            "the axial T2 is acquired as angled blocks: the coverage is not contiguous over "
            "the level, so there is no volume"
        )
        if name is not None and name in seen:
            area.review(f"two blocks are placed at {name}: check which one is the disc's")
        elif found is None:
            area.review("no dural sac seen in the middle of the block")
        else:
            value, drawn, agreeing = found
            slices += agreeing
            normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
            if sagittal is not None:  # the block's tilt off the canal, corrected
                value *= abs(float(sagittal.line.tangent(float(point[2])) @ normal))
            area.value = value
            pixels[len(measurements)] = float(max(image.GetSpacing()[:2]))
            area.points = [list(p) for p in drawn.contour]
            area.sop_instance_uid = volume.sop_instance_uids[drawn.k]
            area.check_plausible()
            doubt = drawn.doubt(value) if area.value is not None else None
            if doubt is not None:
                area.review(doubt)
            if key_images and area.points:
                drawings.append((area, image, normal))
        if name is not None:
            seen[name] = index
        measurements += [area, sac_volume]
    # Tissue settled against the CSF's back, pooled over every block (as over a stack).
    mr.hold_for_settled_tissue(measurements, slices)
    # A narrowing on coarse pixels, against the blocks' median sac (as for a stack).
    values = [v for i in pixels if (v := measurements[i].value) is not None]
    typical = float(np.median(values)) if values else 0.0
    for i, pixel in pixels.items():
        area = measurements[i]
        if area.status == "ok" and area.value is not None:
            doubt = mr.coarse_doubt(area.value, typical, pixel)
            if doubt is not None:
                area.review(doubt)
    images = [area_image(Sampler.of(image), area, normal, "MR") for area, image, normal in drawings]
    return BlockAnalysis(measurements, images, warnings, evidence)
