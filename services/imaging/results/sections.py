"""Neighbouring sections of a key image, rendered on demand from the stored series, so a
reader can scroll through the slices around the measured plane and change the window.

The volume of the series last asked for is kept (one at a time: a CT of 300 slices holds
about 300 MB as float32); the next reader's scroll through the same study is then a
resampling of 0.1 Mpixel, tens of milliseconds. The reading and sampling code (SimpleITK,
SciPy, matplotlib's font) is imported by the first section asked for, not when the service
starts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlmodel import Session, select

from services.imaging.analysis.plane import Plane
from services.imaging.errors import NotFound
from services.imaging.models import Instance

if TYPE_CHECKING:
    from services.imaging.analysis.sampling import Sampler

MAX_OFFSET_MM = 20.0


class Sections:
    def __init__(self, engine: Engine, path_of: Callable[[Instance], Path]) -> None:
        self.engine = engine
        self.path_of = path_of
        self._lock = threading.Lock()
        self._key: tuple[str, int] | None = None
        self._sampler: Sampler | None = None

    def _sampler_of(self, series: str) -> Sampler:
        from services.imaging.analysis.sampling import Sampler
        from services.imaging.analysis.volume import VolumeError, load_files

        with Session(self.engine) as session:
            instances = session.exec(
                select(Instance).where(Instance.series_instance_uid == series)
            ).all()
        if not instances:
            raise NotFound("the measured series is no longer stored")
        key = (series, len(instances))
        with self._lock:  # one load at a time; the others wait for it
            if self._key != key or self._sampler is None:
                self._sampler = None  # release the previous volume before reading the next
                try:
                    volume = load_files([self.path_of(i) for i in instances])
                except (VolumeError, OSError) as exc:
                    raise NotFound(f"the measured series cannot be read again ({exc})") from None
                self._sampler, self._key = Sampler.of(volume.image), key
            return self._sampler

    def render(self, plane: Plane, offset_mm: float, window: str) -> bytes:
        """The section ``offset_mm`` from the key image's plane, as PNG."""
        from services.imaging.analysis.overlays import section_png

        return section_png(self._sampler_of(plane.series_instance_uid), plane, offset_mm, window)
