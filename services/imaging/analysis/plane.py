"""A key image's plane: where its section lies in the patient (LPS) and which series it was
sampled from — what a reader's scroll through the neighbouring sections is rendered on.
Plain data, so the web process reads it without loading the analysis libraries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Plane:
    """A key image's section: its top left corner, row and column directions (LPS), its
    size in mm, and the series it was sampled from."""

    origin: tuple[float, float, float]
    right: tuple[float, float, float]
    down: tuple[float, float, float]
    size_mm: tuple[float, float]
    series_instance_uid: str
    modality: str

    @classmethod
    def of(
        cls,
        origin: np.ndarray,
        right: np.ndarray,
        down: np.ndarray,
        size: tuple[float, float],
        series: str,
        modality: str,
    ) -> Plane:
        def v(a: np.ndarray) -> tuple[float, float, float]:
            x, y, z = (round(float(c), 4) for c in a)
            return (x, y, z)

        return cls(v(origin), v(right), v(down), size, series, modality)

    def as_json(self) -> dict[str, object]:
        return {
            "origin": list(self.origin),
            "right": list(self.right),
            "down": list(self.down),
            "size_mm": list(self.size_mm),
            "series_instance_uid": self.series_instance_uid,
            "modality": self.modality,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plane:
        return cls(
            tuple(data["origin"]),
            tuple(data["right"]),
            tuple(data["down"]),
            tuple(data["size_mm"]),
            str(data["series_instance_uid"]),
            str(data["modality"]),
        )
