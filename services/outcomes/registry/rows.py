"""One registry row → one checked patient record, or the list of what is wrong with it
(row, column, value, reason). A row with any error is not loaded at all: a patient is
never half-loaded."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime

from services.common import vocabulary
from services.outcomes.registry.mapping import Mapping

_LEVEL = re.compile(r"^L([1-5])\s*[-/]?\s*(L[1-5]|S1)$", re.IGNORECASE)


@dataclass(frozen=True)
class CellError:
    row: int  # the spreadsheet's row number (the header is row 1)
    column: str
    value: str
    reason: str

    def text(self) -> str:
        return f"row {self.row}, column '{self.column}', value '{self.value}': {self.reason}"


@dataclass(frozen=True)
class Outcome:
    code: str
    time_point: str | None
    value: float


@dataclass(frozen=True)
class Complication:
    slot: int
    kind: str
    grade: str
    onset: date | None


@dataclass
class RegistryPatient:
    row: int
    mrn: str
    surgery_date: date
    group: str
    levels: list[str]
    family: str | None = None
    given: str | None = None
    birth_date: date | None = None
    sex: str | None = None
    technique: str | None = None
    surgeon: str | None = None
    admission_date: date | None = None
    discharge_date: date | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    complications: list[Complication] = field(default_factory=list)


class RowReader:
    """Reads rows with one mapping; collects every cell error of a row."""

    def __init__(self, mapping: Mapping) -> None:
        self.mapping = mapping
        self.missing = {m.strip().casefold() for m in mapping.formats.missing}

    def _empty(self, raw: str) -> bool:
        return raw.strip().casefold() in self.missing

    def _date(self, raw: str) -> date:
        text = raw.strip().split(" ")[0]  # "14/05/2024 00:00:00" as spreadsheets export it
        for pattern in self.mapping.formats.dates:
            try:
                parsed = datetime.strptime(text, pattern).date()
            except ValueError:
                continue
            if not 1900 <= parsed.year <= 2100:
                raise ValueError(f"the year {parsed.year} is not plausible")
            return parsed
        raise ValueError(f"not a date in {' or '.join(self.mapping.formats.dates)}")

    @staticmethod
    def _number(raw: str) -> float:
        text = raw.strip().replace("\u00a0", "").replace(" ", "")
        if text.count(",") == 1 and "." not in text:
            text = text.replace(",", ".")  # a decimal comma
        return float(text)

    def _levels(self, raw: str) -> list[str]:
        parts = [
            p for p in re.split(f"[{re.escape(self.mapping.formats.level_separators)}]", raw) if p
        ]
        # "L4 L5" split by spaces: glue single vertebrae back into levels
        glued: list[str] = []
        for part in parts:
            if (
                glued
                and re.fullmatch(r"(L[1-5]|S1)", part, re.IGNORECASE)
                and re.fullmatch(r"L[1-5]", glued[-1], re.IGNORECASE)
            ):
                glued[-1] = f"{glued[-1]}-{part}"
            else:
                glued.append(part)
        levels = []
        for part in glued:
            match = _LEVEL.match(part.strip())
            if not match:
                raise ValueError(f"'{part}' is not a lumbar level (L1-L2 ... L5-S1)")
            level = f"L{match[1]}-{match[2].upper()}"
            if level not in vocabulary.LEVELS:
                raise ValueError(f"'{part}' is not a motion segment of the study")
            if level not in levels:
                levels.append(level)
        if not levels:
            raise ValueError("no level")
        return sorted(levels, key=vocabulary.LEVELS.index)

    def read(self, row_number: int, cells: dict[str, str]) -> RegistryPatient | list[CellError]:
        """The row's patient record, or every error found in it."""
        errors: list[CellError] = []
        columns = self.mapping.columns
        values: dict[str, object] = {}

        def cell(name: str) -> tuple[str, str] | None:
            column = columns.get(name)  # type: ignore[call-overload]
            if column is None or column not in cells or self._empty(cells[column]):
                return None
            return column, cells[column].strip()

        def take(name: str, convert: object, required: bool = False) -> None:
            found = cell(name)
            if found is None:
                if required:
                    column = columns.get(name, name)  # type: ignore[call-overload]
                    errors.append(CellError(row_number, column, "", "required, and empty"))
                return
            column, raw = found
            try:
                values[name] = convert(raw)  # type: ignore[operator]
            except ValueError as exc:
                errors.append(CellError(row_number, column, raw, str(exc)))

        def coded(table: str) -> object:
            def convert(raw: str) -> str:
                code = self.mapping.value(table, raw)
                if code is None:
                    raise ValueError(f"not a known {table} (see [values.{table}] in the mapping)")
                return code

            return convert

        take("mrn", lambda raw: raw, required=True)
        take("surgery_date", self._date, required=True)
        take("group", coded("group"), required=True)
        take("levels", self._levels, required=True)
        take("family", lambda raw: raw)
        take("given", lambda raw: raw)
        take("birth_date", self._date)
        take("sex", coded("sex"))
        take("technique", coded("technique"))
        take("surgeon", lambda raw: raw)
        take("admission_date", self._date)
        take("discharge_date", self._date)
        surgery = values.get("surgery_date")
        birth = values.get("birth_date")
        if isinstance(surgery, date) and isinstance(birth, date) and birth >= surgery:
            errors.append(
                CellError(row_number, columns["birth_date"], str(birth), "born after the surgery")
            )
        admitted, discharged = values.get("admission_date"), values.get("discharge_date")
        if isinstance(admitted, date) and isinstance(discharged, date) and discharged < admitted:
            errors.append(
                CellError(
                    row_number,
                    columns["discharge_date"],
                    str(discharged),
                    "discharged before admission",
                )
            )
        outcomes: list[Outcome] = []
        for measure in self.mapping.measures:
            raw = cells.get(measure.column, "")
            if measure.column not in cells or self._empty(raw):
                continue
            try:
                value = self._number(raw)
            except ValueError:
                errors.append(CellError(row_number, measure.column, raw, "not a number"))
                continue
            low, high = _range(measure.code)
            if not low <= value <= high:
                errors.append(
                    CellError(
                        row_number,
                        measure.column,
                        raw,
                        f"outside {low:g}-{high:g} for {measure.code}",
                    )
                )
                continue
            outcomes.append(Outcome(measure.code, measure.time_point, value))
        complications: list[Complication] = []
        for slot, columns_of in enumerate(self.mapping.complications, start=1):
            kind_raw = cells.get(columns_of.type, "")
            if self._empty(kind_raw):
                continue
            kind = self.mapping.value("complication", kind_raw)
            if kind is None:
                errors.append(
                    CellError(row_number, columns_of.type, kind_raw, "not a known complication")
                )
                continue
            grade_raw = cells.get(columns_of.grade, "")
            grade = self.mapping.value("grade", grade_raw) if not self._empty(grade_raw) else None
            if grade is None:
                reason = "a complication needs its Clavien-Dindo grade (I, II, IIIa ... V)"
                errors.append(CellError(row_number, columns_of.grade, grade_raw, reason))
                continue
            onset: date | None = None
            if columns_of.date and not self._empty(cells.get(columns_of.date, "")):
                try:
                    onset = self._date(cells[columns_of.date])
                except ValueError as exc:
                    errors.append(
                        CellError(row_number, columns_of.date, cells[columns_of.date], str(exc))
                    )
                    continue
            complications.append(Complication(slot, kind, grade, onset))
        if errors:
            return errors
        return RegistryPatient(
            row=row_number,
            outcomes=outcomes,
            complications=complications,
            **values,  # type: ignore[arg-type]
        )


def _range(code: str) -> tuple[float, float]:
    for prom in vocabulary.PROMS.values():
        if prom.code == code:
            return prom.low, prom.high
    early = vocabulary.EARLY_RESULTS[code]
    return early.low, early.high
