"""The SR draws each measurement where it was made: a contour in an acquired slice's plane as
a SCOORD on that slice (pixel coordinates), a line across slices as a SCOORD3D."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread

from services.imaging.analysis.pipeline import analyze_paths
from services.imaging.analysis.sr import build_sr
from tools.phantom import PhantomSpec, write_phantom


def _items(node: Any) -> list[Any]:
    found = []
    for item in getattr(node, "ContentSequence", []):
        found.append(item)
        found += _items(item)
    return found


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
    scoords = [i for i in _items(sr) if i.ValueType == "SCOORD"]
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
    lines = [i for i in _items(sr) if i.ValueType == "SCOORD3D"]
    frame = next(iter(images.values())).FrameOfReferenceUID
    assert all(i.ReferencedFrameOfReferenceUID == frame for i in lines)
