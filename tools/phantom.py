"""Synthetic lumbar CT and MR studies with ground truth computed from their geometry.

The spine is built in curvilinear coordinates around a circular arc in the patient's
sagittal plane (the lordosis): ``s`` is the arc length along the line through the
vertebral body centres (cranial positive), ``p`` the offset towards the centre of
curvature (posterior positive) and ``l`` the patient's left (LPS x). Planes ``s = const``
are perpendicular to the spine's local axis, so endplates are flat and discs wedge-shaped
exactly as lordosis makes them.

Every structure is a signed-distance shape (elliptic cylinders, ellipsoids, boxes) in
these coordinates; a voxel takes the fraction of each shape its footprint covers (a linear
ramp of the signed distance over the in-plane voxel size) and thick slices are averaged
over sub-slices, so edges carry partial volume. The acquisition grid may be axial,
sagittal or oblique: voxels are mapped to world coordinates with the DICOM geometry and
only then to the spine's coordinates.

The ground truth follows the measurement definitions of the README from the analytic
shapes (pedicle ellipses, endplate planes, sac ellipses): it never runs the measuring
code. ``python -m tools.phantom OUT [--modality CT|MR] ...`` writes a DICOM
series and ``ground_truth.json`` in the CLI's schema.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid
from scipy import ndimage

from services.common.vocabulary import QUANTITIES, QuantityName
from services.imaging.analysis.spine import LUMBAR_LEVELS
from services.imaging.analysis.volume import SeriesHeader, write_series

PHANTOM_VERSION = "1.0"
LUMBAR = ("L1", "L2", "L3", "L4", "L5")
POSTERIOR_WALL = 16.0  # p of every body's posterior wall: the canal is continuous
CANAL_DEPTH = 17.0
SAC_CENTRE = POSTERIOR_WALL + 8.5
SEDIMENT = 0.25  # sedimented roots fill the sac behind this fraction of its half-depth
FloatArray = np.ndarray

# Tissue values: CT in HU, MR as a T2-weighted fast spin echo in arbitrary units.
TISSUE: dict[str, tuple[float, float]] = {
    "air": (-1000, 0),
    "fat": (-90, 700),
    "soft": (40, 260),
    "muscle": (55, 230),
    "cortex": (1100, 40),
    "cancellous": (260, 430),
    "pedicle": (650, 200),
    "annulus": (90, 220),
    "nucleus": (70, 850),
    "nucleus_degenerated": (85, 250),
    "csf": (12, 1000),
    "dura": (35, 120),
    "rootlet": (30, 320),
    "ligament": (70, 180),
    "titanium": (3000, 0),
    "peek": (320, 30),
}


@dataclass
class PhantomSpec:
    """Parameters of one synthetic study (all lengths in mm, angles in degrees)."""

    modality: str = "CT"
    pixel_spacing: float = 1.0
    slice_spacing: float = 1.0
    orientation: str = "axial"  # axial | sagittal | oblique
    lordosis: float = 40.0  # L1 superior endplate to S1 superior endplate
    # Lateral curvature (a lumbar scoliosis's Cobb angle over the same span): positive is
    # convex to the patient's left. The bend is an arc in the coronal plane (no rotation of
    # the vertebrae about the spine's axis).
    scoliosis: float = 0.0
    noise: float = 15.0  # standard deviation, HU for CT, signal units for MR
    top: str = "L1"  # L1 or T12
    ribs: bool = False  # T12 bears a pair of (floating) ribs; needs top="T12"
    # Lumbar vertebrae: 6 or 4 make a transitional spine (an L6 above the sacrum, or a
    # sacralised L5: the sacrum below L4).
    lumbar: int = 5
    sacrum_in_view: bool = True
    stenosis: str = "none"  # none | foraminal | central
    stenosis_levels: tuple[str, ...] = ("L4-L5",)
    severity: float = 0.6  # 0..1
    postop: bool = False
    cage: str = "peek"  # the interbody cage's material: peek | titanium
    seed: int = 0
    patient_id: str = "PHANTOM-0001"
    study_date: str = "20260101"
    study_instance_uid: str = ""
    # MR protocols as acquired in practice: ``stack`` (one contiguous axial stack),
    # ``blocks`` (a few slices per disc, each block angled parallel to its disc, all in one
    # series) or ``block-series`` (the same blocks, one series per level); ``sagittal``
    # adds a sagittal T2 of the whole lumbar spine (the series that names the levels).
    protocol: str = "stack"
    block_slices: int = 4
    sagittal: bool = False
    # The cauda equina: ``scattered`` rootlets floating in the CSF, or ``sedimented``: the
    # roots lying together against the back of the dura, as in a supine patient (a reader
    # draws the dura around them; the CSF alone is smaller).
    roots: str = "scattered"

    def __post_init__(self) -> None:
        if self.protocol not in ("stack", "blocks", "block-series"):
            raise ValueError(
                f"protocol must be stack, blocks or block-series, not {self.protocol!r}"
            )
        if self.protocol != "stack" and self.modality != "MR":
            raise ValueError("angled blocks are an MR protocol")
        if not 2 <= self.block_slices <= 9:
            raise ValueError("a block has 2 to 9 slices")
        if self.modality not in ("CT", "MR"):
            raise ValueError(f"modality must be CT or MR, not {self.modality!r}")
        if self.orientation not in ("axial", "sagittal", "oblique"):
            raise ValueError(
                f"orientation must be axial, sagittal or oblique, not {self.orientation!r}"
            )
        if self.stenosis not in ("none", "foraminal", "central"):
            raise ValueError(f"stenosis must be none, foraminal or central, not {self.stenosis!r}")
        if self.roots not in ("scattered", "sedimented"):
            raise ValueError(f"roots must be scattered or sedimented, not {self.roots!r}")
        if self.cage not in ("peek", "titanium"):
            raise ValueError(f"cage must be peek or titanium, not {self.cage!r}")
        if not -30.0 <= self.scoliosis <= 30.0:
            raise ValueError("scoliosis is a Cobb angle of -30 to 30 degrees")
        if self.top not in ("L1", "T12"):
            raise ValueError(f"top must be L1 or T12, not {self.top!r}")
        if self.ribs and self.top != "T12":
            raise ValueError("ribs are borne by T12: top must be T12")
        if self.lumbar not in (4, 5, 6):
            raise ValueError("lumbar is 4, 5 or 6 vertebrae")
        for level in self.stenosis_levels:
            if level not in LUMBAR_LEVELS:
                raise ValueError(f"unknown level {level!r}")
        self.stenosis_levels = tuple(self.stenosis_levels)
        if not self.study_instance_uid:
            fields = asdict(self) | {"study_instance_uid": ""}
            # A straight spine and a PEEK cage keep the UIDs they had before these fields.
            if not self.scoliosis:
                del fields["scoliosis"]
            if self.cage == "peek":
                del fields["cage"]
            if not self.ribs:
                del fields["ribs"]
            if self.lumbar == 5:
                del fields["lumbar"]
            self.study_instance_uid = generate_uid(entropy_srcs=[json.dumps(fields, default=str)])


@dataclass
class Vertebra:
    name: str
    s_centre: float
    height: float
    a: float  # AP semi-axis of the body
    b: float  # LR semi-axis of the body
    pedicle_s: float  # centre of the pedicles on s
    pedicle_l: float  # |l| of the pedicle centres
    pedicle_height: float
    pedicle_width: float
    pedicle_length: float = 20.0
    pedicle_p: float = POSTERIOR_WALL + 4.0

    @property
    def top(self) -> float:
        return self.s_centre + self.height / 2

    @property
    def bottom(self) -> float:
        return self.s_centre - self.height / 2

    @property
    def body_p(self) -> float:
        return POSTERIOR_WALL - self.a


@dataclass
class Disc:
    level: str
    bottom: float  # s of the lower vertebra's superior endplate
    top: float  # s of the upper vertebra's inferior endplate
    degenerated: bool
    cage: bool = False

    @property
    def middle(self) -> float:
        return (self.top + self.bottom) / 2


@dataclass
class Sac:
    """Dural sac semi-axes along s: nominal, narrowed at stenotic levels."""

    half_width: float = 8.5
    half_depth: float = 6.5
    narrowing: list[tuple[float, float]] = field(default_factory=list)  # (s, fraction)
    end: float = -40.0  # s where the thecal sac ends (about S2)

    def semi_axes(self, s: FloatArray) -> tuple[FloatArray, FloatArray]:
        s = np.asarray(s, dtype=np.float64)
        depth = np.full_like(s, self.half_depth)
        width = np.full_like(s, self.half_width)
        for centre, fraction in self.narrowing:
            bump = np.exp(-(((s - centre) / 9.0) ** 2))
            depth = depth * (1 - fraction * bump)
            width = width * (1 - 0.25 * fraction * bump)
        taper = np.clip((s - self.end) / 18.0, 0.0, 1.0)
        return width * taper, depth * taper


@dataclass
class Spine:
    radius: float  # of the lordotic arc; very large when straight
    vertebrae: list[Vertebra]  # cranial first, lumbar (and T12) only
    discs: list[Disc]  # cranial first
    sacrum_top: float
    s1: Vertebra  # the sacrum's first segment: its pedicles and facets (body: the sacrum)
    sac: Sac
    operated: tuple[str, ...]
    # Signed radius of the coronal (scoliotic) arc, in the x-z plane round x = lateral:
    # negative bends the ends to the right (convex to the left); very large when straight.
    lateral: float = 1e9

    # -- coordinates ---------------------------------------------------------------
    # The lordotic arc (in the y-z plane) is bent again by the coronal arc; s is the arc
    # length along the spine's line, p the offset behind it, l the offset to its left.
    def to_spine(self, xyz: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """World (LPS, N by 3) → (s, p, l)."""
        straight = self._unbend(np.asarray(xyz, dtype=np.float64))
        r = self.radius
        qy = straight[:, 1] - r
        qz = straight[:, 2]
        phi = np.arctan2(qz, -qy)
        rho = np.hypot(qy, qz)
        return r * phi, r - rho, straight[:, 0].copy()

    def to_world(self, s: FloatArray, p: FloatArray, l_: FloatArray) -> FloatArray:
        r = self.radius
        phi = np.asarray(s) / r
        rho = r - np.asarray(p)
        return self._bend(
            np.stack([np.asarray(l_), r - rho * np.cos(phi), rho * np.sin(phi)], axis=-1)
        )

    def axis(self, s: float) -> FloatArray:
        """The spine's local craniocaudal unit vector at arc length ``s``."""
        phi = s / self.radius
        a_y, a_z = math.sin(phi), math.cos(phi)
        z = self.radius * math.sin(phi)  # the lordotic line's z before the coronal bend
        psi = z / self.lateral
        return np.array([a_z * math.sin(psi), a_y, a_z * math.cos(psi)])

    def lateral_stretch(self, l_: FloatArray | float) -> FloatArray:
        """Length of a unit of s at left offset ``l`` (the coronal arc's outer side is longer)."""
        return 1 - np.asarray(l_) / self.lateral

    def _bend(self, xyz: FloatArray) -> FloatArray:
        rl = self.lateral
        psi = xyz[..., 2] / rl
        rho = rl - xyz[..., 0]
        out = xyz.copy()
        out[..., 0] = rl - rho * np.cos(psi)
        out[..., 2] = rho * np.sin(psi)
        return out

    def _unbend(self, xyz: FloatArray) -> FloatArray:
        rl = self.lateral
        sign = 1.0 if rl > 0 else -1.0
        qx, qz = xyz[:, 0] - rl, xyz[:, 2]
        psi = np.arctan2(sign * qz, -sign * qx)
        rho = sign * np.hypot(qx, qz)
        out = xyz.copy()
        out[:, 0] = rl - rho
        out[:, 2] = rl * psi
        return out


def build_spine(spec: PhantomSpec) -> Spine:
    """Lay out the vertebrae and discs of ``spec`` along the lordotic arc."""
    rng = np.random.default_rng(spec.seed)
    lumbar = (*LUMBAR, "L6")[: spec.lumbar]
    names = (["T12"] if spec.top == "T12" else []) + list(lumbar)
    heights = {"T12": 23.0, "L1": 25.0, "L2": 26.0, "L3": 27.0, "L4": 27.0, "L5": 26.0, "L6": 26.0}
    normal_disc = {
        "T12-L1": 7.0,
        "L1-L2": 8.5,
        "L2-L3": 9.5,
        "L3-L4": 10.5,
        "L4-L5": 11.0,
        "L5-L6": 10.5,
        "L5-S1": 10.0,
        "L6-S1": 10.0,
        "L4-S1": 10.0,
    }
    jitter = rng.uniform(-0.6, 0.6, size=8)
    operated = spec.stenosis_levels if (spec.postop and spec.stenosis != "none") else ()
    vertebrae: list[Vertebra] = []
    discs: list[Disc] = []
    s = 0.0  # S1 superior endplate, shifted below so the lumbar middle sits at s = 0
    lower = "S1"
    for n, name in enumerate(reversed(names)):
        level = f"{name}-{lower}"
        disc = normal_disc[level] + jitter[n]
        stenotic = level in spec.stenosis_levels and spec.stenosis != "none"
        if stenotic and spec.stenosis == "foraminal":
            disc *= 1 - 0.65 * spec.severity  # collapse lowers the foramen
        elif stenotic:
            disc *= 1 - 0.3 * spec.severity
        if level in operated:
            disc = 11.5 + 0.5 * jitter[n]  # the cage restores the height
        discs.append(Disc(level, s, s + disc, degenerated=stenotic, cage=level in operated))
        height = heights[name] + 0.5 * jitter[n + 1]
        centre = s + disc + height / 2
        rank = min(("T12", *LUMBAR, "L6").index(name), 5)
        a = 14.0 + 0.8 * rank
        ped_h = 14.5 + 0.4 * rank + 0.5 * jitter[n]
        vertebrae.append(
            Vertebra(
                name=name,
                s_centre=centre,
                height=height,
                a=a,
                b=19.0 + 1.2 * rank,
                pedicle_s=centre + height / 2 - 2.0 - ped_h / 2,
                pedicle_l=14.0 + 0.5 * rank,
                pedicle_height=ped_h,
                pedicle_width=7.0 + 0.9 * rank,
            )
        )
        s = centre + height / 2
        lower = name
    vertebrae.reverse()
    discs.reverse()
    l1 = next(v for v in vertebrae if v.name == "L1")
    span = l1.top  # from the S1 endplate (s = 0) to L1's superior endplate
    shift = span / 2
    for v in vertebrae:
        v.s_centre -= shift
        v.pedicle_s -= shift
    for d in discs:
        d.bottom -= shift
        d.top -= shift
    radius = span / math.radians(spec.lordosis) if spec.lordosis >= 1 else 1e5
    sac = Sac()
    if spec.stenosis == "central":
        for d in discs:
            if d.level in spec.stenosis_levels and d.level not in operated:
                sac.narrowing.append((d.middle, 0.35 + 0.45 * spec.severity))
    sac.end = -shift - 45.0
    ped_h = 15.0 + 0.5 * jitter[7]
    s1 = Vertebra(
        name="S1",
        s_centre=-shift - 15,
        height=30.0,
        a=17.0,
        b=25.0,
        pedicle_s=-shift - 2.0 - ped_h / 2,
        pedicle_l=17.0,
        pedicle_height=ped_h,
        pedicle_width=12.0,
    )
    lateral = -span / math.radians(spec.scoliosis) if abs(spec.scoliosis) >= 1 else 1e9
    return Spine(radius, vertebrae, discs, -shift, s1, sac, tuple(operated), lateral)


# -- signed distances ---------------------------------------------------------------


def _ellipse_sdf(
    u: FloatArray, v: FloatArray, a: float | FloatArray, b: float | FloatArray
) -> FloatArray:
    k = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
    return (k - 1) * k / np.maximum(grad, 1e-9)


def _ellipsoid_sdf(
    u: FloatArray, v: FloatArray, w: FloatArray, a: float, b: float, c: float
) -> FloatArray:
    k = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2 + (w / c**2) ** 2)
    return (k - 1) * k / np.maximum(grad, 1e-9)


@dataclass
class Shape:
    """A tissue region: ``sdf(s_metric, p, l)`` with an s-range for culling."""

    tissue: str
    s_min: float
    s_max: float
    sdf: Callable[[FloatArray, FloatArray, FloatArray, FloatArray], FloatArray]
    cortex: float = 0.0  # thickness of the cortical shell painted round it


def _cylinder(v_s: float, half: float, pc: float, a: float, b: float) -> Callable[..., FloatArray]:
    def sdf(s: FloatArray, p: FloatArray, l_: FloatArray, stretch: FloatArray) -> FloatArray:
        return np.maximum(_ellipse_sdf(p - pc, l_, a, b), (np.abs(s - v_s) - half) * stretch)

    return sdf


def _box(
    s: tuple[float, float], p: tuple[float, float], l_: tuple[float, float]
) -> Callable[..., FloatArray]:
    sc, sh = (s[0] + s[1]) / 2, (s[1] - s[0]) / 2
    pc, ph = (p[0] + p[1]) / 2, (p[1] - p[0]) / 2
    lc, lh = (l_[0] + l_[1]) / 2, (l_[1] - l_[0]) / 2

    def sdf(ss: FloatArray, pp: FloatArray, ll: FloatArray, stretch: FloatArray) -> FloatArray:
        return np.maximum.reduce(
            [(np.abs(ss - sc) - sh) * stretch, np.abs(pp - pc) - ph, np.abs(ll - lc) - lh]
        )

    return sdf


def _ellipsoid(
    centre: tuple[float, float, float], axes: tuple[float, float, float]
) -> Callable[..., FloatArray]:
    def sdf(s: FloatArray, p: FloatArray, l_: FloatArray, stretch: FloatArray) -> FloatArray:
        return _ellipsoid_sdf(
            (s - centre[0]) * stretch,
            p - centre[1],
            l_ - centre[2],
            axes[0],
            axes[1],
            axes[2],
        )

    return sdf


def _capsule(
    a: tuple[float, float, float], b: tuple[float, float, float], radius: float
) -> Callable[..., FloatArray]:
    """A tube of ``radius`` round the segment from ``a`` to ``b`` (s, p, l)."""
    pa, pb = np.array(a), np.array(b)
    ab = pb - pa

    def sdf(s: FloatArray, p: FloatArray, l_: FloatArray, stretch: FloatArray) -> FloatArray:
        q = np.stack([s, p, l_], axis=-1) - pa
        t = np.clip((q @ ab) / float(ab @ ab), 0.0, 1.0)
        return np.linalg.norm(q - t[..., None] * ab, axis=-1) - radius

    return sdf


def _union(*parts: Callable[..., FloatArray]) -> Callable[..., FloatArray]:
    def sdf(s: FloatArray, p: FloatArray, l_: FloatArray, stretch: FloatArray) -> FloatArray:
        return np.minimum.reduce([f(s, p, l_, stretch) for f in parts])

    return sdf


def shapes(spine: Spine, spec: PhantomSpec) -> list[Shape]:
    """All tissue regions, painted in list order (later ones cover earlier ones)."""
    out: list[Shape] = []
    lo = spine.sacrum_top - 120
    hi = spine.vertebrae[0].top + 60
    # Trunk: fat under the skin, muscle around the spine.
    out.append(Shape("fat", lo, hi, lambda s, p, l_, k: _ellipse_sdf(p - 10, l_, 105, 150)))
    out.append(Shape("soft", lo, hi, lambda s, p, l_, k: _ellipse_sdf(p - 8, l_, 92, 136)))
    out.append(Shape("muscle", lo, hi, lambda s, p, l_, k: _ellipse_sdf(p - 50, l_, 38, 60)))
    out.append(
        Shape("muscle", lo, hi, lambda s, p, l_, k: _ellipse_sdf(p + 5, np.abs(l_) - 45, 22, 18))
    )
    # Canal fat (epidural and foraminal) around the posterior elements.
    out.append(Shape("fat", lo, hi, lambda s, p, l_, k: _ellipse_sdf(p - 28, l_, 14, 30)))
    # Sacrum: S1 body, the fused segments below, the alae.
    top = spine.sacrum_top
    out.append(
        Shape(
            "cancellous",
            top - 90,
            top + 1,
            _union(
                _cylinder(top - 15, 15, POSTERIOR_WALL - 17, 17, 25),
                _cylinder(top - 50, 30, POSTERIOR_WALL - 10, 12, 19),
                _ellipsoid((top - 14, 8, 38), (13, 16, 22)),
                _ellipsoid((top - 14, 8, -38), (13, 16, 22)),
                _box(
                    (top - 40, top - 4),
                    (POSTERIOR_WALL + CANAL_DEPTH - 4, POSTERIOR_WALL + CANAL_DEPTH + 5),
                    (-16, 16),
                ),
            ),
            cortex=1.2,
        )
    )
    s1 = spine.s1
    for side in (1, -1):
        out.append(
            Shape(
                "pedicle",
                s1.pedicle_s - 10,
                s1.pedicle_s + 10,
                _ellipsoid(
                    (s1.pedicle_s, s1.pedicle_p, side * s1.pedicle_l),
                    (s1.pedicle_height / 2, s1.pedicle_length / 2, s1.pedicle_width / 2),
                ),
                cortex=1.0,
            )
        )
        sap = sorted((side * s1.pedicle_l, side * (s1.pedicle_l + 7)))
        out.append(
            Shape(
                "cancellous",
                s1.pedicle_s - 2,
                s1.top + 12,
                _box(
                    (s1.pedicle_s, s1.top + 0.85 * (spine.discs[-1].top - spine.discs[-1].bottom)),
                    (POSTERIOR_WALL + 15, POSTERIOR_WALL + 22),
                    (sap[0], sap[1]),
                ),
                cortex=1.0,
            )
        )
    for v, (disc_below, disc_above) in zip(spine.vertebrae, _adjacent(spine), strict=True):
        below = disc_below.top - disc_below.bottom
        above = (disc_above.top - disc_above.bottom) if disc_above else 8.0
        back = POSTERIOR_WALL + CANAL_DEPTH
        lam_l = v.pedicle_l + 2
        decompressed = disc_below.level in spine.operated and spec.stenosis == "central"
        post: list[Callable[..., FloatArray]] = [
            _box(
                (v.pedicle_s - 4, v.pedicle_s + 5),
                (POSTERIOR_WALL + 10, back + 3),
                (v.pedicle_l - v.pedicle_width / 2, v.pedicle_l + v.pedicle_width / 2),
            ),
            _box(
                (v.pedicle_s - 4, v.pedicle_s + 5),
                (POSTERIOR_WALL + 10, back + 3),
                (-v.pedicle_l - v.pedicle_width / 2, -v.pedicle_l + v.pedicle_width / 2),
            ),
        ]
        if not decompressed:  # a laminectomy removes lamina and spinous process
            post += [
                _box((v.pedicle_s - 14, v.pedicle_s + 5), (back, back + 6), (-lam_l, lam_l)),
                _box((v.pedicle_s - 16, v.pedicle_s + 4), (back + 3, back + 36), (-3, 3)),
            ]
        for side in (1, -1):
            hyp = 2.5 * spec.severity if disc_below.degenerated else 0.0
            sap_l = sorted((side * (v.pedicle_l - hyp), side * (v.pedicle_l + 7)))
            iap_l = sorted((side * (v.pedicle_l - 3), side * (v.pedicle_l + 5)))
            post.append(
                _box(
                    (v.pedicle_s, v.top + 0.85 * above),
                    (POSTERIOR_WALL + 15, POSTERIOR_WALL + 22),
                    (sap_l[0], sap_l[1]),
                )
            )
            post.append(
                _box(
                    (v.bottom - 0.85 * below, v.pedicle_s - 9),
                    (POSTERIOR_WALL + 22, POSTERIOR_WALL + 28),
                    (iap_l[0], iap_l[1]),
                )
            )
        out.append(Shape("cancellous", v.bottom - 20, v.top + 20, _union(*post), cortex=1.0))
        out.append(
            Shape(
                "cancellous",
                v.bottom - 1,
                v.top + 1,
                _cylinder(v.s_centre, v.height / 2, v.body_p, v.a, v.b),
                cortex=1.2,
            )
        )
        for side in (1, -1):
            out.append(
                Shape(
                    "pedicle",
                    v.pedicle_s - 10,
                    v.pedicle_s + 10,
                    _ellipsoid(
                        (v.pedicle_s, v.pedicle_p, side * v.pedicle_l),
                        (v.pedicle_height / 2, v.pedicle_length / 2, v.pedicle_width / 2),
                    ),
                    cortex=1.0,
                )
            )
    if spec.ribs:
        # T12's floating ribs: from the head at the body's back corner, out and down to the
        # side, a cortical tube.
        t12 = next(v for v in spine.vertebrae if v.name == "T12")
        for side in (1, -1):
            head = (t12.pedicle_s, POSTERIOR_WALL - 4.0, side * (t12.pedicle_l + 8.0))
            end = (t12.pedicle_s - 22.0, POSTERIOR_WALL - 2.0, side * 72.0)
            out.append(
                Shape("cancellous", t12.bottom - 30, t12.top + 5, _capsule(head, end, 4.5), 1.0)
            )
    for d in spine.discs:
        upper_v = next(v for v in spine.vertebrae if d.level.startswith(v.name + "-"))
        a, b, pc = upper_v.a, upper_v.b, upper_v.body_p
        half = (d.top - d.bottom) / 2
        out.append(Shape("annulus", d.bottom - 1, d.top + 1, _cylinder(d.middle, half, pc, a, b)))
        nucleus = "nucleus_degenerated" if d.degenerated else "nucleus"
        out.append(
            Shape(
                nucleus,
                d.bottom - 1,
                d.top + 1,
                _cylinder(d.middle, half * 0.8, pc - 2, a * 0.55, b * 0.55),
            )
        )
        if d.cage:
            out.append(
                Shape(
                    spec.cage,
                    d.bottom - 1,
                    d.top + 1,
                    _box((d.bottom, d.top), (pc - 6, pc + 8), (-12, 12)),
                )
            )
    # Canal contents: ligamentum flavum and bulge at stenotic levels, then the sac.
    for d in spine.discs:
        if d.degenerated and d.level not in spine.operated:
            out.append(
                Shape(
                    "ligament",
                    d.bottom - 8,
                    d.top + 8,
                    _box(
                        (d.bottom - 6, d.top + 6),
                        (POSTERIOR_WALL - 1, POSTERIOR_WALL + 3),
                        (-11, 11),
                    ),
                )
            )
            out.append(
                Shape(
                    "ligament",
                    d.bottom - 8,
                    d.top + 8,
                    _box(
                        (d.bottom - 6, d.top + 8),
                        (POSTERIOR_WALL + CANAL_DEPTH - 3, POSTERIOR_WALL + CANAL_DEPTH + 1),
                        (-11, 11),
                    ),
                )
            )
    sac = spine.sac

    def sac_sdf(grow: float) -> Callable[..., FloatArray]:
        def sdf(s: FloatArray, p: FloatArray, l_: FloatArray, k: FloatArray) -> FloatArray:
            width, depth = sac.semi_axes(s)
            return _ellipse_sdf(
                p - SAC_CENTRE, l_, np.maximum(width + grow, 1e-3), np.maximum(depth + grow, 1e-3)
            ) + np.where(width > 0, 0, 50)

        return sdf

    out.append(Shape("dura", sac.end - 2, hi, sac_sdf(0.6)))
    out.append(Shape("csf", sac.end - 2, hi, sac_sdf(0.0)))
    if spec.roots == "sedimented":

        def chord(s: FloatArray, p: FloatArray, l_: FloatArray, k: FloatArray) -> FloatArray:
            # behind a chord across the sac (its back third, inside the dura); the sac's
            # first semi-axis is the one drawn along p (antero-posterior)
            along_p, _ = sac.semi_axes(s)
            return SAC_CENTRE + SEDIMENT * along_p - p

        roots = [chord]
    else:
        rootlets = ((-3.5, 3.0), (3.5, 3.0), (-1.5, 4.5), (1.5, 4.5), (0, 2.0), (-5, 1.0), (5, 1.0))
        roots = [_rootlet(dl, dp) for dl, dp in rootlets]
    for root in roots:
        out.append(Shape("rootlet", sac.end + 15, hi, _inside(root, sac_sdf(0.0))))
    if spine.operated:
        out.extend(_hardware(spine))
    return out


def _inside(
    shape: Callable[..., FloatArray], container: Callable[..., FloatArray]
) -> Callable[..., FloatArray]:
    """The part of ``shape`` inside ``container`` (roots stay inside the dura where the sac
    narrows)."""

    def sdf(s: FloatArray, p: FloatArray, l_: FloatArray, k: FloatArray) -> FloatArray:
        return np.maximum(shape(s, p, l_, k), container(s, p, l_, k))

    return sdf


def _rootlet(dl: float, dp: float) -> Callable[..., FloatArray]:
    def sdf(s: FloatArray, p: FloatArray, l_: FloatArray, k: FloatArray) -> FloatArray:
        return np.hypot(p - SAC_CENTRE - dp, l_ - dl) - 0.7

    return sdf


def _adjacent(spine: Spine) -> Iterator[tuple[Disc, Disc | None]]:
    for n, _ in enumerate(spine.vertebrae):
        yield spine.discs[n], (spine.discs[n - 1] if n > 0 else None)


def _hardware(spine: Spine) -> list[Shape]:
    """Pedicle screws through both vertebrae of every operated level, rods behind them."""
    out: list[Shape] = []
    fused: set[str] = set()
    for level in spine.operated:
        fused.update(level.split("-"))
    screwed = [v for v in [*spine.vertebrae, spine.s1] if v.name in fused]
    for v in screwed:
        for side in (1, -1):
            out.append(Shape("titanium", v.pedicle_s - 6, v.pedicle_s + 6, _screw(v, side)))
    if screwed:
        s_lo = min(v.pedicle_s for v in screwed) - 8
        s_hi = max(v.pedicle_s for v in screwed) + 8
        for side in (1, -1):
            ped_l = screwed[0].pedicle_l
            out.append(Shape("titanium", s_lo - 2, s_hi + 2, _rod(s_lo, s_hi, side * (ped_l + 6))))
    return out


def _screw(v: Vertebra, side: int) -> Callable[..., FloatArray]:
    # Along the pedicle, converging 10° medially towards the body, 45 mm long.
    angle = math.radians(10)
    entry_p, entry_l = POSTERIOR_WALL + 22, side * (v.pedicle_l + 3)

    def sdf(s: FloatArray, p: FloatArray, l_: FloatArray, k: FloatArray) -> FloatArray:
        dp, dl = p - entry_p, l_ - entry_l
        along = -dp * math.cos(angle) + side * dl * math.sin(angle)
        across = np.hypot(dp * math.sin(angle) + side * dl * math.cos(angle), (s - v.pedicle_s) * k)
        return np.maximum(across - 3.25, np.abs(along - 22.5) - 22.5)

    return sdf


def _rod(s_lo: float, s_hi: float, l_c: float) -> Callable[..., FloatArray]:
    def sdf(s: FloatArray, p: FloatArray, l_: FloatArray, k: FloatArray) -> FloatArray:
        return np.maximum(
            np.hypot(p - POSTERIOR_WALL - 28, l_ - l_c) - 2.75,
            (np.abs(s - (s_lo + s_hi) / 2) - (s_hi - s_lo) / 2) * k,
        )

    return sdf


# -- acquisition --------------------------------------------------------------------


def acquisition_direction(orientation: str) -> FloatArray:
    """Columns: row direction, column direction, slice normal (LPS)."""
    if orientation == "axial":
        return np.eye(3)
    if orientation == "sagittal":
        row, col = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    else:  # oblique: axial tilted 12° about x (gantry tilt) and turned 8° about z
        tx, tz = math.radians(12), math.radians(8)
        rx = np.array(
            [[1, 0, 0], [0, math.cos(tx), -math.sin(tx)], [0, math.sin(tx), math.cos(tx)]]
        )
        rz = np.array(
            [[math.cos(tz), -math.sin(tz), 0], [math.sin(tz), math.cos(tz), 0], [0, 0, 1]]
        )
        m = rz @ rx
        row, col = m[:, 0], m[:, 1]
    return np.column_stack([row, col, np.cross(row, col)])


def field_of_view(spine: Spine, spec: PhantomSpec) -> tuple[FloatArray, FloatArray]:
    """World bounding box (min, max corners) of the imaged region."""
    top_v = spine.vertebrae[0]
    s_top = top_v.top + 6
    if spec.sacrum_in_view:
        s_bottom = spine.sacrum_top - 70
    else:  # the field ends inside the lowest lumbar body (L5): the sacrum is not seen
        lowest = spine.vertebrae[-1]
        s_bottom = lowest.s_centre - 4
    s = np.linspace(s_bottom, s_top, 60)
    pts = np.concatenate(
        [spine.to_world(s, np.full_like(s, p), np.zeros_like(s)) for p in (-45.0, 75.0)]
    )
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    lo[0], hi[0] = -75.0, 75.0
    return lo, hi


def render(spec: PhantomSpec) -> tuple[sitk.Image, Spine]:
    """The acquired image (float32, HU or MR signal) and the spine it shows."""
    spine = build_spine(spec)
    rng = np.random.default_rng(spec.seed + 1)
    direction = acquisition_direction(spec.orientation)
    lo, hi = field_of_view(spine, spec)
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    if spec.orientation != "axial":  # keep the z extent of the spine, not the box's diagonal
        centre = (lo + hi) / 2
        corners = centre + (corners - centre) * np.array([1.0, 1.0, 0.92])
    local = corners @ direction  # coordinates along row, col, normal
    spacing = np.array([spec.pixel_spacing, spec.pixel_spacing, spec.slice_spacing])
    size = np.ceil((local.max(axis=0) - local.min(axis=0)) / spacing).astype(int) + 1
    origin = direction @ local.min(axis=0)
    return acquire(spine, spec, rng, origin, direction, size, spacing), spine


def acquire(
    spine: Spine,
    spec: PhantomSpec,
    rng: np.random.Generator,
    origin: FloatArray,
    direction: FloatArray,
    size: FloatArray,
    spacing: FloatArray,
) -> sitk.Image:
    """Slices of ``size`` (i, j, k) voxels from ``origin`` along ``direction``'s columns:
    each slice integrates its thickness, then blur, streaks (CT) and noise."""
    regions = shapes(spine, spec)
    column = 0 if spec.modality == "CT" else 1
    n_sub = max(1, min(4, round(spacing[2] / spacing[0])))
    offsets = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * spacing[2]
    volume = np.empty((size[2], size[1], size[0]), dtype=np.float32)
    jj, ii = np.meshgrid(np.arange(size[1]), np.arange(size[0]), indexing="ij")
    plane = (
        ii[..., None] * spacing[0] * direction[:, 0] + jj[..., None] * spacing[1] * direction[:, 1]
    ).reshape(-1, 3)
    for k in range(size[2]):
        acc = np.zeros(plane.shape[0], dtype=np.float64)
        for off in offsets:
            xyz = origin + plane + (k * spacing[2] + off) * direction[:, 2]
            acc += _paint(spine, regions, xyz, column, float(spacing[0]))
        volume[k] = (acc / n_sub).reshape(size[1], size[0])
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(float(v) for v in direction.flatten()))
    sigma = [0.4 * float(v) for v in spacing[:2]]
    if size[2] >= 4:
        image = sitk.SmoothingRecursiveGaussian(image, [*sigma, 0.3])
    else:  # too few slices for ITK's filter: each slice in its plane (sigma 0.4 pixel)
        flat = sitk.GetArrayFromImage(image)
        smoothed = sitk.GetImageFromArray(
            np.stack([ndimage.gaussian_filter(flat[k], 0.4) for k in range(flat.shape[0])])
        )
        smoothed.CopyInformation(image)
        image = smoothed
    array = sitk.GetArrayFromImage(image)
    if spec.modality == "CT":
        if spine.operated:
            array += _streaks(image, spine, rng)
        array += rng.normal(0, spec.noise, array.shape).astype(np.float32)
        array = np.clip(array, -1024, 3071)
    else:  # magnitude of complex Gaussian noise: Rician
        noisy = array + rng.normal(0, spec.noise, array.shape)
        array = np.hypot(noisy, rng.normal(0, spec.noise, array.shape)).astype(np.float32)
    out = sitk.GetImageFromArray(array.astype(np.float32))
    out.CopyInformation(image)
    return out


BLOCK_FOV_MM = 150.0


def render_blocks(spec: PhantomSpec) -> tuple[list[tuple[str, sitk.Image]], Spine]:
    """Axial T2 blocks as acquired per disc: ``block_slices`` slices centred on the disc's
    middle, the slices parallel to the disc (perpendicular to the spine's axis there)."""
    spine = build_spine(spec)
    rng = np.random.default_rng(spec.seed + 2)
    blocks = []
    for disc in spine.discs:
        if disc.level not in LUMBAR_LEVELS or (not spec.sacrum_in_view and disc.level == "L5-S1"):
            continue
        normal = spine.axis(disc.middle)
        row = np.array([1.0, 0.0, 0.0])
        column = np.cross(normal, row)
        direction = np.column_stack([row, column, normal])
        centre = spine.to_world(np.array([disc.middle]), np.array([SAC_CENTRE]), np.zeros(1))[0]
        spacing = np.array([spec.pixel_spacing, spec.pixel_spacing, spec.slice_spacing])
        n = round(BLOCK_FOV_MM / spec.pixel_spacing)
        size = np.array([n, n, spec.block_slices])
        half = (size - 1) * spacing / 2
        origin = centre - direction @ half
        blocks.append((disc.level, acquire(spine, spec, rng, origin, direction, size, spacing)))
    return blocks, spine


def render_sagittal(spec: PhantomSpec) -> sitk.Image:
    """The sagittal T2 of the same spine: 0.8 mm pixels, 4 mm slices across the canal."""
    sagittal = replace(
        spec,
        orientation="sagittal",
        pixel_spacing=0.8,
        slice_spacing=4.0,
        protocol="stack",
        sacrum_in_view=True,
    )
    image, _ = render(sagittal)
    # Only the slices within 30 mm of the midline, as a lumbar sagittal is planned.
    keep = [
        k
        for k in range(image.GetSize()[2])
        if abs(image.TransformIndexToPhysicalPoint((0, 0, k))[0]) <= 30
    ]
    return image[:, :, keep[0] : keep[-1] + 1]


def _paint(
    spine: Spine, regions: list[Shape], xyz: FloatArray, column: int, voxel: float
) -> FloatArray:
    s, p, l_ = spine.to_spine(xyz)
    stretch = (1 - p / spine.radius) * spine.lateral_stretch(l_)  # a unit of s, in mm
    values = np.full(s.shape, TISSUE["air"][column], dtype=np.float64)
    smin, smax = float(s.min()), float(s.max())
    for shape in regions:
        if shape.s_max < smin or shape.s_min > smax:
            continue
        idx = np.nonzero((s >= shape.s_min) & (s <= shape.s_max))[0]
        if idx.size == 0:
            continue
        d = shape.sdf(s[idx], p[idx], l_[idx], stretch[idx])
        if column == 1 and shape.tissue == "titanium":
            # Susceptibility: a signal void around the metal with a bright rim (MR).
            values[idx[d < 3.0]] = 0.0
            rim = idx[(d >= 3.0) & (d < 4.5)]
            values[rim] *= 1.6
            continue
        occupancy = np.clip(0.5 - d / voxel, 0.0, 1.0)
        inside = occupancy > 0
        if not inside.any():
            continue
        idx, d, occupancy = idx[inside], d[inside], occupancy[inside]
        value = TISSUE[shape.tissue][column]
        if shape.cortex > 0:
            core = np.clip(0.5 - (d + shape.cortex) / voxel, 0.0, 1.0)
            mixed = (occupancy - core) * TISSUE["cortex"][column] + core * value
            values[idx] = values[idx] * (1 - occupancy) + mixed
        else:
            values[idx] = values[idx] * (1 - occupancy) + occupancy * value
    return values


def _streaks(image: sitk.Image, spine: Spine, rng: np.random.Generator) -> FloatArray:
    """Photon-starvation bands between paired screws and radial streaks, per axial plane."""
    size = image.GetSize()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    kk, jj, ii = np.meshgrid(
        np.arange(size[2]), np.arange(size[1]), np.arange(size[0]), indexing="ij"
    )
    idx = np.stack([ii, jj, kk], axis=-1).reshape(-1, 3) * spacing
    xyz = origin + idx @ direction.T
    out = np.zeros(len(xyz))
    fused: set[str] = set()
    for level in spine.operated:
        fused.update(level.split("-"))
    for v in [*spine.vertebrae, spine.s1]:
        if v.name not in fused:
            continue
        heads = [
            spine.to_world(
                np.array([v.pedicle_s]),
                np.array([POSTERIOR_WALL + 8.0]),
                np.array([side * v.pedicle_l]),
            )[0]
            for side in (1, -1)
        ]
        z0 = (heads[0][2] + heads[1][2]) / 2
        dz = np.abs(xyz[:, 2] - z0)
        near = dz < 8
        a, b = heads[0][:2], heads[1][:2]
        pts = xyz[near, :2]
        ab = b - a
        t = np.clip(((pts - a) @ ab) / (ab @ ab), 0, 1)
        d_line = np.linalg.norm(pts - (a + t[:, None] * ab), axis=1)
        band = -350 * np.exp(-((d_line / 3.0) ** 2))
        radial = np.zeros(len(pts))
        phase = rng.uniform(0, np.pi)
        for head in heads:
            rel = pts - head[:2]
            r = np.linalg.norm(rel, axis=1)
            theta = np.arctan2(rel[:, 1], rel[:, 0])
            radial += 220 * np.cos(10 * theta + phase) * np.exp(-r / 18) * (r > 4)
        out[near] += (band + radial) * np.exp(-((dz[near] / 3.0) ** 2))
    return out.reshape(size[2], size[1], size[0]).astype(np.float32)


# -- ground truth -------------------------------------------------------------------


def ground_truth(
    spine: Spine,
    spec: PhantomSpec,
    series_instance_uid: str,
    per_level: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The expected measurements in the CLI's schema, from the analytic geometry (angled
    blocks: the area per level, in the block's series; no volume, the coverage is not
    contiguous)."""
    levels = [d for d in spine.discs if d.level in LUMBAR_LEVELS]
    visible = [d for d in levels if spec.sacrum_in_view or d.level != "L5-S1"]
    measurements: list[dict[str, Any]] = []
    # Named from the sacrum in view, or from the sagittal series that shows it.
    labelled = spec.sacrum_in_view or (spec.modality == "MR" and spec.sagittal)
    per_level = per_level or {}
    by_name = {v.name: v for v in [*spine.vertebrae, spine.s1]}
    for index, d in enumerate(visible):
        upper_name, lower_name = d.level.split("-")
        upper = by_name[upper_name]
        lower = by_name.get(lower_name)
        axis = spine.axis(d.middle)

        def add(
            quantity: QuantityName,
            value: float,
            side: str | None = None,
            d: Disc = d,
            index: int = index,
        ) -> None:
            measurements.append(
                {
                    "quantity": quantity.value,
                    "level": d.level if labelled else None,
                    "level_index": index,
                    "side": side,
                    "value": round(float(value), 3),
                    "unit": QUANTITIES[quantity].unit,
                    "series_instance_uid": per_level.get(d.level, series_instance_uid),
                    "true_level": d.level,
                }
            )

        if spec.modality == "CT":
            add(QuantityName.DISC_HEIGHT, _disc_height(spine, d, upper))
            if lower is not None:
                for side_name, side in (("left", 1), ("right", -1)):
                    add(
                        QuantityName.FORAMINAL_HEIGHT,
                        _foraminal_height(spine, upper, lower, side, axis),
                        side_name,
                    )
        else:
            width, depth = spine.sac.semi_axes(np.array([d.middle]))
            add(QuantityName.DURAL_SAC_AREA, math.pi * float(width[0] * depth[0]))
            if spec.protocol != "stack":
                continue
            s_lo = lower.s_centre if lower is not None else spine.sacrum_top - 15
            s = np.linspace(s_lo, upper.s_centre, 4001)
            w, dp = spine.sac.semi_axes(s)
            area = math.pi * w * dp * (1 - SAC_CENTRE / spine.radius)
            add(QuantityName.DURAL_SAC_VOLUME, float(np.trapezoid(area, s)))
    return {
        "study_instance_uid": spec.study_instance_uid,
        "modality": spec.modality,
        "status": "ok",
        "warnings": [] if labelled else ["sacrum not in the field of view"],
        "algorithm": {"name": "phantom-ground-truth", "version": PHANTOM_VERSION},
        "measurements": measurements,
        "phantom": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()},
    }


def _foraminal_height(
    spine: Spine, upper: Vertebra, lower: Vertebra, side: int, axis: FloatArray
) -> float:
    plane_l = side * (upper.pedicle_l + lower.pedicle_l) / 2
    t = np.linspace(0, 2 * np.pi, 3601)

    def section(v: Vertebra) -> FloatArray:
        frac = 1 - ((plane_l - side * v.pedicle_l) / (v.pedicle_width / 2)) ** 2
        r = math.sqrt(max(frac, 0.0))
        p = v.pedicle_p + v.pedicle_length / 2 * r * np.cos(t)
        # The ellipsoid is drawn in millimetres: along s at offset p, 1 mm is 1/(1 - p/R) of s.
        s = v.pedicle_s + v.pedicle_height / 2 * r * np.sin(t) / (
            (1 - p / spine.radius) * spine.lateral_stretch(plane_l)
        )
        return spine.to_world(s, p, np.full_like(s, plane_l)) @ axis

    return float(section(upper).min() - section(lower).max())


def _disc_height(spine: Spine, d: Disc, upper: Vertebra) -> float:
    axis = spine.axis(d.middle)
    centre = spine.to_world(np.array([d.middle]), np.array([upper.body_p]), np.zeros(1))[0]

    def hit(s_plane: float) -> float:  # where the line centre + λ·axis meets the plane s
        lo, hi = -40.0, 40.0
        for _ in range(60):
            mid = (lo + hi) / 2
            s, _, _ = spine.to_spine((centre + mid * axis)[None, :])
            lo, hi = (mid, hi) if s[0] < s_plane else (lo, mid)
        return (lo + hi) / 2

    return hit(d.top) - hit(d.bottom)


# -- writing --------------------------------------------------------------------------


def _header(spec: PhantomSpec, series_uid: str, description: str, number: int) -> SeriesHeader:
    extra: dict[str, object] = {}
    if spec.modality == "CT":
        extra = {"ConvolutionKernel": "BONE", "BodyPartExamined": "LSPINE"}
    else:
        extra = {
            "EchoTime": 100.0,
            "RepetitionTime": 4000.0,
            "BodyPartExamined": "LSPINE",
            "ScanningSequence": "SE",
            "SequenceVariant": "SK",
            "MRAcquisitionType": "2D",
        }
    return SeriesHeader(
        patient_id=spec.patient_id,
        patient_name=f"Phantom^{spec.patient_id}",
        study_instance_uid=spec.study_instance_uid,
        series_instance_uid=series_uid,
        study_date=spec.study_date,
        modality=spec.modality,
        study_description=f"{spec.modality} LUMBAR SPINE" + (" POST-OP" if spec.postop else ""),
        series_description=description,
        series_number=number,
        extra=extra,
    )


def write_phantom(spec: PhantomSpec, folder: Path) -> dict[str, Any]:
    """Render ``spec`` into ``folder`` as DICOM plus ``ground_truth.json``; return the truth."""
    series_uid = generate_uid(entropy_srcs=[spec.study_instance_uid, "series"])
    session = generate_uid(entropy_srcs=[spec.study_instance_uid, "frame-of-reference"])
    per_level: dict[str, str] = {}
    if spec.protocol == "stack":
        image, spine = render(spec)
        description = "PHANTOM CT BONE" if spec.modality == "CT" else "PHANTOM T2 TSE AX"
        if spec.modality == "MR" and spec.orientation != "axial":
            description = description.replace("AX", spec.orientation.upper()[:3])
        write_series(
            image,
            _header(spec, series_uid, description, 3),
            folder,
            frame_of_reference=session if spec.modality == "MR" else None,
        )
    else:
        blocks, spine = render_blocks(spec)
        number = 1
        for index, (level, block) in enumerate(blocks):
            if spec.protocol == "block-series":
                uid = generate_uid(entropy_srcs=[spec.study_instance_uid, "series", level])
                header = _header(spec, uid, f"PHANTOM T2 TSE AX {level}", 10 + index)
            else:
                uid = series_uid
                header = _header(spec, uid, "PHANTOM T2 TSE AX ANGLED", 3)
            per_level[level] = uid
            write_series(block, header, folder, first_instance=number, frame_of_reference=session)
            number += block.GetSize()[2]
    if spec.sagittal and spec.modality == "MR":
        sagittal_uid = generate_uid(entropy_srcs=[spec.study_instance_uid, "sagittal"])
        write_series(
            render_sagittal(spec),
            _header(spec, sagittal_uid, "PHANTOM T2 TSE SAG", 2),
            folder,
            first_instance=1001,
            frame_of_reference=session,
        )
    truth = ground_truth(spine, spec, series_uid, per_level)
    (folder / "ground_truth.json").write_text(json.dumps(truth, indent=2))
    return truth


def _renderer_fingerprint() -> bytes:
    """The code that decides a phantom's pixels and headers: a change renders again."""
    digest = hashlib.sha256()
    for module in (Path(__file__), Path(write_series.__code__.co_filename)):
        digest.update(module.read_bytes())
    return digest.digest()


def cached_phantom(spec: PhantomSpec, cache: Path) -> Path:
    """The folder holding ``spec`` rendered (DICOM and ``ground_truth.json``): rendered
    into ``cache`` once, then reused. A phantom's pixels, study and series are a
    function of its spec (its UIDs derive from the spec's StudyInstanceUID, its noise
    from the seed) and of the renderer's code, so both make the key (instance UIDs are
    drawn at render time: a cached phantom keeps its first rendering's); a render
    interrupted halfway is never used (it is renamed into place only when complete)."""
    key = hashlib.sha256(
        json.dumps(asdict(spec), sort_keys=True, default=str).encode() + _renderer_fingerprint()
    ).hexdigest()[:32]
    folder = cache / key
    if folder.is_dir():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{key}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    write_phantom(spec, partial)
    try:
        partial.rename(folder)
    except OSError:  # rendered meanwhile by another process: theirs is the same
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.phantom",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("out", type=Path, help="folder to write the series and ground truth into")
    parser.add_argument("--modality", choices=("CT", "MR"), default="CT")
    parser.add_argument("--pixel-spacing", type=float)
    parser.add_argument("--slice-spacing", type=float)
    parser.add_argument("--orientation", choices=("axial", "sagittal", "oblique"), default="axial")
    parser.add_argument("--lordosis", type=float, default=40.0)
    parser.add_argument(
        "--scoliosis", type=float, default=0.0, help="coronal Cobb angle, + convex left"
    )
    parser.add_argument("--noise", type=float)
    parser.add_argument("--top", choices=("L1", "T12"), default="L1")
    parser.add_argument("--no-sacrum", action="store_true", help="end the field of view in L5")
    parser.add_argument("--ribs", action="store_true", help="T12 bears ribs (with --top T12)")
    parser.add_argument("--lumbar", type=int, choices=(4, 5, 6), default=5)
    parser.add_argument("--stenosis", choices=("none", "foraminal", "central"), default="none")
    parser.add_argument("--levels", default="L4-L5", help="stenotic levels, comma separated")
    parser.add_argument("--severity", type=float, default=0.6)
    parser.add_argument("--postop", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patient-id", default="PHANTOM-0001")
    parser.add_argument("--study-date", default="20260101")
    args = parser.parse_args(argv)
    ct = args.modality == "CT"
    try:
        spec = PhantomSpec(
            modality=args.modality,
            pixel_spacing=args.pixel_spacing or (1.0 if ct else 0.7),
            slice_spacing=args.slice_spacing or (1.0 if ct else 4.0),
            orientation=args.orientation,
            lordosis=args.lordosis,
            scoliosis=args.scoliosis,
            noise=args.noise if args.noise is not None else (15.0 if ct else 20.0),
            top=args.top,
            ribs=args.ribs,
            lumbar=args.lumbar,
            sacrum_in_view=not args.no_sacrum,
            stenosis=args.stenosis,
            stenosis_levels=tuple(x.strip() for x in args.levels.split(",") if x.strip()),
            severity=args.severity,
            postop=args.postop,
            seed=args.seed,
            patient_id=args.patient_id,
            study_date=args.study_date,
        )
    except ValueError as exc:
        print(f"phantom: {exc}", file=sys.stderr)
        return 2
    truth = write_phantom(spec, args.out)
    print(
        json.dumps(
            {
                "folder": str(args.out),
                "study_instance_uid": truth["study_instance_uid"],
                "measurements": len(truth["measurements"]),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
