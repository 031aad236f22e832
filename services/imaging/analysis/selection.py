"""Which series of a complete study to measure, and why.

CT: the thinnest volume (slice step) with a bone or soft-tissue kernel that covers the
lumbar spine, in any acquisition orientation; localizers, lung kernels and short stacks
are left out. MR: the T2-weighted axial stack (dural sac), and the sagittal T2 when
present. Every decision is written into ``reasons`` for the result.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom import Dataset

LUMBAR_COVERAGE_MM = 120.0  # L1 to the sacrum is about 180 mm; less holds only some levels
MIN_CT_COVERAGE_MM = 40.0  # one level: half of each body around a disc
MIN_SLICES = 10
# Reconstruction kernels by vendor naming: GE (BONE, LUNG, STANDARD, SOFT), Siemens
# (B30f/Br38 soft, B60-B80/Br60+ sharp bone, Bl57 lung), Philips (B/C soft, D/E/YD bone, L lung).
LUNG_KERNEL = re.compile(r"^(LUNG|BL\d|L$|YB)")
BONE_KERNEL = re.compile(r"^(BONE|B[6-9]\d|BR[6-9]\d|BV[6-9]\d|H[6-9]\d|D$|E$|YD|YE)")


def orientation_of(iop: Sequence[float]) -> str:
    """'axial', 'sagittal', 'coronal' or 'oblique' (normal within 15° of an axis)."""
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:6], float))
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < np.cos(np.radians(15)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _craniocaudal_extent(datasets: Sequence[Dataset]) -> float | None:
    """Head-to-feet extent of the images (mm): along the slice normal for an axial stack,
    across the image for a sagittal or coronal one; None without geometry."""
    zs: list[float] = []
    for d in datasets:
        try:
            origin = [float(v) for v in d.ImagePositionPatient]
            iop = [float(v) for v in d.ImageOrientationPatient]
            row_spacing, column_spacing = (float(v) for v in d.PixelSpacing)
            rows, columns = int(d.Rows), int(d.Columns)
        except (AttributeError, TypeError, ValueError):
            return None
        along_row = (columns - 1) * column_spacing * iop[2]
        along_column = (rows - 1) * row_spacing * iop[5]
        zs += [origin[2] + a + b for a in (0.0, along_row) for b in (0.0, along_column)]
    return max(zs) - min(zs) if zs else None


@dataclass(frozen=True)
class SeriesCandidate:
    series_instance_uid: str
    modality: str
    description: str
    orientation: str
    slices: int
    slice_step: float
    coverage_mm: float
    pixel_spacing: float
    kernel: str
    image_type: tuple[str, ...]
    echo_time: float | None
    repetition_time: float | None
    orientations: int = 1  # distinct slice orientations (several: angled blocks, localizer)

    @classmethod
    def from_datasets(cls, datasets: Sequence[Dataset]) -> SeriesCandidate:
        first = datasets[0]
        iop = [float(v) for v in first.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
        normal = np.cross(iop[:3], iop[3:])
        positions = sorted(
            float(np.dot([float(v) for v in d.ImagePositionPatient], normal))
            for d in datasets
            if "ImagePositionPatient" in d
        )
        steps = np.diff(positions) if len(positions) > 1 else np.array([0.0])
        cranio = _craniocaudal_extent(datasets)
        kernel = first.get("ConvolutionKernel", "")
        kernel_text = "\\".join(kernel) if isinstance(kernel, list | tuple) else str(kernel)
        spacing = [float(v) for v in first.get("PixelSpacing", [0, 0])]
        return cls(
            series_instance_uid=str(first.SeriesInstanceUID),
            modality=str(first.get("Modality", "")),
            description=str(first.get("SeriesDescription", "")),
            orientation=orientation_of(iop),
            slices=len(datasets),
            slice_step=float(np.median(steps)) if len(steps) else 0.0,
            coverage_mm=cranio
            if cranio is not None
            else (positions[-1] - positions[0] if positions else 0.0),
            pixel_spacing=min(spacing) if spacing else 0.0,
            kernel=kernel_text,
            image_type=tuple(str(v).upper() for v in first.get("ImageType", [])),
            echo_time=float(first.EchoTime) if first.get("EchoTime") not in (None, "") else None,
            repetition_time=(
                float(first.RepetitionTime)
                if first.get("RepetitionTime") not in (None, "")
                else None
            ),
            orientations=len(
                {
                    tuple(round(float(v), 3) for v in d.ImageOrientationPatient)
                    for d in datasets
                    if "ImageOrientationPatient" in d
                }
            ),
        )

    @property
    def is_t2(self) -> bool:
        """T2-weighted: named so, or a long TE and TR (never T1, STIR or FLAIR)."""
        text = self.description.upper()
        if any(tag in text for tag in ("T1", "STIR", "FLAIR")):
            return False
        if "T2" in text:
            return True
        return (self.echo_time or 0) >= 60 and (self.repetition_time or 0) >= 1500


@dataclass
class Selection:
    primary: SeriesCandidate | None
    secondary: SeriesCandidate | None = None
    reasons: list[str] = field(default_factory=list)


def kernel_class(kernel: str) -> str:
    """'bone', 'lung', 'soft' (any other named kernel) or 'unknown' (none given)."""
    tokens = kernel.upper().replace("\\", " ").split()
    if any(LUNG_KERNEL.match(t) for t in tokens):
        return "lung"
    if any(BONE_KERNEL.match(t) for t in tokens):
        return "bone"
    return "soft" if tokens else "unknown"


def select_series(candidates: Sequence[SeriesCandidate]) -> Selection:
    """Pick the series to measure in a study; ``primary`` is None when none qualifies."""
    reasons: list[str] = []
    usable = []
    for c in candidates:
        why = None
        if "LOCALIZER" in c.image_type or c.slices < MIN_SLICES:
            why = f"localizer or only {c.slices} images"
        elif c.orientations > 1:
            why = f"{c.orientations} slice orientations (angled blocks or a localizer)"
        elif c.modality == "CT" and kernel_class(c.kernel) == "lung":
            why = f"lung kernel '{c.kernel}'"
        elif c.modality == "CT" and c.coverage_mm < MIN_CT_COVERAGE_MM:
            why = (
                f"covers {c.coverage_mm:.0f} mm head to feet, less than the "
                f"{MIN_CT_COVERAGE_MM:.0f} mm one level needs"
            )
        if why:
            reasons.append(f"series {c.series_instance_uid} ({c.description!r}) left out: {why}")
        else:
            usable.append(c)
    ct = [c for c in usable if c.modality == "CT"]
    if ct:
        # A volume that holds the lumbar spine first, then the thinnest.
        best = min(
            ct,
            key=lambda c: (
                c.coverage_mm < LUMBAR_COVERAGE_MM,
                c.slice_step,
                c.pixel_spacing,
                kernel_class(c.kernel) != "bone",
            ),
        )
        reasons.append(
            f"CT series {best.series_instance_uid} ({best.description!r}) chosen: "
            f"step {best.slice_step:.2f} mm, {best.orientation}, kernel "
            f"'{best.kernel}' ({kernel_class(best.kernel)}), {best.coverage_mm:.0f} mm "
            "head to feet"
        )
        if best.coverage_mm < LUMBAR_COVERAGE_MM:
            reasons.append(
                f"the CT covers {best.coverage_mm:.0f} mm head to feet, less than the lumbar "
                f"spine's {LUMBAR_COVERAGE_MM:.0f} mm: only the levels it holds are measured"
            )
        return Selection(best, None, reasons)
    t2 = [c for c in usable if c.modality == "MR" and c.is_t2]
    axial = [c for c in t2 if c.orientation == "axial"]
    sagittal = [c for c in t2 if c.orientation == "sagittal"]
    if not axial:
        reasons.append("no T2-weighted axial MR stack and no suitable CT volume")
        return Selection(None, None, reasons)
    primary = min(axial, key=lambda c: (c.slice_step, c.pixel_spacing))
    reasons.append(
        f"MR axial T2 {primary.series_instance_uid} ({primary.description!r}) chosen "
        f"for the dural sac: step {primary.slice_step:.1f} mm"
    )
    secondary = min(sagittal, key=lambda c: c.slice_step) if sagittal else None
    if secondary is not None:
        reasons.append(f"MR sagittal T2 {secondary.series_instance_uid} added for levels")
    else:
        reasons.append("no sagittal T2: levels come from the axial stack alone")
    return Selection(primary, secondary, reasons)
