"""Reading a registry export as the registry wrote it: CSV in UTF-8 (with or without a
BOM) or Windows-1252/Latin-1, separated by ``;``, ``,`` or tabs; or an XLSX workbook (the
first sheet). Every cell is read as text, so that nothing is guessed here (decimal commas,
day-first dates and codes are the rows' business), and empty rows are dropped.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")
DELIMITERS = ";,\t|"


class TableError(ValueError):
    """The file is not a table we can read (truncated, binary, empty, no header)."""


def _decode(data: bytes) -> tuple[str, str]:
    for encoding in ENCODINGS:
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise TableError("the file is neither UTF-8 nor Windows-1252 text")  # latin-1 never fails


def _delimiter(text: str) -> str:
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        header = text.splitlines()[0] if text else ""
        counts = {d: header.count(d) for d in DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        if counts[best] == 0:
            raise TableError("no column separator (; , tab) in the header line") from None
        return best


def read_table(name: str, data: bytes) -> tuple[pd.DataFrame, str]:
    """The export as a frame of strings (one column per header), and how it was read.

    Raises
    ------
    TableError
        Not a readable table: binary, truncated workbook, no header, duplicate headers.
    """
    if not data.strip():
        raise TableError("the file is empty")
    how: str
    if name.lower().endswith((".xlsx", ".xlsm")) or data[:2] == b"PK":
        try:
            frame = pd.read_excel(io.BytesIO(data), dtype=str, engine="openpyxl", header=0)
        except Exception as exc:  # openpyxl/zipfile raise many types on a damaged workbook
            raise TableError(f"not a readable XLSX workbook ({type(exc).__name__})") from None
        how = "xlsx"
    else:
        if b"\x00" in data[:4096]:
            raise TableError("a binary file, not a CSV export")
        text, encoding = _decode(data)
        delimiter = _delimiter(text)
        try:
            frame = pd.read_csv(
                io.StringIO(text),
                sep=delimiter,
                dtype=str,
                keep_default_na=False,
                skip_blank_lines=True,
                engine="python",
            )
        except (pd.errors.ParserError, csv.Error) as exc:
            raise TableError(f"not a well-formed CSV table: {exc}") from None
        how = f"csv, {encoding}, separator {delimiter!r}"
    frame.columns = [str(c).strip() for c in frame.columns]
    if any(c.startswith("Unnamed:") for c in frame.columns) and len(frame.columns) == 1:
        raise TableError("no header line")
    duplicates = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if duplicates:
        raise TableError(f"duplicate column headers: {', '.join(duplicates)}")
    frame = frame.fillna("").astype(str)
    frame = frame[~(frame.apply(lambda row: "".join(row).strip(), axis=1) == "")]
    return frame, how


def read_file(path: Path) -> tuple[pd.DataFrame, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TableError(f"cannot read {path}: {exc.strerror}") from None
    return read_table(path.name, data)
