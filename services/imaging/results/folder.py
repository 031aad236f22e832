"""The results folder, and its only owner: where an analysis's key images and SR are
written, and where the API, the outbox and the next re-analysis read them back.

Layout: ``<root>/<StudyInstanceUID>/v<version>/job<id>-a<attempt>/`` holding ``sr.dcm``,
one ``<name>.png`` per key image, the key images as the Secondary Capture instances
the SR references (``capture-<n>.dcm``), and under ``review/`` each key image's section
without its construction (``<name>.png``) with the construction's geometry
(``<name>.json``) for the readers' workstation. A folder belongs to one attempt of one job, so a
fenced-out attempt never overwrites the committed one; the measurement set records its
folder (``key_images_dir``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import Dataset, dcmread

from services.imaging.intake.dicom_io import part10_bytes
from services.imaging.models import MeasurementSet

if TYPE_CHECKING:
    from services.imaging.analysis.overlays import KeyImage

SR_FILE = "sr.dcm"
REVIEWED_SR_FILE = "reviewed-sr.dcm"  # a reader's signed review: supersedes sr.dcm
REVIEW = "review"
CAPTURE_PREFIX = "capture-"
KEY_IMAGE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,120}$")


class ResultsFolder:
    """Writes and reads the files of analysis results under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(
        self,
        study_instance_uid: str,
        study_version: int,
        job_id: int,
        attempt: int,
        key_images: Sequence[KeyImage],
        sr: Dataset | None,
        captures: Sequence[Dataset] = (),
    ) -> Path:
        """Write one attempt's files; returns the folder to record with the result."""
        folder = self.root / study_instance_uid / f"v{study_version}" / f"job{job_id}-a{attempt}"
        folder.mkdir(parents=True, exist_ok=True)
        for image in key_images:
            (folder / f"{image.name}.png").write_bytes(image.png)
            if image.review_png:
                (folder / REVIEW).mkdir(exist_ok=True)
                (folder / REVIEW / f"{image.name}.png").write_bytes(image.review_png)
                geometry = json.dumps(image.review_geometry())
                (folder / REVIEW / f"{image.name}.json").write_text(geometry)
        if sr is not None:
            (folder / SR_FILE).write_bytes(part10_bytes(sr))
        for number, capture in enumerate(captures, start=1):
            (folder / f"{CAPTURE_PREFIX}{number:03d}.dcm").write_bytes(part10_bytes(capture))
        return folder

    @staticmethod
    def _folder(measurement_set: MeasurementSet) -> Path | None:
        return Path(measurement_set.key_images_dir) if measurement_set.key_images_dir else None

    def sr(self, measurement_set: MeasurementSet, *, automatic: bool = False) -> Dataset | None:
        """The SR of a stored result: the reviewed one once a reader signed the review
        (unless ``automatic``), else the automatic one; None when nothing was measured."""
        folder = self._folder(measurement_set)
        if folder is None:
            return None
        for name in (SR_FILE,) if automatic else (REVIEWED_SR_FILE, SR_FILE):
            if (folder / name).is_file():
                return dcmread(folder / name)
        return None

    def write_reviewed_sr(self, measurement_set: MeasurementSet, sr: Dataset) -> None:
        folder = self._folder(measurement_set)
        if folder is None:
            raise ValueError("the result has no folder")
        temporary = folder / f".{REVIEWED_SR_FILE}.tmp"
        temporary.write_bytes(part10_bytes(sr))
        temporary.replace(folder / REVIEWED_SR_FILE)

    def key_image_names(self, measurement_set: MeasurementSet) -> list[str]:
        folder = self._folder(measurement_set)
        return sorted(p.stem for p in folder.glob("*.png")) if folder else []

    def key_image(self, measurement_set: MeasurementSet, name: str) -> bytes | None:
        """One key image's PNG; None for an unknown or malformed name."""
        folder = self._folder(measurement_set)
        if folder is None or not KEY_IMAGE_NAME.fullmatch(name):
            return None
        path = folder / f"{name}.png"
        return path.read_bytes() if path.is_file() else None

    def review_image_names(self, measurement_set: MeasurementSet) -> list[str]:
        folder = self._folder(measurement_set)
        return sorted(p.stem for p in (folder / REVIEW).glob("*.json")) if folder else []

    def review_image(self, measurement_set: MeasurementSet, name: str) -> bytes | None:
        """A key image's section without its construction; None when there is none (an
        unknown name, or a result written before review images were kept)."""
        folder = self._folder(measurement_set)
        if folder is None or not KEY_IMAGE_NAME.fullmatch(name):
            return None
        path = folder / REVIEW / f"{name}.png"
        return path.read_bytes() if path.is_file() else None

    def review_geometry(self, measurement_set: MeasurementSet, name: str) -> dict[str, Any] | None:
        """The construction drawn on a review image (see ``KeyImage.review_geometry``)."""
        folder = self._folder(measurement_set)
        if folder is None or not KEY_IMAGE_NAME.fullmatch(name):
            return None
        path = folder / REVIEW / f"{name}.json"
        if not path.is_file():
            return None
        geometry: dict[str, Any] = json.loads(path.read_text())
        return geometry

    def key_images(self, measurement_set: MeasurementSet) -> list[bytes]:
        """Every key image's PNG, in name order."""
        folder = self._folder(measurement_set)
        return [p.read_bytes() for p in sorted(folder.glob("*.png"))] if folder else []

    def captures(self, measurement_set: MeasurementSet) -> list[Dataset]:
        """The key images' Secondary Capture instances that the SR references (none for
        results written before they were kept)."""
        folder = self._folder(measurement_set)
        if folder is None:
            return []
        return [dcmread(p) for p in sorted(folder.glob(f"{CAPTURE_PREFIX}*.dcm"))]
