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
import copy
import hashlib
import hmac
from datetime import date, datetime, timedelta
from typing import Any

# FHIR elements holding a date, dateTime or instant that the researcher sees shifted.
DATE_ELEMENTS = frozenset(
    {
        "birthDate",
        "performedDateTime",
        "effectiveDateTime",
        "effectiveInstant",
        "issued",
        "authored",
        "started",
        "start",
        "end",
        "onsetDateTime",
        "recordedDate",
        "date",
    }
)
# FHIR elements that identify a person or carry free text; a researcher never gets them.
DROPPED_ELEMENTS = frozenset(
    {"name", "telecom", "address", "photo", "contact", "text", "note", "meta", "identifier"}
)
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

    def study(self, study_instance_uid: str) -> str:
        """A study's pseudonym (UIDs embed dates and the hospital's root)."""
        return self._token("study", study_instance_uid, "ST-")

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


def deidentify_resource(
    resource: dict[str, Any], *, shift: int, references: dict[str, str]
) -> dict[str, Any]:
    """A copy of a FHIR resource a researcher may see.

    Parameters
    ----------
    resource
        FHIR JSON as stored.
    shift
        The patient's date shift in days.
    references
        Map of real references (``Patient/abc``) to pseudonymous ones; any other
        Patient or Practitioner reference is dropped.

    Returns
    -------
    dict
        Identifying and free-text elements removed, dates shifted, references mapped.
    """

    def walk(node: Any, key: str | None) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k in DROPPED_ELEMENTS or (k == "display" and "reference" in node):
                    continue  # a reference's display is a person's name
                if k == "reference" and isinstance(v, str):
                    mapped = references.get(v)
                    if mapped is None and v.split("/")[0] in ("Patient", "Practitioner"):
                        continue
                    out[k] = mapped or v
                    continue
                out[k] = walk(v, k)
            return out
        if isinstance(node, list):
            return [walk(v, key) for v in node]
        if isinstance(node, str) and key in DATE_ELEMENTS:
            try:
                return shift_fhir_date(node, shift)
            except ValueError:
                return None
        return node

    cleaned: dict[str, Any] = walk(copy.deepcopy(resource), None)
    return cleaned
