"""Impossible combinations of values become ``needs_review``: on a real CT where the
detector went wrong, and rule by rule on hand-made values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from services.imaging.analysis import consistency, ct
from services.imaging.analysis.report import Measurement
from tools.reference import Bones, measured_value

DATA = Path(__file__).parents[2] / "data"
TS = DATA / "totalsegmentator-ct"  # the real abdominal CT and its bone masks


def _ts_ct() -> sitk.Image:
    return sitk.ReadImage(str(TS / "ts_example_ct.nii.gz"), sitk.sitkFloat32)


def _ts_bone(stem: str) -> np.ndarray:
    """One of TotalSegmentator's bone masks of that CT, as a (k, j, i) boolean array."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(TS / "masks" / f"{stem}.nii.gz"))) > 0


def _like(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    """``array`` as an image on ``image``'s grid."""
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


COARSE = "3.0 mm apart along the spine"  # the real abdominal CT's slices: every height checked


def _m(quantity: str, index: int, side: str | None, value: float) -> Measurement:
    return Measurement(quantity, None, index, side, value, "1.2.3")


def test_the_real_abdominal_ct_is_named_from_its_sacrum_as_its_masks_name_it() -> None:
    """TotalSegmentator's abdominal CT (3 mm voxels, T12 to the coccyx). Before the hollow-
    body detector its raw values held a 22.7 / 9.2 mm left/right pair and a 19.2 mm disc
    between 5.7 and 8.7 mm ones, each plausible alone (the hand-made cases below keep those
    numbers), on a centre line the femoral heads bent by 18 mm. Now the column is followed
    and its six discs are found between their endplates, about 35 mm apart. Its sacrum's
    tilted sections are not detected as bodies (the column stops 15 mm below L5-S1), but its
    alae span the sections just below that disc: the levels are named from it, with a
    warning, and each name is the one TotalSegmentator's own masks give the bones above and
    below the disc. The foraminal heights, on the faint pedicles of its dark marrow, are
    never ``ok``."""
    model, measurements = ct.measure(_ts_ct(), "1.2.3")
    consistency.check(
        measurements, scatter_mm=model.centre.residual, body_heights=model.body_heights()
    )
    assert model.centre.residual < consistency.UNRELIABLE_LINE_MM
    assert model.hollow and model.sacrum and not model.missed_disc
    assert not model.transitional and not model.from_ribs
    assert any("sacrum recognised by its alae" in w for w in model.warnings)
    bones = Bones.read(TS / "masks")
    discs = {m.level: m for m in measurements if m.quantity == "disc_height"}
    assert list(discs) == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    assert all(bones.level_at(m.points) == level for level, m in discs.items())
    spacing = np.diff([lv.disc.z for lv in model.levels])
    assert np.all((spacing > -45.0) & (spacing < -30.0)), spacing
    assert all(6 <= (measured_value(m) or 0.0) <= 14 for m in discs.values())
    assert all(COARSE in (m.reason or "") for m in discs.values())
    heights = [m for m in measurements if m.quantity == "foraminal_height"]
    assert heights and all(m.status == "needs_review" and m.reason for m in heights)


def test_the_real_abdominal_ct_cut_anywhere_names_no_level_wrongly() -> None:
    """The same CT with its lowest slices cut away, in steps of 3 mm that move its voxels
    against the analysis's 2 mm grid (the L5-S1 disc's dip and the gap in its bodies'
    shells once fell 4 mm apart on one phase, and the disc was lost): with the sacrum's
    alae in view the levels are named from it; cut above them, the levels are named from
    T12's ribs or numbered — and every name is the masks'."""
    image = _ts_ct()
    bones = Bones.read(TS / "masks")
    for cut in (3, 21, 39, 45):  # 9 to 135 mm cut; the alae end 16 mm under L5-S1
        model, measurements = ct.measure(image[:, :, cut:], "1.2.3")
        assert model.sacrum == (cut <= 39), cut
        for m in measurements:
            if m.quantity == "disc_height" and m.level is not None:
                assert bones.level_at(m.points) == m.level, (cut, m.level)
        named = [m.level for m in measurements if m.quantity == "disc_height"]
        if model.sacrum:
            assert named == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"], cut


def test_dense_transverse_processes_of_l5_are_not_taken_for_the_alae() -> None:
    """A lumbar field (mid-L1 to lower L5: no ribs, no sacrum) of the same osteoporotic CT
    whose L5 arch is as dense as L3's (+150 HU on L5's mask behind its body, found by an
    independent review): the filled bone of the hollow L5 joins its transverse processes
    across the canal into a 91-94 mm run just under L4-L5. That is no sacrum (the alae
    and sacroiliac joints span 120-170 mm there): the levels stay numbered, never named
    one level too low."""
    image = _ts_ct()
    array = sitk.GetArrayFromImage(image)
    behind = np.arange(array.shape[1])[None, :, None] < 37  # rows behind L5's body
    dense = _like(image, np.where(_ts_bone("vertebrae_L5") & behind, array + 150, array))
    model, measurements = ct.measure(dense[:, :, 48:98], "1.2.3")  # z 238-385 mm
    assert not model.sacrum
    assert all(m.level is None for m in measurements)


def test_a_band_beyond_the_endplate_is_no_endplate() -> None:
    """A sclerotic band (one 3 mm slice at 350 HU across L5's body, 9 mm above its lower
    endplate, found by an independent review) read as L5-S1's upper endplate: 18.9 mm for
    10.0, `ok`. In hollow bone a disc is found between two bright endplates; a height whose
    ends lie beyond them needs review, with the value in the reason. The other levels keep
    their values."""
    image = _ts_ct()
    array = sitk.GetArrayFromImage(image)
    k = round((241.0 - image.GetOrigin()[2]) / 3.0)
    body = _ts_bone("vertebrae_L5")[k] & (np.arange(array.shape[1])[:, None] >= 37)
    array[k][body] = np.maximum(array[k][body], 350.0)
    _, measurements = ct.measure(_like(image, array), "1.2.3")
    discs = {m.level: m for m in measurements if m.quantity == "disc_height"}
    assert discs["L5-S1"].status == "needs_review"
    assert "beyond the bright endplates" in (discs["L5-S1"].reason or "")
    others = [m for level, m in discs.items() if level != "L5-S1"]
    assert others and all(COARSE in (m.reason or "") for m in others)


def _ball(image: sitk.Image, centre: np.ndarray, radius: float, hu: float) -> sitk.Image:
    """``image`` with a ball of ``hu`` (mm, LPS) painted in: a calcification."""
    array = sitk.GetArrayFromImage(image)
    k, j, i = np.indices(array.shape)
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    world = np.array(image.GetOrigin()) + (index * image.GetSpacing()) @ direction.T
    inside = (np.linalg.norm(world - centre, axis=1) <= radius).reshape(array.shape)
    return _like(image, np.where(inside, np.maximum(array, hu), array).astype(np.float32))


def test_a_calcification_in_the_disc_is_no_endplate() -> None:
    """A 400 HU ball (5 mm radius) in a disc, 3 mm off its middle, on both real CTs: its
    edge was taken for an endplate (TotalSegmentator's L3-L4 read 6.0 mm for its masks'
    12.0, TPTBox's 4.5 for 12.2, both ``ok``). Around the disc's centre (8 mm to each side,
    6 mm in front and behind) the disc keeps its height, so the centre's needs review; the
    other levels keep their values (the ball moves the centre line a little) and status (the
    abdominal CT's are all to be checked: its slices are 3 mm apart)."""
    tptbox = sitk.ReadImage(str(DATA / "tptbox-ct/sub-ct_label-22_ct.nii.gz"), sitk.sitkFloat32)
    for image, level in ((_ts_ct(), "L3-L4"), (tptbox, None)):
        model, clean = ct.measure(image, "1.2.3")
        disc = next(lv for lv in model.levels if lv.name == level)
        centre = model.centre.point(disc.disc.middle) + np.array([0.0, 0.0, 3.0])
        _, measurements = ct.measure(_ball(image, centre, 5.0, 400.0), "1.2.3")
        heights = {m.level_index: m for m in measurements if m.quantity == "disc_height"}
        assert heights[disc.index].status == "needs_review", heights[disc.index].value
        assert "something inside the disc space" in (heights[disc.index].reason or "")
        before = {m.level_index: m for m in clean if m.quantity == "disc_height"}
        for index, m in heights.items():
            if index != disc.index:
                assert (m.status, m.reason) == (before[index].status, before[index].reason) or (
                    COARSE in (m.reason or "") and COARSE in (before[index].reason or "")
                )
                assert (
                    abs((measured_value(m) or 0.0) - (measured_value(before[index]) or 0.0)) < 0.5
                )


def test_a_field_ending_near_a_disc_does_not_flag_it() -> None:
    """The same CT cut 19.5 mm above its L4-L5 disc's centre (an independent review): the
    bundles behind the disc lie partly beyond the images and were dropped, and the median
    of the rest (in front: taller, the disc is lordotic) flagged a right value (9.0 mm, the
    masks' gap 9.9) as holding something. Each bundle now needs the 8 mm either side of the
    disc's middle, as the centre does, and one not read takes the one opposite it out too.
    (The value is to be checked all the same: the slices are 3 mm apart.)"""
    image = _ts_ct()
    model, _ = ct.measure(image, "1.2.3")
    disc = next(lv for lv in model.levels if lv.name == "L4-L5").disc
    top = int(np.ceil((model.centre.point(disc.middle)[2] + 19.5 - image.GetOrigin()[2]) / 3.0))
    _, measurements = ct.measure(image[:, :, :top], "1.2.3")
    height = min(
        (m for m in measurements if m.quantity == "disc_height" and m.points),
        key=lambda m: abs(float(np.mean([p[2] for p in m.points])) - disc.middle),
    )
    assert "something inside" not in (height.reason or "") and measured_value(height), height.reason


def test_gas_in_the_disc_is_no_endplate() -> None:
    """A vacuum disc: a cleft of gas (-900 HU, 24 x 17 mm across, 1.5 mm thick) in the middle
    of the real TPTBox crop's disc, common in the degenerated discs of this study's
    patients. The gas's edges against the disc's tissue are steeper than the faint
    osteoporotic endplates', and were taken for them: 1.8 mm for 12, ``ok`` (an independent
    review). Gas now reads as no darker than 0 HU: the endplates are found again, within
    1 mm of the disc without the cleft; and as a floored cleft still contrasts with the
    disc (on coarser images its edges can still win), a height with gas between its ends is
    to be checked, its value in the reason."""
    image = sitk.ReadImage(str(DATA / "tptbox-ct/sub-ct_label-22_ct.nii.gz"), sitk.sitkFloat32)
    model, clean = ct.measure(image, "1.2.3")
    disc = model.levels[0].disc
    t, left, posterior = model.centre.frame(disc.middle)
    array = sitk.GetArrayFromImage(image)
    k, j, i = np.indices(array.shape)
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    offset = np.array(image.GetOrigin()) + (index * image.GetSpacing()) @ direction.T
    offset -= model.centre.point(disc.middle)
    cleft = (offset @ left / 12.0) ** 2 + (offset @ posterior / 8.4) ** 2 + (offset @ t / 0.75) ** 2
    gas = np.where((cleft <= 1.0).reshape(array.shape), -900.0, array).astype(np.float32)
    _, measurements = ct.measure(_like(image, gas), "1.2.3")
    before = next(m for m in clean if m.quantity == "disc_height")
    height = next(m for m in measurements if m.quantity == "disc_height")
    assert height.status == "needs_review" and "gas in the disc space" in (height.reason or "")
    assert before.status == "ok" and before.value is not None
    assert abs((measured_value(height) or 0.0) - before.value) < 1.0, (height.reason, before.value)


def test_metal_in_front_of_the_spine_is_not_taken_for_screws() -> None:
    """A stent graft's wire 45 mm in front of the bodies (or an anterior clip) is one piece,
    not a pair of screws beside the canal: the bodies behind it are still detected and the
    column keeps its discs and its names (a first version of the screws-in-front rule lost
    four discs)."""
    image = _ts_ct()
    line = ct.measure(image, "1.2.3")[0].centre
    array = sitk.GetArrayFromImage(image)
    for z in np.arange(250.0, 350.0, 3.0):
        point = (float(line.x(z)) + 15, float(line.y(z)) - 45, float(z))
        i, j, k = image.TransformPhysicalPointToIndex(point)
        array[k, j - 1 : j + 1, i - 1 : i + 1] = 3000.0
    model, _ = ct.measure(_like(image, array), "1.2.3")
    assert model.metal
    names = [lv.name for lv in model.levels]
    assert names == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"], [
        round(lv.disc.z) for lv in model.levels
    ]


def test_left_and_right_that_cannot_both_be_right() -> None:
    pair = [_m("foraminal_height", 0, "left", 22.7), _m("foraminal_height", 0, "right", 9.2)]
    normal = [_m("foraminal_height", 1, "left", 19.0), _m("foraminal_height", 1, "right", 17.5)]
    # A real one-sided stenosis (20 vs 13 mm) is a finding, not an error.
    unilateral = [_m("foraminal_height", 2, "left", 20.0), _m("foraminal_height", 2, "right", 13.0)]
    consistency.apply(consistency.lateral_asymmetry(pair + normal + unilateral))
    assert [m.status for m in pair] == ["needs_review", "needs_review"]
    assert all(m.status == "ok" for m in normal + unilateral)


def test_a_disc_far_higher_than_both_neighbours_or_its_bodies() -> None:
    discs = [_m("disc_height", i, None, v) for i, v in enumerate((9.0, 10.0, 25.0, 9.5, 4.0))]
    consistency.apply(consistency.disc_jumps(discs))
    assert [m.status for m in discs] == [
        "ok",
        "ok",
        "needs_review",
        "ok",
        "ok",
    ]  # collapse is a finding
    # A normal disc between two collapsed ones, and one next to a wrongly tiny one, stay ok.
    degenerate = [_m("disc_height", i, None, v) for i, v in enumerate((5.0, 12.0, 5.5, 1.5, 10.0))]
    consistency.apply(consistency.disc_jumps(degenerate))
    assert all(m.status == "ok" for m in degenerate)
    tall = [_m("disc_height", 0, None, 16.0), _m("disc_height", 1, None, 11.0)]
    consistency.apply(consistency.disc_to_bodies(tall, {0: [24.0, 25.0], 1: [15.0, 27.0]}))
    assert [m.status for m in tall] == ["needs_review", "ok"]  # 11 mm beside a fracture is fine


def test_rules_judge_the_values_as_measured_and_keep_every_reason() -> None:
    discs = [_m("disc_height", i, None, v) for i, v in enumerate((6.0, 18.0, 13.0, 6.0))]
    consistency.check(discs, scatter_mm=0.0, body_heights={1: [25.0]})
    flagged = [m.level_index for m in discs if m.status == "needs_review"]
    again = [_m("disc_height", i, None, v) for i, v in enumerate((6.0, 18.0, 13.0, 6.0))]
    consistency.apply(
        consistency.disc_jumps(again) + consistency.disc_to_bodies(again, {1: [25.0]})
    )
    assert flagged == [m.level_index for m in again if m.status == "needs_review"]
    both = [_m("disc_height", 0, None, 9.0)]
    consistency.check(both, scatter_mm=18.0, body_heights={0: [12.0]})
    assert "scatters" in (both[0].reason or "") and "proportion" in (both[0].reason or "")


def test_an_unreliable_centre_line_leaves_nothing_ok() -> None:
    values = [_m("disc_height", 0, None, 9.0), _m("foraminal_height", 0, "left", 18.0)]
    consistency.apply(consistency.unreliable_model(values, scatter_mm=3.3))  # a phantom's
    assert all(m.status == "ok" for m in values)
    consistency.apply(consistency.unreliable_model(values, scatter_mm=18.3))
    assert all(m.status == "needs_review" and m.value is None for m in values)
