"""Foraminal and disc heights on CT, per level and side.

Steps (each a function below):

1. :func:`body_centres` — on a 2 mm axis-aligned copy, bone is > 150 HU; in every axial
   slice the vertebral body is the thickest bone near the midline (the peak of the 2-D
   distance transform), which pedicles, laminae, ribs and iliac wings never are.
2. :class:`~services.imaging.analysis.spine.CentreLine` through those centres; along it, a
   profile of the low percentile of HU in the plane perpendicular to the spine: discs
   (and their cages, which fill only part of the disc) are its dips.
3. The sacrum is the bone below the lowest disc when it runs on for more than a lumbar
   vertebra could and widens into alae, or, where the column of detected bodies stops
   short of that run (the sacrum's tilted sections are not detected as bodies), when the
   alae span most sections just below the disc; levels are named up from it.
4. :func:`disc_height` — along the local axis through the disc's middle, the endplates are
   the gradient peaks on either side (sub-voxel, on the acquired voxels).
5. :func:`foraminal_height` — in the para-sagittal plane through the pedicles' middle, for
   every antero-posterior position across the pedicles, the profile along the level's axis
   shows lower pedicle, foramen, upper pedicle; the height runs from the lowest point of
   the upper pedicle to the highest point of the lower one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.signal import find_peaks

from services.common.vocabulary import QuantityName
from services.imaging.analysis.report import Measurement
from services.imaging.analysis.sampling import FloatArray, Sampler, edge, resample_world, runs
from services.imaging.analysis.spine import (
    LUMBAR_LEVELS,
    CentreLine,
    Disc,
    find_discs,
    level_names,
)

BONE_HU = 150.0
ENDPLATE_RISE_HU = 60.0  # an endplate (or a body) above a disc, along the spine
CORTEX_HU = 120.0  # a thin cortex, smoothed along the spine
FAT_HU = 0.0  # the foramen holds fat; a pedicle's marrow is denser
CANAL_HU = 40.0  # CSF in the canal, below fatty marrow
CANCELLOUS_HU = 150.0  # healthy cancellous bone is denser; below, the bodies are hollow
DISC_SPAN_MM = 18.0  # endplate to endplate across a disc; a body is taller
MIN_BODY_MM = 20.0  # two discs are at least a (thin) body apart
# A disc height's edges lie inside the bright endplates (hollow bone) it was found between
# (0.2-6.6 mm less on the real CTs, rotated and cut); a sclerotic band beyond an endplate read
# 4.3 mm more, and so do endplates sunk at the centre, where the height is measured.
PLATE_SLACK_MM = 1.0
# The disc's height on bundles of lines this far (left-right, antero-posterior) from its
# centre; a centre more than DISC_CORE_MM lower than their median holds something else.
# Concave endplates make the centre the tallest (up to 2.9 mm above the ring on the real
# CTs, rotated and resampled); the centre read lowest by 1.9 mm there.
DISC_RING_MM = tuple((du, dv) for du in (-8.0, 0.0, 8.0) for dv in (-6.0, 0.0, 6.0) if du or dv)
DISC_CORE_MM = 3.0
DISC_STEP_MM = 0.2  # along a disc height's lines
GAS_FLOOR_HU = 0.0  # below any disc tissue: gas in a vacuum disc reads as this
GAS_HU = -200.0  # gas, not fat or noise, between a disc height's ends
# Heights run along the spine. On phantoms (lordosis 40°) with slices 1.5 mm apart the disc
# and foraminal heights err by at most 1.2 mm; 2 mm apart, by up to 1.9 mm (mean -0.7);
# 2.5 and 3 mm apart, by up to 2.5 and 3.0 mm (a thin bright cortex inside a thick slice
# brightens all of it, so each edge lands up to a slice's half inside the gap).
COARSE_CRANIOCAUDAL_MM = 2.0
PEDICLE_HU = 250.0
METAL_HU = 2000.0
METAL_ASYMMETRY_MM = 3.0
IN_FRONT_MM = 30.0  # screws within this of a detection's circle, in front: the canal's
SCREW_SLAB_MM = 6.0  # a screwed body's sections reach this far beyond its screws
COARSE_MM = 2.0
RUN_GAP_MM = 30.0  # a disc (or a missed body) between two detections of one column
MISSED_DISC_MM = 55.0  # lumbar discs lie 30-45 mm apart
SCREWED_MM = 30.0  # the line runs on this far through a screwed body at the column's end
ENCLOSING_MM = 32.0  # a lumbar body's centre is within 30 mm of its cortex
RIB_HU = 200.0  # a rib's cortex
COLUMN_HALF_MM = 22.0  # the bodies' half width: beyond it, ribs and transverse processes
RIB_REACH_MM = 65.0  # a rib runs out this far to the side; a transverse process does not
RIB_HEAD_MM = 30.0  # a rib's head is this close to the spine's line
RIB_MIN_CM3 = 0.5  # smaller bits are noise or vessels' calcium
RIB_MAX_CM3 = 40.0  # a rib (as much as is in view); a whole iliac wing is more
RIB_END_MM = 4.0  # a bone this close to the searched slab's ends may run on beyond them
RIB_FALL_MM = 4.0  # a rib's lateral end lies at least this much lower than its head
RIB_ABOVE_MM = 30.0  # a head above the top disc lies in the vertebra just above it
SACRAL_RUN_MM = 40.0  # bone runs on this far below L5-S1; below other discs lies a disc
# Just under L5-S1 the sacrum's alae and the sacroiliac joints span 120-170 mm through the
# line; under L4-L5, L5's transverse processes reach 80-95 mm where the filled bone of a
# hollow vertebra joins them across its canal (a review painted them as dense as L3's).
ALAE_MM = 110.0
ALAE_DEPTHS_MM = np.arange(2.0, 17.0, 2.0)  # under the lowest disc, where S1's alae are
ALAE_BACK_MM = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0)  # the sections' offsets behind the line
BODY_BACK_MM = (-5.0, 0.0, 5.0, 10.0)  # a body's section, and just behind it
BODY_ABOVE_MM = (8.0, 12.0, 16.0)  # sections of the body above the lowest disc
ALAE_SECTIONS = 3  # of the eight, as wide as alae


class SpineNotFound(ValueError):
    """No vertebral column could be followed in the volume."""


@dataclass
class Level:
    name: str | None
    index: int
    disc: Disc
    upper_z: tuple[float, float]  # z extent of the vertebra above (disc to disc or FOV)
    lower_z: tuple[float, float]
    position: int = 0  # the disc's place among all the discs found (a skipped one leaves a gap)


@dataclass
class CtModel:
    centre: CentreLine
    levels: list[Level]
    sacrum: bool
    warnings: list[str] = field(default_factory=list)
    hollow: bool = False  # osteoporotic: marrow darker than healthy cancellous bone
    metal: bool = False  # metal within 60 mm of the spine's line (screws, rods, cages)
    missed_disc: bool = False  # two found discs too far apart for none between them
    transitional: bool = False  # not five lumbar vertebrae between the ribs and the sacrum
    from_ribs: bool = False  # named down from T12's ribs, the sacrum not seen

    def body_heights(self) -> dict[int, list[float]]:
        """Per level index, the heights of the vertebral bodies above and below its disc
        that lie between two found discs (a body cut by the field's edge is left out)."""
        out: dict[int, list[float]] = {}
        for i, level in enumerate(self.levels):
            heights = []
            above = self.levels[i - 1] if i > 0 else None
            below = self.levels[i + 1] if i + 1 < len(self.levels) else None
            if above is not None and above.position == level.position - 1:
                heights.append(above.disc.z_low - level.disc.z_high)
            if below is not None and below.position == level.position + 1:
                heights.append(level.disc.z_low - below.disc.z_high)
            out[level.index] = [h for h in heights if h > 0]
        return out


IN_PLANE = np.zeros((3, 3, 3), dtype=bool)  # the 2-D cross, for slice-by-slice morphology
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def solid_bone(array: FloatArray, threshold: float = BONE_HU) -> FloatArray:
    """Bone with its cortical shells filled, per axial slice (on the 2 mm grid)."""
    closed, hollow = bone_parts(array, threshold)
    return closed | hollow


def bone_parts(
    array: FloatArray, threshold: float = BONE_HU, metal: FloatArray | None = None
) -> tuple[FloatArray, FloatArray]:
    """Per axial slice: bone with its closed rings filled, and the hollow insides of open shells.

    Osteoporotic cancellous bone can be as dark as a disc (50 HU on the real TPTBox CT);
    its cortex is not, so a body is the inside of its cortical shell. A real shell is
    rarely closed: noise breaks a thin cortex, and the posterior wall has the basivertebral
    foramen. So besides the holes of closed rings, a voxel that is not bone is *hollow*
    when bone lies within :data:`ENCLOSING_MM` in at least 7 of the 8 in-plane directions
    around it: the inside of a body (and of the canal behind it) is, a disc's section is
    not — nothing bounds it in front — and neither is the soft tissue beside the spine.
    The two are kept apart because the hollow inside of a body and of its canal are
    separate regions (the posterior wall between them), while filled together they make
    one blob whose centre is neither's.

    ``metal`` (a mask of the same grid), when given, is left out of the bone with its
    blooming (6 mm): for the bodies' detection, screws and rods are no cortex — the rods
    and converging screws would enclose the canal and posterior elements. (Along the
    spine's profile, metal stays bone: a screw inside a body is no disc.)
    """
    if array.shape[0] == 0:
        raise SpineNotFound("no images")
    bone = array > threshold
    if metal is not None and metal.any():
        # In-plane: the blooming spreads across the slice; a section above or below the
        # screw keeps its bone.
        bone &= ~ndimage.binary_dilation(metal, structure=IN_PLANE, iterations=3)
    ring = _closing_in_plane(bone)
    closed = _fill_holes_in_plane(ring)
    hollow = _enclosed(ring, round(ENCLOSING_MM / COARSE_MM)) & ~ring
    # Rays slip between the grains of a dotted cortex, and noise leaves bright grains in
    # dark marrow: the pinholes either way are filled.
    hollow = _fill_holes_in_plane(hollow)
    return _opening(closed), _opening(hollow)


_DIAMOND = [(dj, di) for dj in range(-2, 3) for di in range(-2, 3) if abs(dj) + abs(di) <= 2]


def _closing_in_plane(mask: FloatArray) -> FloatArray:
    """Slice by slice, the closing by the 2-D cross twice (a diamond of radius 2), outside
    the volume empty: ``ndimage.binary_closing(mask, IN_PLANE, iterations=2)``, 7x faster."""
    grown = np.zeros_like(mask)
    for dj, di in _DIAMOND:
        grown |= _shifted(mask, dj, di)
    out = np.ones_like(mask)
    for dj, di in _DIAMOND:
        out &= _shifted(grown, dj, di)
    return out


def _fill_holes_in_plane(mask: FloatArray) -> FloatArray:
    """Slice by slice, the background not connected to the slice's edge filled:
    ``ndimage.binary_fill_holes(mask, IN_PLANE)``, 2-3x faster."""
    labels, n = ndimage.label(~mask, structure=IN_PLANE)
    edge = np.zeros(n + 1, dtype=bool)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        edge[np.unique(face)] = True
    edge[0] = True  # (label 0 is the mask itself)
    return np.asarray(mask | ~edge[labels])


def _enclosed(bone: FloatArray, reach: int) -> FloatArray:
    """Voxels with bone in at least 7 of 8 in-plane directions, within the smallest power
    of two of voxels not below ``reach`` (16 at 2 mm: 32 mm along the axes, 45 mm along
    the diagonals)."""
    hits = np.zeros(bone.shape, dtype=np.uint8)
    for dj, di in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)):
        seen = bone.copy()
        step = 1
        while step < reach:  # doubling: after the loop, offsets 0 .. 2*step - 1 are covered
            seen |= _shifted(seen, dj * step, di * step)
            step *= 2
        hits += seen
    return hits >= 7


def _opening(mask: FloatArray) -> FloatArray:
    """``ndimage.binary_opening(mask)`` (the 3-D cross, once, outside the volume empty),
    by shifted copies: 8x faster, the same mask (a test checks)."""
    cross = [(dk, 0, 0) for dk in (1, -1)] + [(0, dj, 0) for dj in (1, -1)]
    cross += [(0, 0, di) for di in (1, -1)]
    eroded = mask.copy()
    for offset in cross:
        eroded &= _offset(mask, offset)
    opened = eroded.copy()
    for offset in cross:
        opened |= _offset(eroded, offset)
    return opened


def _shifted(mask: FloatArray, dj: int, di: int) -> FloatArray:
    """``out[k, j, i] = mask[k, j + dj, i + di]``, False beyond the edge."""
    return _offset(mask, (0, dj, di))


def _offset(mask: FloatArray, offset: tuple[int, int, int]) -> FloatArray:
    """``out[k, j, i] = mask[k + dk, j + dj, i + di]``, False beyond the edge."""
    out = np.zeros_like(mask)
    if any(abs(d) >= n for d, n in zip(offset, mask.shape, strict=True)):
        return out
    src = tuple(slice(max(d, 0), n + min(d, 0)) for d, n in zip(offset, mask.shape, strict=True))
    dst = tuple(slice(max(-d, 0), n + min(-d, 0)) for d, n in zip(offset, mask.shape, strict=True))
    out[dst] = mask[src]
    return out


EDT_THREADS = 2  # the bodies' per-slice distance transforms (0.23 s of a CT on one thread)


def body_centres(coarse: sitk.Image) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per axial slice of an axis-aligned volume: z, (x, y) of the body centre, inscribed
    radius; and the z of the slices whose detection metal bounded or crossed, or that had a
    pair of screws just in front (the canal behind a screwed body)."""
    array = sitk.GetArrayViewFromImage(coarse)
    spacing = np.array(coarse.GetSpacing())
    origin = np.array(coarse.GetOrigin())
    # A body's cortex runs on craniocaudally, noise does not: smoothed along the axis
    # (3 mm), the grains noise leaves in osteoporotic marrow fade and the shell stays.
    along = ndimage.gaussian_filter1d(np.asarray(array, dtype=np.float32), 3.0 / spacing[2], axis=0)
    metal = np.asarray(array) > METAL_HU  # on the acquired values: smoothing dims the metal
    closed, hollow = bone_parts(along, CORTEX_HU, metal)
    bone = closed | hollow
    occupied = np.nonzero(bone.any(axis=(0, 1)))[0]
    if occupied.size == 0:
        raise SpineNotFound("no bone in the volume")
    # Left-right midline: the median x of all bone (the spine and pelvis are symmetric).
    xs = np.nonzero(bone)[2]
    mid = int(np.median(xs))
    half = int(40 / spacing[0])
    metal_rows = [np.nonzero(sl)[0] for sl in metal]
    metal_cols = [np.nonzero(sl)[1] for sl in metal]
    # Metal within SCREW_SLAB_MM along the axis (a body's section just beyond its screws).
    nearby = ndimage.maximum_filter1d(metal, 2 * round(SCREW_SLAB_MM / spacing[2]) + 1, axis=0)
    nearby_at = [np.nonzero(sl) for sl in nearby]
    lo, hi = max(0, mid - half), min(array.shape[2], mid + half)

    def inscribed(k: int) -> tuple[int, int, float]:
        """Row, column (in the window) and radius of the slice's largest inscribed circle."""
        dist = np.maximum(
            ndimage.distance_transform_edt(closed[k], sampling=spacing[1::-1]),
            ndimage.distance_transform_edt(hollow[k], sampling=spacing[1::-1]),
        )
        window = dist[:, lo:hi]
        j, i = np.unravel_index(int(np.argmax(window)), window.shape)
        return int(j), int(i), float(window[j, i])

    slices = [k for k in range(array.shape[0]) if bone[k].sum() >= 20]
    with ThreadPoolExecutor(EDT_THREADS, thread_name_prefix="edt") as pool:  # releases the GIL
        circles = list(pool.map(inscribed, slices))
    zs, centres, radii, screwed = [], [], [], []
    for k, (j, i, r) in zip(slices, circles, strict=True):
        if r < 7.0:
            continue
        if metal_rows[k].size:
            # A detection that metal (a screw through the body, rods behind it) bounds or
            # crosses is the hardware's shape, not the body's: the centre line follows the
            # sections without it.
            reach = np.hypot(
                (metal_rows[k] - j) * spacing[1], (metal_cols[k] - (i + lo)) * spacing[0]
            )
            if reach.min() < r + 5.0:
                screwed.append(origin[2] + k * spacing[2])
                continue
        rows, cols = nearby_at[k]
        if rows.size:
            # Nor is a section with a pair of screws just in front of it, left and right,
            # in its slice or within SCREW_SLAB_MM: the canal behind a body the screws have
            # taken. (A stent or a clip in front of a body is one piece, farther away.)
            behind = (rows - j) * spacing[1]
            across = (cols - (i + lo)) * spacing[0]
            front = (behind < -r) & (np.hypot(behind, across) < r + IN_FRONT_MM)
            front &= np.abs(across) < IN_FRONT_MM
            if np.any(front & (across < 0)) and np.any(front & (across > 0)):
                screwed.append(origin[2] + k * spacing[2])
                continue
        zs.append(origin[2] + k * spacing[2])
        centres.append((origin[0] + (i + lo) * spacing[0], origin[1] + j * spacing[1]))
        radii.append(r)
    if len(zs) < 4:
        raise SpineNotFound("no vertebral bodies found (fewer than 4 slices with thick bone)")
    keep = _longest_run(np.array(zs), np.array(centres))
    if keep.sum() < 4:
        raise SpineNotFound("no vertebral bodies found (no run of 4 slices along a column)")
    return np.array(zs)[keep], np.array(centres)[keep], np.array(radii)[keep], np.array(screwed)


def _longest_run(zs: FloatArray, centres: FloatArray) -> FloatArray:
    """The detections that make one column: the longest of the craniocaudal tracks.

    Going up the slices, a detection joins the track whose last detection lies within
    :data:`RUN_GAP_MM` below it and 40 mm across, else it starts a track of its own. The
    spine is one continuous column; the femoral heads below the sacrum (whose tilted, thin
    sections are not detected) are another, and a single stray detection starts a track of
    one without breaking the column's."""
    order = np.argsort(zs)
    tracks: list[list[int]] = []
    for n in order:
        best = None
        for track in tracks:
            last = track[-1]
            dz = zs[n] - zs[last]
            drift = float(np.linalg.norm(centres[n] - centres[last]))
            if dz <= RUN_GAP_MM and drift <= 40.0 and (best is None or drift < best[0]):
                best = (drift, track)
        if best is None:
            tracks.append([int(n)])
        else:
            best[1].append(int(n))
    longest = max(tracks, key=lambda t: float(np.ptp(zs[t])) + len(t))
    keep = np.zeros(len(zs), dtype=bool)
    keep[longest] = True
    return keep


def plane_points(
    centre: FloatArray, left: FloatArray, posterior: FloatArray, u: FloatArray, v: FloatArray
) -> FloatArray:
    uu, vv = np.meshgrid(u, v, indexing="ij")
    return centre + uu[..., None] * left + vv[..., None] * posterior


def build_model(image: sitk.Image) -> CtModel:
    """The spine model of a CT volume: centre line, discs, sacrum, named levels."""
    coarse = resample_world(image, COARSE_MM, default=-1024.0)
    with ThreadPoolExecutor(1, thread_name_prefix="bone") as pool:
        # The filled bone (for the profile below) does not depend on the bodies' detection:
        # the two run at once (their numpy and scipy loops release the GIL).
        filling = pool.submit(solid_bone, sitk.GetArrayViewFromImage(coarse))
        zs, centres, _, screwed = body_centres(coarse)
        solid_array = filling.result()
    line = _through_screws(CentreLine.fit(zs, centres), screwed)
    sampler = Sampler.of(coarse)
    solid = sitk.GetImageFromArray(solid_array.astype(np.float32) * 1000)
    solid.CopyInformation(coarse)
    filled = Sampler.of(solid)
    # A body cut short at the end of the field is often too thin to be detected: the
    # profile runs on past the last detection (up to 10 mm, inside the images) so the
    # disc next to it is found, and bounds the vertebra beside it. No level is measured
    # beyond the detections.
    lo, hi = sampler.bounds()
    z = np.arange(max(line.z_min - 10.0, lo[2] + 1.0), min(line.z_max + 10.0, hi[2] - 1.0), 1.0)
    u = np.arange(-12.0, 12.1, 2.0)
    v = np.arange(-8.0, 8.1, 2.0)
    if len(z) == 0:
        raise SpineNotFound("the bodies found span too little of the images to follow the spine")
    # Every section across the spine at once: (z, u, v, xyz).
    frames = [line.frame(zz) for zz in z]
    points = np.stack(
        [
            plane_points(line.point(zz), left, posterior, u, v)
            for zz, (_, left, posterior) in zip(z, frames, strict=True)
        ]
    )
    profile = np.nanpercentile(filled(points).reshape(len(z), -1), 20, axis=1)
    raw = np.array([_median_clear_of_metal(section) for section in sampler(points)])
    metal_seen = _metal_near(coarse, line)
    profile = ndimage.gaussian_filter1d(profile, 1.0)
    body = float(np.percentile(profile, 75))
    low = float(np.percentile(profile, 3))
    # Hollow (osteoporotic) bodies: their marrow is darker than any healthy cancellous
    # bone; the filled-bone profile then only says where a body's shell is, and the
    # endplates say where the discs are.
    # Where metal fills a section, its HU are taken from the sections beside it.
    clear = ~np.isnan(raw)
    bodies = clear & (profile >= np.median(profile))
    if not bodies.any():
        raise SpineNotFound("metal in every section of the bodies along the spine")
    raw = np.interp(z, z[clear], raw[clear])
    # The marrow: the lower quartile of the HU in the bodies' sections (endplates and
    # the blooming round screws are brighter, never darker).
    marrow = float(np.percentile(raw[bodies], 25))
    hollow = marrow < CANCELLOUS_HU
    warnings: list[str] = []
    if hollow:
        discs = _endplate_discs(z, raw, profile)
        warnings.append(
            f"hollow (osteoporotic) vertebral bodies, marrow about {marrow:.0f} HU: discs "
            "found by their endplates, foraminal heights to be checked"
        )
    else:
        found = find_discs(z, profile, baseline=body, prominence=max(0.45 * (body - low), 60.0))
        # A disc whose sections are metal (a titanium cage) has no dip left to check.
        discs = [d for d in found if _between_endplates(z, raw, d) or _metal_at(z, clear, d)]
    if not discs:
        raise SpineNotFound("no intervertebral disc found along the spine")
    # Lumbar discs lie 30-45 mm apart along the spine; a wider gap holds a disc that was
    # not found, and every name counted across it would be wrong.
    gaps = [(a, b) for a, b in itertools.pairwise(discs) if a.z - b.z > MISSED_DISC_MM]
    for a, b in gaps:
        warnings.append(
            f"discs at z={a.z:.0f} and z={b.z:.0f} mm are {a.z - b.z:.0f} mm apart: a disc "
            "between them may have been missed, so the levels are numbered, not named, and "
            "every value is to be checked"
        )
    width = partial(_bone_width, sampler, line, filled if hollow else None)
    run = discs[-1].z_low - float(z[0])
    if run >= SACRAL_RUN_MM:
        sacrum = _is_sacrum(width, discs[-1], profile=(z, profile), body=body, low=low)
    else:
        sacrum = _alae_below(width, discs[-1])
        if sacrum:
            warnings.append(
                "sacrum recognised by its alae just below the lowest disc (the column of "
                f"bodies found stops {max(discs[-1].z_low - line.z_min, 0.0):.0f} mm below "
                "it): levels are named from it"
            )
    t12_l1 = None if gaps else _lowest_ribs(coarse, line, discs)
    # (a lumbar vertebra for each disc below T12-L1)
    lumbar = None if t12_l1 is None else len(discs) - 1 - t12_l1
    transitional = sacrum and lumbar is not None and lumbar != len(LUMBAR_LEVELS)
    if transitional:
        warnings.append(
            f"transitional anatomy: {lumbar} lumbar-type vertebrae between "
            "the lowest rib-bearing vertebra and the sacrum (five are usual): levels are "
            "named from the sacrum, every value to be checked"
        )
    elif not sacrum and t12_l1 is not None:
        warnings.append(
            "sacrum not in the field of view (or not recognised): levels are named from the "
            "lowest rib-bearing vertebra (T12), which assumes five lumbar vertebrae (one "
            "person in ten has not): every value to be checked"
        )
    elif not sacrum and not gaps:
        warnings.append(
            "sacrum not in the field of view (or not recognised), nor the heads of the "
            "lowest ribs: levels are numbered craniocaudally (level_index) and not named"
        )
    names = level_names(len(discs), sacrum and not gaps, t12_l1)
    levels = []
    bounds = [line.z_max] + [d.z for d in discs] + [line.z_min]
    index = 0
    for n, (disc, name) in enumerate(zip(discs, names, strict=True)):
        if name == "T":
            continue
        upper = (disc.z_high, bounds[n])
        lower = (bounds[n + 2], disc.z_low)
        if upper[1] - upper[0] < 12 or lower[1] - lower[0] < 12:
            warnings.append(
                f"disc at z={disc.z:.0f} mm is too close to the edge of the field (or of the "
                "vertebrae found): the vertebra beyond it is cut"
            )
            continue
        levels.append(Level(name, index, disc, upper, lower, position=n))
        index += 1
    from_ribs = not sacrum and t12_l1 is not None
    return CtModel(
        line, levels, sacrum, warnings, hollow, metal_seen, bool(gaps), transitional, from_ribs
    )


def _through_screws(line: CentreLine, screwed: FloatArray) -> CentreLine:
    """The line carried on (at most :data:`SCREWED_MM`) through the slices next to its ends
    whose body metal took (a vertebra with pedicle screws at the end of the column): its
    body is there, its centre is not found."""
    z_min, z_max = line.z_min, line.z_max
    for z in sorted(screwed, reverse=True):
        if z_min - COARSE_MM * 2.5 <= z < z_min and line.z_min - z <= SCREWED_MM:
            z_min = float(z)
    for z in sorted(screwed):
        if z_max < z <= z_max + COARSE_MM * 2.5 and z - line.z_max <= SCREWED_MM:
            z_max = float(z)
    return replace(line, z_min=z_min, z_max=z_max)


def _lowest_ribs(coarse: sitk.Image, line: CentreLine, discs: list[Disc]) -> int | None:
    """The index of the disc below the lowest rib-bearing vertebra (T12-L1), or None.

    A rib is a thin bone (:data:`RIB_MIN_CM3` to :data:`RIB_MAX_CM3` in view) beside the
    spine's column (beyond :data:`COLUMN_HALF_MM` of its line, where the transverse
    processes are cut off from their vertebra too) that reaches :data:`RIB_REACH_MM` out to
    the side, whose head comes within :data:`RIB_HEAD_MM` of the line, no more than 5 mm
    in front of it, and which falls away from its head: its lateral end lies lower (the
    iliac wing rises from the sacroiliac joint to its crest; a lumbar transverse process is
    not as long). A bone cut by the searched slab's ends (the column's lower end, the
    images' top) may have its head beyond them, so it names nothing. The vertebra holding
    the lowest head bears the lowest ribs; a head more than :data:`RIB_ABOVE_MM` above the
    top disc found lies in a vertebra whose disc below was not found, and names nothing
    either.
    """
    array = sitk.GetArrayViewFromImage(coarse)
    origin = np.array(coarse.GetOrigin())
    spacing = np.array(coarse.GetSpacing())
    zk = origin[2] + np.arange(array.shape[0]) * spacing[2]
    xi = origin[0] + np.arange(array.shape[2]) * spacing[0]
    yj = origin[1] + np.arange(array.shape[1]) * spacing[1]
    # From the column's lower end to the top of the images (the line runs on a few mm to
    # reach the heads of the ribs of a vertebra cut by the field's top edge).
    inside = zk >= line.z_min
    if not inside.any():
        return None
    ends = (float(zk[inside].min()) + RIB_END_MM, float(zk[inside].max()) - RIB_END_MM)
    lat = np.abs(xi[None, :] - line.x(zk)[:, None])  # (k, i)
    beside = (lat >= COLUMN_HALF_MM) & inside[:, None]
    cut = (np.asarray(array) > RIB_HU) & beside[:, None, :]
    labels, n = ndimage.label(cut, structure=np.ones((3, 3, 3)))
    if n == 0:
        return None
    voxel_cm3 = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(labels.ravel())[1:] * voxel_cm3
    heads = []
    for c, box in enumerate(ndimage.find_objects(labels)):
        if box is None or not RIB_MIN_CM3 <= sizes[c] <= RIB_MAX_CM3:
            continue
        k, j, i = np.nonzero(labels[box] == c + 1)
        k, j, i = k + box[0].start, j + box[1].start, i + box[2].start
        x, y, z = xi[i], yj[j], zk[k]
        dx, dy = x - line.x(z), y - line.y(z)
        reach = np.abs(dx)
        if reach.max() < RIB_REACH_MM or z.min() < ends[0] or z.max() > ends[1]:
            continue
        near = int(np.argmin(np.hypot(dx, dy)))
        head = float(z[near])
        # (posterior is +y in LPS: the head articulates at the body's back corner and the
        # transverse process)
        if np.hypot(dx[near], dy[near]) > RIB_HEAD_MM or dy[near] < -5.0:
            continue
        if float(np.mean(z[reach >= RIB_REACH_MM - 10.0])) > head - RIB_FALL_MM:
            continue
        heads.append(head)
    # (below the lowest disc lie the sacrum's alae and the pelvis, not ribs)
    heads = [z for z in heads if z > discs[-1].z]
    if not heads:
        return None
    lowest = min(heads)
    tops = [discs[0].z + RIB_ABOVE_MM] + [d.z for d in discs[:-1]]
    for n, (disc, top) in enumerate(zip(discs, tops, strict=True)):
        if disc.z <= lowest < top:
            return n
    return None


def _metal_at(z: FloatArray, clear: FloatArray, disc: Disc) -> bool:
    """Metal fills the sections within 2 mm of the disc's middle (a cage)."""
    return bool(np.any(~clear[np.abs(z - disc.z) <= 2.0]))


def _metal_near(coarse: sitk.Image, line: CentreLine) -> bool:
    """Metal within 60 mm of the spine's line, in the axial slab it spans (screws, rods,
    cages: their streaks cross the bodies' sections)."""
    array = sitk.GetArrayViewFromImage(coarse)
    k, j, i = np.nonzero(array > METAL_HU)
    if k.size == 0:
        return False
    origin, spacing = np.array(coarse.GetOrigin()), np.array(coarse.GetSpacing())
    xyz = origin + np.stack([i, j, k], axis=1) * spacing
    inside = (xyz[:, 2] >= line.z_min - 10.0) & (xyz[:, 2] <= line.z_max + 10.0)
    if not inside.any():
        return False
    xyz = xyz[inside]
    on_line = np.stack([line.x(xyz[:, 2]), line.y(xyz[:, 2])], axis=1)
    return bool(np.any(np.hypot(*(xyz[:, :2] - on_line).T) < 60.0))


def _median_clear_of_metal(section: FloatArray) -> float:
    """The median HU of a section's samples (2 mm apart) farther than 4 mm from metal.

    A screw and the blooming round it would look like an endplate; NaN where fewer than a
    quarter of the samples are clear of them.
    """
    metal = section > METAL_HU
    if metal.any():
        near = ndimage.binary_dilation(metal, iterations=2)
        if (~near).sum() < 0.25 * section.size:
            return float("nan")
        return float(np.nanmedian(section[~near]))
    return float(np.nanmedian(section))


def _between_endplates(z: FloatArray, raw: FloatArray, disc: Disc) -> bool:
    """A disc lies between two endplates: within 15 mm above and below its middle, the HU
    along the spine rise well above the disc's. Where a body's cortex is broken, its dark
    middle looks like a disc on the filled-bone profile; it has an endplate on one side at
    most."""
    at = np.abs(z - disc.z) <= 2.0
    above = (z > disc.z + 2.0) & (z <= disc.z + 15.0)
    below = (z < disc.z - 2.0) & (z >= disc.z - 15.0)
    if not at.any() or not above.any() or not below.any():
        return False
    floor = float(np.nanmin(raw[at])) + ENDPLATE_RISE_HU
    return bool(np.nanmax(raw[above]) >= floor and np.nanmax(raw[below]) >= floor)


def _endplate_discs(z: FloatArray, raw: FloatArray, filled: FloatArray) -> list[Disc]:
    """Discs between hollow bodies: a dip between two endplates close together.

    In osteoporotic bone the marrow (30-80 HU) is as dark as a disc, so along the spine a
    disc and a body look alike; only the endplates tell them apart. Each pair of
    neighbouring endplate peaks at most :data:`DISC_SPAN_MM` apart, with the filled-bone
    profile empty between them (no cortical shell: not a body's section), bounds a disc;
    its extent runs to where the HU have risen halfway to each endplate. A fainter pair
    (half the rise: thick slices blur thin endplates) counts only where the spacing of the
    discs found by a full rise puts one; its height is then to be checked.
    """
    smooth = ndimage.gaussian_filter1d(raw, 1.0)
    peaks, _ = find_peaks(smooth, prominence=ENDPLATE_RISE_HU / 2)
    full = float(np.max(filled)) if filled.size else 0.0
    if full <= 0.0:  # no body's shell anywhere: nothing tells a disc from a body
        return []
    found: list[tuple[float, Disc]] = []
    faint: list[tuple[float, Disc]] = []
    for a, b in itertools.pairwise(peaks):
        if z[b] - z[a] > DISC_SPAN_MM:
            continue
        i = int(a + np.argmin(smooth[a : b + 1]))
        dip = float(smooth[i])
        # A tilted disc (L5-S1) crosses the bodies' edges in the section at its middle, and
        # its HU dip and its gap in the shells need not fall in one section (on 3 mm slices
        # they were 4 mm apart, or not, as the 2 mm grid fell): the emptiest section between
        # the two endplates counts.
        empty = float(np.min(filled[a : b + 1]))
        rise = min(smooth[a], smooth[b]) - dip
        if rise < ENDPLATE_RISE_HU / 2 or empty > 0.5 * full:
            continue
        lo, hi = i, i
        while lo > a and smooth[lo - 1] < (dip + smooth[a]) / 2:
            lo -= 1
        while hi < b and smooth[hi + 1] < (dip + smooth[b]) / 2:
            hi += 1
        strong = rise >= ENDPLATE_RISE_HU
        disc = Disc(
            z=float(z[i]),
            z_low=float(z[lo]),
            z_high=float(z[hi]),
            faint=not strong,
            plates=(float(z[a]), float(z[b])),
        )
        (found if strong else faint).append((empty, disc))
    # Two dips closer than a body is tall are not both discs (the blooming round a screw
    # rises like an endplate, and a dark band beside it dips like a disc): the emptier
    # section (no shell) is the disc.
    discs: list[Disc] = []
    for _, disc in sorted(found, key=lambda f: f[0]):
        if all(abs(disc.z - d.z) >= MIN_BODY_MM for d in discs):
            discs.append(disc)
    # A faint pair counts where the discs' own rhythm puts a disc: one spacing (within a
    # quarter) beyond the end of the strong discs, or halfway across a gap of two.
    zs = sorted(d.z for d in discs)
    if len(zs) >= 2:
        rhythm = float(np.median(np.diff(zs)))
        for _, disc in sorted(faint, key=lambda f: f[0]):
            above = [d - disc.z for d in zs if d > disc.z]
            below = [disc.z - d for d in zs if d < disc.z]
            near = [min(above)] if above else []
            near += [min(below)] if below else []
            if all(0.75 * rhythm <= gap <= 1.25 * rhythm for gap in near):
                discs.append(disc)
                zs = sorted(d.z for d in discs)
    return sorted(discs, key=lambda d: -d.z)


def _bone_width(
    sampler: Sampler,
    line: CentreLine,
    filled: Sampler | None,
    zz: float,
    back: tuple[float, ...] = BODY_BACK_MM,
) -> float:
    """The widest left-right run of bone through the spine's line at height ``zz``, in the
    section across the body and in sections ``back`` mm behind it (mm). In hollow bone the
    widths are read on the filled bone too (a hollow body's section has no bone across its
    middle)."""
    _, left, posterior = line.frame(zz)
    u = np.arange(-90.0, 90.1, 1.0)
    best = 0.0
    for dv in back:
        pts = line.point(zz) + u[:, None] * left + dv * posterior
        bone = sampler(pts, outside=-1024) > BONE_HU
        if filled is not None:
            bone |= filled(pts, outside=0.0) > 500
        for a, b in runs(bone):
            if u[a] <= 0 <= u[b - 1]:
                best = max(best, float(u[b - 1] - u[a]))
    return best


def _is_sacrum(
    width: Callable[..., float],
    lowest: Disc,
    *,
    profile: tuple[FloatArray, FloatArray],
    body: float,
    low: float,
) -> bool:
    """Bone runs on ≥ :data:`SACRAL_RUN_MM` below the lowest disc (read on the bodies'
    profile, so the column reaches that far) and widens into alae (at least twice the body)."""
    z, values = profile
    below = (z < lowest.z_low) & (z >= lowest.z_low - SACRAL_RUN_MM)
    if np.any(values[below] < (body + low) / 2):
        return False
    sacral = max(width(lowest.z_low - d) for d in (10.0, 15.0, 20.0))
    # The narrowest of three sections of the body above: pedicle screws and rods of a
    # fusion widen the bone run in the section they cross, not in all three.
    lumbar = min(width(lowest.z_high + d) for d in BODY_ABOVE_MM)
    return lumbar > 0 and sacral >= 2.0 * lumbar


def _alae_below(width: Callable[..., float], lowest: Disc) -> bool:
    """Where the column of detected bodies stops short of the sacral run (the sacrum's
    tilted, thin sections are not detected as bodies), the alae alone say sacrum: in at
    least :data:`ALAE_SECTIONS` of the sections 2-16 mm below the lowest disc, bone runs on
    through the line across :data:`ALAE_MM` and 1.5 times the body above (the median of three
    of its sections). Below any lumbar disc lies a body, 40-60 mm wide, and its transverse
    processes; the run-on is not required (bone beside and behind the line is found below
    any lumbar vertebra too), and a section beyond the images is no bone."""
    lumbar = float(np.median([width(lowest.z_high + d) for d in BODY_ABOVE_MM]))
    wide = [width(lowest.z_low - d, ALAE_BACK_MM) for d in ALAE_DEPTHS_MM]
    enough = max(ALAE_MM, 1.5 * lumbar)
    return sum(w >= enough for w in wide) >= ALAE_SECTIONS


def _disc_edges(profile: FloatArray, step: float) -> tuple[float, float] | None:
    """The lower and upper endplate edges (sample positions) on a profile along the spine
    centred on a disc: the strongest falling and rising edges within 15 mm of its darkest
    point near the middle."""
    mid = len(profile) // 2
    around = slice(mid - int(4 / step), mid + int(4 / step))
    i0 = around.start + int(np.argmin(ndimage.gaussian_filter1d(profile, 3)[around]))
    hi = edge(profile, step, rising=True, start=i0, stop=i0 + int(15 / step))
    lo = edge(profile, step, rising=False, start=i0 - int(15 / step), stop=i0 + 1)
    return None if hi is None or lo is None else (lo, hi)


def _bundle_profile(
    sampler: Sampler,
    centre: FloatArray,
    axes: tuple[FloatArray, FloatArray, FloatArray],
    offsets: Sequence[tuple[float, float]],
) -> tuple[FloatArray, FloatArray, FloatArray] | None:
    """The mean HU along the spine's axis (±20 mm, every :data:`DISC_STEP_MM`) over lines at
    ``offsets`` (left, posterior; mm) from ``centre``: (profile, the samples per line as
    read, the indices where the images hold them); None unless the 8 mm either side of the
    middle are in the images. In the profile gas (a vacuum disc) reads as
    :data:`GAS_FLOOR_HU`: its edges against the disc's tissue are steeper than an
    endplate's and were taken for them. Beyond the images the profile runs on flat (no edge
    can be found there)."""
    t, left, posterior = axes
    s = np.arange(-20.0, 20.0 + DISC_STEP_MM / 2, DISC_STEP_MM)
    lines = np.stack([centre + du * left + dv * posterior + s[:, None] * t for du, dv in offsets])
    samples = sampler(lines)
    floored = np.where(np.isnan(samples), np.nan, np.maximum(samples, GAS_FLOOR_HU))
    counts = np.sum(~np.isnan(floored), axis=0)
    profile = np.where(counts > 0, np.nansum(floored, axis=0) / np.maximum(counts, 1), np.nan)
    mid = len(s) // 2
    valid = np.flatnonzero(~np.isnan(profile))
    reach = int(8 / DISC_STEP_MM)
    if valid.size == 0 or valid[0] > mid - reach or valid[-1] < mid + reach:
        return None
    return np.interp(np.arange(len(s)), valid, profile[valid]), samples, valid


def _ring_height(
    sampler: Sampler, centre: FloatArray, axes: tuple[FloatArray, FloatArray, FloatArray]
) -> float | None:
    """The median disc height at :data:`DISC_RING_MM` around the disc's centre (each on a
    3 x 3 bundle of lines 1.5 mm apart); None where fewer than four are found. A bundle
    not read (beyond the images, no endplates) takes the one opposite it out too: a
    lordotic disc is taller in front than behind, and one side alone would tilt the median."""
    bundle = [(a, b) for a in (-1.5, 0.0, 1.5) for b in (-1.5, 0.0, 1.5)]
    heights: dict[tuple[float, float], float] = {}
    for du, dv in DISC_RING_MM:
        read = _bundle_profile(sampler, centre, axes, [(du + a, dv + b) for a, b in bundle])
        edges = None if read is None else _disc_edges(read[0], DISC_STEP_MM)
        if edges is not None:
            heights[(du, dv)] = (edges[1] - edges[0]) * DISC_STEP_MM
    paired = [h for (du, dv), h in heights.items() if (-du, -dv) in heights]
    return float(np.median(paired)) if len(paired) >= 4 else None


def disc_height(sampler: Sampler, line: CentreLine, level: Level, series_uid: str) -> Measurement:
    """Endplate to endplate along the local axis at the disc's middle (mid-sagittal plane)."""
    m = Measurement(QuantityName.DISC_HEIGHT, level.name, level.index, None, None, series_uid)
    zc = level.disc.middle
    t, left, posterior = line.frame(zc)
    step = DISC_STEP_MM
    s = np.arange(-20.0, 20.0 + step / 2, step)
    centre = line.point(zc)
    offsets = [(du, dv) for du in (-3.0, -1.5, 0.0, 1.5, 3.0) for dv in (-3.0, -1.5, 0.0, 1.5, 3.0)]
    read = _bundle_profile(sampler, centre, (t, left, posterior), offsets)
    # Both endplates must be in the images: 8 mm of the line either side of the middle.
    if read is None:
        m.outside("the disc is at the edge of the images")
        return m
    profile, samples, valid = read
    mid = len(s) // 2
    edges = _disc_edges(profile, step)
    if edges is None:
        m.review("endplates not found")
        return m
    lo, hi = edges
    if hi > valid[-1] - 1 / step or lo < valid[0] + 1 / step:
        m.review("an endplate is at the edge of the images")
        return m
    value = m.value = (hi - lo) * step
    m.points = [list(centre + s[0] * t + lo * step * t), list(centre + s[0] * t + hi * step * t)]
    # A cage in the disc (titanium, or PEEK with its markers) on any of the lines between
    # the endplates found: its edges may have been taken for theirs.
    around = slice(mid - int(4 / step), mid + int(4 / step))
    between = samples[:, min(int(np.floor(lo)), around.start) : max(int(np.ceil(hi)), around.stop)]
    plates = level.disc.plates
    # (the line's z per mm along it: the endplates' heights on the line are z positions)
    span = None if plates is None else (plates[1] - plates[0]) / max(abs(float(t[2])), 0.1)
    if np.nanmax(between) > METAL_HU:
        m.review(f"metal in the disc space ({value:.1f} mm measured)")
    elif np.nanmin(samples[:, int(np.floor(lo)) : int(np.ceil(hi)) + 1]) < GAS_HU:
        # Floored, a cleft still reads 60-100 HU below the disc's tissue: on coarse images
        # its edges can still beat a blurred endplate's (an independent review: 139 of 360
        # painted clefts wrong but ok after the floor, 0 with this rule; the cost, right
        # heights in vacuum discs to be checked).
        m.review(
            f"gas in the disc space (a vacuum disc; or a dark streak from metal): "
            f"{value:.1f} mm measured, where its edges may have been taken for the "
            "endplates, to be checked"
        )
    elif span is not None and value > span + PLATE_SLACK_MM:
        m.review(
            f"{value:.1f} mm measured, beyond the bright endplates the disc lies between "
            f"({span:.1f} mm apart): endplates sunk at the centre (biconcave, a Schmorl's "
            "node), or a sclerotic band or fracture line in a body taken for an endplate"
        )
    elif (ring := _ring_height(sampler, centre, (t, left, posterior))) is not None and (
        value < ring - DISC_CORE_MM
    ):
        m.review(
            f"{value:.1f} mm measured at the disc's centre, {ring:.1f} mm around it: "
            "something inside the disc space (a calcification, bone graft, gas) may have "
            "been taken for an endplate"
        )
    elif level.disc.faint:
        m.review(f"faint endplates (found by the discs' spacing): {value:.1f} mm measured")
    m.check_plausible()
    return m


def _pedicle_lr(
    sampler: Sampler, line: CentreLine, z_range: tuple[float, float]
) -> dict[str, float]:
    """Left-right offsets of the pedicles of one vertebra (upper half of the body)."""
    z0, z1 = z_range
    zc = (z0 + z1) / 2
    t, left, posterior = line.frame(zc)
    centre = line.point(zc)
    wall = _posterior_wall(sampler, centre, posterior, left)
    u = np.arange(-40.0, 40.1, 0.5)
    heights = np.linspace(0.05, 0.4, 8) * (z1 - z0)
    acc = np.zeros(len(u))
    for h in heights:
        for dv in (2.0, 4.0, 6.0):
            pts = centre + h * t + (wall + dv) * posterior + u[:, None] * left
            acc += sampler(pts, outside=-1024)
    acc /= len(heights) * 3
    out: dict[str, float] = {}
    bone = acc > PEDICLE_HU * 0.6
    zero = int(np.argmin(np.abs(u)))
    if bone[zero]:
        return out  # no canal at the midline: not a vertebra with a visible arch here
    for side, sign in (("left", 1), ("right", -1)):
        # From the canal outwards: the first bone is the pedicle's medial wall. Wider runs
        # merge with transverse processes, alae or rods, so only 12 mm count.
        i = zero
        while 0 <= i < len(u) and not bone[i]:
            i += sign
        if not 0 <= i < len(u) or abs(u[i]) > 30:
            continue
        j = i
        while 0 <= j < len(u) and bone[j]:
            j += sign
        width = min(abs(u[j - sign] - u[i]) + 0.5, 12.0)
        out[side] = float(u[i] + sign * width / 2)
    return out


def _posterior_wall(
    sampler: Sampler, centre: FloatArray, posterior: FloatArray, left: FloatArray
) -> float:
    """Distance from the body centre to its posterior wall along the AP direction.

    From a dense body's centre the wall is where the bone ends; from a hollow
    (osteoporotic) one's, it is the first cortex behind the dark marrow. The profile is the
    mean of 17 lines across 16 mm of the wall: noise grains in the marrow fade in it, the
    wall (a plate) does not, nor does it vanish where one line passes through the
    basivertebral foramen.
    """
    step = 0.25
    d = np.arange(0.0, 50.0, step)
    lines = np.stack(
        [centre + du * left + d[:, None] * posterior for du in np.arange(-8.0, 8.1, 1.0)]
    )
    profile = np.mean(sampler(lines, outside=-1024), axis=0)
    inside = ndimage.gaussian_filter1d(profile, 0.5 / step) > BONE_HU
    first = runs(inside)
    if first and first[0][0] == 0:  # a dense body: its bone ends at the wall
        stop = first[0][1]
    else:
        # A hollow body: its thin wall may be fainter than bone; the canal behind it (CSF,
        # darker than the fatty marrow) is at least 8 mm deep and starts within 30 mm.
        dark = ndimage.gaussian_filter1d(profile, 1.0 / step) < CANAL_HU
        # (A run from the centre itself is very dark marrow, not the canal.)
        canal = [r for r in runs(dark) if (r[1] - r[0]) * step >= 8.0 and 0 < r[0] * step <= 30.0]
        if not canal:
            return 15.0
        stop = canal[0][0]
    e = edge(profile, step, rising=False, start=stop - int(4 / step), stop=stop + int(3 / step))
    return (e if e is not None else stop) * step


def foraminal_height(
    sampler: Sampler,
    line: CentreLine,
    level: Level,
    side: str,
    series_uid: str,
    upper_lr: dict[str, float],
    lower_lr: dict[str, float],
    hollow: bool = False,
) -> tuple[Measurement, bool]:
    """Lowest point of the upper pedicle to highest point of the lower, along the level's axis."""
    m = Measurement(QuantityName.FORAMINAL_HEIGHT, level.name, level.index, side, None, series_uid)
    if side not in upper_lr or side not in lower_lr:
        m.review("pedicle not found")
        return m, False
    zc = level.disc.middle
    t, left, posterior = line.frame(zc)
    centre = line.point(zc)
    lr = (upper_lr[side] + lower_lr[side]) / 2
    wall = _posterior_wall(
        sampler, line.point((level.upper_z[0] + level.upper_z[1]) / 2), posterior, left
    )
    step = 0.2
    s = np.arange(-35.0, 35.0 + step / 2, step)
    zero = round(35.0 / step)
    upper_h = level.upper_z[1] - level.upper_z[0]
    tops, bottoms, aps = [], [], []
    ap_range = np.arange(wall - 2.0, wall + 14.0, 0.5)
    # Every section's row at once: (row, line, sample, xyz), five lines 0.75 mm apart.
    bases = centre + ap_range[:, None] * posterior + lr * left

    def lines(offsets: tuple[float, ...]) -> FloatArray:
        across = np.array(offsets)[:, None] * left
        return bases[:, None, None, :] + across[None, :, None, :] + (s[:, None] * t)[None, None]

    section = np.nanmean(sampler(lines((-1.5, -0.75, 0.0, 0.75, 1.5)), outside=-1024), axis=1)
    # Screws nearby, in this plane or beside it, make streaks.
    metal = bool(np.any(section > METAL_HU)) or bool(
        np.any(sampler(lines((-8.0, -4.0, 4.0, 8.0))) > METAL_HU)
    )
    solid = _pedicle_bone(section, step, hollow)
    for row, ap in enumerate(ap_range):
        profile = section[row]
        bone = solid[row]
        segments = runs(bone)
        gap = next(((a, b) for a, b in _gaps(segments, len(s)) if a <= zero < b), None)
        if gap is None:
            continue
        below = next((r for r in segments if r[1] == gap[0]), None)
        above = next((r for r in segments if r[0] == gap[1]), None)
        if below is None or above is None:
            continue
        if not all(6.0 <= (r[1] - r[0]) * step <= 0.8 * max(upper_h, 20.0) for r in (below, above)):
            continue
        w = int(2.5 / step)
        e_lo = edge(profile, step, rising=False, start=gap[0] - w, stop=gap[0] + w)
        e_hi = edge(profile, step, rising=True, start=gap[1] - w, stop=gap[1] + w)
        if e_lo is None or e_hi is None:
            continue
        tops.append(e_lo)
        bottoms.append(e_hi)
        aps.append(ap)
    if len(tops) < 3:
        m.review("pedicle edges not found on enough sections")
        return m, metal
    low_top = ndimage.median_filter(np.array(tops), size=3, mode="nearest")
    up_bottom = ndimage.median_filter(np.array(bottoms), size=3, mode="nearest")
    # A pedicle's edge is a smooth arch across the sections; where it jumps, another bone
    # (a facet, the lamina) has been reached: keep the longest smooth stretch of each.
    keep_top = _smooth_stretch(low_top * step, np.array(aps))
    keep_bottom = _smooth_stretch(up_bottom * step, np.array(aps))
    i_top = int(keep_top[np.argmax(low_top[keep_top])])
    i_bottom = int(keep_bottom[np.argmin(up_bottom[keep_bottom])])
    m.value = (float(up_bottom[i_bottom]) - float(low_top[i_top])) * step
    p_top = centre + aps[i_top] * posterior + lr * left + (s[0] + low_top[i_top] * step) * t
    p_bottom = (
        centre + aps[i_bottom] * posterior + lr * left + (s[0] + up_bottom[i_bottom] * step) * t
    )
    m.points = [list(p_top), list(p_bottom)]
    spikes = (
        max(
            float(np.max(np.abs(np.array(tops) - low_top))),
            float(np.max(np.abs(np.array(bottoms) - up_bottom))),
        )
        * step
    )
    if metal and spikes > 1.0:
        m.review("metal artefacts make the pedicle edges inconsistent")
    m.check_plausible()
    return m, metal


def _pedicle_bone(section: FloatArray, step: float, hollow: bool) -> FloatArray:
    """Bone in a para-sagittal section (rows: AP, columns: along the spine).

    A dense pedicle is bone through and through. A hollow (osteoporotic) one is a cortical
    oval round marrow no brighter than soft tissue: its bone is the lower threshold's, with
    the marrow inside its ovals filled — the holes that hold fat (the foramen's, below
    :data:`FAT_HU`) are not pedicle and stay open.
    """
    smooth = ndimage.gaussian_filter1d(section, 0.5 / step, axis=1)
    if not hollow:
        return smooth > PEDICLE_HU
    bone = ndimage.binary_closing(smooth > BONE_HU, structure=np.ones((3, 5)))
    holes, count = ndimage.label(ndimage.binary_fill_holes(bone) & ~bone)
    if count:
        means = ndimage.mean(section, holes, index=np.arange(1, count + 1))
        marrow = np.flatnonzero(np.asarray(means) > FAT_HU) + 1
        bone |= np.isin(holes, marrow)
    return bone


def _smooth_stretch(edge_mm: FloatArray, aps: FloatArray) -> FloatArray:
    """Indices of the longest run of sections whose edge moves < 1 mm between neighbours."""
    breaks = (np.abs(np.diff(edge_mm)) > 1.0) | (np.diff(aps) > 0.75)
    best: tuple[int, int] = (0, 1)
    start = 0
    for i, broken in enumerate(breaks, start=1):
        if broken:
            start = i
        if i + 1 - start > best[1] - best[0]:
            best = (start, i + 1)
    return np.arange(best[0], best[1])


def _gaps(segments: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    edges = [0] + [x for r in segments for x in r] + [n]
    return [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b > a]


def craniocaudal_step(image: sitk.Image) -> float:
    """The spacing (mm) of the image's axis nearest the patient's long axis: the slice
    spacing of an axial stack, the pixel spacing of a sagittal or coronal one."""
    direction = np.abs(np.array(image.GetDirection()).reshape(3, 3))
    return float(image.GetSpacing()[int(np.argmax(direction[2]))])


def measure(image: sitk.Image, series_uid: str) -> tuple[CtModel, list[Measurement]]:
    """All CT measurements of one volume."""
    model = build_model(image)
    sampler = Sampler.of(image)
    out: list[Measurement] = []
    pedicles: dict[tuple[float, float], dict[str, float]] = {}
    for level in model.levels:
        out.append(disc_height(sampler, model.centre, level, series_uid))
        for z_range in (level.upper_z, level.lower_z):
            if z_range not in pedicles:
                pedicles[z_range] = _pedicle_lr(sampler, model.centre, z_range)
        (left, metal_l), (right, metal_r) = (
            foraminal_height(
                sampler,
                model.centre,
                level,
                side,
                series_uid,
                pedicles[level.upper_z],
                pedicles[level.lower_z],
                model.hollow,
            )
            for side in ("left", "right")
        )
        if (
            (metal_l or metal_r)
            and left.value is not None
            and right.value is not None
            and abs(left.value - right.value) > METAL_ASYMMETRY_MM
        ):
            why = (
                f"left and right differ by {abs(left.value - right.value):.1f} mm "
                "next to metal: streaks may have been taken for bone"
            )
            left.review(why)
            right.review(why)
        if model.hollow:
            for m in (left, right):
                if m.value is not None:
                    m.review(
                        f"osteoporotic bone (hollow vertebral bodies and pedicles): "
                        f"{m.value:.1f} mm measured on faint pedicle edges, to be checked"
                    )
        out += [left, right]
    # Whole-model doubts: every value is measured, none can be trusted. (In hollow bodies
    # only the endplates mark a disc, and a screw's streaks make bright bands as an endplate
    # does.)
    doubts = [
        (
            model.missed_disc,
            "{:.1f} mm measured, but a disc may have been missed along the "
            "spine: the level is uncertain",
        ),
        (
            model.from_ribs,
            "{:.1f} mm measured at a level named from T12's ribs without the sacrum in view "
            "(a transitional spine would shift it): the level is to be confirmed",
        ),
        (
            model.transitional,
            "{:.1f} mm measured at a level named from the sacrum in a "
            "transitional spine (not five lumbar vertebrae): the level is to be confirmed",
        ),
        (
            model.hollow and model.metal,
            "osteoporotic bone with metal: {:.1f} mm measured "
            "where the streaks may have been taken for an endplate, to be checked",
        ),
        (
            (step := craniocaudal_step(image)) > COARSE_CRANIOCAUDAL_MM,
            "{:.1f} mm measured on images "
            f"{step:.1f} mm apart along the spine: each end of a height is placed only to "
            "within about half of that, to be checked",
        ),
    ]
    for doubt, reason in doubts:
        for m in out:
            if doubt and m.value is not None:
                m.review(reason.format(m.value))
    return model, out
