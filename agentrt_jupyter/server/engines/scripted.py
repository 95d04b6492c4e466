"""The deterministic engine: replies scripted by `@@` directives in the prompt.

Every runtime test talks to this engine through the real SDK, so its behaviour is a
contract. Tokens are whitespace-separated words. The prompt is the last text part of the
latest user message that has one; its lines starting with `@@` are directives, the rest
(stripped) is the user text. The default reply is `Echo: <user text>`, one chunk per word.
Only this engine reads `@@` lines: other engines get the text as written.

Directives: `@@reply TEXT`, `@@chunks N`, `@@tiny N`, `@@thought TEXT`, `@@logprob X`
(every reply token's log probability, sent when the request asks for logprobs; a prompt
without it gets none, as from a service that does not give them),
`@@call NAME {json}`, `@@call_always NAME {json}`, `@@delay MS`, `@@finish REASON`
(`none` ends the stream without one) and `@@fault SPEC` (one per prompt, applied by the
HTTP layer; SPECs, the garbage-reply ones included, are listed in `server/faults.py`).
`generationConfig.maxOutputTokens` cuts the reply (MAX_TOKENS) and `stopSequences`
cut it before the first match (STOP).

Embeddings (`embed`) are the hashed bags of words of `vectors.py`: deterministic, and
close for texts that share words.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from ..faults import tiny_chunks
from .base import Embedded, EngineChunk, EngineError, GenerateRequest, prompt_message
from .vectors import DIMENSIONS, hashed_vector
from .vectors import count_words as embedded_words

DIRECTIVES = frozenset(
    {
        "reply",
        "chunks",
        "tiny",
        "thought",
        "call",
        "call_always",
        "delay",
        "finish",
        "fault",
        "logprob",
    }
)
_WORD_CHUNK = re.compile(r"\s*\S+\s*")
_WORD_START = re.compile(r"\S+")


@dataclass(frozen=True)
class Prompt:
    """The prompt message, split into directives and user text."""

    text: str
    user_text: str
    directives: tuple[tuple[str, str], ...]
    mime_types: tuple[str, ...]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.directives if key == name]

    def last(self, name: str) -> str | None:
        found = self.values(name)
        return found[-1] if found else None


def parse_prompt(contents: list[dict[str, Any]]) -> Prompt:
    """Read the directives of the prompt (`prompt_message`).

    Only the latest message's last text part counts: a runtime merges consecutive user
    messages (after a cancelled turn), and an earlier message's directives must not apply
    again. Unknown directives raise EngineError (400) so that a typo in a test fails
    loudly instead of echoing.
    """
    text, parts = prompt_message(contents)
    return _split_prompt(text, parts)


def _split_prompt(text: str, parts: list[dict[str, Any]]) -> Prompt:
    directives: list[tuple[str, str]] = []
    kept: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("@@"):
            kept.append(line)
            continue
        name, _, value = stripped[2:].partition(" ")
        if name not in DIRECTIVES:
            raise EngineError(400, f"unknown directive @@{name}")
        directives.append((name, value.strip()))
    mime_types = tuple(
        str(blob.get("mimeType", "application/octet-stream"))
        for p in parts
        for blob in (p.get("inlineData"), p.get("fileData"))
        if isinstance(blob, dict)
    )
    return Prompt(text, "\n".join(kept).strip(), tuple(directives), mime_types)


def count_words(text: str) -> int:
    return len(text.split())


def prompt_tokens(request: GenerateRequest) -> int:
    """Words in all text parts and the system instruction, plus one per non-text part."""
    total = count_words(request.system_instruction or "")
    for content in request.contents:
        for part in content.get("parts") or []:
            text = part.get("text")
            total += count_words(text) if isinstance(text, str) else 1
    return total


def _int_directive(prompt: Prompt, name: str) -> int | None:
    value = prompt.last(name)
    if value is None:
        return None
    if not value.isdigit():
        raise EngineError(400, f"@@{name} needs a non-negative integer, got {value!r}")
    return int(value)


def _logprob(prompt: Prompt) -> float | None:
    """The scripted log probability of every reply token (`@@logprob X`, X <= 0)."""
    value = prompt.last("logprob")
    if value is None:
        return None
    try:
        logprob = float(value)
    except ValueError:
        logprob = math.nan
    if not (math.isfinite(logprob) and logprob <= 0):
        raise EngineError(400, f"@@logprob needs a number <= 0, got {value!r}")
    return logprob


def _function_calls(lines: list[str], first_id: int) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for k, line in enumerate(lines, start=first_id):
        name, _, raw_args = line.partition(" ")
        if not name:
            raise EngineError(400, "@@call needs a function name")
        try:
            args = json.loads(raw_args) if raw_args.strip() else {}
        except json.JSONDecodeError as exc:
            raise EngineError(400, f"@@call {name}: bad JSON args: {exc}") from exc
        if not isinstance(args, dict):
            raise EngineError(400, f"@@call {name}: args must be a JSON object")
        parts.append({"functionCall": {"id": f"call-{k}", "name": name, "args": args}})
    return parts


def _char_chunks(text: str, n: int) -> list[str]:
    size, extra = divmod(len(text), n)
    chunks: list[str] = []
    start = 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        chunks.append(text[start:end])
        start = end
    return chunks


def _cut(text: str, config: dict[str, Any]) -> tuple[str, str]:
    """Apply stopSequences, then maxOutputTokens; return the text and its finish reason."""
    stops = [s for s in config.get("stopSequences") or [] if isinstance(s, str) and s]
    positions = [i for i in (text.find(s) for s in stops) if i >= 0]
    if positions:
        text = text[: min(positions)]
    limit = config.get("maxOutputTokens")
    if isinstance(limit, int) and not isinstance(limit, bool):
        words = list(_WORD_START.finditer(text))
        if len(words) > limit:
            end = words[limit - 1].end() if limit > 0 else 0
            return text[:end], "MAX_TOKENS"
    return text, "STOP"


class ScriptedEngine:
    """Deterministic replies for tests and benchmarks; see the module docstring."""

    name = "scripted"

    async def count_tokens(self, request: GenerateRequest) -> int:
        return prompt_tokens(request)

    async def aclose(self) -> None:
        return None

    def requested_fault(self, request: GenerateRequest) -> str | None:
        specs = parse_prompt(request.contents).values("fault")
        if len(specs) > 1:
            raise EngineError(400, "only one @@fault per request")
        return specs[0] if specs else None

    async def embed(self, texts: list[str], dimensions: int | None) -> Embedded:
        """Hashed bags of words (see `vectors`): texts sharing words are close."""
        size = dimensions or DIMENSIONS
        vectors = [hashed_vector(text, size) for text in texts]
        return Embedded(vectors, sum(embedded_words(text) for text in texts))

    async def generate(self, request: GenerateRequest) -> AsyncIterator[EngineChunk]:
        prompt = parse_prompt(request.contents)
        chunks = self._plan(request, prompt)
        delay = _int_directive(prompt, "delay")
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, chunk in enumerate(chunks, 1):
            if delay:
                # Paced against the start, not after each write: a streamed reply and a
                # whole one then take the same time, so clients compare on equal terms.
                await asyncio.sleep(max(0.0, start + index * delay / 1000.0 - loop.time()))
            yield chunk

    def _plan(self, request: GenerateRequest, prompt: Prompt) -> Iterator[EngineChunk]:
        finish = prompt.last("finish")
        finish_reason = None if finish is not None and finish.lower() == "none" else finish
        p_tokens = prompt_tokens(request)
        tiny = _int_directive(prompt, "tiny")
        if tiny is not None:
            return tiny_chunks(p_tokens, tiny, finish_reason or "STOP")

        thoughts = prompt.values("thought")
        thought_tokens = sum(count_words(t) for t in thoughts)
        config = request.generation_config
        thinking = config.get("thinkingConfig") or {}
        thought_parts = (
            [{"text": t, "thought": True} for t in thoughts]
            if thinking.get("includeThoughts")
            else []
        )

        def usage(candidates: int) -> dict[str, int]:
            counts = {"promptTokenCount": p_tokens, "candidatesTokenCount": candidates}
            if thought_tokens:
                counts["thoughtsTokenCount"] = thought_tokens
            counts["totalTokenCount"] = p_tokens + candidates + thought_tokens
            return counts

        head = [EngineChunk(thought_parts, usage(0))] if thought_parts else []
        last_parts = (request.contents[-1].get("parts") or []) if request.contents else []
        responses = [
            p["functionResponse"] for p in last_parts if isinstance(p.get("functionResponse"), dict)
        ]
        if any("text" in p for p in last_parts):
            responses = []  # a new user message follows the tool results: answer it
        call_lines = prompt.values("call_always")
        if not responses:
            call_lines = [value for key, value in prompt.directives if key.startswith("call")]
        if call_lines:
            made = sum(
                1
                for content in request.contents
                for part in content.get("parts") or []
                if "functionCall" in part
            )
            calls = _function_calls(call_lines, made + 1)
            return iter([*head, EngineChunk(calls, usage(0), finish_reason or "STOP")])

        if responses:
            results = {str(r.get("name")): r.get("response") for r in responses}
            reply = "Tool results: " + json.dumps(results, separators=(",", ":"))
        elif (scripted := prompt.last("reply")) is not None:
            reply = scripted
        else:
            reply = f"Echo: {prompt.user_text}"
            if prompt.mime_types:
                reply += f" [parts: {', '.join(prompt.mime_types)}]"
        reply, natural_finish = _cut(reply, config)
        if finish is None:
            finish_reason = natural_finish

        logprob = _logprob(prompt) if config.get("responseLogprobs") else None
        n_chunks = _int_directive(prompt, "chunks")
        if n_chunks:
            pieces = _char_chunks(reply, n_chunks)
        else:
            pieces = _WORD_CHUNK.findall(reply) or [reply]
        word_starts = [m.start() for m in _WORD_START.finditer(reply)]
        body: list[EngineChunk] = []
        emitted = 0
        for i, piece in enumerate(pieces):
            emitted += len(piece)
            words = bisect.bisect_left(word_starts, emitted)
            reason = finish_reason if i == len(pieces) - 1 else None
            body.append(EngineChunk([{"text": piece}], usage(words), reason, logprob))
        return iter([*head, *body])


def create_engine(**options: object) -> ScriptedEngine:
    """The engine factory `python -m agentrt_jupyter.server --engine scripted` calls."""
    if options:
        raise TypeError(f"the scripted engine takes no options, got {sorted(options)}")
    return ScriptedEngine()
