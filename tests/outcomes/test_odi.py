"""ODI scoring (pure) against hand-computed values."""

from __future__ import annotations

import pytest

from services.common.fhir.builders import odi_response
from services.outcomes.fhir.questionnaires.base import ScoringError
from services.outcomes.fhir.questionnaires.odi import score_odi


def test_all_sections_answered() -> None:
    # 2+3+1+0+4+2+1+0+3+2 = 18 of 50 -> 36 %
    result = score_odi(odi_response("Patient/1", [2, 3, 1, 0, 4, 2, 1, 0, 3, 2], authored="2025"))
    assert result.score == 36.0 and result.answered == 10 and result.skipped == ()


def test_skipped_sections_are_left_out_of_the_denominator() -> None:
    # sex life skipped: 2+3+1+0+4+2+1+3+2 = 18 of 45 -> 40 %
    answers = [2, 3, 1, 0, 4, 2, 1, None, 3, 2]
    result = score_odi(odi_response("Patient/1", answers, authored="2025"))
    assert result.score == 40.0 and result.skipped == ("odi-8",)


def test_extremes() -> None:
    assert score_odi(odi_response("Patient/1", [0] * 10, authored="2025")).score == 0.0
    assert score_odi(odi_response("Patient/1", [5] * 10, authored="2025")).score == 100.0


@pytest.mark.parametrize("answers", [[6] + [0] * 9, [None] * 10, [-1] + [0] * 9])
def test_unscorable_responses(answers: list[int | None]) -> None:
    with pytest.raises(ScoringError):
        score_odi(odi_response("Patient/1", answers, authored="2025"))
