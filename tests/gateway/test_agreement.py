"""Agreement statistics: against published worked examples and an independent computation,
then through the real services (readers' values posted to the imaging service)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pingouin as pg
import pytest

from services.gateway import agreement
from tests.gateway.conftest import Stack
from tests.harness.dcmtk import storescu
from tests.harness.net import wait_until
from tools.phantom import PhantomSpec, write_phantom

# Bland & Altman, Lancet 1986 (table 1): peak expiratory flow (l/min) of 17 subjects by the
# Wright and the mini Wright meter, first readings. Published: mean difference (Wright -
# mini) -2.1 l/min, SD of the differences 38.8 l/min.
WRIGHT = [494, 395, 516, 434, 476, 557, 413, 442, 650, 433, 417, 656, 267, 478, 178, 423, 427]
MINI = [512, 430, 520, 428, 500, 600, 364, 380, 658, 445, 432, 626, 260, 477, 259, 350, 451]


def _pefr() -> agreement.Agreement:
    return agreement.compare(
        np.array(MINI),
        np.array(WRIGHT),
        quantity="pefr",
        rater_a="mini",
        rater_b="wright",
        kind="x",
    )


def test_bland_altman_reproduces_the_published_example() -> None:
    result = _pefr()
    assert result.n == 17
    assert round(result.bias or 0, 1) == -2.1
    assert round(result.sd or 0, 1) == 38.8
    lower, upper = result.loa or (0, 0)
    assert (round(lower, 3), round(upper, 3)) == (
        round(-36 / 17 - 1.96 * float(np.std(np.subtract(WRIGHT, MINI), ddof=1)), 3),
        round(-36 / 17 + 1.96 * float(np.std(np.subtract(WRIGHT, MINI), ddof=1)), 3),
    )
    # Bland & Altman 1999: SE of the bias s/sqrt(n), of each limit sqrt(3 s^2 / n), t(n-1).
    t = 2.1199  # t(0.975, 16)
    sd = result.sd or 0
    assert result.bias_ci == pytest.approx(
        (-36 / 17 - t * sd / math.sqrt(17), -36 / 17 + t * sd / math.sqrt(17)), abs=1e-3
    )
    assert result.loa_lower_ci == pytest.approx(
        (lower - t * math.sqrt(3 * sd**2 / 17), lower + t * math.sqrt(3 * sd**2 / 17)), abs=1e-3
    )


def test_the_iccs_are_the_two_way_anova_ones() -> None:
    """ICC(2,1) and ICC(3,1) from the mean squares (Shrout & Fleiss 1979), computed here
    independently of pingouin, to three decimals."""
    x = np.column_stack([MINI, WRIGHT]).astype(float)
    n, k = x.shape
    grand = x.mean()
    ms_rows = k * ((x.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    ms_cols = n * ((x.mean(axis=0) - grand) ** 2).sum() / (k - 1)
    residual = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + grand
    ms_error = (residual**2).sum() / ((n - 1) * (k - 1))
    icc2 = (ms_rows - ms_error) / (ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n)
    icc3 = (ms_rows - ms_error) / (ms_rows + (k - 1) * ms_error)
    result = _pefr()
    assert round(result.icc2 or 0, 3) == round(icc2, 3)
    assert round(result.icc3 or 0, 3) == round(icc3, 3)
    assert result.icc2_ci is not None and result.icc2_ci[0] < icc2 < result.icc2_ci[1]


def test_pingouin_gives_shrout_and_fleiss_published_values() -> None:
    """The library behind the ICCs, on Shrout & Fleiss's own 6 targets x 4 judges table:
    ICC(2,1) = 0.29, ICC(3,1) = 0.71."""
    table = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    long = pd.DataFrame(
        [(t, j, v) for t, row in enumerate(table) for j, v in enumerate(row)],
        columns=["target", "judge", "value"],
    )
    icc = pg.intraclass_corr(long, targets="target", raters="judge", ratings="value")
    icc = icc.set_index("Type")["ICC"]
    two = icc.get("ICC(A,1)", icc.get("ICC2"))  # pingouin >= 0.7 names them as McGraw & Wong
    three = icc.get("ICC(C,1)", icc.get("ICC3"))
    assert round(float(two), 2) == 0.29 and round(float(three), 2) == 0.71


def test_lins_ccc_is_its_definition() -> None:
    a, b = np.array(MINI, dtype=float), np.array(WRIGHT, dtype=float)
    expected = 2 * np.cov(a, b, ddof=0)[0, 1] / (a.var() + b.var() + (a.mean() - b.mean()) ** 2)
    ccc, ci = agreement.lins_ccc(a, b)
    assert round(ccc, 3) == round(float(expected), 3)
    assert ci is not None and ci[0] < ccc < ci[1] < 1


def test_degenerate_reads_give_no_statistic_rather_than_an_error() -> None:
    same = agreement.compare(
        np.array([5.0, 5, 5, 5]),
        np.array([5.0, 6, 5, 7]),
        quantity="q",
        rater_a="a",
        rater_b="b",
        kind="x",
    )
    assert same.n == 4 and same.ccc_ci is None  # one rater constant: no interval, no crash
    equal = agreement.compare(
        np.array([5.0] * 4), np.array([5.0] * 4), quantity="q", rater_a="a", rater_b="b", kind="x"
    )
    assert equal.ccc is None and equal.icc2 is None  # undefined, and JSON has no NaN
    assert equal.bias == 0.0 and equal.mean_absolute_difference == 0.0


def test_first_and_latest_reads_follow_the_read_number_not_the_row_order() -> None:
    key = {"study": "1.2.3", "quantity": "disc_height", "level": "L4-L5", "side": ""}
    rows = [
        {**key, "study": f"1.2.{i}", "rater": "ann", "read": read, "value": value + i}
        for i in range(4)
        for read, value in ((2, 11.0), (1, 10.0))  # the later read listed first
    ]
    intra = agreement.table(pd.DataFrame(rows))
    assert [r.kind for r in intra] == ["intra-reader"]
    assert intra[0].bias == pytest.approx(1.0)  # latest (11) minus first (10)


def test_the_table_compares_automatic_readers_and_rereads() -> None:
    rng = np.random.default_rng(3)
    truth = rng.uniform(8, 22, size=12)
    rows = []
    for i, value in enumerate(truth):
        key = {
            "study": f"1.2.{i}",
            "quantity": "foraminal_height",
            "level": "L4-L5",
            "side": "left",
        }
        rows.append({**key, "rater": "automatic", "read": 1, "value": value + rng.normal(0, 0.5)})
        rows.append({**key, "rater": "ann", "read": 1, "value": value + rng.normal(0, 0.8)})
        if i < 8:
            rows.append({**key, "rater": "bob", "read": 1, "value": value + rng.normal(0.5, 0.8)})
        if i < 6:  # ann reads six again, weeks later
            rows.append({**key, "rater": "ann", "read": 2, "value": value + rng.normal(0, 0.8)})
    table = agreement.table(pd.DataFrame(rows))
    kinds = {(r.kind, r.rater_a, r.rater_b): r for r in table}
    assert kinds[("automatic-reader", "automatic", "ann")].n == 12
    assert kinds[("automatic-reader", "automatic", "bob")].n == 8
    assert kinds[("reader-reader", "ann", "bob")].n == 8
    assert kinds[("intra-reader", "ann", "ann")].n == 6
    assert all((r.icc2 or 0) > 0.8 for r in table)


@pytest.mark.integration
def test_agreement_through_the_real_services(stack: Stack, tmp_path: Path) -> None:
    # A study of its own (a patient outside the cohort), so the shared stack's cases keep
    # their automatic values for the other tests.
    spec = PhantomSpec(
        modality="MR", pixel_spacing=0.8, slice_spacing=3.0, patient_id="MRN-AGREEMENT", seed=21
    )
    truth = write_phantom(spec, tmp_path / "mr")
    sent = storescu(
        stack.imaging.dicom_port, stack.imaging.ae_title, sorted((tmp_path / "mr").glob("*.dcm"))
    )
    assert sent.returncode == 0, sent.stderr
    study = truth["study_instance_uid"]
    with stack.imaging.client() as imaging:
        assert wait_until(
            lambda: imaging.get(f"/api/studies/{study}/measurements").status_code == 200,
            timeout=120,
            interval=0.5,
        )
        result = imaging.get(f"/api/studies/{study}/measurements").json()
        measured = [
            m
            for m in result["measurements"]
            if m["value"] is not None and m["level"] and m["quantity"] == "dural_sac_area"
        ]
        assert len(measured) >= 4
        for n, m in enumerate(measured):
            for reader, offset in (("dr-ann", 3.0), ("dr-bob", -4.0 + 1.0 * (n % 3))):
                posted = imaging.post(
                    f"/api/studies/{study}/manual-measurements",
                    json={
                        "level": m["level"],
                        "quantity": "dural_sac_area",
                        "value": round(m["value"] + offset, 2),
                        "reader_id": reader,
                    },
                )
                assert posted.status_code == 201, posted.text
    with stack.gateway.client(role="clinician") as clinician:
        body = clinician.get(
            "/api/agreement", params={"quantity": "dural_sac_area", "refresh": "true"}
        ).json()
        plot = clinician.get(
            "/api/agreement/plots/bland-altman.png",
            params={"quantity": "dural_sac_area", "b": "dr-ann"},
        )
    assert body["reads"]["dr-ann"] >= len(measured) and body["reads"]["dr-bob"] >= len(measured)
    rows = {(r["kind"], r["rater_a"], r["rater_b"]): r for r in body["agreement"]}
    ann = rows[("automatic-reader", "automatic", "dr-ann")]
    assert ann["n"] >= len(measured)
    assert ann["bias"] == pytest.approx(3.0, abs=0.02)  # what the reader was told to add
    assert plot.status_code == 200 and plot.content[:8] == b"\x89PNG\r\n\x1a\n"
    with stack.gateway.client(role="researcher") as researcher:
        blind = researcher.get("/api/agreement", params={"quantity": "dural_sac_area"}).json()
    raters = set(blind["reads"])
    assert "dr-ann" not in raters and any(r.startswith("RD-") for r in raters)
    assert "dr-ann" not in str(blind)
    # The dashboard page: the table and the Bland-Altman plots, pseudonymised for researchers.
    import httpx

    for role, shown, hidden in (("clinician", "dr-ann", "RD-"), ("researcher", "RD-", "dr-ann")):
        page = httpx.get(
            f"{stack.gateway.url}/dashboard/agreement",
            cookies={"gateway_session": stack.gateway.token(role=role)},
            timeout=60,
        )
        assert page.status_code == 200
        assert "ICC(2,1)" in page.text and "bland-altman.png" in page.text
        assert shown in page.text and hidden not in page.text
