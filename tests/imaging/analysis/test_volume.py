"""Volumes from DICOM series in any orientation: a real CT written as DICOM and read
back lands on the same voxels in patient space; a real vendor JPEG 2000 series loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from services.imaging.analysis.volume import (
    SeriesHeader,
    VolumeError,
    load_files,
    write_series,
)

DATA = Path(__file__).resolve().parents[2] / "data"
TPTBOX_CT = DATA / "tptbox-ct" / "sub-ct_label-22_ct.nii.gz"
VENDOR_DICOM = DATA / "totalsegmentator-ct" / "example_ct_dicom"


def _header(modality: str = "CT") -> SeriesHeader:
    return SeriesHeader(
        "MRN-V", "Test^Volume", generate_uid(), generate_uid(), "20250101", modality=modality
    )


def _same_voxels(a: sitk.Image, b: sitk.Image, samples: int = 300) -> None:
    """Values agree at the same physical points (whatever the index order)."""
    rng = np.random.default_rng(0)
    size = np.array(a.GetSize())
    for _ in range(samples):
        index = tuple(int(v) for v in rng.integers(0, size))
        point = a.TransformIndexToPhysicalPoint(index)
        other = b.TransformPhysicalPointToIndex(point)
        assert all(0 <= other[d] < b.GetSize()[d] for d in range(3)), (index, other)
        assert abs(a[index] - b[other]) < 0.5, (index, other)


def test_real_ct_round_trips_through_dicom_in_its_own_orientation(tmp_path: Path) -> None:
    """The TPTBox crop is stored P-I-R: its slices are sagittal, not axial."""
    original = sitk.Cast(sitk.ReadImage(str(TPTBOX_CT)), sitk.sitkFloat32)
    paths = write_series(original, _header(), tmp_path / "series")
    volume = load_files(paths)
    assert len(paths) == original.GetSize()[2]
    assert np.allclose(volume.image.GetSpacing(), original.GetSpacing(), atol=1e-4)
    assert np.allclose(volume.image.GetOrigin(), original.GetOrigin(), atol=1e-3)
    _same_voxels(original, volume.image)


@pytest.mark.parametrize("angle", [0.0, 20.0])
def test_shuffled_oblique_slices_are_ordered_by_position(tmp_path: Path, angle: float) -> None:
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray(rng.normal(100, 30, (12, 20, 24)).astype(np.float32))
    image.SetSpacing((0.7, 0.8, 2.5))
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    image.SetDirection((1, 0, 0, 0, c, -s, 0, s, c))
    image.SetOrigin((-10.0, 5.0, 30.0))
    paths = write_series(image, _header("MR"), tmp_path / "mr")
    rng.shuffle(paths)
    volume = load_files(paths)
    assert np.allclose(volume.image.GetDirection(), image.GetDirection(), atol=1e-5)
    assert volume.slice_step == pytest.approx(2.5, abs=1e-3)
    _same_voxels(image, volume.image)


def test_a_gap_is_refused(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.zeros((6, 8, 8), np.float32))
    paths = write_series(image, _header(), tmp_path / "gap")
    with pytest.raises(VolumeError, match="evenly"):
        load_files(paths[:2] + paths[3:])


def test_real_vendor_jpeg2000_series_loads_in_hounsfield_units() -> None:
    volume = load_files(sorted(VENDOR_DICOM.iterdir()))
    assert volume.image.GetSize() == (512, 512, 20)
    # 3 mm thick slices reconstructed every 2 mm: the step comes from the positions.
    assert volume.slice_step == pytest.approx(2.0, abs=0.01)
    values = sitk.GetArrayViewFromImage(volume.image)
    assert values.min() <= -900  # air around the patient
    assert np.percentile(values, 99.9) > 300  # bone


@pytest.mark.parametrize(
    "rescales",
    [
        [(1.0, -1024.0)] * 4,  # a CT: one rescale, slope 1 (stacked as stored, shifted by ITK)
        [(1.0, -1024.5)] * 4,  # a fractional intercept
        [(2.5, -10.0)] * 4,  # slope != 1
        [(1.0, -1024.0), (1.0, -1000.0), (0.5, 0.0), (1.0, -1024.0)],  # per-slice rescales
    ],
)
def test_every_slice_is_rescaled_by_its_own_slope_and_intercept(
    rescales: list[tuple[float, float]],
) -> None:
    """Whichever way the volume is built, each voxel is its stored value times the slice's
    RescaleSlope plus its RescaleIntercept (signed stored values included)."""
    from services.imaging.analysis.volume import load_series
    from tests.harness.series import SeriesSpec, make_series

    datasets = make_series(SeriesSpec(modality="CT", slices=len(rescales)))
    stored = []
    for ds, (slope, intercept) in zip(datasets, rescales, strict=True):
        pixels = np.frombuffer(ds.PixelData, dtype=np.int16).copy()
        pixels[::7] = -pixels[::7]  # negative stored values too
        ds.PixelData = pixels.tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        stored.append(pixels.reshape(int(ds.Rows), int(ds.Columns)))
    volume = sitk.GetArrayFromImage(load_series(datasets).image)
    assert volume.dtype == np.float32
    for k, (slope, intercept) in enumerate(rescales):
        expected = stored[k].astype(np.float64) * slope + intercept
        assert np.allclose(volume[k], expected, atol=1e-3), k


def test_slices_of_other_pixel_types_or_byte_orders_keep_their_values() -> None:
    """An unsigned slice among signed ones, and a big-endian series: each voxel is still its
    own slice's stored value rescaled (never wrapped round or reinterpreted)."""
    from pydicom.uid import ExplicitVRBigEndian

    from services.imaging.analysis.volume import load_series
    from tests.harness.series import SeriesSpec, make_series

    mixed = make_series(SeriesSpec(modality="CT", slices=3))
    expected = []
    for k, ds in enumerate(mixed):
        if k == 0:  # unsigned, with values a signed reading would wrap
            pixels = np.full((int(ds.Rows), int(ds.Columns)), 40000, dtype=np.uint16)
            ds.PixelRepresentation = 0
        else:
            pixels = np.full((int(ds.Rows), int(ds.Columns)), -500, dtype=np.int16)
        ds.PixelData = pixels.tobytes()
        expected.append(pixels.astype(np.float64) - 1024)
    volume = sitk.GetArrayFromImage(load_series(mixed).image)
    for k in range(3):
        assert np.allclose(volume[k], expected[k]), k

    big = make_series(SeriesSpec(modality="CT", slices=3))
    values = []
    for ds in big:
        pixels = np.frombuffer(ds.PixelData, dtype=np.int16).copy()
        pixels[::5] = -300
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        ds.PixelData = pixels.astype(">i2").tobytes()
        values.append(pixels.reshape(int(ds.Rows), int(ds.Columns)).astype(np.float64) - 1024)
    volume = sitk.GetArrayFromImage(load_series(big).image)
    for k in range(3):
        assert np.allclose(volume[k], values[k]), k


def test_a_sampler_outlives_the_volume_it_was_made_from() -> None:
    """A sampler views its image's buffer (no copy for float32): the reader's sections keep
    the sampler of the series last asked for while the volume it came from is gone. It
    must keep the image alive — it once read freed memory, and a large volume's freed
    buffer is unmapped (the process crashed). Run apart, so a crash fails only this test."""
    import subprocess
    import sys

    code = (
        "import gc, numpy as np, SimpleITK as sitk\n"
        "from services.imaging.analysis.sampling import Sampler\n"
        "def make():\n"
        "    a = np.arange(96 * 256 * 256, dtype=np.float32).reshape(96, 256, 256) % 1000\n"
        "    return Sampler.of(sitk.GetImageFromArray(a))\n"
        "s = make(); gc.collect()\n"
        "junk = [np.full((96, 256, 256), -7.0, np.float32) for _ in range(3)]\n"
        "print(float(s(np.array([[10.0, 20.0, 30.0]]))[0]), float(s.array.sum()))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-500:]
    value, total = (float(v) for v in run.stdout.split())
    a = np.arange(96 * 256 * 256, dtype=np.float64).reshape(96, 256, 256) % 1000
    assert value == a[30, 20, 10] and total == pytest.approx(a.sum(), rel=1e-6)
