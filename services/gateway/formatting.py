"""How numbers are written on the dashboard and in the report: one spelling of each."""

from __future__ import annotations

DASH = "\u2013"  # an en dash marks a missing value, or one that cannot be computed


def num(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def pval(value: float | None) -> str:
    if value is None:
        return DASH
    return "< 0.001" if value < 0.001 else f"{value:.3f}"
