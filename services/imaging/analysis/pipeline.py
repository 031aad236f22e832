"""One study in, one result out: select the series, build the spine model, measure, flag.

The same function serves the CLI (a folder of files), the job queue (the store's files of
a complete study) and the benchmark. It never raises for a study it cannot measure: the
result then has ``status: failed`` and says why; :class:`AnalysisInputError` is only for
input that is not one readable study.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from services.common.vocabulary import QUANTITIES
from services.imaging.analysis import consistency, ct, mr
from services.imaging.analysis.blocks import (
    Block,
    find_blocks,
    measure_blocks,
    name_from_sagittal,
    sagittal_levels,
)
from services.imaging.analysis.overlays import Drawn, KeyImage, draw_area, draw_height, encoded
from services.imaging.analysis.report import AnalysisResult
from services.imaging.analysis.sampling import Sampler
from services.imaging.analysis.selection import SeriesCandidate, select_series
from services.imaging.analysis.volume import VolumeError, load_series

MOTION_MM = 5.0  # centre-line scatter beyond this suggests motion (or a scoliosis); the
# lordotic phantoms, without either, scatter by 2.7-3.5 mm: a lower bound only cries wolf
FULL_LUMBAR_LEVELS = 5


class AnalysisInputError(ValueError):
    """The input is not one readable DICOM study."""


@dataclass
class Analysis:
    result: AnalysisResult
    key_images: list[KeyImage] = field(default_factory=list)
    evidence: list[Dataset] = field(default_factory=list)  # the measured series' headers


def read_folder(path: Path) -> list[Dataset]:
    """Every DICOM file under ``path`` (any nesting, any names); other files are skipped."""
    if not path.exists():
        raise AnalysisInputError(f"{path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    datasets: list[Dataset] = []
    for f in files:
        try:
            datasets.append(dcmread(f))
        except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, EOFError):
            continue
    if not datasets:
        raise AnalysisInputError(f"no DICOM files under {path}")
    return datasets


def _numbers(ds: Dataset, keyword: str, count: int) -> bool:
    try:
        values = [float(v) for v in ds.get(keyword) or ()]
    except (TypeError, ValueError):
        return False
    return len(values) == count and all(np.isfinite(values))


def _geometry_readable(ds: Dataset) -> bool:
    """Whether an image can be placed in space: 3 positions, 6 direction cosines, 2
    spacings, all finite numbers."""
    return (
        _numbers(ds, "ImagePositionPatient", 3)
        and _numbers(ds, "ImageOrientationPatient", 6)
        and _numbers(ds, "PixelSpacing", 2)
    )


def analyze_datasets(datasets: Sequence[Dataset], *, key_images: bool = True) -> Analysis:
    """Analyse one study given all its instances."""
    started = time.perf_counter()
    uids = [str(ds.get("StudyInstanceUID", "") or "").strip() for ds in datasets]
    empty = sum(1 for uid in uids if not uid)
    if empty:
        raise AnalysisInputError(
            f"{empty} of {len(uids)} DICOM file(s) have an empty or missing StudyInstanceUID "
            "(as some anonymisers export them): the images cannot be assigned to a study"
        )
    studies = set(uids)
    if len(studies) != 1:
        raise AnalysisInputError(
            f"expected the files of one study, found {len(studies)} StudyInstanceUIDs"
        )
    study_uid = studies.pop()
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    unreadable = 0
    for ds in datasets:
        if "PixelData" in ds and "ImagePositionPatient" in ds:
            if not _geometry_readable(ds):
                unreadable += 1  # one bad instance must not fail the whole study
                continue
            by_series[str(ds.get("SeriesInstanceUID", ""))].append(ds)
    candidates = [SeriesCandidate.from_datasets(group) for group in by_series.values()]
    selection = select_series(candidates)
    modality = (
        selection.primary.modality
        if selection.primary
        else (str(datasets[0].get("Modality", "")) or "CT")
    )
    result = AnalysisResult(study_uid, modality if modality in ("CT", "MR") else "CT")
    result.selection = list(selection.reasons)
    if unreadable:
        result.warnings.append(
            f"{unreadable} image(s) left out: position, orientation or spacing unreadable"
        )
    if selection.primary is None:
        blocks = find_blocks(by_series)
        if blocks:
            result.modality = "MR"
            return _analyze_blocks(result, blocks, candidates, by_series, key_images, started)
        result.warnings.append("no series suitable for measurement")
        result.settle()
        return Analysis(result)
    series = by_series[selection.primary.series_instance_uid]
    try:
        volume = load_series(series)
    except VolumeError as exc:
        result.warnings.append(f"series {selection.primary.series_instance_uid}: {exc}")
        result.settle()
        return Analysis(result)
    result.timings["read"] = time.perf_counter() - started
    measured = time.perf_counter()
    images: list[KeyImage] = []
    sampler = Sampler.of(volume.image)
    try:
        if volume.modality == "CT":
            model, measurements = ct.measure(volume.image, volume.series_instance_uid)
            line, levels = model.centre, len(model.levels)
            result.warnings += model.warnings
            consistency.check(
                measurements, scatter_mm=line.residual, body_heights=model.body_heights()
            )
        else:
            mr_model, measurements = mr.measure(
                volume.image, volume.series_instance_uid, volume.sop_instance_uids
            )
            line, levels = mr_model.centre, len({m.level_index for m in measurements})
            warnings = mr_model.warnings
            if not mr_model.sacrum and selection.secondary is not None:
                # The stack does not reach the sacrum: the sagittal T2 names its discs.
                sagittal = sagittal_levels(by_series[selection.secondary.series_instance_uid])
                if sagittal is not None and sagittal.sacrum:
                    warnings = name_from_sagittal(mr_model, measurements, sagittal)
            result.warnings += warnings
            consistency.check(measurements, scatter_mm=line.residual)
    except (ct.SpineNotFound, mr.SacNotFound, ValueError) as exc:
        result.warnings.append(f"no measurement: {exc}")
        result.timings["measure"] = time.perf_counter() - measured
        result.settle()
        return Analysis(result, evidence=list(series))
    result.timings["measure"] = time.perf_counter() - measured
    if levels < FULL_LUMBAR_LEVELS:
        result.warnings.append(
            f"truncated coverage: {levels} of the {FULL_LUMBAR_LEVELS} lumbar levels measurable"
        )
    if line.residual > MOTION_MM:
        result.warnings.append(
            f"spine centre line scatters by {line.residual:.1f} mm between slices: "
            "motion or scoliosis, check the images"
        )
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in series])
    normal = np.array(volume.image.GetDirection()).reshape(3, 3)[:, 2]
    for m in measurements:
        if m.sop_instance_uid is None and m.points:
            centre = np.mean(np.array(m.points), axis=0)
            nearest = int(np.argmin(np.abs((positions - centre) @ normal)))
            m.sop_instance_uid = str(series[nearest].SOPInstanceUID)
    result.measurements = measurements
    if key_images:
        drawn = time.perf_counter()
        drawings: list[Callable[[], Drawn]] = []
        for m in measurements:
            if not m.points:
                continue
            geometry = QUANTITIES[m.quantity].geometry
            if geometry == "line":
                axis = np.array(m.points[1]) - np.array(m.points[0])
                if np.linalg.norm(axis) > 0:
                    drawings.append(partial(draw_height, sampler, m, axis, volume.modality))
            elif geometry == "contour":
                drawings.append(partial(draw_area, sampler, m, normal, volume.modality))
        images = encoded(drawings)
        result.timings["key_images"] = time.perf_counter() - drawn
    result.timings["total"] = time.perf_counter() - started
    result.settle()
    return Analysis(result, images, list(series))


def _analyze_blocks(
    result: AnalysisResult,
    blocks: list[Block],
    candidates: list[SeriesCandidate],
    by_series: dict[str, list[Dataset]],
    key_images: bool,
    started: float,
) -> Analysis:
    """The angled-block protocol: the sac area per block, levels from the sagittal T2."""
    series = sorted({b.series_instance_uid for b in blocks})
    result.selection = [
        r for r in result.selection if not r.startswith("no T2-weighted axial MR stack")
    ]
    result.selection.append(
        f"MR axial T2 acquired as {len(blocks)} angled block(s) in {len(series)} series "
        f"({', '.join(series)}) chosen for the dural sac"
    )
    sagittal = [
        c
        for c in candidates
        if c.modality == "MR" and c.is_t2 and c.orientation == "sagittal" and c.slices >= 5
    ]
    levels = None
    if sagittal:
        chosen = min(sagittal, key=lambda c: c.slice_step)
        result.selection.append(f"MR sagittal T2 {chosen.series_instance_uid} added for levels")
        levels = sagittal_levels(by_series[chosen.series_instance_uid])
        if levels is None:
            result.warnings.append("the sagittal T2 could not be read for levels")
    measured = time.perf_counter()
    found = measure_blocks(blocks, levels, key_images=key_images)
    result.timings["measure"] = time.perf_counter() - measured
    result.warnings += found.warnings
    result.measurements = found.measurements
    result.timings["total"] = time.perf_counter() - started
    result.settle()
    return Analysis(result, found.key_images, found.evidence)


def analyze_paths(paths: Iterable[Path], *, key_images: bool = True) -> Analysis:
    """Analyse the study made of these files."""
    datasets = []
    for p in paths:
        try:
            datasets.append(dcmread(p))
        except (InvalidDicomError, OSError) as exc:
            raise AnalysisInputError(f"{p.name}: not readable DICOM ({exc})") from None
    return analyze_datasets(datasets, key_images=key_images)
