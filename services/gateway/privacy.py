"""Pseudonymisation for researchers: keyed-HMAC pseudonyms and per-patient date shifts.

A researcher never sees an MRN, a name, a DICOM UID or a real date. The pseudonym is
``HMAC-SHA256(key, "patient|" + MRN system + "|" + MRN)`` (base32, 12 characters), so the
same patient always gets the same pseudonym under the same key and nobody without the key
can go back. Every date of one patient is moved by the same number of days, derived from
the same key, so intervals (days from surgery to a complication, to a follow-up) are
exact. Ages are reported in whole years at surgery, 90 and over as 90 (HIPAA Safe Harbor).

The key is configuration (``GATEWAY_PSEUDONYM_KEY`` or the key file); changing it changes
every pseudonym and shift, which is how a study re-issues a data set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import date, datetime, timedelta
from typing import Any

AGE_CAP = 90


class Pseudonymizer:
    """Pseudonyms and date shifts under one secret key."""

    def __init__(self, key: bytes, *, max_shift_days: int = 180) -> None:
        if len(key) < 32:
            raise ValueError("the pseudonymisation key must be at least 32 bytes")
        if max_shift_days < 1:
            raise ValueError("max_shift_days must be at least 1")
        self._key = key
        self.max_shift_days = max_shift_days

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}|{value}".encode(), hashlib.sha256).digest()

    def _token(self, kind: str, value: str, prefix: str) -> str:
        return prefix + base64.b32encode(self._digest(kind, value)).decode()[:12]

    def patient(self, mrn: str, system: str = "") -> str:
        """The patient's pseudonym, e.g. ``P-K3N4Q7ZTW2MA``."""
        return self._token("patient", f"{system}|{mrn}", "P-")

    def surgeon(self, reference: str) -> str:
        """A surgeon's pseudonym (staff are not shown to researchers either)."""
        return self._token("surgeon", reference, "S-")

    def reader(self, reader_id: str) -> str:
        """A reader's pseudonym (readers are staff, as surgeons are)."""
        return self._token("reader", reader_id, "RD-")

    def study(self, study_instance_uid: str) -> str:
        """A study's pseudonym (UIDs embed dates and the hospital's root)."""
        return self._token("study", study_instance_uid, "ST-")

    def case(self, procedure_id: str) -> str:
        """A case's pseudonym: the EHR's Procedure id would link back to the record."""
        return self._token("case", procedure_id, "C-")

    def resource(self, resource_type: str, logical_id: str) -> str:
        """The pseudonymous id of any other resource a researcher receives."""
        return self._token("resource", f"{resource_type}/{logical_id}", "R-")

    def shift_days(self, mrn: str, system: str = "") -> int:
        """The patient's date shift in days: never zero, within ±max_shift_days."""
        raw = int.from_bytes(self._digest("shift", f"{system}|{mrn}")[:8], "big")
        magnitude = 1 + raw % self.max_shift_days
        return magnitude if (raw >> 63) & 1 else -magnitude


def age_at(birth: date | None, on: date) -> int | None:
    """Age in whole years on a day, capped at :data:`AGE_CAP`."""
    if birth is None:
        return None
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return min(years, AGE_CAP)


def shift_fhir_date(text: str, days: int) -> str:
    """Shift a FHIR date, dateTime or instant by whole days, keeping its precision."""
    if len(text) == 4:  # a year alone: shifting by days cannot be expressed
        return text
    if len(text) == 7:  # year-month: shift the first of the month, keep month precision
        moved = date.fromisoformat(text + "-01") + timedelta(days=days)
        return moved.isoformat()[:7]
    if len(text) == 10:
        return (date.fromisoformat(text) + timedelta(days=days)).isoformat()
    moved_dt = datetime.fromisoformat(text.replace("Z", "+00:00")) + timedelta(days=days)
    out = moved_dt.isoformat()
    return out.replace("+00:00", "Z") if text.endswith("Z") else out


UID_TEXT = re.compile(r"\b\d+(?:\.\d+){3,}\b")
DATE_TEXT = re.compile(r"\b(?:19|20)\d{2}-?(?:0[1-9]|1[0-2])-?(?:0[1-9]|[12]\d|3[01])\b")


def scrub_text(text: str) -> str:
    """A warning or reason as a researcher may read it: DICOM UIDs and calendar dates
    (which the services' own messages may quote) replaced by placeholders."""
    return DATE_TEXT.sub("[date]", UID_TEXT.sub("[uid]", text))


# -- the researcher's allow-list ---------------------------------------------------------
# For each resource type, the only elements a researcher receives, and what each is:
#   "code"   CodeableConcept / Coding / code: codings (system, code, display) only, no text
#   "date"   shifted by the patient's offset, precision kept
#   "ref"    a reference, mapped to a pseudonymous one or dropped
#   "value"  a number, boolean, status or a Quantity (value, unit, system, code)
#   "year"   the birth date as a year only, aged 90 and over as the year that makes 90
#   dict     a nested allow-list (elements of a backbone element)
Allow = dict[str, Any]
_COMPONENT: Allow = {
    "code": "code",
    "valueQuantity": "value",
    "valueCodeableConcept": "code",
    "valueInteger": "value",
    "valueBoolean": "value",
}
ALLOW_LIST: dict[str, Allow] = {
    "Patient": {"gender": "value", "birthDate": "year"},
    "Practitioner": {},
    "Procedure": {
        "status": "value",
        "code": "code",
        "subject": "ref",
        "performedDateTime": "date",
        "performedPeriod": {"start": "date", "end": "date"},
        "performer": {"actor": "ref"},
        "reasonCode": "code",
        "bodySite": "code",
        "encounter": "ref",
    },
    "Encounter": {
        "status": "value",
        "class": "code",
        "subject": "ref",
        "period": {"start": "date", "end": "date"},
    },
    "Observation": {
        "status": "value",
        "category": "code",
        "code": "code",
        "subject": "ref",
        "encounter": "ref",
        "partOf": "ref",
        "derivedFrom": "ref",
        "focus": "ref",
        "effectiveDateTime": "date",
        "effectivePeriod": {"start": "date", "end": "date"},
        "valueQuantity": "value",
        "valueCodeableConcept": "code",
        "valueInteger": "value",
        "valueBoolean": "value",
        "dataAbsentReason": "code",
        "bodySite": "code",
        "interpretation": "code",
        "component": _COMPONENT,
    },
    "QuestionnaireResponse": {
        "questionnaire": "value",
        "status": "value",
        "subject": "ref",
        "authored": "date",
        "item": {"linkId": "value", "answer": {"valueInteger": "value", "valueCoding": "code"}},
    },
    "ImagingStudy": {
        "status": "value",
        "subject": "ref",
        "started": "date",
        "modality": "code",
        "numberOfSeries": "value",
        "numberOfInstances": "value",
    },
}
EXTENSIONS_KEPT = {"http://spine-outcomes.example.org/fhir/StructureDefinition/time-point"}
_QUANTITY_KEYS = ("value", "unit", "system", "code", "comparator")
_CODING_KEYS = ("system", "code", "display")


class ResearchSerializer:
    """Resources as a researcher receives them: only :data:`ALLOW_LIST` elements, every
    date shifted, every id and reference pseudonymous, no free text, no identifiers, no
    extension but the time point."""

    def __init__(
        self,
        pseudonymizer: Pseudonymizer,
        *,
        shift: int,
        references: dict[str, str],
        birth_year_floor: int | None = None,
    ) -> None:
        self.pseudonymizer = pseudonymizer
        self.shift = shift
        self.references = references  # real "Type/id" -> pseudonymous "Type/id"
        self.birth_year_floor = birth_year_floor  # the year that makes the patient 90

    def pseudonymous_id(self, resource: dict[str, Any]) -> str:
        reference = f"{resource.get('resourceType')}/{resource.get('id')}"
        mapped = self.references.get(reference)
        if mapped is not None:
            return mapped.split("/", 1)[1]
        return self.pseudonymizer.resource(
            str(resource.get("resourceType")), str(resource.get("id"))
        )

    def serialize(self, resource: dict[str, Any]) -> dict[str, Any] | None:
        """The researcher's copy, or None for a type the allow-list does not know."""
        resource_type = str(resource.get("resourceType"))
        allowed = ALLOW_LIST.get(resource_type)
        if allowed is None:
            return None
        out: dict[str, Any] = {"resourceType": resource_type, "id": self.pseudonymous_id(resource)}
        out.update(self._elements(resource, allowed))
        extensions = [
            {"url": e["url"], "valueCoding": self._coding(e.get("valueCoding"))}
            for e in resource.get("extension") or []
            if isinstance(e, dict) and e.get("url") in EXTENSIONS_KEPT and e.get("valueCoding")
        ]
        if extensions:
            out["extension"] = extensions
        return out

    def _elements(self, node: dict[str, Any], allowed: Allow) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, kind in allowed.items():
            if name not in node:
                continue
            value = self._value(node[name], kind)
            if value not in (None, [], {}):
                out[name] = value
        return out

    def _value(self, value: Any, kind: Any) -> Any:
        if isinstance(value, list):
            items = [self._value(v, kind) for v in value]
            return [i for i in items if i not in (None, {}, [])]
        if isinstance(kind, dict):
            return self._elements(value, kind) if isinstance(value, dict) else None
        if kind == "code":
            return self._concept(value)
        if kind == "date":
            return self._date(value)
        if kind == "year":
            return self._year(value)
        if kind == "ref":
            reference = value.get("reference") if isinstance(value, dict) else None
            mapped = self.references.get(str(reference))
            return {"reference": mapped} if mapped else None
        if isinstance(value, dict):  # a Quantity
            return {k: value[k] for k in _QUANTITY_KEYS if k in value}
        return value if isinstance(value, bool | int | float) or kind == "value" else None

    @staticmethod
    def _coding(coding: Any) -> dict[str, Any] | None:
        if not isinstance(coding, dict):
            return None
        return {k: coding[k] for k in _CODING_KEYS if isinstance(coding.get(k), str)} or None

    def _concept(self, value: Any) -> Any:
        if isinstance(value, str):
            return value  # a code
        if not isinstance(value, dict):
            return None
        if "coding" in value:
            codings = [self._coding(c) for c in value.get("coding") or []]
            kept = [c for c in codings if c]
            return {"coding": kept} if kept else None
        return self._coding(value)  # a Coding

    def _date(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return None
        try:
            return shift_fhir_date(value, self.shift)
        except ValueError:
            return None

    def _year(self, value: Any) -> str | None:
        if not isinstance(value, str) or len(value) < 4 or not value[:4].isdigit():
            return None
        year = int(value[:4])
        if self.birth_year_floor is not None:
            year = max(year, self.birth_year_floor)
        return f"{year:04d}"
