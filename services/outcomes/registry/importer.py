"""Loading a registry export into the FHIR store, idempotently.

Each valid row becomes one patient's resources — Patient (found by MRN, the EHR's fields
kept), surgeon (Practitioner), stay (Encounter: the server derives the length of stay),
index surgery (Procedure), outcomes and complications (Observations ``partOf`` the
Procedure) — every one carrying a registry identifier derived from the MRN and the
surgery date, so a second import finds it again. All of a patient's writes go through the
server's write door in **one transaction**: a patient is loaded whole or not at all.

Idempotent: a resource whose content would not change is not written (a re-import writes
nothing, as the FHIR history shows); a corrected value is updated (Observations become
``amended``); an outcome or complication the export no longer holds is marked
``entered-in-error``. Registry dates carry no time of day; an outcome's date is the
surgery date plus its time point's nominal day (baseline: the day before surgery).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

from sqlalchemy.engine import Connection, Engine

from services.common import vocabulary
from services.common.fhir import builders, codes
from services.outcomes import interactions
from services.outcomes import repository as repo
from services.outcomes.access import Access
from services.outcomes.errors import FhirError, as_fhir_error
from services.outcomes.registry.mapping import Mapping
from services.outcomes.registry.rows import CellError, RegistryPatient, RowReader
from services.outcomes.registry.table import read_table

log = logging.getLogger(__name__)
REGISTRY_SYSTEM = "http://spine-outcomes.example.org/fhir/registry"
Action = Literal["created", "updated", "unchanged", "withdrawn"]


@dataclass(frozen=True)
class Change:
    """One value a corrected export changed: which resource (its registry identifier, or
    the patient's MRN), which element, from what to what. Identified, like the rest of the
    report (it goes to the coordinator who uploaded the file): never logged."""

    row: int
    resource: str  # e.g. "Observation 123456/2024-05-14/odi/month-3"
    element: str  # e.g. "valueQuantity.value"
    old: Any
    new: Any

    def text(self) -> str:
        return f"row {self.row}: {self.resource} {self.element}: {self.old!r} -> {self.new!r}"


@dataclass
class PatientResult:
    row: int
    mrn: str
    loaded: bool
    actions: Counter[str] = field(default_factory=Counter)
    errors: list[CellError] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)


@dataclass
class ImportReport:
    source: str
    read_as: str
    dry_run: bool
    rows: int
    patients: list[PatientResult] = field(default_factory=list)
    unknown_columns: list[str] = field(default_factory=list)
    missing_columns: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[CellError]:
        return [e for p in self.patients for e in p.errors]

    @property
    def changes(self) -> list[Change]:
        return [c for p in self.patients if p.loaded for c in p.changes]

    @property
    def summary(self) -> dict[str, int]:
        actions: Counter[str] = Counter()
        for patient in self.patients:
            actions.update(patient.actions)
        return {
            "rows": self.rows,
            "patients_loaded": sum(p.loaded for p in self.patients),
            "patients_rejected": sum(not p.loaded for p in self.patients),
            "cell_errors": len(self.errors),
            **{
                f"resources_{k}": actions.get(k, 0)
                for k in ("created", "updated", "unchanged", "withdrawn")
            },
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "read_as": self.read_as,
            "dry_run": self.dry_run,
            "summary": self.summary,
            "missing_columns": self.missing_columns,
            "unknown_columns": self.unknown_columns,
            "errors": [
                {"row": e.row, "column": e.column, "value": e.value, "reason": e.reason}
                for e in self.errors
            ],
            "changes": [
                {
                    "row": c.row,
                    "resource": c.resource,
                    "element": c.element,
                    "old": c.old,
                    "new": c.new,
                }
                for c in self.changes
            ],
        }

    def text(self) -> str:
        s = self.summary
        verb = "would load" if self.dry_run else "loaded"
        lines = [
            f"registry import of {self.source} ({self.read_as}): {s['rows']} rows, "
            f"{verb} {s['patients_loaded']} patients, rejected {s['patients_rejected']} "
            f"({s['cell_errors']} cell errors); resources created {s['resources_created']}, "
            f"updated {s['resources_updated']}, unchanged {s['resources_unchanged']}, "
            f"withdrawn {s['resources_withdrawn']}"
        ]
        if self.missing_columns:
            lines.append(
                "  columns of the mapping absent from the file: " + ", ".join(self.missing_columns)
            )
        if self.unknown_columns:
            lines.append("  columns the mapping does not use: " + ", ".join(self.unknown_columns))
        lines += [f"  {e.text()}" for e in self.errors]
        changed = "would change" if self.dry_run else "changed"
        lines += [f"  {changed} {c.text()}" for c in self.changes]
        return "\n".join(lines)


def _identifier(value: str) -> dict[str, str]:
    return {"system": REGISTRY_SYSTEM, "value": value}


def differences(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """The leaf values that differ between two JSON documents, with their dotted paths
    (list items by index); ``id``, ``meta`` and the registry's own identifiers aside."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            if not path and key in ("id", "meta", "identifier"):
                continue
            where = f"{path}.{key}" if path else key
            out += differences(old.get(key), new.get(key), where)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in differences(a, b, f"{path}[{i}]")
        ]
    return [] if old == new else [(path, old, new)]


def _label(resource_type: str, resource: dict[str, Any]) -> str:
    idents = resource.get("identifier", [])
    ident = next((i.get("value") for i in idents if i.get("system") == REGISTRY_SYSTEM), None)
    ident = ident or next((i.get("value") for i in idents if i.get("value")), None)  # the MRN
    return f"{resource_type} {ident}" if ident else resource_type


def _comparable(resource: dict[str, Any]) -> str:
    return json.dumps(
        {k: v for k, v in resource.items() if k not in ("id", "meta")}, sort_keys=True
    )


class _Writer:
    """Upserts one patient's resources in the caller's transaction."""

    def __init__(self, conn: Connection, result: PatientResult) -> None:
        self.conn = conn
        self.result = result
        self.access = Access.internal()

    def upsert(
        self,
        resource_type: str,
        criteria: str,
        resource: dict[str, Any],
        *,
        merge: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> str:
        existing = repo.find_one(self.conn, resource_type, criteria)
        if existing is None:
            stored = interactions.create(
                self.conn, resource, resource_type=resource_type, access=self.access
            ).stored
            self.result.actions["created"] += 1
            return f"{resource_type}/{stored.logical_id}"
        wanted = merge(existing.content) if merge else resource
        if _comparable(wanted) == _comparable(existing.content):
            self.result.actions["unchanged"] += 1
            return f"{resource_type}/{existing.logical_id}"
        if resource_type == "Observation" and existing.content.get("status") in (
            "final",
            "amended",
        ):
            wanted = {**wanted, "status": "amended"}
            if _comparable(wanted) == _comparable(existing.content):
                self.result.actions["unchanged"] += 1
                return f"{resource_type}/{existing.logical_id}"
        interactions.update(
            self.conn,
            resource_type,
            existing.logical_id,
            {**wanted, "id": existing.logical_id},
            access=self.access,
        )
        self.result.actions["updated"] += 1
        self.changed(resource_type, existing.content, wanted)
        return f"{resource_type}/{existing.logical_id}"

    def changed(self, resource_type: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        label = _label(resource_type, new)
        for element, before, after in differences(old, new):
            if element == "status" and after == "amended":
                continue  # the consequence of a changed value, not a value
            self.result.changes.append(Change(self.result.row, label, element, before, after))


class RegistryImporter:
    """Reads an export with a mapping and writes it through the FHIR store's write door."""

    def __init__(self, engine: Engine, mapping: Mapping, *, mrn_system: str) -> None:
        self.engine = engine
        self.mapping = mapping
        self.mrn_system = mrn_system
        self.rows = RowReader(mapping)

    def run(self, name: str, data: bytes, *, dry_run: bool = False) -> ImportReport:
        """Import a file's bytes (CSV or XLSX). Raises ``TableError`` for a file that is
        not a table; every other problem is in the report."""
        frame, how = read_table(name, data)
        columns = list(frame.columns)
        wanted = self.mapping.all_columns()
        report = ImportReport(
            source=name,
            read_as=how,
            dry_run=dry_run,
            rows=len(frame),
            missing_columns=sorted(c for c in wanted if c not in columns),
            unknown_columns=sorted(c for c in columns if c not in wanted),
        )
        seen: set[tuple[str, date]] = set()
        for index, row in enumerate(frame.to_dict(orient="records")):
            number = index + 2  # the header is row 1, as the coordinator's spreadsheet shows
            cells = {str(k): str(v) for k, v in row.items()}
            record = self.rows.read(number, cells)
            mrn_column = self.mapping.columns["mrn"]
            if isinstance(record, list):
                mrn = cells.get(mrn_column, "").strip()
                report.patients.append(PatientResult(number, mrn, False, errors=record))
                continue
            key = (record.mrn, record.surgery_date)
            if key in seen:
                error = CellError(
                    number, mrn_column, record.mrn, "the same patient and surgery date appear again"
                )
                report.patients.append(PatientResult(number, record.mrn, False, errors=[error]))
                continue
            seen.add(key)
            report.patients.append(self._load(record, dry_run=dry_run))
        log.info("registry import", extra=report.summary)
        return report

    def _load(self, patient: RegistryPatient, *, dry_run: bool) -> PatientResult:
        result = PatientResult(patient.row, patient.mrn, True)

        def work(conn: Connection) -> None:
            result.actions.clear()
            result.changes.clear()
            self._write(_Writer(conn, result), patient)

        try:
            if dry_run:
                with self.engine.connect() as conn:
                    transaction = conn.begin()
                    try:
                        work(conn)
                    finally:
                        transaction.rollback()
            else:
                repo.run_in_transaction(self.engine, work)
        except (FhirError, repo.RepositoryError) as exc:
            error = as_fhir_error(exc)
            result.loaded = False
            result.actions.clear()
            result.changes.clear()
            result.errors.append(
                CellError(patient.row, "", patient.mrn, f"not stored: {error.diagnostics}")
            )
        return result

    def _write(self, w: _Writer, p: RegistryPatient) -> None:
        key = f"{p.mrn}/{p.surgery_date.isoformat()}"
        patient = builders.placeholder_patient(p.mrn, system=self.mrn_system)
        fields: dict[str, Any] = {}
        if p.family or p.given:
            name: dict[str, Any] = {}
            if p.family:
                name["family"] = p.family
            if p.given:
                name["given"] = [p.given]
            fields["name"] = [name]
        if p.sex:
            fields["gender"] = p.sex
        if p.birth_date:
            fields["birthDate"] = p.birth_date.isoformat()
        patient_ref = w.upsert(
            "Patient",
            f"identifier={self.mrn_system}|{p.mrn}",
            patient | fields,
            merge=lambda current: {**current, **fields},  # the EHR's other fields are kept
        )
        surgeon_ref = None
        if p.surgeon:
            family = p.surgeon.removeprefix("Dr ").removeprefix("Dr. ").strip()
            surgeon = {
                "resourceType": "Practitioner",
                "identifier": [_identifier(f"surgeon/{family.casefold()}")],
                "name": [{"text": p.surgeon, "family": family}],
            }
            surgeon_ref = w.upsert(
                "Practitioner",
                f"identifier={REGISTRY_SYSTEM}|surgeon/{family.casefold()}",
                surgeon,
            )
        encounter_ref = None
        if p.admission_date:
            encounter = builders.encounter(
                patient_ref,
                start=p.admission_date.isoformat(),
                end=p.discharge_date.isoformat() if p.discharge_date else None,
            )
            encounter["identifier"] = [_identifier(f"{key}/stay")]
            encounter_ref = w.upsert(
                "Encounter", f"identifier={REGISTRY_SYSTEM}|{key}/stay", encounter
            )
        procedure = builders.procedure(
            patient_ref,
            surgeon_ref or "",
            group=p.group,
            levels=p.levels,
            performed=p.surgery_date.isoformat(),
            technique=p.technique or "mis-tlif",
            encounter_ref=encounter_ref,
        )
        if surgeon_ref is None:
            procedure.pop("performer")
        if p.technique is None:  # the registry did not say: the index surgery only
            procedure["code"]["coding"] = procedure["code"]["coding"][:1]
        procedure["identifier"] = [_identifier(key)]
        procedure_ref = w.upsert("Procedure", f"identifier={REGISTRY_SYSTEM}|{key}", procedure)
        written: set[str] = set()
        for outcome in p.outcomes:
            ident = f"{key}/{outcome.code}/{outcome.time_point or 'surgery'}"
            observation = self._outcome(
                patient_ref,
                procedure_ref,
                p.surgery_date,
                outcome.code,
                outcome.time_point,
                outcome.value,
            )
            observation["identifier"] = [_identifier(ident)]
            w.upsert("Observation", f"identifier={REGISTRY_SYSTEM}|{ident}", observation)
            written.add(ident)
        for complication in p.complications:
            ident = f"{key}/complication/{complication.slot}"
            onset = complication.onset or p.surgery_date
            days = (onset - p.surgery_date).days
            observation = builders.complication(
                patient_ref,
                procedure_ref,
                kind=complication.kind,
                grade=complication.grade,
                onset=onset.isoformat(),
                timing="early" if days <= vocabulary.EARLY_LIMIT_DAYS else "late",
            )
            observation["identifier"] = [_identifier(ident)]
            w.upsert("Observation", f"identifier={REGISTRY_SYSTEM}|{ident}", observation)
            written.add(ident)
        self._withdraw(w, procedure_ref, key, written)

    def _outcome(
        self,
        patient_ref: str,
        procedure_ref: str,
        surgery: date,
        code: str,
        time_point: str | None,
        value: float,
    ) -> dict[str, Any]:
        if time_point is None:
            when = surgery
        elif time_point == "baseline":
            when = surgery - timedelta(days=1)
        else:
            when = surgery + timedelta(days=vocabulary.TIME_POINT_DAYS[time_point])
        early = vocabulary.EARLY_RESULTS.get(code)
        system, system_code = early.coding if early else (codes.PROJECT, code)
        return builders.measurement(
            patient_ref,
            system_code,
            value,
            effective=when.isoformat(),
            time_point=time_point,
            system=system,
            category="early-postop" if early else "prom",
            procedure_ref=procedure_ref,
        )

    @staticmethod
    def _withdraw(w: _Writer, procedure_ref: str, key: str, written: set[str]) -> None:
        """Outcomes and complications the export no longer holds: entered-in-error."""
        found = repo.search(
            w.conn,
            "Observation",
            [("part-of", procedure_ref), ("identifier", f"{REGISTRY_SYSTEM}|")],
            limit=repo.MAX_COUNT,
        )
        for stored in found.matches:
            idents = [
                i.get("value")
                for i in stored.content.get("identifier", [])
                if i.get("system") == REGISTRY_SYSTEM
            ]
            ident = next((i for i in idents if str(i).startswith(f"{key}/")), None)
            if ident is None or ident in written:
                continue
            if stored.content.get("status") == "entered-in-error":
                continue
            withdrawn = {**stored.content, "status": "entered-in-error"}
            interactions.update(
                w.conn, "Observation", stored.logical_id, withdrawn, access=w.access
            )
            w.result.actions["withdrawn"] += 1
            w.changed("Observation", stored.content, withdrawn)
