"""A value outside the images is not measurable, not a review item (no alarm fatigue)."""

from __future__ import annotations

from services.common.vocabulary import QuantityName
from services.imaging.analysis import mr
from services.imaging.analysis.report import AnalysisResult, Measurement
from tools.phantom import PhantomSpec, render


def test_a_level_beyond_the_images_is_not_measurable_and_not_a_review_item() -> None:
    spec = PhantomSpec(modality="MR", pixel_spacing=0.8, slice_spacing=4.0, seed=2)
    image, _ = render(spec)
    _, measurements = mr.measure(image, "1.2.3")
    outside = [m for m in measurements if m.status == "not_measurable"]
    assert outside, "the top level's volume reaches beyond the stack"
    assert all(m.value is None and "images" in (m.reason or "") for m in outside)
    assert all(m.quantity == QuantityName.DURAL_SAC_VOLUME for m in outside)
    assert all(m.to_contract().status == "not_measurable" for m in outside)


def test_not_measurable_values_leave_the_result_ok() -> None:
    result = AnalysisResult("1.2.3", "MR")
    fine = Measurement(QuantityName.DURAL_SAC_AREA, "L4-L5", 3, None, 120.0, "1.2.4")
    beyond = Measurement(QuantityName.DURAL_SAC_VOLUME, "L1-L2", 0, None, None, "1.2.4")
    beyond.outside("the level extends beyond the images")
    result.measurements = [fine, beyond]
    result.settle()
    assert result.status == "ok"
    beyond.review("the sac is not seen at the disc's middle")
    result.settle()
    assert result.status == "needs_review"
