"""The synthetic cohort as the department's registry exports it: a KEOPS-style CSV in
Windows-1252 with ``;`` separators, day-first dates, decimal commas and French labels —
with the defects real exports have (a missing surgery date, a mistyped Clavien-Dindo
grade) when asked for."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import date, timedelta

from services.outcomes.registry.mapping import Mapping, load_mapping
from tools.demo.cohort import SURGEONS, PatientPlan

# The registry records pain on visual analogue scales: the plan's scores go there.
PAIN = {"back-pain-nrs": "back-pain-vas", "leg-pain-nrs": "leg-pain-vas"}


def _label(mapping: Mapping, table: str, code: str) -> str:
    """The first registry label the mapping reads as ``code``."""
    return next((label for label, c in mapping.values.get(table, {}).items() if c == code), code)


def _day(value: date) -> str:
    return value.strftime("%d/%m/%Y")


def _number(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text.replace(".", ",")


def export_row(plan: PatientPlan, mapping: Mapping) -> dict[str, str]:
    columns = mapping.columns
    surgery = plan.surgery_date
    admitted = surgery - timedelta(days=1)
    row = {
        columns["mrn"]: plan.mrn,
        columns["family"]: plan.family.upper(),
        columns["given"]: plan.given,
        columns["birth_date"]: _day(plan.birth_date),
        columns["sex"]: "F" if plan.gender == "female" else "M",
        columns["surgery_date"]: _day(surgery),
        columns["levels"]: "; ".join(plan.levels),
        columns["technique"]: _label(mapping, "technique", plan.technique),
        columns["surgeon"]: f"Dr {SURGEONS[plan.surgeon][1]}",
        columns["group"]: _label(mapping, "group", plan.group),
        columns["admission_date"]: _day(admitted),
        columns["discharge_date"]: _day(admitted + timedelta(days=plan.length_of_stay + 1)),
    }
    values: dict[tuple[str, str | None], float] = {("blood-loss", None): round(plan.blood_loss)}
    for day, mme in enumerate(plan.mme, start=1):
        values[("analgesic-mme", f"day-{day}")] = round(mme, 1)
    for code, by_time in plan.proms.items():
        for time_point, value in by_time.items():
            values[(PAIN.get(code, code), time_point)] = value
    for measure in mapping.measures:
        cell = values.get((measure.code, measure.time_point))
        if cell is not None:
            row[measure.column] = _number(cell)
    for slot, (kind, grade, day) in zip(mapping.complications, plan.complications, strict=False):
        row[slot.type] = _label(mapping, "complication", kind)
        row[slot.grade] = grade.removeprefix("CD-")
        if slot.date:
            row[slot.date] = _day(surgery + timedelta(days=day))
    return row


def export(plans: Iterable[PatientPlan], *, defects: bool) -> tuple[bytes, list[str]]:
    """The export file's bytes, and what was broken on purpose."""
    mapping = load_mapping()
    rows = [export_row(plan, mapping) for plan in plans]
    broken: list[str] = []
    if defects and len(rows) >= 6:
        rows[2][mapping.columns["surgery_date"]] = ""
        broken.append(f"row 4: no surgery date ({rows[2][mapping.columns['mrn']]})")
        slot = mapping.complications[0]
        rows[4][slot.type] = rows[4].get(slot.type) or "Infection"
        rows[4][slot.grade] = "IIIc"
        broken.append(f"row 6: Clavien-Dindo grade 'IIIc' ({rows[4][mapping.columns['mrn']]})")
    header = list(mapping.columns.values()) + [m.column for m in mapping.measures]
    for slot in mapping.complications:
        header += [slot.type, slot.grade] + ([slot.date] if slot.date else [])
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(column, "") for column in header])
    return buffer.getvalue().encode("cp1252", errors="replace"), broken
