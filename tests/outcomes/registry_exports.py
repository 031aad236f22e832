"""Registry exports as clinical registries write them (KEOPS layout, French headers), for
the import tests and the demo: rows as dicts, written as CSV in several encodings and
separators, or as XLSX."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from openpyxl import Workbook

from services.outcomes.registry.mapping import load_mapping


def header() -> list[str]:
    mapping = load_mapping()
    columns = list(mapping.columns.values()) + [m.column for m in mapping.measures]
    for slot in mapping.complications:
        columns += [slot.type, slot.grade] + ([slot.date] if slot.date else [])
    return columns


def row(index: int, **overrides: str) -> dict[str, str]:
    """A plausible registry row; decimal commas, day-first dates, accents."""
    values = {
        "IPP": f"REG{index:05d}",
        "Nom": ("Lefèvre", "Dubois", "Müller", "N'Diaye")[index % 4],
        "Prénom": ("Hélène", "François", "Zoé", "Jérôme")[index % 4],
        "Date de naissance": f"{1 + index % 27:02d}/0{1 + index % 9}/19{50 + index % 30}",
        "Sexe": "F" if index % 2 else "M",
        "Date intervention": f"{1 + index % 27:02d}/0{1 + index % 9}/2023",
        "Niveaux opérés": ("L4-L5", "L4-L5; L5-S1", "L3L4", "L5 S1")[index % 4],
        "Technique": "MIS-TLIF",
        "Chirurgien": ("Dr Moreau", "Dr Okafor")[index % 2],
        "Indication": ("Sténose foraminale", "Sténose centrale")[index % 2],
        "Date entrée": f"{1 + index % 27:02d}/0{1 + index % 9}/2023",
        "Date sortie": f"{2 + index % 27:02d}/0{1 + index % 9}/2023",
        "Pertes sanguines (mL)": str(150 + 10 * index),
        "Morphiniques J1 (mg/j)": "22,5",
        "EVA radiculaire pré-op": "7,5",
        "EVA lombaire pré-op": "6",
        "ODI pré-op": str(40 + index % 10),
        "ODI M3": str(22 + index % 7),
        "EQ5D pré-op": "0,512",
        "EQ5D M3": "0,78",
    }
    if index % 3 == 0:
        values |= {
            "Complication 1": "Brèche durale",
            "Clavien-Dindo 1": "I",
            "Date complication 1": values["Date intervention"],
        }
    values.update(overrides)
    return values


def as_csv(
    rows: Iterable[dict[str, str]], *, encoding: str = "utf-8", delimiter: str = ";"
) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    columns = header()
    writer.writerow(columns)
    for r in rows:
        writer.writerow([r.get(c, "") for c in columns])
    return buffer.getvalue().encode(encoding)


def as_xlsx(rows: Iterable[dict[str, str]]) -> bytes:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    columns = header()
    sheet.append(columns)
    for r in rows:
        sheet.append([r.get(c, "") for c in columns])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
