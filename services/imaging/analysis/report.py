"""The analysis result while it is being built; :meth:`AnalysisResult.to_contract` turns
it into the result contract (:class:`services.common.contracts.AnalysisResult`) that the
CLI prints, the job runner stores and every consumer reads.

A measurement that could not be taken reliably has ``status: needs_review``, a ``reason``
and ``value: null`` — never a number that looks trustworthy and is not. One whose
structure lies outside the images is ``not_measurable`` with the reason: nothing for a
reader to check, so it does not make the result ``needs_review``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common import contracts
from services.common.vocabulary import QUANTITIES, QuantityName

ALGORITHM_NAME = "spine-decompression"
ALGORITHM_VERSION = "1.0.0"


@dataclass
class Measurement:
    quantity: QuantityName
    level: str | None
    level_index: int
    side: str | None
    value: float | None
    series_instance_uid: str
    status: str = "ok"  # ok | needs_review | not_measurable
    reason: str | None = None
    # World (LPS, mm) points drawn on key images and referenced by the SR: for a height,
    # its two ends; for an area, the contour.
    points: list[list[float]] = field(default_factory=list)
    sop_instance_uid: str | None = None  # the source image nearest the measurement

    @property
    def unit(self) -> str:
        return QUANTITIES[self.quantity].unit

    def review(self, reason: str) -> None:
        self.status, self.reason, self.value = "needs_review", reason, None

    def outside(self, reason: str) -> None:
        """Not measurable: what it needs is outside the images (nothing for a reader to
        check, so not a review item)."""
        self.status, self.reason, self.value = "not_measurable", reason, None

    def check_plausible(self) -> None:
        lo, hi = QUANTITIES[self.quantity].plausible
        if self.value is not None and not lo <= self.value <= hi:
            self.review(
                f"implausible {self.quantity} {self.value:.1f} {self.unit} (expected {lo:g}-{hi:g})"
            )

    def to_contract(self) -> contracts.Measurement:
        return contracts.Measurement.model_validate(
            {
                "quantity": self.quantity,
                "level": self.level,
                "level_index": self.level_index,
                "side": self.side,
                "value": None if self.value is None else round(self.value, 2),
                "unit": self.unit,
                "series_instance_uid": self.series_instance_uid,
                "status": self.status,
                "reason": self.reason,
                "sop_instance_uid": self.sop_instance_uid,
            }
        )


@dataclass
class AnalysisResult:
    study_instance_uid: str
    modality: str
    status: str = "ok"  # ok | needs_review | failed
    warnings: list[str] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    selection: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def settle(self) -> None:
        """Status from the parts: failed without measurements, needs_review when any is (a
        value outside the images is not a review item)."""
        if not self.measurements:
            self.status = "failed"
        elif self.warnings or any(m.status == "needs_review" for m in self.measurements):
            self.status = "needs_review"
        else:
            self.status = "ok"

    def to_contract(self) -> contracts.AnalysisResult:
        return contracts.AnalysisResult.model_validate(
            {
                "study_instance_uid": self.study_instance_uid,
                "modality": self.modality,
                "status": self.status,
                "warnings": self.warnings,
                "algorithm": {"name": ALGORITHM_NAME, "version": ALGORITHM_VERSION},
                "measurements": [m.to_contract() for m in self.measurements],
                "selection": self.selection,
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            }
        )
