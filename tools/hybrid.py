"""A post-operative CT made from a real one: titanium pedicle screws and rods, with streaks.

The screws go where a surgeon puts them, found from the image's expert masks (TPTBox
layout, :mod:`tools.reference`): each through its pedicle's centre, converging towards the
body's anterior half on its own side (12-18 degrees here), 6.5 mm thick, entering 15 mm
behind the pedicle's centre and reaching 4 mm past its aim (55-60 % of the body's depth on
this crop); a tulip head at
the entry; on each side a 5.5 mm rod through the heads. The metal (3,000 HU) is rendered
with partial volume (27 samples per voxel) into the real voxels it replaces.

The artefacts follow the physics, per axial slice: the metal's line integrals
(scikit-image's Radon transform) give beam-hardening errors that grow with the square of
the metal path (the dark bands between two screws) and photon-starvation noise that grows
exponentially with it (the fine radial streaks); their filtered back-projection is added
to the slice. The masks, and so the reference values, do not change: the post-operative
measurement is checked on real anatomy.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
from skimage.transform import iradon, radon

from tools.reference import PEDICLE_ZONE_MM, Masks

TITANIUM_HU = 3000.0
SCREW_RADIUS_MM = 3.25
ROD_RADIUS_MM = 2.75
HEAD_RADIUS_MM = 5.5
HARDENING_HU_PER_MM2 = 100.0  # beam-hardening error per (mm of metal)², in HU·mm
STARVATION = 0.3  # photon-starvation noise scale (x exp of the metal path in cm)


def _segment(array: Any, origin: Any, spacing: Any, a: Any, b: Any, radius: float) -> None:
    """Partial-volume fraction of a capsule from ``a`` to ``b`` (world, mm), max-combined."""
    lo = np.floor((np.minimum(a, b) - radius - origin) / spacing).astype(int) - 1
    hi = np.ceil((np.maximum(a, b) + radius - origin) / spacing).astype(int) + 2
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.array(array.shape[::-1]))
    if np.any(hi <= lo):
        return
    sub = (np.arange(3) - 1) / 3.0
    ii, jj, kk = np.meshgrid(
        np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), np.arange(lo[2], hi[2]), indexing="ij"
    )
    frac = np.zeros(ii.shape)
    ab = b - a
    for dx in sub:
        for dy in sub:
            for dz in sub:
                p = np.stack([ii + dx, jj + dy, kk + dz], axis=-1) * spacing + origin
                t = np.clip(((p - a) @ ab) / float(ab @ ab), 0.0, 1.0)
                d = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)
                frac += d < radius
    frac /= 27.0
    view = array[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
    np.maximum(view, frac.transpose(2, 1, 0), out=view)


def _pedicle_and_body(masks: Masks, label: int, side: str) -> tuple[Any, Any] | None:
    """Voxel (i, j, k) centroids of the pedicle (arcus just behind the body) and the body."""
    body = masks.body(label)
    if not body.any():
        return None
    kb, jb, ib = np.nonzero(body)
    wall = int(np.percentile(jb, 99))
    k, j, i = np.nonzero(masks.arcus(label))
    near = (j >= wall - 1) & (j <= wall + int(PEDICLE_ZONE_MM / masks.spacing[1]))
    near &= i > np.median(ib) if side == "left" else i < np.median(ib)
    if not near.any():
        return None
    pedicle = np.array([i[near].mean(), j[near].mean(), k[near].mean()])
    centre = np.array([ib.mean(), jb.mean(), kb.mean()])
    return pedicle, centre


def instrument(image: sitk.Image, masks: Masks, vertebrae: Sequence[int], *, seed: int = 0) -> Any:
    """The image (LPS-oriented) with screws in ``vertebrae``'s pedicles, rods and streaks."""
    lps = sitk.DICOMOrient(sitk.Cast(image, sitk.sitkFloat32), "LPS")
    array = sitk.GetArrayFromImage(lps).astype(np.float32)
    origin = np.array(lps.GetOrigin())
    spacing = np.array(lps.GetSpacing())
    metal = np.zeros(array.shape, dtype=np.float32)
    heads: dict[str, list[Any]] = {"left": [], "right": []}
    for label in vertebrae:
        for side in ("left", "right"):
            found = _pedicle_and_body(masks, label, side)
            if found is None:
                continue
            pedicle, centre = (origin + v * spacing for v in found)
            # Aimed into the body's anterior half on the screw's own side (a convergence of
            # about 10-15 degrees; two screws never cross).
            target = centre.copy()
            target[0] += 0.6 * (pedicle[0] - centre[0])
            axis = (target - pedicle) / np.linalg.norm(target - pedicle)
            entry = pedicle - 15.0 * axis
            tip = target + 4.0 * axis
            _segment(metal, origin, spacing, entry, tip, SCREW_RADIUS_MM)
            head = entry - 4.0 * axis
            _segment(metal, origin, spacing, head, head - 6.0 * axis, HEAD_RADIUS_MM)
            heads[side].append(head - 3.0 * axis)
    for points in heads.values():
        points.sort(key=lambda p: p[2])
        for a, b in itertools.pairwise(points):
            _segment(metal, origin, spacing, a, b, ROD_RADIUS_MM)
        if points:
            down = np.array([0.0, 0.0, 6.0])
            _segment(metal, origin, spacing, points[0] - down, points[0], ROD_RADIUS_MM)
            _segment(metal, origin, spacing, points[-1], points[-1] + down, ROD_RADIUS_MM)
    array = array * (1.0 - metal) + TITANIUM_HU * metal
    array += _streaks(metal, float(spacing[0]), np.random.default_rng(seed))
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(lps)
    return out


def _streaks(metal: Any, pixel_mm: float, rng: np.random.Generator) -> Any:
    """Per axial slice: the filtered back-projection of the metal's sinogram errors."""
    out = np.zeros(metal.shape, dtype=np.float32)
    theta = np.linspace(0.0, 180.0, 180, endpoint=False)
    for k in range(metal.shape[0]):
        if metal[k].max() < 0.05:
            continue
        n = max(metal.shape[1:])
        square = np.zeros((n, n))
        square[: metal.shape[1], : metal.shape[2]] = metal[k]
        path = radon(square, theta=theta, circle=False) * pixel_mm  # mm of metal per ray
        error = -HARDENING_HU_PER_MM2 * path**2 / pixel_mm
        error += STARVATION * np.expm1(path / 10.0) * rng.normal(0.0, 1.0, path.shape) * 100
        back = iradon(error, theta=theta, filter_name="ramp", circle=False, output_size=n)
        # The metal itself stays saturated; the errors show in the tissue round it.
        out[k] = back[: metal.shape[1], : metal.shape[2]] * (1.0 - metal[k])
    return out
