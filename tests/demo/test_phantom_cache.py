"""The main job renders each phantom once: the cache is keyed by the spec (and the
renderer's code), reused as is, and a different spec renders a different folder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pydicom import dcmread

from tools.phantom import PhantomSpec, cached_phantom, write_phantom


def test_a_phantom_is_rendered_once_per_spec(tmp_path: Path) -> None:
    spec = PhantomSpec(modality="CT", pixel_spacing=2.0, slice_spacing=3.0, seed=7)
    first = cached_phantom(spec, tmp_path / "cache")
    files = sorted(first.glob("*.dcm"))
    assert files and (first / "ground_truth.json").is_file()
    stamps = [f.stat().st_mtime_ns for f in files]

    again = cached_phantom(replace(spec), tmp_path / "cache")
    assert again == first
    assert [f.stat().st_mtime_ns for f in sorted(again.glob("*.dcm"))] == stamps

    # The cached rendering is the rendering: the same study, series and pixels as a
    # fresh one (instance UIDs are drawn at render time: the cache keeps its first).
    fresh = tmp_path / "fresh"
    write_phantom(replace(spec), fresh)

    def by_number(folder: Path) -> list[tuple[int, str, str, bytes]]:
        return sorted(
            (int(ds.InstanceNumber), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PixelData)
            for ds in map(dcmread, folder.glob("*.dcm"))
        )

    assert by_number(first) == by_number(fresh)

    other = cached_phantom(replace(spec, seed=8), tmp_path / "cache")
    assert other != first and sorted(other.glob("*.dcm"))
    assert not list((tmp_path / "cache").glob(".*partial"))
