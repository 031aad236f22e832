"""The mapping of a registry export onto the study's vocabulary, read from TOML.

The default (``keops.toml`` beside this module) describes a KEOPS-style export with French
headers; a site with other headers copies it and names its own columns. Every code a
mapping produces is checked against the vocabulary when the mapping is loaded, so a
mapping that would write an unknown time point or PROM is refused before any row is read.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.common import vocabulary

DEFAULT = Path(__file__).with_name("keops.toml")

Field_ = Literal[
    "mrn",
    "family",
    "given",
    "birth_date",
    "sex",
    "surgery_date",
    "levels",
    "technique",
    "surgeon",
    "group",
    "admission_date",
    "discharge_date",
]
REQUIRED: tuple[Field_, ...] = ("mrn", "surgery_date", "group", "levels")


class MappingError(ValueError):
    """The mapping file cannot be used (unreadable, or names unknown codes)."""


class MeasureColumn(BaseModel):
    """A column holding one quantitative outcome at one time point."""

    model_config = ConfigDict(extra="forbid")
    column: str
    code: str  # a PROM or early-result code of the vocabulary
    time_point: str | None = None  # None: the day of surgery (blood loss)

    @model_validator(mode="after")
    def _known(self) -> MeasureColumn:
        known = {p.value for p in vocabulary.PROMS} | set(vocabulary.EARLY_RESULTS)
        if self.code not in known:
            raise ValueError(f"unknown outcome code '{self.code}' for column '{self.column}'")
        if self.time_point is not None and self.time_point not in vocabulary.TIME_POINT_CODES:
            raise ValueError(f"unknown time point '{self.time_point}' for column '{self.column}'")
        return self


class ComplicationColumns(BaseModel):
    """The columns of one complication slot (a registry has a few of them per patient)."""

    model_config = ConfigDict(extra="forbid")
    type: str
    grade: str
    date: str | None = None


class Formats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dates: list[str] = Field(default_factory=lambda: ["%d/%m/%Y", "%Y-%m-%d", "%d/%m/%y"])
    level_separators: str = ";,/ +"
    missing: list[str] = Field(default_factory=lambda: ["", "NA", "N/A", "nd", "ND", "-", "?"])


class Mapping(BaseModel):
    """What each column of the export means."""

    model_config = ConfigDict(extra="forbid")
    name: str = "registry"
    columns: dict[Field_, str]
    measures: list[MeasureColumn] = Field(default_factory=list)
    complications: list[ComplicationColumns] = Field(default_factory=list)
    values: dict[str, dict[str, str]] = Field(default_factory=dict)
    formats: Formats = Field(default_factory=Formats)

    @model_validator(mode="after")
    def _complete(self) -> Mapping:
        missing = [f for f in REQUIRED if f not in self.columns]
        if missing:
            raise ValueError(f"the mapping names no column for {', '.join(missing)}")
        allowed = {
            "sex": {"male", "female", "other", "unknown"},
            "group": set(vocabulary.GROUP_CODES),
            "technique": {t.code for t in vocabulary.TECHNIQUES},
            "complication": set(vocabulary.COMPLICATION_CODES),
            "grade": set(vocabulary.CLAVIEN_DINDO_GRADES),
        }
        for table, entries in self.values.items():
            if table not in allowed:
                raise ValueError(f"unknown value table [values.{table}]")
            wrong = sorted(set(entries.values()) - allowed[table])
            if wrong:
                raise ValueError(f"[values.{table}] maps to unknown codes: {', '.join(wrong)}")
        return self

    def value(self, table: str, raw: str) -> str | None:
        """The code a registry value means (case- and accent-insensitive match on the
        table's keys, then the codes themselves), or None."""
        entries = self.values.get(table, {})
        wanted = _fold(raw)
        for key, code in entries.items():
            if _fold(key) == wanted:
                return code
        codes = set(entries.values())
        return raw.strip() if raw.strip() in codes else None

    def all_columns(self) -> set[str]:
        out = set(self.columns.values()) | {m.column for m in self.measures}
        for slot in self.complications:
            out |= {slot.type, slot.grade} | ({slot.date} if slot.date else set())
        return out


def _fold(text: str) -> str:
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", text.strip().casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def load_mapping(path: Path | None = None) -> Mapping:
    """The mapping in ``path`` (TOML), or the shipped KEOPS default."""
    source = path or DEFAULT
    try:
        with source.open("rb") as handle:
            raw = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MappingError(f"cannot read the mapping {source}: {exc}") from None
    try:
        return Mapping.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise MappingError(f"mapping {source.name}: {first['msg']}") from None
