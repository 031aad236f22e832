"""Frames of a stored instance (WADO-RS ``frames/{list}``), native or as stored."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from services.imaging.errors import InvalidQuery, NotAcceptable, NotFound
from services.imaging.intake.dicom_io import native_frame_bits
from services.imaging.retrieve.media import BIG_ENDIAN, FrameRendition

MAX_FRAMES_IN_LIST = 10_000


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` → [1, 3, 5] (1-based, as PS3.18 numbers frames); 400 when malformed or
    when a number repeats (each frame is sent once: a response holds at most the
    instance's own pixel data)."""
    items = [t.strip() for t in text.split(",")]
    if not items or len(items) > MAX_FRAMES_IN_LIST:
        raise InvalidQuery(f"a frame list holds 1 to {MAX_FRAMES_IN_LIST} numbers")
    numbers = []
    for item in items:
        if not item.isascii() or not item.isdigit() or int(item) < 1 or len(item) > 9:
            raise InvalidQuery(f"frame number {item[:20]!r} is not a positive integer")
        numbers.append(int(item))
    if len(set(numbers)) != len(numbers):
        raise InvalidQuery("a frame number is listed twice")
    return numbers


def number_of_frames(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames")
    try:
        return max(int(value), 1) if value not in (None, "") else 1
    except (TypeError, ValueError):
        return 1


def read_instance(data: bytes) -> Dataset:
    ds = dcmread(BytesIO(data))
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data, so no frames")
    return ds


def _frame_length(ds: Dataset) -> int:
    bits = (
        int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated)
    )
    return (bits + 7) // 8


def _native_frames_as_stored(ds: Dataset, numbers: list[int]) -> Iterator[bytes]:
    """Frames of native pixel data, cut from the element (no decoding)."""
    pixel_bytes = ds.PixelData
    big_endian = UID(ds.file_meta.TransferSyntaxUID) == BIG_ENDIAN
    bits_allocated = int(ds.BitsAllocated)
    if bits_allocated % 8:
        # Bit-packed frames (1 bit) may not start on a byte; decode and repack each.
        for n in numbers:
            yield np.packbits(pixel_array(ds, index=n - 1).ravel(), bitorder="little").tobytes()
        return
    bits = native_frame_bits(ds)
    if bits is None:
        raise NotAcceptable("the instance's Image Pixel module is incomplete")
    length = (bits + 7) // 8
    for n in numbers:
        chunk = pixel_bytes[(n - 1) * length : n * length]
        if big_endian and bits_allocated > 8:
            chunk = np.frombuffer(chunk, dtype=f">u{bits_allocated // 8}").byteswap().tobytes()
        yield chunk


def _decoded_frames(ds: Dataset, numbers: list[int]) -> Iterator[bytes]:
    """Compressed frames decoded to native little-endian bytes."""
    dtype = f"<u{int(ds.BitsAllocated) // 8}" if int(ds.BitsAllocated) >= 8 else "u1"
    for n in numbers:
        arr = pixel_array(ds, index=n - 1, raw=True)
        if int(ds.get("PixelRepresentation", 0)) == 1:
            arr = arr.astype(dtype.replace("u", "i"))
        yield np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()


def frame_bytes(ds: Dataset, numbers: list[int], rendition: FrameRendition) -> list[bytes]:
    """The requested frames, all in hand before a response starts: 404 when one does not
    exist, 406 when the stored pixel data cannot be produced in ``rendition``."""
    try:
        return list(frames(ds, numbers, rendition))
    except (NotFound, NotAcceptable):
        raise
    except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError, RuntimeError):
        raise NotAcceptable(
            f"the stored pixel data cannot be served as {rendition.media_type}"
        ) from None


def frames(ds: Dataset, numbers: list[int], rendition: FrameRendition) -> Iterator[bytes]:
    """The requested frames of ``ds`` in ``rendition``; 404 when one does not exist."""
    total = number_of_frames(ds)
    missing = [n for n in numbers if n > total]
    if missing:
        raise NotFound(f"frame {missing[0]} does not exist (the instance has {total})")
    compressed = UID(ds.file_meta.TransferSyntaxUID).is_compressed
    if not compressed:
        return _native_frames_as_stored(ds, numbers)
    if rendition.as_stored:
        return _encapsulated(ds, numbers, total)
    return _decoded_frames(ds, numbers)


def _encapsulated(ds: Dataset, numbers: list[int], total: int) -> Iterator[bytes]:
    wanted = set(numbers)
    found: dict[int, bytes] = {}
    for index, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=total), 1):
        if index in wanted:
            found[index] = frame
        if len(found) == len(wanted):
            break
    for n in numbers:
        yield found[n]
