"""multipart/related for DICOMweb: reading STOW-RS request bodies, writing WADO-RS
responses (RFC 2387 / RFC 2046).

The request body is spooled to a temporary file (never held whole in memory), then
memory-mapped and split at the boundary. Quoted and unquoted boundary parameters,
chunked transfer encoding and a size limit are handled.
"""

from __future__ import annotations

import mmap
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import IO

from services.imaging.errors import ImagingError, InstanceTooLarge


class MultipartError(ImagingError):
    """The body is not well-formed multipart/related."""


@dataclass
class ContentType:
    media_type: str
    params: dict[str, str] = field(default_factory=dict)


def parse_content_type(value: str | None) -> ContentType:
    """Split a Content-Type into its media type and parameters (quoted or not)."""
    if not value:
        return ContentType("")
    msg = Message()
    msg["content-type"] = value
    # RFC 2231 parameters (``type*=utf-8''application%2Fdicom``) come back as tuples.
    params = {k.lower(): collapse_rfc2231_value(v) for k, v in msg.get_params(failobj=[])[1:]}
    return ContentType(msg.get_content_type().lower(), params)


@dataclass(frozen=True)
class Part:
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> ContentType:
        return parse_content_type(self.headers.get("content-type"))


class SpooledBody:
    """A request body on disk, memory-mapped for splitting."""

    def __init__(self, handle: IO[bytes], size: int) -> None:
        self._handle = handle
        self.size = size
        self._map: mmap.mmap | None = None

    @classmethod
    async def read(cls, chunks: AsyncIterator[bytes], *, limit: int) -> SpooledBody:
        handle = tempfile.TemporaryFile(prefix="stow-")  # noqa: SIM115 - closed in close()
        size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise InstanceTooLarge(f"request body exceeds the limit of {limit} bytes")
                handle.write(chunk)
        except BaseException:
            handle.close()
            raise
        handle.flush()
        return cls(handle, size)

    def view(self) -> mmap.mmap | bytes:
        if self.size == 0:
            return b""
        if self._map is None:
            self._map = mmap.mmap(self._handle.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._handle.close()


def iter_parts(data: mmap.mmap | bytes, boundary: str) -> Iterator[Part]:
    """Yield the parts of a multipart body, one at a time.

    Raises
    ------
    MultipartError
        No opening boundary, a part without its header block, or no closing boundary.
    """
    delimiter = b"--" + boundary.encode("latin-1")
    start = data.find(delimiter)
    if start < 0:
        raise MultipartError("multipart body has no opening boundary")
    pos = start + len(delimiter)
    closed = False
    while True:
        if data[pos : pos + 2] == b"--":
            closed = True
            break
        # Skip transport padding and the CRLF after the delimiter.
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            break
        header_start = line_end + 2
        header_end = data.find(b"\r\n\r\n", header_start)
        if data[header_start : header_start + 2] == b"\r\n":
            header_end = header_start - 2  # a part with no headers
        if header_end < 0:
            raise MultipartError("multipart part has no header block")
        headers: dict[str, str] = {}
        for raw in bytes(data[header_start:header_end]).split(b"\r\n"):
            if b":" in raw:
                name, _, value = raw.partition(b":")
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        body_start = header_end + 4
        next_delim = data.find(b"\r\n" + delimiter, body_start)
        if next_delim < 0:
            raise MultipartError("multipart body ends without its closing boundary")
        yield Part(headers, bytes(data[body_start:next_delim]))
        pos = next_delim + 2 + len(delimiter)
    if not closed:
        raise MultipartError("multipart body ends without its closing boundary")


def new_boundary() -> str:
    return f"spine-{secrets.token_hex(16)}"


def encode_parts(
    parts: Iterable[tuple[str, bytes] | tuple[str, bytes, str]], boundary: str
) -> Iterator[bytes]:
    """Stream (content type, body[, content location]) parts as a multipart/related body."""
    delimiter = f"--{boundary}\r\n".encode()
    for part in parts:
        content_type, body = part[0], part[1]
        location = f"Content-Location: {part[2]}\r\n" if len(part) == 3 else ""
        yield delimiter + f"Content-Type: {content_type}\r\n{location}\r\n".encode()
        yield body
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()
