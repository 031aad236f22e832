"""The spine model shared by CT and MR: a centre line, its local frames, discs and levels.

The centre line is a smooth curve ``(x(z), y(z))`` fitted robustly through per-slice
detections (vertebral body centres on CT, dural sac centroids on MR) in patient
coordinates; its tangent is the spine's local craniocaudal axis, so lordosis tilts every
measurement with the spine and never with the scanner's z axis.

Levels are counted from the sacrum, else (CT) from the lowest rib-bearing vertebra (T12);
when neither is seen they keep ``level = None`` and only their craniocaudal
``level_index`` (0 = most cranial), with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import find_peaks

from services.common.vocabulary import LEVELS
from services.imaging.analysis.sampling import FloatArray, unit

LUMBAR_LEVELS = LEVELS


@dataclass(frozen=True)
class CentreLine:
    x: np.polynomial.Polynomial
    y: np.polynomial.Polynomial
    z_min: float
    z_max: float
    residual: float = 0.0  # RMS distance of the kept detections from the curve, mm

    @classmethod
    def fit(cls, z: FloatArray, xy: FloatArray, *, tolerance: float = 8.0) -> CentreLine:
        """Fit x(z), y(z), dropping detections farther than ``tolerance`` mm, twice."""
        z = np.asarray(z, dtype=float)
        xy = np.asarray(xy, dtype=float)
        if len(z) < 4:
            raise ValueError("too few detections to follow the spine")
        keep = np.ones(len(z), dtype=bool)
        span = float(z.max() - z.min())
        degree = 3 if span > 120 else 2 if span > 50 else 1
        for _ in range(3):
            px = np.polynomial.Polynomial.fit(z[keep], xy[keep, 0], degree)
            py = np.polynomial.Polynomial.fit(z[keep], xy[keep, 1], degree)
            resid = np.hypot(px(z) - xy[:, 0], py(z) - xy[:, 1])
            new = resid < max(tolerance, 2.5 * float(np.median(resid[keep])))
            if new.sum() < 4 or np.array_equal(new, keep):
                break
            keep = new
        rms = float(np.sqrt(np.mean(resid[keep] ** 2)))
        return cls(px, py, float(z[keep].min()), float(z[keep].max()), rms)

    def point(self, z: float) -> FloatArray:
        return np.array([self.x(z), self.y(z), z])

    def tangent(self, z: float) -> FloatArray:
        return unit(np.array([self.x.deriv()(z), self.y.deriv()(z), 1.0]))

    def frame(self, z: float) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(axis, left, posterior) unit vectors at height z: axis cranial, left ⟂ axis."""
        t = self.tangent(z)
        left = unit(np.array([1.0, 0.0, 0.0]) - t[0] * t)
        posterior = np.cross(t, left)
        return t, left, posterior


@dataclass
class Disc:
    z: float  # where the centre line crosses the disc's middle
    z_low: float  # extent of the disc on the profile
    z_high: float
    faint: bool = False  # found on faint endplates (by its spacing from the others)
    # Hollow bone: where the bright endplates it lies between cross the line (z, lower
    # first); a height measured beyond them took something else for an endplate.
    plates: tuple[float, float] | None = None

    @property
    def middle(self) -> float:
        return (self.z_low + self.z_high) / 2


def find_discs(
    z: FloatArray,
    profile: FloatArray,
    *,
    baseline: float,
    bright_discs: bool = False,
    min_gap: float = 16.0,
    prominence: float,
) -> list[Disc]:
    """Discs as the dips (or, with ``bright_discs``, the peaks) of a profile along the spine.

    A disc's extent is where the profile is past halfway from ``baseline`` (the bodies'
    level) to the dip, at most 10 mm either side. Only dips with body on both sides inside
    the profile count: a disc cut by the edge of the field of view bounds no measurable
    level.
    """
    step = float(np.median(np.diff(z)))
    signal = profile if bright_discs else -profile
    base = baseline if bright_discs else -baseline
    reach = round(10.0 / step)
    peaks, props = find_peaks(signal, prominence=prominence, distance=max(1, int(min_gap / step)))
    discs = []
    for n, i in enumerate(peaks):
        if signal[i] - base < prominence / 2:  # a plateau between two spikes is no disc
            continue
        left, right = int(props["left_bases"][n]), int(props["right_bases"][n])
        if left == 0 and signal[0] >= signal[i] - prominence / 2:
            continue
        if right == len(signal) - 1 and signal[-1] >= signal[i] - prominence / 2:
            continue
        half = (signal[i] + base) / 2
        lo = i
        while lo > max(0, i - reach) and signal[lo - 1] > half:
            lo -= 1
        hi = i
        while hi < min(len(signal) - 1, i + reach) and signal[hi + 1] > half:
            hi += 1
        # Interpolate the half crossings between samples.
        z_lo = _cross(z, signal, lo - 1, lo, half) if lo > 0 else z[lo]
        z_hi = _cross(z, signal, hi, hi + 1, half) if hi < len(signal) - 1 else z[hi]
        if lo == 0 or hi == len(signal) - 1:
            continue
        discs.append(Disc(z=float(z[i]), z_low=float(z_lo), z_high=float(z_hi)))
    return sorted(discs, key=lambda d: -d.z)  # cranial first


def _cross(z: FloatArray, s: FloatArray, a: int, b: int, level: float) -> float:
    if s[b] == s[a]:
        return float(z[a])
    f = (level - s[a]) / (s[b] - s[a])
    return float(z[a] + np.clip(f, 0, 1) * (z[b] - z[a]))


def level_names(discs: int, sacrum: bool, t12_l1: int | None = None) -> list[str | None]:
    """Names for ``discs`` discs (cranial first): counted up from L5-S1 when the sacrum is
    seen, else down from T12-L1 (the disc at index ``t12_l1``, below the lowest rib-bearing
    vertebra) when it is known; otherwise none.

    Discs above L1-L2 (T12-L1 and higher) get the name ``"T"`` so callers can leave them out;
    counted from T12, discs beyond L5-S1 get none.
    """
    names: list[str | None] = []
    for n in range(discs):
        if sacrum:
            from_bottom = discs - 1 - n
            names.append(
                LUMBAR_LEVELS[-1 - from_bottom] if from_bottom < len(LUMBAR_LEVELS) else "T"
            )
        elif t12_l1 is not None:
            below = n - t12_l1 - 1  # 0 = L1-L2
            names.append(
                "T" if below < 0 else LUMBAR_LEVELS[below] if below < len(LUMBAR_LEVELS) else None
            )
        else:
            names.append(None)
    return names
