"""Dural sac area and volume on an axial T2-weighted MR stack, per level.

1. In every slice the dural sac is the bright, compact CSF region near the others of its
   kind: bright components (above 75 % of the CSF level) between 15 and 600 mm², the one
   nearest the track of the slices around it. Its centroids give the canal's centre line.
2. The sac's area in a slice counts its interior (rootlets included: holes are filled) and,
   across a band at its border, each pixel's fraction between the dark rim outside (the
   dura) and the CSF inside — partial volume, not a voxel count. Dividing by the slice's
   obliquity to the canal gives the area perpendicular to the canal.
3. Discs are where the signal in front of the sac departs from the marrow of the bodies
   (bright healthy nuclei, dark degenerated ones); the sacrum is marrow running on for more
   than a lumbar vertebra below the lowest disc.
4. ``dural_sac_area`` at each disc's middle is interpolated (cubic) between slices along the
   canal; ``dural_sac_volume`` integrates the slice areas between the planes through the
   mid-heights of the level's two bodies (S1's is 15 mm down the canal from its endplate:
   along the spine, not along z). A slice whose "sac" is over twice the stack's median has
   run into bright tissue beside it (a disc's nucleus) and is left out.
5. The sac is its CSF: nerve roots (or the cord) lying against the back of the dura are not
   CSF, and the dura is seldom seen. Rays from the CSF's centre, within 70° of posterior,
   look past the CSF for a plateau of intermediate signal ending at a dark border; where it
   adds over a tenth of the CSF's area, the area (and the level's volume) needs review.
   Where it adds over 4 % pooled over the whole stack (or every angled block's slices), the
   roots (or the cord) have settled all along the sac, seen at only some slices: every area
   and volume of the stack does.
6. Where the sac narrows, what the acquisition cannot resolve needs review: a volume on
   slices 3 mm or thicker (each averages the narrowing away), an area on pixels of 0.9 mm
   or coarser (the partial-volume border is much of a narrow sac), an area interpolated
   beyond both slices around it by over a quarter (the narrowing falls between them), an
   area off its slice next to a stretch where the sac was lost, an area on a slice that
   cuts the narrowed sac along more than 6 mm of canal (tilted to it: the narrowest part
   is averaged with the wider sac beside it).
7. A sac not followed through the stack (found at under 70 % of the slices between its
   first and last, or its area changing by a median over 9 % from one slice to the next:
   other tissue taken for it) holds every value of the stack for review.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import contourpy
import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.interpolate import CubicSpline

from services.common.vocabulary import QuantityName
from services.imaging.analysis.report import Measurement
from services.imaging.analysis.sampling import FloatArray, Sampler
from services.imaging.analysis.spine import CentreLine, Disc, find_discs, level_names

SUPPORT_MM = 8.0  # candidates this near in the plane are one structure seen in two slices
MIDLINE_MM = 40.0  # a start this far from the image's left-right middle counts a third
REACH_MM = 25.0  # the lumbar sac stays this near its start (beyond: the sacral canal)
TRACK_MM = 8.0  # the sac moves less than this in the plane from one slice to the next
BODY_OFFSET_MM = 22.0  # sac centre to vertebral body centre, antero-posterior
SACRAL_RUN_MM = 40.0
MISSED_DISC_MM = 55.0  # lumbar discs lie 25-40 mm apart along the canal: more is one missed
ENDPLATE_MM = 4.0


class SacNotFound(ValueError):
    """No dural sac could be followed through the stack."""


@dataclass
class SliceSac:
    k: int
    centroid: FloatArray  # world
    band: float  # the partial-volume estimate of the area in the slice plane, mm²
    outline: float  # the area inside the half-level border, mm²
    contour: FloatArray  # world points of the half-level border
    # Tissue of intermediate signal between the CSF's back and a dark border behind it
    # (nerve roots or the cord lying against the dura?), mm²: not counted in the area.
    against: float = 0.0

    def doubt(self, value: float) -> str | None:
        """Why the area read from the CSF may be too small, or None."""
        return roots_doubt(f"{value:.0f} mm²", [self])

    @property
    def area(self) -> float:
        """The sac's area, mm²: of its two estimates, the partial-volume band (unbiased on
        a sac of normal calibre; the outline reads it 3 % small), unless it exceeds the
        half-level outline by 8-30 %: round a narrow, flattened sac the band is mostly
        border, and bright tissue beside it (fat, a bulging disc) adds fractions that are
        not CSF, so the band reads 10-20 % large where the outline stays within 2 %
        (phantoms)."""
        if self.outline > 0 and 1 + OUTLINE_GAP < self.band / self.outline <= 1 + OUTLINE_DOUBT:
            return self.outline
        return self.band


@dataclass
class MrModel:
    centre: CentreLine
    sacs: list[SliceSac]
    discs: list[Disc]
    names: list[str | None]
    sacrum: bool
    warnings: list[str] = field(default_factory=list)


def _slice_geometry(image: sitk.Image) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    origin = np.array(image.GetOrigin())
    spacing = np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return origin, spacing, direction, direction[:, 2]


def _slice_candidates(
    sl: FloatArray, k: int, threshold: float, image: sitk.Image
) -> list[tuple[FloatArray, FloatArray]]:
    """Bright compact regions of one slice (sac-sized CSF): world centroids."""
    origin, spacing, direction, _ = _slice_geometry(image)
    pixel_area = float(spacing[0] * spacing[1])
    smooth = ndimage.gaussian_filter(sl.astype(np.float32), 0.7)
    labels, _n = ndimage.label(smooth > threshold)
    found = []
    for idx, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        mask = labels[region] == idx
        area = mask.sum() * pixel_area
        if not 15 <= area <= 600:
            continue
        h, w = mask.shape
        extent = max(h * spacing[1], w * spacing[0])
        if extent > 40:
            continue
        jj, ii = np.nonzero(mask)
        j, i = jj.mean() + region[0].start, ii.mean() + region[1].start
        world = origin + direction @ (np.array([i, j, k]) * spacing)
        found.append((world, np.array([k, region[0].start, region[1].start])))
    return found


def block_sac(image: sitk.Image) -> tuple[float, SliceSac, list[SliceSac]] | None:
    """The dural sac at the middle of an angled block (a few slices parallel to a disc):
    its area in the block's plane at the block's centre — a quadratic through the areas of
    the block's slices when three or more agree (a stenosis is a minimum between them),
    else the middle slice or the mean of the two middle ones — and the slice whose contour
    is drawn, and the block's slices whose sac agrees with the middle's; None when no sac
    is seen in the middle."""
    array = sitk.GetArrayViewFromImage(image)
    slices = array.shape[0]
    # A block's slices are mostly other tissue: a narrowed sac is under 0.3 % of the pixels.
    csf = float(np.percentile(array, 99.9))
    candidates = [_slice_candidates(array[k], k, 0.75 * csf, image) for k in range(slices)]
    middle = [slices // 2] if slices % 2 else [slices // 2 - 1, slices // 2]
    origin, spacing, direction, _ = _slice_geometry(image)
    centre = origin + direction @ (np.array(image.GetSize()) - 1) * spacing / 2

    def support(world: FloatArray) -> tuple[int, float]:
        """Seen in more of the block's slices, then nearer the image's left-right middle."""
        seen = sum(any(np.linalg.norm((w - world)[:2]) < 8 for w, _ in cs) for cs in candidates)
        return -seen, abs(float((world - centre) @ direction[:, 0]))

    measured: list[SliceSac] = []
    for k in middle:
        if not candidates[k]:
            return None
        world = min((c[0] for c in candidates[k]), key=support)
        sac = _measure_slice(array[k], k, world, image, csf)
        if sac is None:
            return None
        measured.append(sac)
    mean = float(np.mean([s.area for s in measured]))
    # The other slices: the candidate where the middle's sac is, if it agrees.
    ks, areas, agreeing = [], [], []
    done = dict(zip(middle, measured, strict=True))  # the middle slices, measured above
    for k in range(slices):
        near = [
            c[0] for c in candidates[k] if np.linalg.norm((c[0] - measured[0].centroid)[:2]) < 8
        ]
        sac = done.get(k) or (_measure_slice(array[k], k, near[0], image, csf) if near else None)
        if sac is not None and 0.5 * mean <= sac.area <= 2.0 * mean:
            ks.append(k)
            areas.append(sac.area)
            agreeing.append(sac)
    if len(ks) >= 3 and len(set(ks) & set(middle)) == len(middle):
        offsets = (np.array(ks, dtype=float) - (slices - 1) / 2) * spacing[2]
        fitted = float(np.polyval(np.polyfit(offsets, areas, 2), 0.0))
        return float(np.clip(fitted, 0.5 * min(areas), max(areas))), measured[0], agreeing
    return mean, measured[0], agreeing


def find_sacs(image: sitk.Image) -> list[SliceSac]:
    """The dural sac in each slice where one is seen, tracked through the stack."""
    array = sitk.GetArrayViewFromImage(image)
    csf = float(np.percentile(array, 99.7))
    threshold = 0.75 * csf
    candidates = [_slice_candidates(array[k], k, threshold, image) for k in range(array.shape[0])]
    flat = [c[0] for cs in candidates for c in cs]
    if len(flat) < 4:
        raise SacNotFound("no dural sac seen (no compact bright CSF region)")
    # The sac is the candidate present in most slices: start from the candidate with
    # candidates near it (in the plane) in the most slices. (Not their median position:
    # where the CSF is a small share of the image, bright fat passes the CSF's threshold in
    # many places and pulls the median off the sac.)
    points = np.array(flat)[:, :2]
    slice_of = np.array([k for k, cs in enumerate(candidates) for _ in cs])
    near = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=2) < SUPPORT_MM
    in_slice = slice_of[None, :] == np.arange(len(candidates))[:, None]
    support = (near.astype(np.int32) @ in_slice.T.astype(np.int32) > 0).sum(axis=1)
    # The support weighed down with the distance from the image's left-right middle,
    # where a spine's images are centred (a lateral fat pad may be seen in more slices
    # than a sac that drifts across an oblique stack); within a few centimetres of the
    # middle the support decides (a structure beside the sac is seen in fewer slices).
    origin, spacing, direction, _ = _slice_geometry(image)
    middle = origin + direction @ ((np.array(image.GetSize()) - 1) * spacing / 2)
    lateral = np.abs((points - middle[:2]) @ direction[:2, 0])
    start = int(np.argmax(support * np.exp(-((lateral / MIDLINE_MM) ** 2))))
    # From there, slice by slice both ways: the candidate nearest the last one chosen,
    # within 25 mm of the start (as far as the track ran when it was the median's).
    chosen_at: dict[int, FloatArray] = {int(slice_of[start]): np.array(flat[start])}
    for way in (1, -1):
        last, missed = points[start], 0
        k = int(slice_of[start]) + way
        while 0 <= k < len(candidates):
            nearest = min(
                (c[0] for c in candidates[k]),
                key=lambda w: float(np.linalg.norm(w[:2] - last)),
                default=None,
            )
            if (
                nearest is not None
                and np.linalg.norm(nearest[:2] - last) < TRACK_MM * min(1 + missed, 2)
                and np.linalg.norm(nearest[:2] - points[start]) < REACH_MM
            ):
                chosen_at[k], last, missed = nearest, nearest[:2], 0
            else:
                missed += 1
            k += way
    chosen = sorted(chosen_at.items())
    if len(chosen) < 4:
        raise SacNotFound("the dural sac could not be followed through the slices")
    return [s for s in (_measure_slice(array[k], k, c, image, csf) for k, c in chosen) if s]


def _measure_slice(
    sl: FloatArray, k: int, centroid: FloatArray, image: sitk.Image, csf: float
) -> SliceSac | None:
    origin, spacing, direction, _ = _slice_geometry(image)
    ijk = np.linalg.solve(direction, centroid - origin) / spacing
    i0, j0 = round(ijk[0]), round(ijk[1])
    half_i, half_j = int(25 / spacing[0]), int(25 / spacing[1])
    j_lo, i_lo = max(0, j0 - half_j), max(0, i0 - half_i)
    crop = sl[j_lo : j0 + half_j, i_lo : i0 + half_i].astype(np.float64)
    smooth = ndimage.gaussian_filter(crop, 0.7)
    labels, _ = ndimage.label(smooth > 0.75 * csf)
    lab = labels[min(j0 - j_lo, crop.shape[0] - 1), min(i0 - i_lo, crop.shape[1] - 1)]
    if lab == 0:
        values = labels[labels > 0]
        if values.size == 0:
            return None
        lab = np.bincount(values).argmax()
    core = ndimage.binary_fill_holes(labels == lab)
    inner = ndimage.binary_erosion(core, iterations=2)
    if inner.sum() < 3:
        inner = core
    ring = ndimage.binary_dilation(core, iterations=2) & ~core
    inside = (
        float(np.median(crop[inner & (crop > 0.5 * csf)]))
        if (inner & (crop > 0.5 * csf)).any()
        else float(np.median(crop[core]))
    )
    outside = float(np.percentile(crop[ring], 10))
    if inside - outside < 0.2 * csf:
        return None
    # Interior (rootlets included) counts whole; the border band counts its fractions.
    solid = ndimage.binary_erosion(core, iterations=1)
    band = ndimage.binary_dilation(core, iterations=2) & ~solid
    fraction = np.clip((crop - outside) / (inside - outside), 0, 1)
    area_px = float(solid.sum() + fraction[band].sum())
    area = area_px * spacing[0] * spacing[1]
    # The border as one ordered, closed polygon: the iso-line where the signal is half way
    # between the dura and the CSF (around this sac only), as a reader's contour tool
    # draws it — its area is the partial-volume area measured above, to a few per cent.
    near = ndimage.binary_dilation(core, iterations=3)
    level = np.where(near, np.where(solid, 1.0, fraction), 0.0)
    generator = contourpy.contour_generator(z=np.pad(level, 1))
    lines: list[FloatArray] = list(generator.lines(0.5))  # type: ignore[arg-type]
    border = max(lines, key=lambda line: line.shape[0]) - 1.0  # undo the padding
    ii, jj = border[:, 0], border[:, 1]
    pts = np.stack([ii + i_lo, jj + j_lo, np.full(ii.shape, k)], axis=1) * spacing
    contour = origin + pts @ direction.T
    cj, ci = ndimage.center_of_mass(core)
    world = origin + direction @ (np.array([ci + i_lo, cj + j_lo, k]) * spacing)
    x, y = ii * spacing[0], jj * spacing[1]
    outline = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    against = _against(crop, core, (cj, ci), spacing, direction, csf)
    return SliceSac(
        k=k, centroid=world, band=area, outline=outline, contour=contour, against=against
    )


AGAINST_FRACTION = 0.10  # beyond this (of the CSF's area), the sac is to be outlined
# Pooled over a whole stack, on the 120 random stacks of bench/analysis.py mr-sweep: roots
# floating in the CSF 0.0-2.3 %; roots settled along the sac 4.7-30 %, except three oblique
# stacks where the rays do not see them at all (0.9-1.4 %).
STACK_AGAINST_FRACTION = 0.04
RAYS = 72
RAY_STEP_MM = 0.25
RAY_REACH_MM = 15.0
BEHIND_DEGREES = 70.0  # roots settle at the back of a supine patient's sac
DARK = 0.15  # of the CSF signal: the dura, a ligament, bone's cortex
VALLEY = 0.10  # a dark line: a minimum the signal rises from again by this much
ROOTS = 0.20  # the least median signal of what lies between the CSF and the dark border
BORDER_MM = 0.75  # the CSF's own partial-volume border, not tissue
PLATEAU_MM = 1.0
FLAT = 0.25  # of the CSF signal: the spread of a plateau (a ramp spreads wider)


def roots_doubt(measured: str, *groups: list[SliceSac]) -> str | None:
    """Why a value read from the CSF may be too small: on the first group of slices where
    tissue against the CSF's back adds over a tenth of their area; or None."""
    for sacs in groups:
        against = sum(sac.against for sac in sacs)
        csf = sum(sac.area for sac in sacs)
        if sacs and against > AGAINST_FRACTION * csf:
            return (
                f"{measured} of CSF measured, but tissue of intermediate signal lies against "
                f"its back inside a dark border (about {against / csf:.0%} more): nerve roots "
                "or the cord against the dura are part of the sac, to be outlined"
            )
    return None


def stack_roots_doubt(sacs: list[SliceSac]) -> str | None:
    """Why every sac value of a stack may be too small: tissue against the CSF's back
    pooled over all its slices adds over 4 % of their area (the rays find only part of
    such tissue, and only at some slices, so each level alone may pass); or None."""
    csf = sum(sac.area for sac in sacs)
    against = sum(sac.against for sac in sacs)
    if csf > 0 and against > STACK_AGAINST_FRACTION * csf:
        return (
            f"tissue of intermediate signal lies against the CSF's back all along the sac "
            f"(about {against / csf:.1%} more over the {len(sacs)} slices measured; a level's "
            "own share may look small because it is seen at some slices only): nerve roots or "
            "the cord settled against the dura are part of the sac, to be outlined"
        )
    return None


def hold_for_settled_tissue(measurements: list[Measurement], sacs: list[SliceSac]) -> None:
    """Where :func:`stack_roots_doubt` finds tissue settled all along the sac, every `ok`
    sac value needs review with that reason, and one already in review for another reason
    says it too (the reader outlines the dura, not only what the first reason names)."""
    reason = stack_roots_doubt(sacs)
    if reason is not None:
        _hold_stack(measurements, reason, "of CSF measured", "intermediate signal")


def tracking_doubt(sacs: list[SliceSac], step: float) -> str | None:
    """Why no sac value of a stack can be trusted, or None. A sac followed through the stack
    is found at most of the slices between its first and last (0.76-1.0 of them on 120
    random phantoms), and its area changes by a few per cent from one slice to the next
    except at a narrowing (a median of 0.5-7 %). Where bright tissue beside the sac, or
    noise, was taken for it, the track holds at under :data:`FOLLOWED` of its slices
    (0.29-0.66) or its area changes by a median over :data:`ERRATIC` (10-38 %)."""
    if len(sacs) < 2:
        return None
    ks = [sac.k for sac in sacs]
    spanned = max(ks) - min(ks) + 1
    if spanned >= FOLLOWED_SPAN and len(sacs) < FOLLOWED * spanned:
        return (
            f"the sac was found at only {len(sacs)} of the {spanned} slices between its first "
            "and last: what was taken for the sac may be other tissue, not followed through "
            "the stack, to be outlined"
        )
    changes = [
        abs(float(np.log(b.area / a.area)))
        for a, b in pairwise(sacs)
        if a.area > 0 and b.area > 0 and abs(b.centroid[2] - a.centroid[2]) <= 1.5 * step
    ]
    if len(changes) < ERRATIC_PAIRS or (typical := float(np.median(changes))) <= ERRATIC:
        return None
    return (
        f"the sac's area changes by a median {np.expm1(typical):.0%} from one slice to the "
        f"next ({len(changes)} pairs of neighbouring slices, where a sac changes by a few per "
        "cent): what was taken for the sac may be other tissue, not followed through the "
        "stack, to be outlined"
    )


def hold_for_untracked_sac(
    measurements: list[Measurement], sacs: list[SliceSac], step: float
) -> None:
    """Where :func:`tracking_doubt` finds the sac was not followed through the stack, every
    `ok` sac value needs review with that reason, and one already in review says it too."""
    reason = tracking_doubt(sacs, step)
    if reason is not None:
        _hold_stack(measurements, reason, "measured", "not followed through the stack")


def _hold_stack(measurements: list[Measurement], reason: str, measured: str, said: str) -> None:
    """Every `ok` sac value needs review for a stack-wide ``reason``; one already in review
    for another reason gets it appended (unless its reason already says ``said``)."""
    for m in measurements:
        if m.status == "ok" and m.value is not None:
            unit = "mm²" if m.quantity == QuantityName.DURAL_SAC_AREA else "mm³"
            m.review(f"{m.value:.0f} {unit} {measured}, but {reason}")
        elif m.status == "needs_review" and said not in (m.reason or ""):
            m.reason = f"{m.reason}; and {reason}"


def _against(
    crop: FloatArray,
    core: np.ndarray,
    centre: tuple[float, float],
    spacing: FloatArray,
    direction: FloatArray,
    csf: float,
) -> float:
    """The area (mm²) of intermediate-signal tissue between the back of the CSF and the
    next dark border (a dark sample, or a valley the signal rises from again), on rays
    from the CSF's centre within 70° of posterior: what a reader outlining the dura would
    add to the CSF. The dura is seldom seen at this resolution, so this is a reason to
    look, not a measurement."""
    posterior = np.array([direction[1, 0], direction[1, 1]])
    if np.linalg.norm(posterior) < 0.5:
        return 0.0  # the slice is not across the canal
    posterior /= np.linalg.norm(posterior)
    smooth = ndimage.gaussian_filter(crop, 0.5) / csf
    t = np.arange(0.0, RAY_REACH_MM, RAY_STEP_MM)
    theta = np.arange(RAYS) * 2 * np.pi / RAYS
    cj, ci = centre
    jj = cj + np.outer(np.sin(theta), t) / spacing[1]
    ii = ci + np.outer(np.cos(theta), t) / spacing[0]
    profiles = ndimage.map_coordinates(smooth, [jj, ii], order=1, mode="nearest")
    inside = ndimage.map_coordinates(core.astype(np.float32), [jj, ii], order=0, mode="nearest")
    # Each ray from where it leaves the CSF: the first dark sample, or the first valley
    # (the lowest sample before the signal rises from it by VALLEY), whichever comes first.
    index = np.arange(t.size)
    leaves = (inside < 0.5).any(axis=1)
    start = np.where(leaves, (inside < 0.5).argmax(axis=1), t.size - 1)
    after = index >= start[:, None]
    walked = np.where(after, profiles, np.inf)
    lowest = np.minimum.accumulate(walked, axis=1)
    never = t.size
    dark = after & (profiles < DARK)
    rise = after & (profiles - lowest >= VALLEY)
    first_dark = np.where(dark.any(axis=1), dark.argmax(axis=1), never)
    first_rise = np.where(rise.any(axis=1), rise.argmax(axis=1), never)
    valley = np.where(index < first_rise[:, None], walked, np.inf).argmin(axis=1)
    stop = np.where(first_dark <= first_rise, first_dark, valley)
    found = leaves & (np.minimum(first_dark, first_rise) < never)
    # Tissue, not the CSF's partial-volume border (a ramp down to the dark): a plateau of
    # intermediate signal at least a millimetre long.
    between = (t >= t[start][:, None] + BORDER_MM) & (index < stop[:, None])
    length = between.sum(axis=1) * RAY_STEP_MM
    plateau = found & (length >= PLATEAU_MM)
    values = np.where(between & plateau[:, None], profiles, np.nan)
    rows = np.nonzero(plateau)[0]
    median = np.zeros(RAYS)
    spread = np.full(RAYS, np.inf)
    median[rows] = np.nanmedian(values[rows], axis=1)
    spread[rows] = np.nanmax(values[rows], axis=1) - np.nanmin(values[rows], axis=1)
    tissue = plateau & (median >= ROOTS) & (spread <= FLAT)
    r_csf = np.where(leaves, t[start], t[-1])
    extra = np.where(tissue, t[np.minimum(stop, t.size - 1)] - t[start] - BORDER_MM, 0.0)
    extra = ndimage.median_filter(extra, size=5, mode="wrap")  # one ray is no evidence
    behind = np.cos(theta) * posterior[0] + np.sin(theta) * posterior[1]
    extra[behind < np.cos(np.radians(BEHIND_DEGREES))] = 0.0
    step = 2 * np.pi / RAYS
    return float(0.5 * step * np.sum((r_csf + extra) ** 2 - r_csf**2))


def build_model(image: sitk.Image) -> MrModel:
    sacs = find_sacs(image)
    z = np.array([s.centroid[2] for s in sacs])
    order = np.argsort(z)
    sacs = [sacs[i] for i in order]
    z = z[order]
    line = CentreLine.fit(z, np.array([s.centroid[:2] for s in sacs]), tolerance=6.0)
    sampler = Sampler.of(image)
    _, spacing, _, _ = _slice_geometry(image)
    step = float(min(spacing[2], 2.0))
    bounds = sampler.bounds()
    zz = np.arange(bounds[0][2] + spacing[2] / 2, bounds[1][2] - spacing[2] / 2, step)
    u = np.arange(-6.0, 6.1, 1.0)
    v = np.arange(-4.0, 4.1, 1.0)
    profile = np.full(len(zz), np.nan)
    for n, z_ in enumerate(zz):
        _, left, posterior = line.frame(z_)
        centre = line.point(z_) - BODY_OFFSET_MM * posterior
        uu, vv = np.meshgrid(u, v, indexing="ij")
        pts = centre + uu[..., None] * left + vv[..., None] * posterior
        samples = sampler(pts)
        if not np.all(np.isnan(samples)):  # outside the field of view: left as NaN
            profile[n] = np.nanmedian(samples)
    good = ~np.isnan(profile)
    zz, profile = zz[good], profile[good]
    if zz.size < 8:
        raise SacNotFound("the bodies in front of the sac are not in the images")
    marrow = float(np.median(profile))
    deviation = ndimage.gaussian_filter1d(np.abs(profile - marrow), 0.5)
    # The noise floor of the marrow: a low percentile, since long stretches of the profile
    # may pass other tissue (above the lumbar spine, the pelvis) and would raise a median
    # enough to hide a collapsed, dark disc.
    spread = float(np.percentile(deviation, 25))
    discs = find_discs(
        zz, deviation, baseline=spread, bright_discs=True, prominence=max(0.25 * marrow, 4 * spread)
    )
    warnings: list[str] = []
    if not discs:
        raise SacNotFound("no intervertebral disc found in front of the sac")
    below = zz < discs[-1].z_low
    run = float(discs[-1].z_low - zz[below].min()) if below.any() else 0.0
    # Marrow all the way down, past the endplate's few millimetres below the disc.
    run_zone = below & (zz < discs[-1].z_low - ENDPLATE_MM) & (zz > discs[-1].z_low - SACRAL_RUN_MM)
    sacrum = run >= SACRAL_RUN_MM and bool(np.all(deviation[run_zone] < 0.25 * marrow))
    if not sacrum:
        warnings.append(
            "sacrum not in the field of view (or not recognised): levels are numbered "
            "craniocaudally (level_index) and not named"
        )
    names, missed = disc_names(discs, sacrum)
    return MrModel(line, sacs, discs, names, sacrum, warnings + missed)


def disc_names(discs: list[Disc], sacrum: bool) -> tuple[list[str | None], list[str]]:
    """The discs' names (cranial first), counted up from the sacrum; none above a gap where
    a disc is missed (every disc above it would be misnamed), with a warning."""
    names = level_names(len(discs), sacrum)
    warnings: list[str] = []
    for n in range(len(discs) - 1):
        gap = float(discs[n].middle - discs[n + 1].middle)
        if gap > MISSED_DISC_MM and any(names[: n + 1]):
            names[: n + 1] = [None] * (n + 1)
            warnings.append(
                f"{gap:.0f} mm between two discs found along the canal: a disc between them "
                "is missed, so the discs above are numbered (level_index), not named"
            )
    return names, warnings


S1_HALF_MM = 15.0  # half the first sacral body's height: S1's mid-height below its endplate


def down_the_canal(line: CentreLine, z0: float, mm: float) -> float:
    """The z reached ``mm`` down the centre line from height ``z0``: a length along the
    spine, which is longer than its z extent where the canal is tilted to the slices."""
    zs = np.linspace(z0, z0 - mm, 301)  # the arc is at least as long as its z extent
    points = np.stack([line.x(zs), line.y(zs), zs], axis=1)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    return float(np.interp(mm, arc, zs))


def _crossing(line: CentreLine, point: FloatArray, normal: FloatArray, z0: float) -> float:
    """z where the sac's centre line meets the plane through ``point`` with ``normal``."""
    lo, hi = z0 - 30, z0 + 30
    f_lo = float((line.point(lo) - point) @ normal)
    for _ in range(50):
        mid = (lo + hi) / 2
        f_mid = float((line.point(mid) - point) @ normal)
        if (f_mid < 0) == (f_lo < 0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return (lo + hi) / 2


# Axial slices this thick or thicker average a narrowing away: across a stenosis, volumes on
# 3 mm slices read a mean 13-19 % (up to 37 %) large on random phantoms (bench/analysis.py
# --only mr-sweep; 4 and 5 mm were flagged before); at levels of normal calibre, 3-6 % mean.
THICK_SLICE_MM = 3.0
# In-plane pixels this coarse or coarser make the partial-volume border a large share of a
# narrowed sac: its area read a mean 12-24 % large (up to 55 %) at 1.0 mm on those phantoms
# (a narrow sac has no pixel of pure CSF, so its CSF reference is low and each border pixel's
# fraction high); within 8 % where the sac is of normal calibre, and at 0.5-0.7 mm.
COARSE_PIXEL_MM = 0.9
# An interpolated area beyond both slices around it by more than this share: the spline
# between thick slices dips or bulges where the narrowing falls between them.
OVERSHOOT = 0.25
# A slice cutting the sac along this much canal (its width in the tilt's direction times the
# tilt's tangent) averages a narrowing with the wider sac beside it.
TILT_SPAN_MM = 6.0
OUTLINE_GAP = 0.08  # the two area estimates of a sac of normal calibre agree within 3-4 %
OUTLINE_DOUBT = 0.3  # beyond this, neither estimate can be trusted
NARROWING = 0.6  # a sac narrowing below this fraction of its widest within the level
GAP_STEPS = 0.75  # a disc's middle farther than this (in slice steps) from a sac slice
ON_SLICE = 0.25  # a disc's middle this close (in slice steps) to a slice is read on it
POOL_SLICES = 1.5  # slice spacings either side of a disc's middle pooled for the roots' check
MERGED = 2.0  # a slice's area over this multiple of the stack's median is not the sac's
ERRATIC = 0.085  # median log change of the sac's area between neighbouring slices
ERRATIC_PAIRS = 6  # fewer pairs of neighbouring slices say nothing of the stack
FOLLOWED = 0.7  # the least share of the slices between the sac's first and last it is found at
FOLLOWED_SPAN = 6  # fewer slices between the first and last say nothing of the track


def coarse_doubt(value: float, typical: float, pixel: float) -> str | None:
    """Why an area at a narrowing (below :data:`NARROWING` of the ``typical`` sac) read on
    pixels of :data:`COARSE_PIXEL_MM` or coarser is to be checked, or None."""
    if pixel < COARSE_PIXEL_MM or typical <= 0 or value >= NARROWING * typical:
        return None
    return (
        f"{value:.0f} mm² at a narrowing ({value / typical:.0%} of the sac's median) on "
        f"{pixel:.1f} mm pixels: the partial-volume border is a large share of a narrow sac "
        "and reads it too large"
    )


def tilt_doubt(
    value: float, typical: float, sac: SliceSac, tangent: FloatArray, normal: FloatArray
) -> str | None:
    """Why an area at a narrowing (below :data:`NARROWING` of the ``typical`` sac) read on a
    slice tilted to the canal may be too large, or None: the slice cuts the sac along a
    stretch of canal as long as the sac's width in the tilt's direction times the tilt's
    tangent, and where that exceeds :data:`TILT_SPAN_MM` the narrowest part is averaged
    with the wider sac beside it (dividing by the obliquity is exact for a sac of even
    calibre only)."""
    if typical <= 0 or value >= NARROWING * typical:
        return None
    cos = min(abs(float(tangent @ normal)), 1.0)
    along = tangent - (tangent @ normal) * normal
    if np.linalg.norm(along) < 1e-6 or sac.contour.size == 0:
        return None
    width = float(np.ptp(sac.contour @ (along / np.linalg.norm(along))))
    tilt = float(np.arccos(cos))
    span = width * float(np.tan(tilt))
    if span <= TILT_SPAN_MM:
        return None
    return (
        f"{value:.0f} mm² at a narrowing ({value / typical:.0%} of the sac's median) on a "
        f"slice tilted {np.degrees(tilt):.0f}° to the canal: it cuts the sac along {span:.0f} "
        "mm of canal, so the narrowest part is averaged with the wider sac beside it and reads "
        "too large"
    )


def _interpolation_doubt(
    value: float,
    z_mid: float,
    off: float,
    z: FloatArray,
    perpendicular: FloatArray,
    every_z: FloatArray,
    step: float,
) -> str | None:
    """Why an area interpolated at ``z_mid`` between the slices ``z`` (their perpendicular
    areas) may miss the narrowing, or None: the disc's middle lies near a followed slice but
    not on it, next to a stretch where the sac was lost (``every_z``: a slice run into a
    disc was followed, and has its own rule); or the value lies beyond both slices around
    it by more than :data:`OVERSHOOT`."""
    seen = int(np.searchsorted(every_z, z_mid))
    apart = float(np.ptp(every_z[max(seen - 1, 0) : seen + 1]))
    if apart > 2 * GAP_STEPS * step and off > ON_SLICE * step:
        return (
            f"{value:.0f} mm² interpolated between slices {apart:.0f} mm apart "
            f"(the slices {step:.1f} mm): the sac was not followed between them, and a "
            "narrowing there would be missed"
        )
    below = int(np.searchsorted(z, z_mid))
    bracket = perpendicular[max(below - 1, 0) : below + 1]
    if bracket.size == 2 and (
        value < (1 - OVERSHOOT) * bracket.min() or value > (1 + OVERSHOOT) * bracket.max()
    ):
        return (
            f"{value:.0f} mm² interpolated between slices of {bracket[0]:.0f} and "
            f"{bracket[1]:.0f} mm² ({step:.1f} mm apart): the sac changes between them "
            "faster than the slices sample it"
        )
    return None


def measure(
    image: sitk.Image, series_uid: str, sop_uids: tuple[str, ...] = ()
) -> tuple[MrModel, list[Measurement]]:
    """Dural sac area at each disc's middle and volume between the bodies' mid-heights."""
    model = build_model(image)
    line = model.centre
    _, _, _direction, normal = _slice_geometry(image)
    every_z = np.array([s.centroid[2] for s in model.sacs])
    every_area = np.array([s.area for s in model.sacs])
    # A slice whose "sac" is twice the stack's median is the sac run into bright tissue
    # beside it (a disc's nucleus where the dura is thinnest): not the sac's area.
    merged = every_area > MERGED * float(np.median(every_area))
    sacs = [s for s, bad in zip(model.sacs, merged, strict=True) if not bad]
    z, areas = every_z[~merged], every_area[~merged]
    spacing = float(image.GetSpacing()[2])
    pixel = float(max(image.GetSpacing()[:2]))
    typical = float(np.median(areas)) if areas.size else 0.0
    step = float(np.median(np.diff(every_z))) if every_z.size > 1 else spacing
    cos = np.array([abs(float(line.tangent(zz) @ normal)) for zz in z])
    perpendicular = CubicSpline(z, areas * cos)
    axial = CubicSpline(z, areas)
    heights = [
        d_above.z_low - d_below.z_high
        for d_above, d_below in zip(model.discs, model.discs[1:], strict=False)
    ]
    body = float(np.median(heights)) if heights else 27.0
    out: list[Measurement] = []
    index = 0
    for n, (disc, name) in enumerate(zip(model.discs, model.names, strict=True)):
        if name == "T":
            continue
        t, _, posterior = line.frame(disc.middle)
        anterior = -BODY_OFFSET_MM * posterior
        z_mid = _crossing(line, line.point(disc.middle) + anterior, t, disc.middle)
        around: list[list[SliceSac]] = []  # the disc's slice, and the slices around it
        area = Measurement(QuantityName.DURAL_SAC_AREA, name, index, None, None, series_uid)
        volume = Measurement(QuantityName.DURAL_SAC_VOLUME, name, index, None, None, series_uid)
        if not z.min() <= z_mid <= z.max():
            area.review("the sac is not seen at the disc's middle")
        else:
            area.value = float(perpendicular(z_mid))
            nearest = min(sacs, key=lambda s: abs(s.centroid[2] - z_mid))
            area.points = [list(p) for p in nearest.contour]
            if sop_uids:
                area.sop_instance_uid = sop_uids[nearest.k]
            area.check_plausible()
            # The disc's slice, then the slices around it pooled (one slice's share swings
            # between 0 and 40 % on settled roots).
            pool = [q for q in sacs if abs(q.centroid[2] - z_mid) <= POOL_SLICES * spacing]
            around = [[nearest], pool]
            doubt = None if area.value is None else roots_doubt(f"{area.value:.0f} mm²", *around)
            off = abs(float(nearest.centroid[2]) - z_mid)
            if area.value is not None and off > GAP_STEPS * step:
                # Interpolated across slices where the sac was not followed: at a severe
                # narrowing the sac may be lost just where it is narrowest.
                doubt = (
                    f"{area.value:.0f} mm² interpolated, but the sac is not seen within "
                    f"{off:.0f} mm of the disc's middle (slices {step:.1f} mm apart): a "
                    "severe narrowing there would be missed"
                )
            near = np.abs(every_z[merged] - z_mid) <= spacing
            if area.value is not None and near.any():
                doubt = (
                    f"{area.value:.0f} mm² interpolated, but a slice "
                    f"{float(np.min(np.abs(every_z[merged] - z_mid))):.0f} mm from the disc's "
                    f"middle reads {float(every_area[merged][near].max()):.0f} mm², over "
                    f"{MERGED:g} times the sac's median: the sac run into bright tissue beside it "
                    "(a disc?), not measured there"
                )
            if area.value is not None and doubt is None:
                doubt = _interpolation_doubt(area.value, z_mid, off, z, areas * cos, every_z, step)
            if area.value is not None and doubt is None:
                doubt = coarse_doubt(area.value, typical, pixel)
            if area.value is not None and doubt is None:
                doubt = tilt_doubt(area.value, typical, nearest, line.tangent(z_mid), normal)
            if doubt is not None:
                area.review(doubt)
            if nearest.outline > 0 and area.value is not None:
                ratio = nearest.band / nearest.outline
                gap = abs(ratio - 1)
                # (An outline under half the band is a fragment of the border, not a
                # second estimate: the band stands.)
                if gap > OUTLINE_DOUBT and ratio <= 2.0:
                    area.review(
                        f"{area.value:.0f} mm² measured, but the sac's partial-volume area and "
                        f"its half-intensity outline disagree by {gap:.0%}: to be checked"
                    )
        estimated = []
        if n > 0:
            upper_mid = (model.discs[n - 1].z_low + disc.z_high) / 2
        else:
            upper_mid = disc.z_high + body / 2
            estimated.append("upper")
        if n + 1 < len(model.discs):
            lower_mid = (disc.z_low + model.discs[n + 1].z_high) / 2
        elif model.sacrum:
            # S1 is about 30 mm high, along the spine: its mid-height is 15 mm down the
            # canal, not 15 mm of z (13 mm of z where the canal is tilted 30° from the
            # slices' normal). Measured along the bodies' line, longer on a lordotic curve,
            # it would be lower still: measured, and not taken (README, "S1's mid-height").
            lower_mid = down_the_canal(line, disc.z_low, S1_HALF_MM)
        else:
            lower_mid = disc.z_low - body / 2
            estimated.append("lower")
        bounds = []
        for zb in (lower_mid, upper_mid):
            tb, _, pb = line.frame(zb)
            bounds.append(_crossing(line, line.point(zb) - BODY_OFFSET_MM * pb, tb, zb))
        if estimated:
            volume.outside(
                f"the {' and '.join(estimated)} vertebral body's other disc is outside the "
                "images: its mid-height would be a guess"
            )
        elif bounds[0] < z.min() - 2 or bounds[1] > z.max() + 2:
            volume.outside("the level extends beyond the images")
        else:
            zs = np.linspace(bounds[0], bounds[1], 400)
            volume.value = float(np.trapezoid(axial(zs), zs))
            volume.check_plausible()
            level = [sac for sac in sacs if bounds[0] <= sac.centroid[2] <= bounds[1]]
            within = np.array([sac.area for sac in level])
            level_z = np.sort(np.array([sac.centroid[2] for sac in level], dtype=float))
            if volume.value is not None and (
                doubt := roots_doubt(f"{volume.value:.0f} mm³", level, *around)
            ):
                volume.review(doubt)
            gap = float(np.max(np.diff(np.concatenate([[bounds[0]], level_z, [bounds[1]]]))))
            if volume.value is not None and gap > 2 * GAP_STEPS * step:
                volume.review(
                    f"{volume.value:.0f} mm³ interpolated over {gap:.0f} mm where the sac was "
                    "not followed: a severe narrowing there would be missed"
                )
            elif (
                volume.value is not None
                and merged[(every_z >= bounds[0]) & (every_z <= bounds[1])].any()
            ):
                volume.review(
                    f"{volume.value:.0f} mm³ interpolated over a slice whose sac ran into "
                    "bright tissue beside it (a disc?): to be checked"
                )
            if (
                volume.value is not None
                and spacing >= THICK_SLICE_MM
                and within.size >= 2
                and within.min() < NARROWING * within.max()
            ):
                # Each thick slice averages the sac over its thickness: where it narrows
                # within the level, the narrow part is filled in by the wider sac beside it.
                volume.review(
                    f"{volume.value:.0f} mm³ measured on {spacing:.1f} mm slices across a "
                    f"narrowing to {within.min() / within.max():.0%} of the sac: partial "
                    "volume overestimates it"
                )
        out += [area, volume]
        index += 1
    hold_for_settled_tissue(out, sacs)
    hold_for_untracked_sac(out, model.sacs, step)
    return model, out
