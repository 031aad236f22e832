"""Series selection from DICOM headers: the thinnest lumbar CT volume in any orientation,
the T2 axial (and sagittal) MR; every choice explained."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import Dataset

from services.imaging.analysis.selection import (
    SeriesCandidate,
    kernel_class,
    orientation_of,
    select_series,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def _series(
    uid: str,
    modality: str,
    *,
    orientation: tuple[float, ...] = AXIAL,
    slices: int = 200,
    step: float = 1.0,
    kernel: str = "Br38f",
    description: str = "",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    te: float | None = None,
    tr: float | None = None,
    size: int = 512,
) -> SeriesCandidate:
    normal = np.cross(orientation[:3], orientation[3:])
    datasets = []
    for k in range(slices):
        ds = Dataset()
        ds.SeriesInstanceUID = uid
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = [float(v) for v in normal * step * k]
        ds.PixelSpacing = [0.7, 0.7]
        ds.Rows = ds.Columns = size
        ds.ImageType = list(image_type)
        if modality == "CT":
            ds.ConvolutionKernel = kernel
        if te is not None:
            ds.EchoTime, ds.RepetitionTime = te, tr
        datasets.append(ds)
    return SeriesCandidate.from_datasets(datasets)


def test_orientation_from_geometry() -> None:
    assert orientation_of(AXIAL) == "axial"
    assert orientation_of(SAGITTAL) == "sagittal"
    assert orientation_of(CORONAL) == "coronal"
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    assert orientation_of((1, 0, 0, 0, c, s)) == "oblique"


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        ("Br38f\\3", "soft"),
        ("B70f", "bone"),
        ("BONE", "bone"),
        ("LUNG", "lung"),
        ("Bl57d", "lung"),
        ("STANDARD", "soft"),
        ("", "unknown"),
    ],
)
def test_kernel_classes(kernel: str, expected: str) -> None:
    assert kernel_class(kernel) == expected


def test_ct_thinnest_lumbar_volume_in_any_orientation_wins() -> None:
    candidates = [
        _series("1.1", "CT", slices=3, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        _series("1.2", "CT", step=3.0, slices=80),  # 237 mm, thick
        _series("1.3", "CT", step=0.6, slices=400, kernel="Bl57d"),  # lung kernel
        _series("1.4", "CT", orientation=SAGITTAL, step=0.8, slices=200, kernel="B70f"),
        _series("1.5", "CT", step=0.5, slices=100),  # only 50 mm: some levels
        _series("1.6", "CT", step=0.5, slices=60),  # 30 mm: not even one level
    ]
    selection = select_series(candidates)
    assert selection.primary is not None
    assert selection.primary.series_instance_uid == "1.4"
    text = "\n".join(selection.reasons)
    assert "1.1" in text and "localizer" in text
    assert "lung kernel" in text and "30 mm" in text and "sagittal" in text
    assert "1.5" not in text  # usable, but a volume holding the lumbar spine comes first


def test_a_narrow_sagittal_reformat_covers_the_spine_head_to_feet() -> None:
    """A spine-targeted sagittal CT is 60-100 mm wide (left to right) and 300+ mm tall: its
    coverage is measured craniocaudally, not along the slice normal."""
    reformat = _series("4.1", "CT", orientation=SAGITTAL, step=0.8, slices=100, kernel="B70f")
    assert reformat.coverage_mm == pytest.approx(511 * 0.7)
    selection = select_series([reformat])
    assert selection.primary is not None and selection.primary.series_instance_uid == "4.1"
    assert not any("only the levels" in r for r in selection.reasons)


def test_a_short_ct_is_measured_for_the_levels_it_holds() -> None:
    crop = _series("5.1", "CT", step=1.0, slices=70, size=256)
    selection = select_series([crop])
    assert selection.primary is not None and selection.primary.series_instance_uid == "5.1"
    assert any("only the levels it holds are measured" in r for r in selection.reasons)


def test_mr_t2_axial_with_sagittal() -> None:
    candidates = [
        _series("2.1", "MR", description="T1 TSE SAG", orientation=SAGITTAL, slices=15, step=4),
        _series("2.2", "MR", description="T2 TSE SAG", orientation=SAGITTAL, slices=15, step=4),
        _series("2.3", "MR", description="AX", slices=30, step=4, te=100, tr=4000),
        _series("2.4", "MR", description="STIR AX", slices=30, step=3),
    ]
    selection = select_series(candidates)
    assert selection.primary is not None and selection.secondary is not None
    assert selection.primary.series_instance_uid == "2.3"  # T2 by its echo and repetition
    assert selection.secondary.series_instance_uid == "2.2"


def test_nothing_measurable_is_said() -> None:
    selection = select_series([_series("3.1", "MR", description="T1 AX", slices=30)])
    assert selection.primary is None
    assert "no T2-weighted axial" in selection.reasons[-1]
