"""The study report on a fixed, seeded cohort (pure): every number equals what the
libraries compute directly, the export reproduces it, the edge cases are handled, and the
PDF renders."""

from __future__ import annotations

import io
import re
import zipfile
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from pypdf import PdfReader
from scipy import stats as sps

from services.gateway.analysis import dataset, models, plan, report
from services.gateway.analysis.dataset import NAME, VARIABLES
from services.gateway.cases import Case
from tests.gateway.synthetic import LONE_SURGEON, RESEARCHER, cohort

AS_OF = datetime(2026, 12, 1, tzinfo=UTC)


@cache
def _cohort() -> tuple[list[Case], dict[str, int]]:
    return cohort()


@cache
def _built() -> tuple[report.StudyReport, dataset.AnalysisData]:
    cases, numbers = _cohort()
    return report.build(cases, numbers, as_of=AS_OF)


def test_the_flow_counts_every_exclusion_with_its_reason() -> None:
    cases, _ = _cohort()
    r, _ = _built()
    steps = {s.label: s for s in r.flow}
    assert steps["Index surgeries (outcomes store)"].n == len(cases) == 24
    reasons = [c.primary_pair()[1] for c in cases]
    no_imaging = sum(1 for w in reasons if w and w.startswith(("no pre-op", "no post-op")))
    imaged = steps["With pre- and post-operative imaging of the group's modality"]
    assert imaged.n == 24 - no_imaging == 22  # case 7: no post-op study; case 9: no imaging
    assert sum(n for _, n in imaged.excluded) == no_imaging
    measurable = steps["Measurable primary pair at the operated levels"]
    assert measurable.n == sum(w is None for w in reasons)
    assert measurable.n + sum(n for _, n in measurable.excluded) == imaged.n
    follow = dict(r.follow_up)
    assert sum(follow["baseline"].values()) == 24
    assert sum(follow["month-6"].values()) == 23  # case 3's follow-up stops at 3 months


def test_table_one_is_tableones_and_its_tests_are_scipys() -> None:
    r, data = _built()
    raw = r.numbers["table_one"]
    p = data.patients
    foraminal = p.loc[p["study_group"] == "foraminal-stenosis", "age"].astype(float)
    central = p.loc[p["study_group"] == "central-stenosis", "age"].astype(float)
    row = raw.loc[("Age (years), mean (SD)", "")]
    columns = {c[1]: c for c in raw.columns}
    assert row[columns["Foraminal stenosis"]] == f"{foraminal.mean():.1f} ({foraminal.std():.1f})"
    welch = sps.ttest_ind(foraminal, central, equal_var=False).pvalue
    assert row[columns["P-Value"]] == f"{welch:.3f}"
    # Pain scores are described as medians and compared by Kruskal-Wallis.
    pain = raw.loc[("Leg pain at baseline (0-10), median [Q1,Q3]", "")]
    groups = [
        p.loc[p["study_group"] == g, "leg_pain_baseline"].astype(float)
        for g in ("foraminal-stenosis", "central-stenosis")
    ]
    assert pain[columns["P-Value"]] == f"{sps.kruskal(*groups).pvalue:.3f}"
    cells = [row for row in r.tables["table_one"].rows]
    assert any(row[0].startswith("Surgeon") for row in cells)


def test_the_primary_endpoint_is_statsmodels_gee_and_the_paired_tests() -> None:
    r, data = _built()
    levels = models.operated_first_post(data)
    for estimate in r.numbers["levels"]:
        rows = levels[
            (levels["study_group"] == estimate.group)
            & (levels["quantity"] == estimate.quantity)
            & levels["pre"].notna()
            & levels["post"].notna()
        ]
        structure = {
            "exchangeable": sm.cov_struct.Exchangeable(),
            "independence": sm.cov_struct.Independence(),
        }[estimate.correlation]
        direct = smf.gee(
            "change ~ 1",
            groups="patient_id",
            data=rows.assign(change=rows["change"].astype(float)),
            cov_struct=structure,
        ).fit()
        assert estimate.change == pytest.approx(direct.params["Intercept"])
        assert estimate.ci_low == pytest.approx(direct.conf_int().loc["Intercept", 0])
        assert estimate.levels == len(rows)
    foraminal = next(e for e in r.numbers["levels"] if e.quantity == "foraminal_height")
    assert foraminal.correlation == "exchangeable" and foraminal.change > 2  # the cage works
    per_patient = next(e for e in r.numbers["patients"] if e.quantity == "foraminal_height")
    p = data.patients[data.patients["study_group"] == "foraminal-stenosis"]
    pairs = p[["fh_pre", "fh_post"]].dropna().astype(float)
    t = sps.ttest_rel(pairs["fh_post"], pairs["fh_pre"])
    assert per_patient.comparison.t_p_value == pytest.approx(t.pvalue)
    differences = pairs["fh_post"] - pairs["fh_pre"]
    assert per_patient.dz == pytest.approx(differences.mean() / differences.std())
    thresholds = {(t.threshold.code, t.group): t.proportion for t in r.numbers["thresholds"]}
    fh = levels[
        (levels["quantity"] == "foraminal_height")
        & (levels["study_group"] == "foraminal-stenosis")
        & levels["post"].notna()
    ]
    reached = thresholds[("fh_post_15", "foraminal-stenosis")]
    assert (reached.count, reached.n) == (int((fh["post"] >= 15).sum()), len(fh))


def test_prom_trajectories_are_statsmodels_mixed_models() -> None:
    r, data = _built()
    odi = next(
        t for t in r.numbers["trajectories"] if t.measure == "odi" and t.group == "central-stenosis"
    )
    frame = data.proms[
        (data.proms["measure"] == "odi") & (data.proms["study_group"] == "central-stenosis")
    ]
    direct = smf.mixedlm(
        "value ~ C(time_point, Treatment(reference='baseline'))",
        frame.assign(
            value=frame["value"].astype(float), time_point=frame["time_point"].astype(str)
        ),
        groups=frame["patient_id"].astype(str),
    ).fit(reml=True)
    month12 = next(p for p in odi.points if p.time_point == "month-12")
    name = "C(time_point, Treatment(reference='baseline'))[T.month-12]"
    assert month12.estimate == pytest.approx(direct.params[name])
    assert month12.ci_high == pytest.approx(direct.conf_int().loc[name, 1])
    assert month12.estimate < -10  # the demo's patients improve
    assert odi.converged
    # MCID: the patients reaching it among those with a baseline and that time point.
    at = frame[(frame["time_point"] == "month-12") & frame["mcid"].notna()]
    assert (month12.mcid.count, month12.mcid.n) == (int(at["mcid"].sum()), len(at))


def test_secondary_endpoints_match_scipy() -> None:
    r, data = _built()
    p = data.patients
    anyone = next(g for g in r.numbers["complications"] if g.label == "Any complication")
    table = [
        [int(p.loc[p["study_group"] == g, "any_complication"].sum()), 0]
        for g in ("foraminal-stenosis", "central-stenosis")
    ]
    for row, g in zip(table, ("foraminal-stenosis", "central-stenosis"), strict=True):
        row[1] = int((p["study_group"] == g).sum()) - row[0]
    assert anyone.p_value == pytest.approx(sps.fisher_exact(table).pvalue)
    stay = next(e for e in r.numbers["early"] if e.label.startswith("Length of stay"))
    a, b = (
        p.loc[p["study_group"] == g, "los_days"].astype(float)
        for g in ("foraminal-stenosis", "central-stenosis")
    )
    assert stay.p_value == pytest.approx(sps.mannwhitneyu(a, b).pvalue)
    for association in r.numbers["associations"]:
        assert association.n >= 3 and association.rho is not None


def test_a_surgeon_with_one_case_and_a_patient_with_two_levels_are_handled() -> None:
    r, data = _built()
    lone = next(s for s in r.numbers["surgeons"] if LONE_SURGEON[1] in s.surgeon)
    assert lone.cases == 1
    curve = next(c for c in r.numbers["curves"] if LONE_SURGEON[1] in c.surgeon)
    assert curve.case_numbers == [1] and curve.rho is None  # no correlation on one case
    two = data.patients[data.patients["n_levels"] == 2]
    assert len(two) >= 1
    case = two.iloc[0]["case_id"]
    sites = models.operated_first_post(data)
    assert sites[sites["case_id"] == case]["level"].nunique() == 2
    # Each surgeon's case numbers run 1..n in order.
    for c in r.numbers["curves"]:
        assert c.case_numbers == list(range(1, len(c.case_numbers) + 1))


def test_the_export_reproduces_the_report_and_names_travel_to_spss_stata_and_r() -> None:
    r, data = _built()
    assert dataset.invalid_names() == []
    archive = zipfile.ZipFile(io.BytesIO(report.export_zip(data, as_of=AS_OF, pseudonymised=False)))
    names = set(archive.namelist())
    for table in dataset.TABLES:
        assert {f"{table}.csv", f"{table}.parquet"} <= names
        from_csv = pd.read_csv(archive.open(f"{table}.csv"))
        from_parquet = pd.read_parquet(io.BytesIO(archive.read(f"{table}.parquet")))
        assert list(from_csv.columns) == dataset.columns(table) == list(from_parquet.columns)
        assert len(from_csv) == len(data.table(table)) == len(from_parquet)
        assert all(NAME.match(c) for c in from_csv.columns)
    patients = pd.read_csv(archive.open("patients.csv"))
    assert set(patients["any_complication"].dropna().unique()) <= {0, 1}
    # Table 2's foraminal estimate from the exported levels table.
    levels = pd.read_csv(archive.open("levels.csv"))
    sites = levels[
        (levels["operated"] == 1)
        & (levels["post_index"] <= 1)
        & (levels["quantity"] == "foraminal_height")
        & levels["pre"].notna()
        & levels["post"].notna()
    ]
    fit = smf.gee(
        "change ~ 1", groups="patient_id", data=sites, cov_struct=sm.cov_struct.Exchangeable()
    ).fit()
    foraminal = next(e for e in r.numbers["levels"] if e.quantity == "foraminal_height")
    assert fit.params["Intercept"] == pytest.approx(foraminal.change, rel=1e-6)
    dictionary = pd.read_csv(archive.open("dictionary.csv"))
    assert len(dictionary) == len(VARIABLES)
    assert dictionary.loc[dictionary["variable"] == "study_group", "value_labels"].iloc[0]
    redcap = pd.read_csv(archive.open("redcap_dictionary.csv"))
    assert list(redcap.columns)[:5] == list(report.REDCAP_HEADER[:5])
    assert redcap["Variable / Field Name"].is_unique
    assert (
        redcap["Variable / Field Name"].map(lambda n: bool(re.match(r"^[a-z][a-z0-9_]*$", n))).all()
    )


def test_the_researchers_pdf_renders_without_identity() -> None:
    cases, numbers = cohort(view=RESEARCHER)
    built, _ = report.build(cases, numbers, as_of=AS_OF)
    document = report.pdf(built)
    reader = PdfReader(io.BytesIO(document))
    assert len(reader.pages) >= 5
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    for heading in (
        "Flow of the consecutive series",
        "Table 1",
        "Baseline characteristics",
        "Methods",
    ):
        assert heading in text
    assert "MRN1" not in text and "Moreau" not in text  # pseudonyms only
    assert "generalised estimating equations" in text
    html = report.html(built)
    assert html.count("data:image/png;base64,") == len(built.figures) >= 9


def test_the_analysis_plan_document_quotes_the_plans_values() -> None:
    text = (
        Path(__file__).resolve().parents[2] / "docs" / "statistical-analysis-plan.md"
    ).read_text()
    assert f"version {plan.PLAN_VERSION}" in text
    for threshold in plan.THRESHOLDS:
        assert f"{threshold.value:g}" in text and threshold.source.split(",")[0] in text
    assert f"alpha = {plan.ALPHA}" in text
    assert plan.ASSOCIATION_TIME_POINT in text and plan.LEARNING_TIME_POINT in text
    for paragraph in plan.methods():
        assert paragraph  # the report's methods come from the same module
