"""The study report: every table and figure of the analysis, as HTML and PDF, and the
analysis-ready export (long tables as CSV and Parquet, with a data dictionary and a
REDCap-style one) — pure, from cases."""

from __future__ import annotations

import base64
import csv
import io
import platform
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from services.common import vocabulary
from services.gateway.analysis import dataset, figures, models, plan
from services.gateway.analysis.dataset import VARIABLES, AnalysisData
from services.gateway.analysis.models import GROUP_LABELS, GROUPS, Table
from services.gateway.cases import Case
from services.gateway.formatting import DASH, num, pval
from services.gateway.plots import paired as paired_plot
from services.gateway.stats import Proportion

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent.parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
PACKAGES = ("pandas", "numpy", "scipy", "statsmodels", "tableone", "matplotlib", "weasyprint")
DIGITS = {"eq5d_index": 3}


def prop(p: Proportion) -> str:
    if p.n == 0 or p.rate is None:
        return DASH
    return (
        f"{p.count}/{p.n} ({100 * p.rate:.0f} %; {100 * (p.ci95_low or 0):.0f}-"
        f"{100 * (p.ci95_high or 0):.0f})"
    )


@dataclass
class Figure:
    title: str
    png: bytes
    caption: str = ""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


@dataclass
class StudyReport:
    title: str
    generated: str
    as_of: str
    pseudonymised: bool
    filters: dict[str, str]
    methods: list[str]
    flow: list[models.FlowStep]
    follow_up: list[tuple[str, dict[str, int]]]
    tables: dict[str, Table]
    figures: list[Figure]
    versions: list[tuple[str, str]]
    numbers: dict[str, Any] = field(default_factory=dict)  # raw results, for the tests


def _level_table(estimates: list[models.LevelEstimate]) -> Table:
    rows = []
    for e in estimates:
        rows.append(
            [
                GROUP_LABELS[e.group],
                f"{e.display} ({e.unit})",
                str(e.patients),
                str(e.levels),
                num(e.mean_pre),
                num(e.mean_post),
                num(e.change, 2),
                f"{num(e.ci_low, 2)} to {num(e.ci_high, 2)}",
                pval(e.p_value),
                e.correlation or e.note or "",
            ]
        )
    return Table(
        [
            "Group",
            "Quantity",
            "Patients",
            "Sites",
            "Pre (mean)",
            "Post (mean)",
            "Change",
            "95 % CI",
            "p",
            "GEE working correlation",
        ],
        rows,
        [
            "Operated levels (and sides, for the foraminal height) with a value before and "
            "after; GEE, change ~ 1, clustered by patient, robust standard errors."
        ],
    )


def _patient_table(estimates: list[models.PatientEstimate]) -> Table:
    rows = []
    for e in estimates:
        c = e.comparison
        spec = vocabulary.QUANTITIES[vocabulary.QuantityName(e.quantity)]
        rows.append(
            [
                GROUP_LABELS[e.group],
                f"{spec.display} ({spec.unit})",
                str(c.n),
                num(c.mean_difference, 2),
                f"{num(c.ci95_low, 2)} to {num(c.ci95_high, 2)}",
                num(c.mean_percent_change, 1),
                pval(c.t_p_value),
                pval(c.wilcoxon_p_value),
                num(e.dz, 2),
            ]
        )
    return Table(
        [
            "Group",
            "Quantity",
            "Patients",
            "Change",
            "95 % CI",
            "% change",
            "t p",
            "Wilcoxon p",
            "dz",
        ],
        rows,
        ["Per patient: the mean of the operated levels measured before and after."],
    )


def _threshold_table(rates: list[models.ThresholdRate]) -> Table:
    return Table(
        ["Group", "Threshold (per site)", "Sites reaching it (95 % CI)", "Source"],
        [
            [GROUP_LABELS[r.group], r.threshold.label, prop(r.proportion), r.threshold.source]
            for r in rates
        ],
        ["Descriptive (sites of one patient are correlated): no test."],
    )


def _prom_tables(trajectories: list[models.Trajectory]) -> dict[str, Table]:
    out = {}
    for measure in plan.MEASURES:
        digits = DIGITS.get(measure, 1)
        rows = []
        for t in (t for t in trajectories if t.measure == measure):
            for p in t.points:
                rows.append(
                    [
                        GROUP_LABELS[t.group],
                        p.time_point,
                        str(p.n),
                        num(p.estimate, digits),
                        f"{num(p.ci_low, digits)} to {num(p.ci_high, digits)}",
                        pval(p.p_value),
                        prop(p.mcid),
                    ]
                )
        if not rows:
            continue
        notes = [
            "Baseline mean: "
            + "; ".join(
                f"{GROUP_LABELS[t.group]} {num(t.baseline_mean, digits)} (n = {t.patients})"
                for t in trajectories
                if t.measure == measure
            )
        ]
        notes += [
            f"{GROUP_LABELS[t.group]}: {t.note}"
            for t in trajectories
            if t.measure == measure and t.note
        ]
        out[f"prom_{measure}"] = Table(
            [
                "Group",
                "Time point",
                "n",
                "Change from baseline",
                "95 % CI",
                "p",
                "MCID reached (95 % CI)",
            ],
            rows,
            notes,
        )
    return out


def _group_rate_table(rows: list[models.GroupRate]) -> Table:
    return Table(
        ["Patients with", *(GROUP_LABELS[g] for g in GROUPS), "Fisher p"],
        [[r.label, *(prop(r.by_group[g]) for g in GROUPS), pval(r.p_value)] for r in rows],
    )


def _median(cell: tuple[int, float | None, float | None, float | None]) -> str:
    n, med, q1, q3 = cell
    return DASH if not n else f"{num(med)} [{num(q1)}-{num(q3)}] (n = {n})"


def _early_table(rows: list[models.GroupMedian]) -> Table:
    return Table(
        ["Early result", *(GROUP_LABELS[g] for g in GROUPS), "Mann-Whitney p"],
        [[r.label, *(_median(r.by_group[g]) for g in GROUPS), pval(r.p_value)] for r in rows],
        ["Median [Q1-Q3]."],
    )


def _association_table(rows: list[models.Association]) -> Table:
    return Table(
        ["Group", "Imaging change", "Clinical change", "n", "Spearman rho", "p"],
        [
            [
                GROUP_LABELS[a.group],
                vocabulary.QUANTITIES[vocabulary.QuantityName(a.quantity)].display,
                f"{plan.MEASURES[plan.ASSOCIATION_PROM]}, {plan.ASSOCIATION_TIME_POINT}",
                str(a.n),
                num(a.rho, 2),
                pval(a.p_value),
            ]
            for a in rows
        ],
    )


def _surgeon_table(rows: list[models.SurgeonRow], rate: float | None) -> Table:
    return Table(
        [
            "Surgeon",
            "Cases",
            *(GROUP_LABELS[g] for g in GROUPS),
            "Primary change (z, mean)",
            "Complications",
            f"ODI MCID at {plan.LEARNING_TIME_POINT}",
        ],
        [
            [
                r.surgeon,
                str(r.cases),
                *(str(r.by_group[g]) for g in GROUPS),
                num(r.primary_z, 2),
                prop(r.complications),
                prop(r.odi_mcid),
            ]
            for r in rows
        ],
        [
            "Descriptive. Primary change standardised within group (z-score of the per-patient "
            f"change of the group's primary quantity). Cohort failure rate for the learning "
            f"curves: {num(100 * rate if rate is not None else None)} %."
        ],
    )


def versions(cases: list[Case]) -> list[tuple[str, str]]:
    out = [("Python", platform.python_version())]
    for package in PACKAGES:
        try:
            out.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            continue
    algorithms = sorted(
        {
            ref.algorithm_version
            for c in cases
            for ref in [c.imaging.pre, *c.imaging.post]
            if ref is not None and ref.algorithm_version
        }
    )
    out.append(("measurement algorithm", ", ".join(algorithms) or DASH))
    out.append(("statistical analysis plan", plan.PLAN_VERSION))
    return out


def build(
    cases: list[Case],
    case_numbers: Mapping[str, int],
    *,
    as_of: datetime,
    filters: Mapping[str, str] | None = None,
) -> tuple[StudyReport, AnalysisData]:
    """Every table and figure of the report over ``cases`` (already in the viewer's frame)."""
    data = dataset.build(cases, case_numbers)
    steps, follow = models.flow(data)
    table_one, raw_one = models.table_one(data)
    levels, per_patient, rates = models.primary(data)
    trajectories = models.trajectories(data)
    associations = models.association(data)
    surgeon_rows, curves, failure_rate = models.surgeons(data)
    complications = models.complications_by_group(data)
    early = models.early_by_group(data)
    tables: dict[str, Table] = {
        "table_one": table_one,
        "primary_levels": _level_table(levels),
        "primary_patients": _patient_table(per_patient),
        "thresholds": _threshold_table(rates),
        **_prom_tables(trajectories),
        "association": _association_table(associations),
        "complications": _group_rate_table(complications),
        "early": _early_table(early),
        "surgeons": _surgeon_table(surgeon_rows, failure_rate),
    }
    pictures = [
        Figure(
            "Foraminal height before and after",
            paired_plot(cases, "foraminal_height", "png"),
            "One line per patient: mean of the operated levels, first post-operative study.",
        ),
        Figure(
            "Dural sac area before and after",
            paired_plot(cases, "dural_sac_area", "png"),
            "One line per patient: mean of the operated levels, first post-operative study.",
        ),
        Figure(
            "Change per operated site",
            figures.waterfall(data, "png"),
            "Hatched bars: no gain.",
        ),
        *(
            Figure(label, figures.trajectories(trajectories, measure, "png"))
            for measure, label in plan.MEASURES.items()
        ),
        Figure("Imaging change and clinical change", figures.imaging_vs_clinical(data, "png")),
        Figure("Learning curves", figures.learning_curves(curves, "png")),
    ]
    report = StudyReport(
        title="Minimally invasive lumbar fusion: decompression and outcomes",
        generated=datetime.now().strftime("%Y-%m-%d %H:%M"),
        as_of=as_of.strftime("%Y-%m-%d %H:%M UTC"),
        pseudonymised=any(not c.identified for c in cases),
        filters=dict(filters or {}),
        methods=plan.methods(),
        flow=steps,
        follow_up=follow,
        tables=tables,
        figures=pictures,
        versions=versions(cases),
        numbers={
            "table_one": raw_one,
            "levels": levels,
            "patients": per_patient,
            "thresholds": rates,
            "trajectories": trajectories,
            "associations": associations,
            "complications": complications,
            "early": early,
            "surgeons": surgeon_rows,
            "curves": curves,
            "failure_rate": failure_rate,
        },
    )
    return report, data


def html(report: StudyReport) -> str:
    return TEMPLATES.get_template("report.html").render(
        r=report, group_labels=GROUP_LABELS, groups=GROUPS, measures=plan.MEASURES
    )


def pdf(report: StudyReport) -> bytes:
    """The report as PDF (WeasyPrint: the same HTML, paged for A4)."""
    from weasyprint import HTML

    document: bytes = HTML(string=html(report)).write_pdf()
    return document


# ------------------------------------------------------------------ analysis export
def dictionary_rows() -> list[list[str]]:
    rows = [["table", "variable", "type", "unit", "label", "value_labels"]]
    for v in VARIABLES:
        labels = "; ".join(f"{k} = {text}" for k, text in v.values.items())
        rows.append([v.table, v.name, v.type, v.unit, v.label, labels])
    return rows


REDCAP_HEADER = [
    "Variable / Field Name",
    "Form Name",
    "Section Header",
    "Field Type",
    "Field Label",
    "Choices, Calculations, OR Slider Labels",
    "Field Note",
    "Text Validation Type OR Show Slider Number",
    "Text Validation Min",
    "Text Validation Max",
    "Identifier?",
    "Branching Logic (Show field only if...)",
    "Required Field?",
    "Custom Alignment",
    "Question Number (surveys only)",
    "Matrix Group Name",
    "Matrix Ranking?",
    "Field Annotation",
]
IDENTIFIERS = {"case_id", "patient_id", "surgery_date", "onset_date", "surgeon"}


def redcap_rows() -> list[list[str]]:
    """A REDCap data dictionary (one instrument per table; choices for coded values)."""
    rows = [REDCAP_HEADER]
    seen: set[str] = set()
    for v in VARIABLES:
        name = v.name if v.table == "patients" or v.name not in seen else f"{v.table[:3]}_{v.name}"
        seen.add(name)
        if v.type == "boolean":
            kind, choices, validation = "yesno", "", ""
        elif v.values:
            kind = "dropdown"
            choices = " | ".join(f"{i}, {label}" for i, label in enumerate(v.values.values(), 1))
            validation = ""
        else:
            kind, choices = "text", ""
            validation = {"integer": "integer", "number": "number", "date": "date_ymd"}.get(
                v.type, ""
            )
        note = f"unit: {v.unit}" if v.unit else ""
        if v.values and kind == "dropdown":
            note = (note + "; " if note else "") + "codes: " + ", ".join(v.values)
        rows.append(
            [
                name,
                v.table,
                "",
                kind,
                v.label,
                choices,
                note,
                validation,
                "",
                "",
                "y" if v.name in IDENTIFIERS else "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
            ]
        )
    return rows


def _csv(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def export_zip(data: AnalysisData, *, as_of: datetime, pseudonymised: bool) -> bytes:
    """``patients``, ``levels``, ``proms`` and ``complications`` as CSV (UTF-8, ``.`` for
    decimals, empty = missing, booleans 0/1) and Parquet, ``dictionary.csv``,
    ``redcap_dictionary.csv`` and a README."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in dataset.TABLES:
            frame: pd.DataFrame = data.table(name)
            archive.writestr(f"{name}.csv", frame.to_csv(index=False, lineterminator="\r\n"))
            parquet = io.BytesIO()
            frame.to_parquet(parquet, index=False)
            archive.writestr(f"{name}.parquet", parquet.getvalue())
        archive.writestr("dictionary.csv", _csv(dictionary_rows()))
        archive.writestr("redcap_dictionary.csv", _csv(redcap_rows()))
        archive.writestr(
            "README.txt",
            "Spine outcomes study: analysis-ready tables\n"
            f"data as of {as_of:%Y-%m-%d %H:%M} UTC; "
            f"{'pseudonymised (pseudonyms, shifted dates)' if pseudonymised else 'identified'}\n"
            f"statistical analysis plan {plan.PLAN_VERSION} (docs/statistical-analysis-plan.md)\n"
            "patients: one row per case; levels: one row per case x quantity x level x side x "
            "post-operative study (post_index 1 = first); proms: one row per case x measure x "
            "time point; complications: one row per complication. See dictionary.csv.\n",
        )
    return buffer.getvalue()
