"""The content check of quiet studies (pure functions)."""

from __future__ import annotations

from typing import Any

import numpy as np

from services.imaging.completion.completeness import SliceGeometry, check_series


def _slices(
    n: int,
    step: float = 2.0,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    skip: frozenset[int] = frozenset(),
    repeat: frozenset[int] = frozenset(),
) -> list[SliceGeometry]:
    normal = np.cross(orientation[:3], orientation[3:])
    out = []
    for i in range(n):
        if i in skip:
            continue
        for _ in range(2 if i in repeat else 1):
            p = normal * step * i + np.array([-10.0, 5.0, 3.0])
            out.append(
                SliceGeometry(
                    f"1.2.{i}.{len(out)}",
                    "\\".join(f"{v:.6g}" for v in p),
                    "\\".join(f"{v:.6g}" for v in orientation),
                    64,
                    64,
                    "0.5\\0.5",
                    None,
                )
            )
    return out


def test_contiguous_axial_series_is_whole() -> None:
    check = check_series("1.2.3", _slices(40))
    assert check.is_volume and check.problems == ()


def test_shuffled_arrival_order_does_not_matter() -> None:
    slices = _slices(30)
    rng = np.random.default_rng(1)
    shuffled = [slices[i] for i in rng.permutation(len(slices))]
    assert check_series("1.2.3", shuffled).problems == ()


def test_missing_slices_are_a_gap() -> None:
    check = check_series("1.2.3", _slices(40, skip=frozenset({17, 18})))
    assert len(check.problems) == 1
    assert "gap" in check.problems[0] and "about 2 slice" in check.problems[0]


def test_repeated_positions_are_reported() -> None:
    check = check_series("1.2.3", _slices(10, repeat=frozenset({4})))
    assert any("repeated" in p for p in check.problems)


def test_oblique_and_sagittal_series_use_their_own_normal() -> None:
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    oblique = (1.0, 0.0, 0.0, 0.0, c, s)
    assert check_series("1.2.3", _slices(25, step=0.8, orientation=oblique)).problems == ()
    sagittal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    assert check_series("1.2.3", _slices(25, step=3.3, orientation=sagittal)).problems == ()
    gap = check_series("1.2.3", _slices(25, orientation=sagittal, skip=frozenset({10})))
    assert gap.problems


def test_localizer_with_three_planes_is_not_a_volume() -> None:
    slices = (
        _slices(1)
        + _slices(1, orientation=(0, 1, 0, 0, 0, -1))
        + _slices(1, orientation=(1, 0, 0, 0, 0, -1))
    )
    check = check_series("1.2.3", slices)
    assert not check.is_volume and check.problems == ()


def test_mixed_matrix_sizes_are_reported() -> None:
    slices = _slices(5)
    odd = slices[2]
    slices[2] = SliceGeometry(
        odd.sop_instance_uid,
        odd.image_position_patient,
        odd.image_orientation_patient,
        128,
        128,
        odd.pixel_spacing,
        None,
    )
    assert any("matrix" in p for p in check_series("1.2.3", slices).problems)


def _block(n: int, tilt: float, centre: float, skip: frozenset[int] = frozenset()) -> list[Any]:
    c, s = np.cos(np.radians(tilt)), np.sin(np.radians(tilt))
    orientation = (1.0, 0.0, 0.0, 0.0, c, s)
    normal = np.cross(orientation[:3], orientation[3:])
    out = []
    for i in range(n):
        if i in skip:
            continue
        p = np.array([0.0, 0.0, centre]) + normal * 4.0 * (i - (n - 1) / 2)
        out.append(
            SliceGeometry(
                f"1.2.{centre}.{i}",
                "\\".join(f"{v:.6g}" for v in p),
                "\\".join(f"{v:.6g}" for v in orientation),
                256,
                256,
                "0.7\\0.7",
                None,
            )
        )
    return out


def test_angled_blocks_in_one_series_are_checked_block_by_block() -> None:
    """The lumbar MR's axial T2: four slices per disc, each block tilted with its disc; the
    distance between blocks is not a gap, a slice missing inside a block is."""
    blocks = [(0.0, 60.0), (5.0, 30.0), (12.0, 0.0), (20.0, -30.0), (28.0, -60.0)]
    whole = [g for tilt, z in blocks for g in _block(4, tilt, z)]
    check = check_series("1.2.3", whole)
    assert check.is_volume and check.problems == ()
    # Two parallel blocks (a straight segment of spine) are still two blocks, not a gap.
    parallel = _block(4, 0.0, 60.0) + _block(4, 0.0, 30.0) + _block(4, 12.0, 0.0)
    assert check_series("1.2.3", parallel).problems == ()
    missing = [
        g for tilt, z in blocks for g in _block(4, tilt, z, frozenset({1} if z == 0.0 else ()))
    ]
    assert "gap" in " ".join(check_series("1.2.3", missing).problems)
