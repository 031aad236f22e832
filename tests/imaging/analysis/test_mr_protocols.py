"""The lumbar MR protocols of practice, on phantoms of other anatomy than the tuned ones
(more lordosis, more noise, the stenosis at another level): axial T2 as angled blocks per
disc (in one series, or one series per level) named from the sagittal T2; without it,
numbered and not named; the volume not measurable (the coverage is not contiguous)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.imaging.analysis.pipeline import Analysis, analyze_datasets, read_folder
from tools.phantom import PhantomSpec, write_phantom

ANATOMY = {
    "modality": "MR",
    "pixel_spacing": 0.7,
    "slice_spacing": 4.0,
    "lordosis": 52.0,
    "noise": 25.0,
    "stenosis": "central",
    "stenosis_levels": ("L3-L4",),
    "seed": 17,
}


# The accuracy bench's 4 mm axial T2 stack (bench/analysis.py)
BENCH_STACK: dict[str, Any] = {
    "modality": "MR",
    "pixel_spacing": 0.7,
    "slice_spacing": 4.0,
    "noise": 20.0,
    "stenosis": "central",
}

# An independent review's oblique stack: 1 mm pixels, 3 mm slices, settled roots; a lateral
# fat pad is seen in more slices than the sac, which drifts 50 mm across the stack.
FAT_PAD_STACK: dict[str, Any] = {
    "pixel_spacing": 1.0,
    "slice_spacing": 3.0,
    "noise": 40.0,
    "orientation": "oblique",
    "lordosis": 30.0,
    "roots": "sedimented",
    "severity": 0.5,
    "seed": 71,
}


def _analysed(folder: Path, **spec: Any) -> tuple[Analysis, dict[str, Any]]:
    truth = write_phantom(PhantomSpec(**{**ANATOMY, **spec}), folder)
    return analyze_datasets(read_folder(folder)), truth


@pytest.fixture(scope="module")
def blocks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Analysis, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("blocks")
    return _analysed(folder, protocol="blocks", block_slices=5, sagittal=True)


def _areas(analysis: Analysis) -> dict[str | None, float | None]:
    return {
        m.level: m.value for m in analysis.result.measurements if m.quantity == "dural_sac_area"
    }


def _check_against_truth(analysis: Analysis, truth: dict[str, Any]) -> None:
    expected = {
        m["level"]: m["value"] for m in truth["measurements"] if m["quantity"] == "dural_sac_area"
    }
    found = _areas(analysis)
    assert set(found) == set(expected) == {"L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"}
    errors = {level: abs(found[level] - value) / value for level, value in expected.items()}  # type: ignore[operator]
    assert np.mean(list(errors.values())) < 0.08 and max(errors.values()) < 0.15, errors
    for m in analysis.result.measurements:
        if m.quantity == "dural_sac_volume":
            assert m.status == "not_measurable" and "not contiguous" in (m.reason or "")
    assert analysis.result.status == "ok", analysis.result.warnings
    assert len(analysis.key_images) == 5


def test_angled_blocks_in_one_series_are_measured_per_level_named_by_the_sagittal(
    blocks: tuple[Analysis, dict[str, Any]],
) -> None:
    analysis, truth = blocks
    _check_against_truth(analysis, truth)
    assert any("angled block" in r for r in analysis.result.selection)
    assert any("sagittal T2" in r for r in analysis.result.selection)
    stack_reasons = [r for r in analysis.result.selection if "slice orientations" in r]
    assert stack_reasons  # the mixed series is not mistaken for one stack


def test_one_series_per_level_is_measured_the_same_way(tmp_path: Path) -> None:
    analysis, truth = _analysed(tmp_path, protocol="block-series", block_slices=3, sagittal=True)
    _check_against_truth(analysis, truth)
    series = {m.series_instance_uid for m in analysis.result.measurements}
    assert len(series) == 5  # each level's value names its own series


def test_without_a_sagittal_series_the_blocks_are_numbered_not_named(tmp_path: Path) -> None:
    analysis, _ = _analysed(tmp_path, protocol="blocks", block_slices=4, sagittal=False)
    areas = [m for m in analysis.result.measurements if m.quantity == "dural_sac_area"]
    assert [m.level for m in areas] == [None] * 5
    assert [m.level_index for m in areas] == [0, 1, 2, 3, 4]
    assert any("no sagittal T2 names the levels" in w for w in analysis.result.warnings)
    # Cranial first: the stenotic L3-L4 is the third block, and the smallest.
    values = [m.value for m in areas]
    assert all(v is not None for v in values)
    assert int(np.argmin(values)) == 2, values  # type: ignore[arg-type]


def test_a_narrowed_block_on_coarse_pixels_needs_review(tmp_path: Path) -> None:
    """On 1.0 mm pixels the narrowed level's area waits for a reader (on stacks such areas
    read 12-24 % large), its key image says so; the levels of normal calibre stay `ok`."""
    analysis, _ = _analysed(
        tmp_path, protocol="blocks", block_slices=4, sagittal=True, pixel_spacing=1.0
    )
    areas = {m.level: m for m in analysis.result.measurements if m.quantity == "dural_sac_area"}
    narrowed = areas.pop("L3-L4")
    assert narrowed.status == "needs_review" and "1.0 mm pixels" in (narrowed.reason or "")
    assert {m.status for m in areas.values()} == {"ok"}, areas
    captions = [k.caption for k in analysis.key_images if k.caption.startswith("L3-L4")]
    assert len(captions) == 1 and "review:" in captions[0]


def test_blocks_with_roots_settled_give_no_area_wrong_but_ok(tmp_path: Path) -> None:
    """Angled blocks over a sac whose roots lie against its back (the CSF a third short of
    the dura's area): one slice per block let half the areas pass 27-33 % low, `ok`; pooled
    over every block's slices the settled tissue holds them all, with the reason, and the
    key images say so."""
    analysis, truth = _analysed(
        tmp_path,
        protocol="blocks",
        block_slices=4,
        sagittal=True,
        roots="sedimented",
        lordosis=45.0,
        seed=305,  # four of five areas 32 % low, `ok`, before
    )
    expected = {
        m["level"]: m["value"] for m in truth["measurements"] if m["quantity"] == "dural_sac_area"
    }
    areas = {m.level: m for m in analysis.result.measurements if m.quantity == "dural_sac_area"}
    assert set(areas) == set(expected)
    for level, m in areas.items():
        if m.status == "ok":
            assert m.value is not None and abs(m.value - expected[level]) / expected[level] < 0.15
    held = [m for m in areas.values() if "all along the sac" in (m.reason or "")]
    assert held, areas
    assert not [m for m in areas.values() if m.status == "ok"], areas  # all of them, here
    assert len(analysis.key_images) == len(areas)
    assert all("review:" in k.caption for k in analysis.key_images)


@pytest.mark.integration
@pytest.mark.usefixtures("dcmtk")
def test_the_service_completes_and_measures_a_study_of_blocks(
    imaging_factory: Any, tmp_path: Path
) -> None:
    """Sent by C-STORE as a PACS routes it: one series per level plus the sagittal T2; the
    completion's content check accepts the short per-level series, the analysis names them."""
    from tests.harness.dcmtk import storescu
    from tests.harness.net import wait_until

    folder = tmp_path / "study"
    truth = write_phantom(
        PhantomSpec(**{**ANATOMY, "protocol": "block-series", "sagittal": True, "seed": 23}),
        folder,
    )
    study = truth["study_instance_uid"]
    server = imaging_factory()
    sent = storescu(server.dicom_port, server.ae_title, sorted(folder.glob("*.dcm")))
    assert sent.returncode == 0, sent.stderr
    with server.client() as client:

        def measured() -> bool:
            return client.get(f"/api/studies/{study}/measurements").status_code == 200

        assert wait_until(measured, timeout=180, interval=0.5)
        body = client.get(f"/api/studies/{study}/measurements").json()
    areas = {m["level"]: m for m in body["measurements"] if m["quantity"] == "dural_sac_area"}
    assert set(areas) == {"L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"}
    assert all(m["status"] == "ok" for m in areas.values()), areas
    assert len(body["key_images"]) == 5


def test_an_oblique_stack_without_the_sacrum_is_named_from_the_sagittal(tmp_path: Path) -> None:
    """The axial stack ends above the sacrum (so alone it cannot name its levels); the
    sagittal T2 shows the sacrum and names them — not shifted by one."""
    analysis, truth = _analysed(
        tmp_path,
        orientation="oblique",
        slice_spacing=3.0,
        pixel_spacing=0.8,
        sacrum_in_view=False,
        sagittal=True,
    )
    expected = {
        m["level"]: m["value"] for m in truth["measurements"] if m["quantity"] == "dural_sac_area"
    }
    found = {k: v for k, v in _areas(analysis).items() if k is not None and v is not None}
    assert set(expected) == {"L1-L2", "L2-L3", "L3-L4", "L4-L5"}
    # Named, and not shifted: each value is its own level's (the collapsed, dark disc of the
    # stenotic L3-L4 included).
    assert set(expected) <= set(found), (found, analysis.result.warnings)
    for level in expected:
        assert abs(found[level] - expected[level]) / expected[level] < 0.2, (level, found)
    assert any("named from the sagittal" in w for w in analysis.result.warnings)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="known weakness: a median 52 % of the canal masks' pixels are darker than half the "
    "CSF signal, of intermediate signal behind the CSF (neural tissue against the back of the "
    "dura, where the masks' cord label sits); the sac counts what CSF surrounds, so it "
    "measures about half the masks' area",
)
def test_real_mr_sac_area_matches_the_canal_masks() -> None:
    """The real sagittal T2 with its cord and canal masks (TPTBox, labelled cervical): the sac area
    on each axial reformat against the masks' area (reference from the masks)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[3]))
    from bench.analysis import canal_reference
    from services.imaging.analysis import mr

    axial, reference = canal_reference(Path(__file__).parents[2] / "data" / "tptbox-mri")
    sacs = [s for s in mr.find_sacs(axial) if reference[s.k] > 20]
    assert len(sacs) >= 0.8 * int((reference > 20).sum())  # the sac is followed
    errors = [abs(s.area - reference[s.k]) / reference[s.k] for s in sacs]
    assert np.median(errors) < 0.10, np.median(errors)


def test_tissue_settled_all_along_the_sac_holds_every_value_and_says_so() -> None:
    """Pooled over the slices, tissue against the CSF's back over 4 % of their area: an
    `ok` value needs review with the share in the reason; one in review for another reason
    says it too; a value not measurable stays so; under 4 % nothing changes."""
    from services.common.vocabulary import QuantityName
    from services.imaging.analysis import mr
    from services.imaging.analysis.report import Measurement

    def sac(k: int, against: float) -> mr.SliceSac:
        return mr.SliceSac(k, np.zeros(3), 100.0, 100.0, np.zeros((4, 3)), against)

    def values() -> list[Measurement]:
        area = QuantityName.DURAL_SAC_AREA
        ok = Measurement(area, "L3-L4", 0, None, 120.0, "1.2.3")
        coarse = Measurement(area, "L4-L5", 1, None, 60.0, "1.2.3")
        coarse.review("60 mm² measured on 1.0 mm pixels")
        outside = Measurement(QuantityName.DURAL_SAC_VOLUME, "L4-L5", 1, None, None, "1.2.3")
        outside.outside("the level extends beyond the images")
        return [ok, coarse, outside]

    clean = values()
    mr.hold_for_settled_tissue(clean, [sac(k, 3.0) for k in range(10)])  # 3 %
    assert [m.status for m in clean] == ["ok", "needs_review", "not_measurable"]
    held = values()
    mr.hold_for_settled_tissue(held, [sac(k, 0.0 if k % 2 else 10.0) for k in range(10)])  # 5 %
    ok, coarse, outside = held
    assert ok.status == "needs_review" and ok.value is None
    assert ok.reason is not None and ok.reason.startswith("120 mm² of CSF measured")
    assert "all along the sac (about 5.0% more over the 10 slices" in ok.reason
    assert coarse.reason is not None and coarse.reason.startswith("60 mm² measured on 1.0 mm")
    assert "all along the sac" in coarse.reason
    assert outside.status == "not_measurable" and "all along" not in (outside.reason or "")


def test_real_mr_whose_csf_misses_half_the_canal_holds_every_value() -> None:
    """The real MR whose CSF is 55 % below its canal masks (the `xfail` above): most of its
    slices pass the per-slice roots' check, but pooled over the stack the tissue against
    the CSF's back passes the stack-wide share, so no value of such a stack would be `ok`."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[3]))
    from bench.analysis import canal_reference
    from services.imaging.analysis import mr

    axial, _reference = canal_reference(Path(__file__).parents[2] / "data" / "tptbox-mri")
    sacs = mr.find_sacs(axial)
    passing = sum(s.doubt(s.area) is None for s in sacs)
    assert passing > len(sacs) / 2  # what each slice alone would let through
    reason = mr.stack_roots_doubt(sacs)
    assert reason is not None and "all along the sac" in reason


def test_roots_against_the_dura_are_not_read_as_the_sac(tmp_path: Path) -> None:
    """The phantom's roots lying together in the back of the sac (tools/phantom.py, roots=
    "sedimented", as in a supine patient): the CSF alone is a third smaller than the dura's
    area. Each sac area and volume is within 15 % of the truth, or withheld for review; most
    are withheld with the reason (tissue against the CSF's back)."""
    analysis, truth = _analysed(tmp_path, roots="sedimented")
    expected = {
        (m["quantity"], m["level"]): m["value"]
        for m in truth["measurements"]
        if m["quantity"] in ("dural_sac_area", "dural_sac_volume")
    }
    found = {(m.quantity, m.level): m for m in analysis.result.measurements}
    assert set(expected) <= set(found)  # the sac is found and followed at every level
    flagged = 0
    for key, value in expected.items():
        m = found[key]
        if m.status == "ok":
            assert m.value is not None and abs(m.value - value) / value < 0.15, (key, m)
        elif m.status == "needs_review":
            flagged += "intermediate signal" in (m.reason or "")
    assert flagged >= len(expected) // 2, flagged


def test_clean_sacs_are_not_doubted_for_roots(tmp_path: Path) -> None:
    """The same anatomy with its rootlets floating in the CSF: no value is withheld for
    tissue against the CSF's back (the stenotic level's sac, narrowed, included)."""
    analysis, _truth = _analysed(tmp_path)
    reasons = [m.reason or "" for m in analysis.result.measurements]
    assert not [r for r in reasons if "intermediate signal" in r], reasons


def test_a_slice_whose_sac_runs_into_a_disc_is_not_the_sac() -> None:
    """An oblique 4 mm stack (the accuracy bench's, seed 147): at the stenotic L3-L4 one
    slice's "sac" ran into the disc's bright nucleus (494 mm², 2.8 times the stack's median)
    and pulled the interpolated area at the disc to 85 mm² for 52, `ok`. Such a slice is
    left out: the area is within 15 % (or withheld)."""
    from services.imaging.analysis import mr
    from tools.phantom import ground_truth, render

    spec = PhantomSpec(
        **BENCH_STACK,
        orientation="oblique",
        top="T12",
        stenosis_levels=("L3-L4", "L4-L5"),
        severity=0.65,
        seed=147,
    )
    image, spine = render(spec)
    truth = ground_truth(spine, spec, "x")
    expected = {
        m["level"]: m["value"] for m in truth["measurements"] if m["quantity"] == "dural_sac_area"
    }
    _model, measurements = mr.measure(image, "x")
    areas = {m.level: m for m in measurements if m.quantity == "dural_sac_area"}
    for level, value in expected.items():
        m = areas[level]
        assert m.status != "ok" or abs(m.value - value) / value < 0.15, (level, m)  # type: ignore[operator]
    assert areas["L3-L4"].status == "ok"  # its own slice, at the disc, is the sac


def test_the_sac_is_followed_where_fat_passes_the_csf_threshold() -> None:
    """With the roots settled, the CSF is a smaller share of the image and bright fat
    passes its threshold in many places: the sac is still the structure seen in the most
    slices (it was followed on 17 of 56 slices when the candidates' median position was
    the start)."""
    from services.imaging.analysis import mr
    from tools.phantom import render

    spec = PhantomSpec(**BENCH_STACK, seed=3, roots="sedimented")
    image, _spine = render(spec)
    sacs = mr.find_sacs(image)
    assert len(sacs) >= 50, len(sacs)
    assert np.ptp([s.centroid[0] for s in sacs]) < 10  # one structure: the sac, in the midline


@pytest.mark.parametrize(
    "spec",
    [
        # A bright fat pad seen in about as many slices as the sac (the track once started
        # there, and the disc profile then fell outside the images: an IndexError).
        FAT_PAD_STACK,
        # A strong lordosis: a fixed start point lost the caudal sac (3 of 5 discs found).
        {
            "pixel_spacing": 0.5,
            "slice_spacing": 3.0,
            "noise": 40.0,
            "lordosis": 60.0,
            "roots": "sedimented",
            "severity": 0.3,
            "seed": 61,
        },
        # A severe narrowing the sac is not followed through: interpolated across the gap,
        # L4-L5 read 157 mm² for 34, `ok` (before the gap rule; 161 with the median start).
        {
            "orientation": "oblique",
            "scoliosis": -20.0,
            "lordosis": 60.0,
            "noise": 40.0,
            "severity": 0.9,
            "seed": 44,
        },
        # 1 mm pixels and 3 mm slices across two mild narrowings: both areas read 16 % large
        # (the partial-volume border of a narrow sac) and both volumes 17-19 % (3 mm slices
        # average the narrowing away), all four `ok` before the coarse-pixel rule and the
        # thick-slice rule's extension to 3 mm.
        {
            "pixel_spacing": 1.0,
            "slice_spacing": 3.0,
            "noise": 40.0,
            "lordosis": 25.0,
            "scoliosis": 20.0,
            "severity": 0.3,
            "stenosis_levels": ("L4-L5", "L5-S1"),
            "seed": 1018,
        },
        # 5 mm slices through a severe narrowing at L5-S1: the spline between slices of 46
        # and 120 mm² dipped to 24 mm² for 38 (-38 %), `ok`.
        {
            "pixel_spacing": 0.5,
            "slice_spacing": 5.0,
            "noise": 40.0,
            "lordosis": 40.0,
            "orientation": "oblique",
            "scoliosis": 10.0,
            "severity": 0.85,
            "stenosis_levels": ("L2-L3", "L5-S1"),
            "seed": 1010,
        },
        # Two narrowings in a row on 5 mm slices: the sac was lost for 10 mm beside the
        # L3-L4 disc's middle, whose nearest slice was close enough; the spline read 77 mm²
        # for 49 (+60 %), `ok`, while the level's volume was already flagged for the gap.
        {
            "pixel_spacing": 0.7,
            "slice_spacing": 5.0,
            "noise": 25.0,
            "lordosis": 40.0,
            "orientation": "oblique",
            "scoliosis": 20.0,
            "severity": 0.7,
            "stenosis_levels": ("L2-L3", "L3-L4"),
            "seed": 1138,
        },
        # Roots settled along the whole sac, 1 mm pixels, 5 mm noisy slices: the rays saw
        # them at most slices (a 14 % share over the stack) but under a tenth around the
        # L4-L5 disc, whose area and volume read 31 % and 34 % low, `ok`, before the
        # stack-wide rule.
        {
            "pixel_spacing": 1.0,
            "slice_spacing": 5.0,
            "noise": 40.0,
            "lordosis": 25.0,
            "orientation": "axial",
            "scoliosis": 10.0,
            "roots": "sedimented",
            "severity": 0.7,
            "stenosis_levels": ("L2-L3",),
            "seed": 1020,
        },
        # An oblique, noisy stack on 1 mm pixels whose "sac" was bright tissue beside it at
        # slice after slice (areas of 70-690 mm² for 174; a median change of 13 % from one
        # slice to the next): one level read 204 mm² (+18 %), `ok`, before the tracking
        # rule.
        {
            "pixel_spacing": 1.0,
            "slice_spacing": 3.0,
            "noise": 40.0,
            "lordosis": 25.0,
            "orientation": "oblique",
            "severity": 0.85,
            "stenosis_levels": ("L5-S1",),
            "seed": 1135,
        },
        # A severe narrowing at L5-S1 under a strong lordosis and a scoliosis: the axial
        # slice, 27° to the canal, cut the sac along 8 mm of canal and read 45 mm² for 38
        # (+18 %), `ok`, before the tilt rule.
        {
            "pixel_spacing": 0.5,
            "slice_spacing": 4.0,
            "noise": 25.0,
            "lordosis": 55.0,
            "scoliosis": 20.0,
            "severity": 0.85,
            "stenosis_levels": ("L5-S1",),
            "seed": 1136,
        },
        # Oblique, 55° of lordosis, 1 mm pixels, 5 mm noisy slices: the "sac" (areas of
        # 170-430 mm² for 174) was found at 9 of the 23 slices between its first and last,
        # in pairs 25 mm apart; L5-S1 read 249 mm² (+43 %), `ok`, before the tracking rule.
        {
            "pixel_spacing": 1.0,
            "slice_spacing": 5.0,
            "noise": 40.0,
            "lordosis": 55.0,
            "orientation": "oblique",
            "severity": 0.7,
            "stenosis_levels": ("L2-L3", "L4-L5"),
            "seed": 1325,
        },
    ],
)
def test_other_anatomy_gives_no_sac_value_wrong_but_ok(spec: dict[str, Any]) -> None:
    """Phantoms unlike those the sac's rules were set on (an independent review's): the
    analysis ends (values or SacNotFound), and no area or volume is more than 15 % off yet
    `ok`."""
    from services.imaging.analysis import mr
    from tools.phantom import ground_truth, render

    phantom = PhantomSpec(**{**BENCH_STACK, **spec})
    image, spine = render(phantom)
    truth = ground_truth(spine, phantom, "x")
    expected = {(m["quantity"], m["level_index"]): m["value"] for m in truth["measurements"]}
    try:
        _model, measurements = mr.measure(image, "x")
    except mr.SacNotFound:
        return
    for m in measurements:
        value = expected.get((m.quantity, m.level_index))
        if m.status == "ok" and value is not None and m.value is not None:
            assert abs(m.value - value) / value <= 0.15, m


def test_a_sac_not_followed_through_the_stack_holds_every_value() -> None:
    """A stack whose per-slice "sac" changes by a median 20 % between neighbouring slices, or
    is found at 9 of the 21 slices between its first and last, was not followed (bright
    tissue taken for it): no value of it is `ok`, and a value already in review says so too;
    a sac that narrows at one level (large changes at a few slices only) is not held."""
    from services.common.vocabulary import QuantityName
    from services.imaging.analysis import mr
    from services.imaging.analysis.report import Measurement

    def stack(areas: list[float], ks: list[int] | None = None) -> list[mr.SliceSac]:
        return [
            mr.SliceSac(k, np.array([0.0, 0.0, 4.0 * k]), a, a, np.zeros((0, 3)))
            for k, a in zip(ks or range(len(areas)), areas, strict=True)
        ]

    narrowing = [175.0] * 10 + [140.0, 80.0, 50.0, 80.0, 135.0] + [178.0] * 10
    assert mr.tracking_doubt(stack(narrowing), 4.0) is None
    zigzag = [175.0 * (1.2 if k % 2 else 1.0) for k in range(25)]
    reason = mr.tracking_doubt(stack(zigzag), 4.0)
    assert reason is not None and "median 20%" in reason
    assert mr.tracking_doubt(stack(zigzag[:6]), 4.0) is None  # five pairs say nothing
    patchy = [0, 1, 5, 6, 10, 11, 15, 16, 20]
    found = mr.tracking_doubt(stack([350.0] * len(patchy), patchy), 4.0)
    assert found is not None and "found at only 9 of the 21 slices" in found

    area = Measurement(QuantityName.DURAL_SAC_AREA, "L4-L5", 0, None, 180.0, "x")
    volume = Measurement(QuantityName.DURAL_SAC_VOLUME, "L4-L5", 0, None, 5000.0, "x")
    volume.review("5000 mm³ interpolated over 9 mm where the sac was not followed")
    mr.hold_for_untracked_sac([area, volume], stack(zigzag), 4.0)
    assert area.status == "needs_review" and area.value is None
    assert area.reason is not None and area.reason.startswith("180 mm² measured, but the sac's")
    assert volume.reason is not None and volume.reason.endswith(reason)


def test_a_narrowing_cut_by_a_slice_tilted_to_the_canal_is_held() -> None:
    """A narrowed sac (16 mm wide) on a slice tilted 27° to the canal is cut along 8 mm of
    canal: its area needs review; the same sac on a slice tilted 10° (3 mm), or of normal
    calibre, is not held."""
    from services.imaging.analysis import mr

    angle = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    contour = np.stack([5 * np.cos(angle), 8 * np.sin(angle), np.zeros_like(angle)], axis=1)
    sac = mr.SliceSac(0, np.zeros(3), 45.0, 45.0, contour)
    normal = np.array([0.0, 0.0, 1.0])

    def tangent(degrees: float) -> np.ndarray:
        return np.array([0.0, np.sin(np.radians(degrees)), np.cos(np.radians(degrees))])

    reason = mr.tilt_doubt(45.0, 175.0, sac, tangent(27.0), normal)
    assert reason is not None and "tilted 27°" in reason and "along 8 mm" in reason
    assert mr.tilt_doubt(45.0, 175.0, sac, tangent(10.0), normal) is None
    assert mr.tilt_doubt(150.0, 175.0, sac, tangent(27.0), normal) is None


def test_discs_above_a_missed_disc_are_not_named() -> None:
    """Three discs found, the first 93 mm above the next (as an independent review's oblique
    stack once gave: L1-L2 above L4-L5): counted up from the sacrum it would be named L3-L4;
    it is numbered, with a warning, and the two below keep their names."""
    from services.imaging.analysis import mr
    from services.imaging.analysis.spine import Disc

    discs = [Disc(z, z - 5, z + 5) for z in (52.5, -40.4, -73.0)]
    names, warnings = mr.disc_names(discs, sacrum=True)
    assert names == [None, "L4-L5", "L5-S1"]
    assert any("is missed" in w for w in warnings)
    evenly = [Disc(z, z - 5, z + 5) for z in (52.0, 22.0, -10.0, -42.0, -72.0)]
    assert mr.disc_names(evenly, sacrum=True) == (
        ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"],
        [],
    )


def test_the_lowest_level_volume_ends_at_s1_mid_height_down_the_canal() -> None:
    """S1's mid-height is 15 mm down the canal from its endplate, not 15 mm of z: on a
    tilted canal the volume of L5-S1 stopped too low (seed 1427 of the sweep, 55° of
    lordosis: +15.8 %, `ok`)."""
    from services.imaging.analysis import mr
    from services.imaging.analysis.spine import CentreLine
    from tools.phantom import ground_truth, render

    Poly = np.polynomial.Polynomial
    upright = CentreLine(Poly([0.0]), Poly([0.0]), -100.0, 100.0)
    assert mr.down_the_canal(upright, 10.0, 15.0) == pytest.approx(-5.0)
    tilted = CentreLine(Poly([0.0]), Poly([0.0, 1.0]), -100.0, 100.0)  # 45° to the slices
    assert mr.down_the_canal(tilted, 10.0, 15.0) == pytest.approx(10.0 - 15.0 / np.sqrt(2))

    spec = PhantomSpec(
        **{
            **BENCH_STACK,
            "pixel_spacing": 1.0,
            "slice_spacing": 3.0,
            "noise": 15.0,
            "lordosis": 55.0,
            "scoliosis": -15.0,
            "top": "L1",
            "stenosis_levels": ("L2-L3",),
            "severity": 0.7,
            "seed": 1427,
        }
    )
    image, spine = render(spec)
    truth = ground_truth(spine, spec, "x")
    expected = {(m["quantity"], m["level"]): m["value"] for m in truth["measurements"]}
    _model, measurements = mr.measure(image, "x")
    (volume,) = [m for m in measurements if (m.quantity, m.level) == ("dural_sac_volume", "L5-S1")]
    assert volume.value is not None, volume.reason
    reference = expected[("dural_sac_volume", "L5-S1")]
    assert abs(volume.value - reference) / reference < 0.12, (volume.value, reference)
