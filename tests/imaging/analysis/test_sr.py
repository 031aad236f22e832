"""The SR draws each measurement where it was made: a contour in an acquired slice's plane as
a SCOORD on that slice (pixel coordinates), a line across slices as a SCOORD3D."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

from services.imaging.analysis.pipeline import analyze_paths
from services.imaging.analysis.sr import build_sr, secondary_captures
from tests.harness.series import sr_items
from tools.phantom import PhantomSpec, write_phantom


def _to_patient(image: Any, column: float, row: float) -> np.ndarray:
    origin = np.array([float(v) for v in image.ImagePositionPatient])
    orientation = np.array([float(v) for v in image.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in image.PixelSpacing)
    return (
        origin
        + (column - 0.5) * column_spacing * orientation[:3]
        + (row - 0.5) * row_spacing * orientation[3:]
    )


def test_sac_contours_are_drawn_on_the_axial_slice_they_were_measured_on(
    tmp_path: Path,
) -> None:
    spec = PhantomSpec(
        modality="MR", pixel_spacing=0.8, slice_spacing=3.0, stenosis="central", seed=5
    )
    write_phantom(spec, tmp_path)
    paths = sorted(tmp_path.glob("*.dcm"))
    analysis = analyze_paths(paths, key_images=False)
    images = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in paths)}
    areas = [
        m
        for m in analysis.result.measurements
        if m.quantity == "dural_sac_area" and m.value is not None and m.points
    ]
    assert areas
    sr = build_sr(analysis.result, analysis.evidence)
    scoords = [i for i in sr_items(sr) if i.ValueType == "SCOORD"]
    assert len(scoords) == len(areas)
    for item, m in zip(scoords, areas, strict=True):
        assert item.GraphicType == "POLYLINE"
        reference = item.ContentSequence[0].ReferencedSOPSequence[0]
        image = images[reference.ReferencedSOPInstanceUID]
        assert reference.ReferencedSOPInstanceUID == m.sop_instance_uid
        xy = np.array(item.GraphicData, dtype=np.float64).reshape(-1, 2)
        assert np.allclose(xy[0], xy[-1])  # closed
        assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= image.Columns
        assert xy[:, 1].min() >= 0 and xy[:, 1].max() <= image.Rows
        # Back in patient space the contour lies where the analysis found it, in the plane.
        back = np.array([_to_patient(image, c, r) for c, r in xy[:-1]])
        points = np.array(m.points)
        normal = np.cross(
            [float(v) for v in image.ImageOrientationPatient[:3]],
            [float(v) for v in image.ImageOrientationPatient[3:]],
        )
        in_plane = points - np.outer((points - back[0]) @ normal, normal)
        assert np.max(np.linalg.norm(back - in_plane[: len(back)], axis=1)) < 0.01
    lines = [i for i in sr_items(sr) if i.ValueType == "SCOORD3D"]
    frame = next(iter(images.values())).FrameOfReferenceUID
    assert all(i.ReferencedFrameOfReferenceUID == frame for i in lines)


def test_height_lines_are_drawn_on_the_key_image_of_their_plane(tmp_path: Path) -> None:
    spec = PhantomSpec(
        modality="CT", pixel_spacing=1.2, slice_spacing=1.5, stenosis="foraminal", seed=8
    )
    write_phantom(spec, tmp_path)
    analysis = analyze_paths(sorted(tmp_path.glob("*.dcm")))
    captures = secondary_captures(
        [image.png for image in analysis.key_images],
        analysis.evidence[0],
        manufacturer="test",
        series_instance_uid=generate_uid(),
        orientations=[image.orientation for image in analysis.key_images],
    )
    # Sagittal sections: rows run posterior, columns caudal (the spine's axis may tilt).
    heights = [c for c, i in zip(captures, analysis.key_images, strict=True) if "height" in i.name]
    assert heights and all(list(c.PatientOrientation) == ["P", "F"] for c in heights)
    sr = build_sr(
        analysis.result,
        analysis.evidence,
        key_images=list(zip(analysis.key_images, captures, strict=True)),
    )
    by_uid = {str(c.SOPInstanceUID): c for c in captures}
    lines = [i for i in sr_items(sr) if i.ValueType == "SCOORD"]
    measured = [m for m in analysis.result.measurements if m.value is not None]
    assert len(lines) == len(measured) > 0
    assert not [i for i in sr_items(sr) if i.ValueType == "SCOORD3D"]
    for item in lines:
        capture = by_uid[item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
        (x0, y0), (x1, y1) = np.array(item.GraphicData, dtype=np.float64).reshape(2, 2)
        pixels = capture.pixel_array
        # The coordinates lie on the line burned into the key image (its yellow).
        for t in (0.25, 0.5, 0.75):
            column, row = int(x0 + t * (x1 - x0)), int(y0 + t * (y1 - y0))
            around = pixels[max(row - 2, 0) : row + 3, max(column - 2, 0) : column + 3]
            assert (np.abs(around.astype(int) - (255, 200, 0)).sum(axis=-1) < 30).any()
