"""Sampling a volume at arbitrary patient (LPS) points, and locating edges on profiles.

Measurements are taken on the acquired voxels, not on a resampled copy: a
:class:`Sampler` interpolates the original array (trilinear) at world points, and
:func:`edge` places an edge where the profile's gradient peaks, refined to a fraction of a
sample by a parabola through the peak — the position of a blurred step does not depend on
the intensities on either side, so no threshold has to be guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

FloatArray = np.ndarray


@dataclass(frozen=True)
class Sampler:
    array: FloatArray  # (k, j, i) as SimpleITK returns it
    origin: FloatArray
    spacing: FloatArray
    direction: FloatArray  # columns: i, j, k directions
    # The image whose buffer ``array`` may view: a view does not keep its image alive, and
    # a sampler kept after its image was freed read freed memory (or crashed).
    image: sitk.Image | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, image: sitk.Image) -> Sampler:
        return cls(
            array=sitk.GetArrayViewFromImage(image).astype(np.float32, copy=False),
            origin=np.array(image.GetOrigin()),
            spacing=np.array(image.GetSpacing()),
            direction=np.array(image.GetDirection()).reshape(3, 3),
            image=image,
        )

    @cached_property
    def floor(self) -> float:
        """The volume's lowest value (what is drawn beyond it), computed once."""
        return float(np.nanmin(self.array))

    def to_index(self, points: FloatArray) -> FloatArray:
        """World points (..., 3) → continuous (i, j, k) indices."""
        return ((np.asarray(points) - self.origin) @ self.direction) / self.spacing

    def __call__(self, points: FloatArray, *, outside: float = np.nan) -> FloatArray:
        pts = np.asarray(points, dtype=np.float64)
        ijk = self.to_index(pts.reshape(-1, 3))
        coords = ijk[:, ::-1].T  # map_coordinates wants (k, j, i)
        values = ndimage.map_coordinates(self.array, coords, order=1, mode="nearest")
        shape = np.array(self.array.shape)[:, None]
        inside = np.all((coords >= -0.5) & (coords <= shape - 0.5), axis=0)
        values = np.where(inside, values, outside)
        return values.reshape(pts.shape[:-1])

    def bounds(self) -> tuple[FloatArray, FloatArray]:
        """World bounding box of the voxel centres."""
        size = np.array(self.array.shape[::-1]) - 1
        corners = np.array(
            [[a, b, c] for a in (0, size[0]) for b in (0, size[1]) for c in (0, size[2])],
            dtype=float,
        )
        world = self.origin + (corners * self.spacing) @ self.direction.T
        return world.min(axis=0), world.max(axis=0)


def resample_world(image: sitk.Image, spacing: float, *, default: float) -> sitk.Image:
    """The image on an axis-aligned (identity direction) grid covering it, at ``spacing``."""
    sampler = Sampler.of(image)
    lo, hi = sampler.bounds()
    size = [int(np.ceil((h - lo_) / spacing)) + 1 for lo_, h in zip(lo, hi, strict=True)]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing((spacing,) * 3)
    ref.SetOrigin(tuple(float(v) for v in lo))
    return sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)


def edge(profile: FloatArray, step: float, *, rising: bool, start: int, stop: int) -> float | None:
    """Sub-sample position (in samples) of the strongest rising/falling edge in [start, stop).

    Parameters
    ----------
    profile
        Values sampled every ``step`` mm (already averaged across the line).
    rising
        True for a dark-to-bright edge in the direction of increasing index.
    start, stop
        The sample range to search.

    Returns
    -------
    float or None
        The fractional index of the gradient peak, or None when the range holds no edge.
    """
    start, stop = max(start, 1), min(stop, len(profile) - 1)
    if stop - start < 2:
        return None
    smooth = ndimage.gaussian_filter1d(profile.astype(np.float64), sigma=max(0.4 / step, 1.0))
    grad = np.gradient(smooth)
    if not rising:
        grad = -grad
    window = grad[start:stop]
    n = int(np.argmax(window))
    if window[n] <= 0:
        return None
    i = start + n
    if 0 < i < len(grad) - 1:
        a, b, c = grad[i - 1], grad[i], grad[i + 1]
        denom = a - 2 * b + c
        if denom < 0:
            return i + 0.5 * (a - c) / denom
    return float(i)


def runs(mask: FloatArray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the True runs of a 1-D boolean array."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(changes[::2], changes[1::2], strict=True)]


def unit(v: FloatArray) -> FloatArray:
    n = float(np.linalg.norm(v))
    if n == 0:
        raise ValueError("zero vector")
    return np.asarray(v, dtype=float) / n
