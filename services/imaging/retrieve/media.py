"""Content negotiation for WADO-RS frames and bulk data (PS3.18 8.7.3, tables 8.7.3-2/-3).

A client lists acceptable media ranges in ``Accept``; for frames each is
``multipart/related; type=<part media type>[; transfer-syntax=<uid or *>]``. The first
range that can be served wins. A stored compressed frame is sent as stored when its
syntax is acceptable (``transfer-syntax=*`` accepts whatever is stored); otherwise it is
decoded and sent native (``application/octet-stream``, Explicit VR Little Endian).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from services.imaging.errors import NotAcceptable
from services.imaging.intake.multipart import ContentType, parse_content_type

OCTET_STREAM = "application/octet-stream"
NATIVE = ExplicitVRLittleEndian

# PS3.18 table 8.7.3-2: the media type of a compressed frame, by transfer syntax, and the
# syntax that each media type means when the client names none.
MEDIA_OF_SYNTAX: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "image/jpeg",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless
    "1.2.840.10008.1.2.4.80": "image/jls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "image/jls",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
    "1.2.840.10008.1.2.4.92": "image/jpx",  # JPEG 2000 Part 2 Lossless
    "1.2.840.10008.1.2.4.93": "image/jpx",  # JPEG 2000 Part 2
    "1.2.840.10008.1.2.4.201": "image/jphc",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "image/jphc",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "image/jphc",  # HTJ2K
}
DEFAULT_SYNTAX: dict[str, str] = {
    OCTET_STREAM: NATIVE,
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
}
# Syntaxes whose pixel bytes are already native little endian once parsed.
LITTLE_ENDIAN_NATIVE = {
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
}
BIG_ENDIAN = ExplicitVRBigEndian


@dataclass(frozen=True)
class FrameRendition:
    """How the frames of one instance go out: as stored (``encapsulated``) or native."""

    media_type: str
    transfer_syntax: str

    @property
    def as_stored(self) -> bool:
        return self.media_type != OCTET_STREAM

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def accepted(accept: str | None) -> list[ContentType]:
    """The media ranges of an Accept header, most preferred first (RFC 9110 12.5.1:
    by ``q``, listing order among equals; ``q=0`` means "not acceptable")."""
    ranges: list[tuple[float, int, ContentType]] = []
    for order, item in enumerate((accept or "").split(",")):
        if not item.strip():
            continue
        ctype = parse_content_type(item.strip())
        try:
            q = float(ctype.params.get("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append((-q, order, ctype))
    return [ctype for *_, ctype in sorted(ranges, key=lambda r: (r[0], r[1]))]


def frame_rendition(accept: str | None, stored_syntax: str) -> FrameRendition:
    """The rendition of frames stored in ``stored_syntax`` that ``accept`` allows.

    Raises
    ------
    NotAcceptable
        No listed media range can be produced (PS3.18: 406).
    """
    stored = UID(stored_syntax)
    native = FrameRendition(OCTET_STREAM, NATIVE)
    as_stored = (
        FrameRendition(MEDIA_OF_SYNTAX[stored], stored) if stored in MEDIA_OF_SYNTAX else native
    )
    if not accept or not accept.strip():
        return native
    for ctype in accepted(accept):
        media = ctype.media_type
        if media in ("*/*", "multipart/*"):
            return native
        if media != "multipart/related":
            continue
        part = ctype.params.get("type", OCTET_STREAM).lower()
        syntax = ctype.params.get("transfer-syntax")
        if part in ("*/*", "*"):
            return as_stored if syntax == "*" else native
        if part == OCTET_STREAM:
            if syntax == "*":
                return as_stored
            if syntax in (None, NATIVE):
                return native
            continue
        if part in DEFAULT_SYNTAX and as_stored.media_type == part:
            wanted = syntax or DEFAULT_SYNTAX[part]
            if wanted in ("*", str(stored)):
                return as_stored
    raise NotAcceptable(
        f"cannot serve frames stored as {stored_syntax} as {accept!r}; ask for "
        f'multipart/related; type="application/octet-stream" (native) or transfer-syntax=*'
    )


RENDERED_TYPES = ("image/jpeg", "image/png")


def rendered_media(accept: str | None) -> str:
    """The image type of a rendered response: the first of JPEG and PNG that ``accept``
    lists (``*/*`` and ``image/*`` mean JPEG, the PS3.18 default)."""
    if not accept or not accept.strip():
        return "image/jpeg"
    for ctype in accepted(accept):
        media = ctype.media_type
        if media in ("*/*", "image/*"):
            return "image/jpeg"
        if media in RENDERED_TYPES:
            return media
        if media == "multipart/related":
            part = ctype.params.get("type", "image/jpeg").lower()
            if part in RENDERED_TYPES:
                return part
    raise NotAcceptable(f"cannot render as {accept!r}; ask for image/jpeg or image/png")
