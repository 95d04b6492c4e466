"""What a user can send: text, images, PDFs, audio, bytes with a MIME type, files by path, lists.

`to_parts` turns any accepted input into a tuple of parts, or raises `InvalidContent`
saying what was wrong and what to pass instead. Parts are plain frozen dataclasses so
history can be stored and compared without the SDK.
"""

from __future__ import annotations

import base64
import errno
import json
import mimetypes
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, TypeAlias

from .errors import InvalidContent

MAX_INLINE_BYTES = 20 * 1024 * 1024
_MIME = re.compile(r"[a-z0-9][a-z0-9.+\-]*/[a-z0-9][a-z0-9.+\-]*")
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
    if not isinstance(mime_type, str) or not _MIME.fullmatch(mime_type.lower()):
        shown = repr(mime_type)[:80]
        raise InvalidContent(f"{shown} is not a MIME type like 'image/png'")
    mime_type = mime_type.lower()
    if not (mime_type.startswith(_SUPPORTED_PREFIXES) or mime_type in _SUPPORTED_TYPES):
        raise InvalidContent(
            f"MIME type {mime_type!r} is not accepted by Gemini: send images, audio, video, "
            "text or PDF (application/pdf)"
        )
    if len(data) > MAX_INLINE_BYTES:
        raise InvalidContent(_too_big(len(data)))
    return BlobPart(mime_type=mime_type, data=bytes(data))


def file(path: str | Path, mime_type: str | None = None) -> BlobPart:
    """A file by path; its MIME type is guessed from the name unless given."""
    if not isinstance(path, str | PurePath):
        raise InvalidContent(f"a file path must be a str or a Path, got {type(path).__name__}")
    p = Path(path)
    data = _read_file(p)
    guessed = mime_type or mimetypes.guess_type(p.name)[0]
    if guessed is None:
        raise InvalidContent(f"cannot tell the MIME type of {p.name!r}: pass mime_type=...")
    return blob(data, guessed)


def _read_file(path: Path) -> bytes:
    """The bytes of a regular file, or `InvalidContent` naming the path and the reason.

    Only regular files are opened (a FIFO or a device could block or never end), and the
    size is checked before reading."""
    text = str(path)
    where = repr(text) if len(text) <= 200 else f"{text[:200]!r}... ({len(text)} characters)"
    try:
        info = path.stat()
    except ValueError as exc:  # an embedded NUL
        raise InvalidContent(f"{where} is not a usable path ({exc})") from None
    except OSError as exc:
        raise InvalidContent(_missing(path, where, exc)) from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidContent(f"{where} is {_kind(info.st_mode)}, not a file: pass a file")
    if info.st_size > MAX_INLINE_BYTES:
        raise InvalidContent(_too_big(info.st_size))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InvalidContent(f"cannot read {where}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as opened:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InvalidContent(f"{where} changed into something that is not a file")
            data = opened.read(MAX_INLINE_BYTES + 1)
        except OSError as exc:
            raise InvalidContent(f"cannot read {where}: {exc.strerror or exc}") from None
    if len(data) > MAX_INLINE_BYTES:
        raise InvalidContent(_too_big(len(data)))
    return data


def _missing(path: Path, where: str, error: OSError) -> str:
    """Why there is no file at `path`, as precisely as the filesystem tells."""
    if error.errno == errno.ENOENT and path.is_symlink():
        return f"no file at {where}: it is a symlink to {os.readlink(path)!r}, which does not exist"
    if error.errno == errno.ENOTDIR:
        return f"no file at {where}: a part of the path before the name is a file, not a folder"
    if error.errno == errno.ENOENT:
        return f"no file at {where}"
    return f"no file at {where}: {error.strerror or error}"


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a named pipe (FIFO)",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def _too_big(size: int) -> str:
    return (
        f"{size} bytes is over the {MAX_INLINE_BYTES // 2**20} MiB inline limit; "
        "send a smaller file or an excerpt"
    )


def _typed(kind: str, source: bytes | str | Path, mime_type: str | None) -> BlobPart:
    if isinstance(source, bytes | bytearray | memoryview):
        if mime_type is None:
            raise InvalidContent(f"bytes need mime_type=... (e.g. {kind}...)")
        part = blob(source, mime_type)
    else:
        part = file(source, mime_type)
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
        return TextPart(_text(item))
    if isinstance(item, TextPart):
        _text(item.text)
        if not isinstance(item.thought, bool) or not isinstance(
            item.thought_signature, bytes | None
        ):
            raise InvalidContent("a TextPart's thought is a bool and its signature bytes or None")
        return item
    if isinstance(item, BlobPart):
        return blob(item.data, item.mime_type)
    if isinstance(item, FunctionCallPart | FunctionResponsePart):
        return _function_part(item)
    if isinstance(item, PurePath):
        return file(Path(item))
    if isinstance(item, bytes | bytearray | memoryview):
        raise InvalidContent(
            "raw bytes need a MIME type: use agentrt_jupyter.blob(data, 'image/png') "
            "(or image(), pdf(), audio())"
        )
    if isinstance(item, list | tuple):
        raise InvalidContent("lists inside the message list are not accepted: flatten them")
    module = getattr(type(item), "__module__", None)
    if isinstance(module, str) and module.startswith("PIL.") and hasattr(item, "save"):
        return _pil_image(item)
    raise InvalidContent(
        f"cannot send a {type(item).__name__}: pass text, a Path, image()/pdf()/audio()/"
        "blob() parts, or a list of those"
    )


def _function_part(part: FunctionCallPart | FunctionResponsePart) -> Part:
    """A call or response passed by hand: stored and sent as JSON, so it must be JSON."""
    kind = type(part).__name__
    payload = part.args if isinstance(part, FunctionCallPart) else part.response
    signature = getattr(part, "thought_signature", None)
    if not isinstance(part.name, str) or not part.name or not isinstance(payload, dict):
        raise InvalidContent(f"a {kind} needs a name (a non-empty str) and a dict")
    if not isinstance(part.id, str | None) or not isinstance(signature, bytes | None):
        raise InvalidContent(f"a {kind}'s id is a str or None, its signature bytes or None")
    try:
        json.dumps([part.name, part.id, payload], allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidContent(f"a {kind}'s name, id and dict must be plain JSON ({exc})") from None
    return part


def _text(text: object) -> str:
    if not isinstance(text, str):
        raise InvalidContent(f"a TextPart's text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise InvalidContent("the message is empty: send some text or a file")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InvalidContent(
            "the text has an unpaired surrogate (decoded with the wrong codec?): it cannot be "
            "sent; decode it with errors='replace'"
        ) from None
    return text


def _pil_image(image: Any) -> BlobPart:
    import io

    buffer = io.BytesIO()
    try:
        image.save(buffer, format="PNG")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidContent(f"cannot encode the image as PNG ({exc})") from None
    return blob(buffer.getvalue(), "image/png")


def to_parts(content: object) -> tuple[Part, ...]:
    """Normalise user content to parts, or raise `InvalidContent`."""
    if isinstance(content, list | tuple):
        if not content:
            raise InvalidContent("the message is empty: send some text or a file")
        parts = tuple(_one(item) for item in content)
    else:
        parts = (_one(content),)
    inline = sum(len(part.data) for part in parts if isinstance(part, BlobPart))
    if inline > MAX_INLINE_BYTES:
        raise InvalidContent(f"the files together: {_too_big(inline)}")
    return parts


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
