"""What a user can send: text, images, PDFs, audio, bytes with a MIME type, files by path, lists.

`to_parts` turns any accepted input into a tuple of parts, or raises `InvalidContent`
saying what was wrong and what to pass instead. Parts are plain frozen dataclasses so
history can be stored and compared without the SDK.
"""

from __future__ import annotations

import base64
import mimetypes
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from .errors import InvalidContent

MAX_INLINE_BYTES = 20 * 1024 * 1024
_MIME = re.compile(r"^[a-z0-9][a-z0-9.+\-]*/[a-z0-9][a-z0-9.+\-]*$")
_SUPPORTED_PREFIXES = ("image/", "audio/", "video/", "text/")
_SUPPORTED_TYPES = frozenset(
    {"application/pdf", "application/json", "application/x-python", "application/xml"}
)


@dataclass(frozen=True)
class TextPart:
    text: str
    thought: bool = False
    thought_signature: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BlobPart:
    """Inline bytes with their MIME type: an image, a PDF, audio, any supported file."""

    mime_type: str
    data: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"BlobPart({self.mime_type!r}, {len(self.data)} bytes)"


@dataclass(frozen=True)
class FunctionCallPart:
    name: str
    args: dict[str, Any]
    id: str | None = None
    thought_signature: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class FunctionResponsePart:
    name: str
    response: dict[str, Any]
    id: str | None = None


Part: TypeAlias = TextPart | BlobPart | FunctionCallPart | FunctionResponsePart
ContentInput: TypeAlias = "str | Part | Path | Iterable[str | Part | Path]"


def blob(data: bytes, mime_type: str) -> BlobPart:
    """Arbitrary bytes with their MIME type (checked against what Gemini accepts)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidContent(f"blob data must be bytes, got {type(data).__name__}")
    if not isinstance(mime_type, str) or not _MIME.match(mime_type.lower()):
        raise InvalidContent(f"{mime_type!r} is not a MIME type like 'image/png'")
    mime_type = mime_type.lower()
    if not (mime_type.startswith(_SUPPORTED_PREFIXES) or mime_type in _SUPPORTED_TYPES):
        raise InvalidContent(
            f"MIME type {mime_type!r} is not accepted by Gemini: send images, audio, video, "
            "text or PDF (application/pdf)"
        )
    if len(data) > MAX_INLINE_BYTES:
        raise InvalidContent(
            f"{len(data)} bytes is over the {MAX_INLINE_BYTES // 2**20} MiB inline limit; "
            "send a smaller file or an excerpt"
        )
    return BlobPart(mime_type=mime_type, data=bytes(data))


def file(path: str | Path, mime_type: str | None = None) -> BlobPart:
    """A file by path; its MIME type is guessed from the name unless given."""
    p = Path(path)
    if not p.is_file():
        raise InvalidContent(f"no file at {str(p)!r}")
    guessed = mime_type or mimetypes.guess_type(p.name)[0]
    if guessed is None:
        raise InvalidContent(f"cannot tell the MIME type of {p.name!r}: pass mime_type=...")
    return blob(p.read_bytes(), guessed)


def _typed(kind: str, source: bytes | str | Path, mime_type: str | None) -> BlobPart:
    if isinstance(source, bytes) and mime_type is None:
        raise InvalidContent(f"bytes need mime_type=... (e.g. {kind}...)")
    part = blob(source, mime_type or "") if isinstance(source, bytes) else file(source, mime_type)
    if not part.mime_type.startswith(kind):
        raise InvalidContent(f"expected {kind} content, got {part.mime_type!r}")
    return part


def image(source: bytes | str | Path, mime_type: str | None = None) -> BlobPart:
    """An image from a path, or from bytes with `mime_type`."""
    return _typed("image/", source, mime_type)


def pdf(source: bytes | str | Path) -> BlobPart:
    """A PDF document from a path or bytes."""
    return _typed("application/pdf", source, "application/pdf")


def audio(source: bytes | str | Path, mime_type: str | None = None) -> BlobPart:
    """Audio from a path, or from bytes with `mime_type`."""
    return _typed("audio/", source, mime_type)


def _one(item: object) -> Part:
    if isinstance(item, str):
        if not item.strip():
            raise InvalidContent("the message is empty: send some text or a file")
        return TextPart(item)
    if isinstance(item, TextPart | BlobPart | FunctionCallPart | FunctionResponsePart):
        return item
    if isinstance(item, Path):
        return file(item)
    if isinstance(item, bytes | bytearray | memoryview):
        raise InvalidContent(
            "raw bytes need a MIME type: use agentrt_jupyter.blob(data, 'image/png') "
            "(or image(), pdf(), audio())"
        )
    if type(item).__module__.startswith("PIL.") and hasattr(item, "save"):
        import io

        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        return blob(buffer.getvalue(), "image/png")
    raise InvalidContent(
        f"cannot send a {type(item).__name__}: pass text, a Path, image()/pdf()/audio()/"
        "blob() parts, or a list of those"
    )


def to_parts(content: object) -> tuple[Part, ...]:
    """Normalise user content to parts, or raise `InvalidContent`."""
    if isinstance(content, list | tuple):
        if not content:
            raise InvalidContent("the message is empty: send some text or a file")
        return tuple(_one(item) for item in content)
    return (_one(content),)


def part_to_json(part: Part) -> dict[str, Any]:
    """A JSON-safe dict (for the store), reversible with `part_from_json`."""
    if isinstance(part, TextPart):
        out: dict[str, Any] = {"text": part.text}
        if part.thought:
            out["thought"] = True
    elif isinstance(part, BlobPart):
        out = {"blob": base64.b64encode(part.data).decode(), "mime_type": part.mime_type}
    elif isinstance(part, FunctionCallPart):
        out = {"call": part.name, "args": part.args, "id": part.id}
    else:
        out = {"response": part.name, "result": part.response, "id": part.id}
    signature = getattr(part, "thought_signature", None)
    if signature:
        out["signature"] = base64.b64encode(signature).decode()
    return out


def part_from_json(data: dict[str, Any]) -> Part:
    signature = base64.b64decode(data["signature"]) if data.get("signature") else None
    if "text" in data:
        return TextPart(data["text"], bool(data.get("thought")), signature)
    if "blob" in data:
        return BlobPart(data["mime_type"], base64.b64decode(data["blob"]))
    if "call" in data:
        return FunctionCallPart(data["call"], data["args"], data.get("id"), signature)
    return FunctionResponsePart(data["response"], data["result"], data.get("id"))
