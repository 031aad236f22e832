"""Reference values from a real image's masks (TPTBox's expert masks, TotalSegmentator's
bones), never from the analyzer.

The masks are the TPTBox project's: ``seg-vert`` labels each vertebra (21 = L2, 22 = L3,
23 = L4, ...), ``seg-subreg`` its parts (41 arcus with the pedicles, 49 corpus border,
50 corpus, ...). The reference follows the analyzer's definitions in words, on voxels:

- **foraminal height** (per level and side): in the para-sagittal slab through the two
  pedicles (3 voxels wide, at the median left-right position of both vertebrae's arcus
  just behind their bodies), over the antero-posterior columns of the pedicles proper
  (from the body's posterior wall to 10 mm behind it: farther back, the pars and the
  articular processes, which the analyzer's definition leaves out too), from the lowest
  voxel edge of the upper vertebra's arcus to the highest voxel edge of the lower one's;
- **disc height** (per level): in the 3x3-voxel column at the bodies' mean centre, from
  the top voxel edge of the lower body to the bottom voxel edge of the upper one.

Distances are along the scanner's z axis, which the TPTBox crop's spine follows to within
a few degrees (a 5° tilt shortens 15 mm by 0.06 mm). Voxel edges quantise each end to
half a voxel (0.75 mm at 1.5 mm).

**Level names** come from TotalSegmentator's masks (one file per bone,
``vertebrae_L4.nii.gz``, ``sacrum.nii.gz``; a model's output, not an expert's): the bones
just above and below a measured disc height's ends (:class:`Bones`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

ARCUS = 41
BODY = (49, 50)
PEDICLE_ZONE_MM = 10.0  # the pedicle proper: behind it the pars and articular processes


@dataclass(frozen=True)
class Masks:
    vert: Any  # (k, j, i) array, LPS-oriented, k cranial
    subreg: Any
    spacing: Any  # (x, y, z) mm
    origin: Any  # world (LPS) position of voxel (0, 0, 0)

    @classmethod
    def read(cls, vert: Path, subreg: Path) -> Masks:
        v = sitk.DICOMOrient(sitk.ReadImage(str(vert)), "LPS")
        s = sitk.DICOMOrient(sitk.ReadImage(str(subreg)), "LPS")
        return cls(
            sitk.GetArrayFromImage(v),
            sitk.GetArrayFromImage(s),
            np.array(v.GetSpacing()),
            np.array(v.GetOrigin()),
        )

    def body(self, label: int) -> Any:
        return (self.vert == label) & np.isin(self.subreg, BODY)

    def arcus(self, label: int) -> Any:
        return (self.vert == label) & (self.subreg == ARCUS)


def foraminal_height(masks: Masks, upper: int, lower: int, side: str) -> float | None:
    """Foraminal height (mm) between vertebrae ``upper`` and ``lower`` on ``side``."""
    _, sy, sz = masks.spacing
    bodies = masks.body(upper) | masks.body(lower)
    if not bodies.any():
        return None
    _, jb, ib = np.nonzero(bodies)
    mid_i = float(np.median(ib))
    wall_j = int(np.percentile(jb, 99))
    zone = slice(max(wall_j - 1, 0), wall_j + int(PEDICLE_ZONE_MM / sy) + 1)
    columns = []
    for label in (upper, lower):
        _, j, i = np.nonzero(masks.arcus(label))
        near = (j >= zone.start) & (j < zone.stop)
        near &= i > mid_i if side == "left" else i < mid_i  # LPS: +x is the patient's left
        columns.append(i[near])
    if not all(c.size for c in columns):
        return None
    centre = round(float(np.median(np.concatenate(columns))))
    slab = slice(centre - 1, centre + 2)
    up = masks.arcus(upper)[:, zone, slab].any(axis=2)  # (k, j)
    low = masks.arcus(lower)[:, zone, slab].any(axis=2)
    up_k = [np.flatnonzero(up[:, j]) for j in range(up.shape[1])]
    low_k = [np.flatnonzero(low[:, j]) for j in range(low.shape[1])]
    bottoms = [k.min() for k in up_k if k.size]
    tops = [k.max() for k in low_k if k.size]
    if not bottoms or not tops:
        return None
    return float((min(bottoms) - max(tops) - 1) * sz)


def disc_height(masks: Masks, upper: int, lower: int) -> float | None:
    """Central disc height (mm) between the bodies of ``upper`` and ``lower``."""
    sz = masks.spacing[2]
    bodies = masks.body(upper) | masks.body(lower)
    if not bodies.any():
        return None
    _, jb, ib = np.nonzero(bodies)
    j0, i0 = round(float(np.mean(jb))), round(float(np.mean(ib)))
    column = (slice(None), slice(j0 - 1, j0 + 2), slice(i0 - 1, i0 + 2))
    up = np.flatnonzero(masks.body(upper)[column].any(axis=(1, 2)))
    low = np.flatnonzero(masks.body(lower)[column].any(axis=(1, 2)))
    if not up.size or not low.size:
        return None
    return float((up.min() - low.max() - 1) * sz)


def pair_at(masks: Masks, z: float) -> tuple[int, int] | None:
    """The (upper, lower) vertebrae whose disc space holds world height ``z`` (within 5 mm
    of the gap between the upper body's lowest voxel and the lower body's highest)."""
    labels = sorted(int(v) for v in np.unique(masks.vert) if v)  # 21 = L2 above 22 = L3
    for upper, lower in itertools.pairwise(labels):
        up, low = masks.body(upper), masks.body(lower)
        if not up.any() or not low.any():
            continue
        bottom = masks.origin[2] + np.nonzero(up)[0].min() * masks.spacing[2]
        top = masks.origin[2] + np.nonzero(low)[0].max() * masks.spacing[2]
        if top - 5.0 <= z <= bottom + 5.0:
            return upper, lower
    return None


# TotalSegmentator's output: one mask file per bone, named by the bone.
BONES = {
    "vertebrae_T12": "T12",
    "vertebrae_L1": "L1",
    "vertebrae_L2": "L2",
    "vertebrae_L3": "L3",
    "vertebrae_L4": "L4",
    "vertebrae_L5": "L5",
    "sacrum": "S1",
}
NAME_REACH_MM = 6.0  # from an endplate into its body


@dataclass(frozen=True, eq=False)  # an sitk.Image compares into an Image, never a bool
class Bones:
    """TotalSegmentator's vertebra and sacrum masks of one image (``<bone>.nii.gz`` files):
    which bone lies at a point — the reference for a level's name."""

    image: sitk.Image  # labels: 0 none, n the n-th of ``names``
    names: tuple[str, ...]

    @classmethod
    def read(cls, folder: Path) -> Bones:
        names: list[str] = []
        labels: Any = None
        reference: sitk.Image | None = None
        for stem, name in BONES.items():
            path = folder / f"{stem}.nii.gz"
            if not path.exists():
                continue
            mask = sitk.ReadImage(str(path))
            array = sitk.GetArrayFromImage(mask) > 0
            if labels is None:
                labels, reference = np.zeros(array.shape, np.uint8), mask
            names.append(name)
            labels[array] = len(names)
        if reference is None:
            raise FileNotFoundError(f"no bone masks in {folder}")
        image = sitk.GetImageFromArray(labels)
        image.CopyInformation(reference)
        return cls(image, tuple(names))

    def bone_at(self, point: Any) -> str | None:
        """The bone most voxels of the 3x3x3 neighbourhood of ``point`` (LPS, mm) belong
        to; None where none is."""
        array = sitk.GetArrayViewFromImage(self.image)
        i, j, k = self.image.TransformPhysicalPointToIndex([float(c) for c in point])
        if not all(0 <= n < size for n, size in zip((i, j, k), self.image.GetSize(), strict=True)):
            return None  # outside the masks (a negative index would wrap round)
        box = array[max(k - 1, 0) : k + 2, max(j - 1, 0) : j + 2, max(i - 1, 0) : i + 2].ravel()
        box = box[box > 0]
        return self.names[int(np.bincount(box).argmax()) - 1] if box.size else None

    def level_at(self, endplates: Any) -> str | None:
        """The level whose disc a height runs across (its two end points, LPS): the bones
        :data:`NAME_REACH_MM` above the higher end and below the lower one, e.g. ``L4-L5``."""
        a, b = sorted((np.asarray(p, dtype=float) for p in endplates), key=lambda p: p[2])
        axis = (b - a) / max(float(np.linalg.norm(b - a)), 1e-6)
        upper = self.bone_at(b + NAME_REACH_MM * axis)
        lower = self.bone_at(a - NAME_REACH_MM * axis)
        return f"{upper}-{lower}" if upper and lower else None


def measured_value(m: Any) -> float | None:
    """The analyzer's value of a measurement, also where it is withheld for review (its
    reason then gives it, as "... 12.3 mm measured ..."): what a reference is compared with."""
    if m.value is not None or not m.reason or " mm measured" not in m.reason:
        return m.value
    return float(m.reason.split(" mm measured")[0].rsplit(" ", 1)[-1].strip("("))
