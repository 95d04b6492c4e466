"""A map run's plan: its checked options, how a row becomes a prompt, and its keys.

Everything a caller can get wrong is checked here, before anything runs, and raised as
`InvalidConfig` naming the option.

Templates are `str.format` templates over the frame's columns: `{text}`,
`{price:.2f}`, `{price:.{digits}f}`, `{review text}` (any column name without
`.[]:!{}`); `{{` and `}}` are
literal braces, so JSON in a template doubles them. A missing value (None, NaN, NA)
fills in as an empty string. An unknown conversion (`{text!z}`) and a format spec that
fails on the first row's value (`{price:bad}`) are caller mistakes, raised here; a row
whose own value does not fit ends as a row error.

Keys: the run's key is `key` if given, else a hash of the template and of every setting
that decides a reply (model, system instruction, generation settings, tools, schema).
A row's key is a hash of the run's key and the row's rendered prompt: the same prompt
under the same run is the same row, whatever its position, so re-running after edits to
the frame redoes only the rows whose prompt changed (identical prompts share one result).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import pandas as pd

from ..config import AgentConfig, RuntimeConfig, agent_config, provider_of
from ..errors import InvalidConfig
from .prices import ModelPrice, price_for
from .schema import ResultSchema, result_schema

Mode = Literal["live", "batch"]
BATCH_PROVIDERS = ("gemini", "openai", "anthropic")
"""The providers whose Batch API `mode="batch"` drives (`remote.py`)."""
DEFAULT_CONCURRENCY = 8
MOST_CONCURRENCY = 1000
"""No run keeps more requests than this in flight."""
ROWS_PER_READ = 1000
_FORMATTER = string.Formatter()
CONVERSIONS = (None, "r", "s", "a")


@dataclass(frozen=True)
class MapPlan:
    """A checked map run; see the module docstring for templates and keys."""

    template: str
    columns: tuple[str, ...]
    config: AgentConfig
    model: str
    schema: ResultSchema | None
    concurrency: int
    max_concurrency: int
    rpm: float | None
    tpm: float | None
    budget_tokens: int | None
    budget_usd: float | None
    price: ModelPrice | None
    run_key: str
    refresh: bool
    mode: Mode

    def render(self, values: Mapping[str, Any]) -> str:
        """The prompt of one row (its template columns as `values`)."""
        return self.template.format_map({k: _filled(v) for k, v in values.items()})

    def row_key(self, prompt: str) -> str:
        return _digest(f"{self.run_key}\0{prompt}")

    def prompts(self, frame: pd.DataFrame) -> Iterator[tuple[int, str | None, str | None]]:
        """(position, prompt, None) per row of `frame`, or (position, None, why it has no
        prompt), reading the template's columns a block of `ROWS_PER_READ` rows at a time."""
        columns = self.columns
        data = frame if tuple(frame.columns) == columns else frame[list(columns)]
        for start in range(0, len(data), ROWS_PER_READ):
            block = data.iloc[start : start + ROWS_PER_READ]
            arrays = [block[column].tolist() for column in columns]
            rows = zip(*arrays, strict=True) if arrays else itertools.repeat((), len(block))
            for offset, values in enumerate(rows):
                try:
                    prompt = self.render(dict(zip(columns, values, strict=True)))
                except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                    yield start + offset, None, f"cannot fill the template: {exc}"
                    continue
                yield start + offset, prompt, None


def plan_map(
    runtime_config: RuntimeConfig,
    frame: object,
    template: object,
    *,
    config: AgentConfig | None = None,
    settings: Mapping[str, Any] | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_concurrency: int | None = None,
    schema: object = None,
    budget_tokens: int | None = None,
    budget_usd: float | None = None,
    key: str | None = None,
    refresh: bool = False,
    mode: str = "live",
    rpm: float | None = None,
    tpm: float | None = None,
) -> MapPlan:
    """Check every option against `frame`; `InvalidConfig` names the first that is wrong."""
    data = _data_frame(frame)
    fields = _template_fields(template)
    columns = _template_columns(fields, data)
    _check_first_row(fields, data)
    assert isinstance(template, str)
    row_config, parsed = _row_config(config, settings, schema)
    _check_mode(mode, row_config)
    _check_run_options(refresh, key)
    concurrency, most = _concurrency(concurrency, max_concurrency)
    model = runtime_config.model_for(row_config.model)
    price = price_for(model)
    usd = _budget_usd(budget_usd, model, price)
    tokens = None if budget_tokens is None else _integer("budget_tokens", budget_tokens, 1, 10**15)
    run_key = key if key is not None else _run_key(template, row_config, model)
    return MapPlan(
        template=template,
        columns=columns,
        config=row_config,
        model=model,
        schema=parsed,
        concurrency=concurrency,
        max_concurrency=most,
        rpm=positive_or_none("rpm", rpm),
        tpm=positive_or_none("tpm", tpm),
        budget_tokens=tokens,
        budget_usd=usd,
        price=price,
        run_key=run_key,
        refresh=refresh,
        mode=mode,  # type: ignore[arg-type]
    )


def _data_frame(frame: object) -> pd.DataFrame:
    if isinstance(frame, pd.DataFrame):
        return frame
    hint = " (a Series: pass series.to_frame('name'))" if isinstance(frame, pd.Series) else ""
    raise InvalidConfig(
        f"expected a pandas DataFrame, got {type(frame).__name__}{hint}", field="frame"
    )


def _row_config(
    config: AgentConfig | None, settings: Mapping[str, Any] | None, schema: object
) -> tuple[AgentConfig, ResultSchema | None]:
    """Every row's agent settings, asking for JSON when there is a schema; and the schema."""
    row_config = agent_config(config, dict(settings or {}))
    if row_config.name is not None:
        raise InvalidConfig("each row runs on a fresh unnamed agent: leave out name", field="name")
    if schema is not None and row_config.response_schema is not None:
        raise InvalidConfig(
            "give the schema once: schema=... or response_schema=..., not both", field="schema"
        )
    spec = schema if schema is not None else row_config.response_schema
    parsed = result_schema(spec) if spec is not None else None
    if parsed is not None:
        row_config = row_config.with_changes(
            response_schema=parsed.json_schema,
            response_mime_type=row_config.response_mime_type or "application/json",
        )
    return row_config, parsed


def _check_mode(mode: str, row_config: AgentConfig) -> None:
    if mode not in ("live", "batch"):
        raise InvalidConfig(f"must be 'live' or 'batch', got {mode!r:.40}", field="mode")
    if mode != "batch":
        return
    provider = provider_of(row_config.model)
    if provider not in BATCH_PROVIDERS:
        raise InvalidConfig(
            f"the {provider} provider has no Batch API here (mode='batch' runs on Gemini's, "
            "OpenAI's and Anthropic's): use mode='live'",
            field="mode",
        )
    if row_config.tools or row_config.confirm_tool is not None:
        raise InvalidConfig(
            "the Batch API answers each row in one call, so tools cannot run: use "
            "mode='live' for rows that call tools",
            field="tools",
        )
    _check_provider_settings(provider, row_config)


def _check_provider_settings(provider: str, row_config: AgentConfig) -> None:
    """`InvalidConfig` now for a setting the provider cannot honour (the live path finds
    out at each row's call; a batch would take it to the service)."""
    if provider == "openai":
        from ..backends.openai import check_config

        check_config(row_config, provider)
    elif provider == "anthropic":
        from ..backends.anthropic import check_config as check_anthropic

        check_anthropic(row_config)


def _check_run_options(refresh: object, key: object) -> None:
    if not isinstance(refresh, bool):
        raise InvalidConfig("must be True or False", field="refresh")
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise InvalidConfig("must be a non-empty string or None", field="key")


def _concurrency(concurrency: object, max_concurrency: object) -> tuple[int, int]:
    """The starting concurrency and the most (4 times it, unless given)."""
    start = _integer("concurrency", concurrency, 1, MOST_CONCURRENCY)
    if max_concurrency is None:
        return start, min(MOST_CONCURRENCY, 4 * start)
    return start, _integer("max_concurrency", max_concurrency, start, MOST_CONCURRENCY)


def _budget_usd(budget_usd: object, model: str, price: ModelPrice | None) -> float | None:
    usd = positive_or_none("budget_usd", budget_usd)
    if usd is not None and price is None:
        raise InvalidConfig(
            f"no price is known for model {model!r}: add one with agentrt_jupyter.batch."
            f"PRICES[{model!r}] = ModelPrice(input, output), or use budget_tokens",
            field="budget_usd",
        )
    return usd


class _Field(NamedTuple):
    """One replacement field of a template: `{name!conversion:spec}`."""

    name: str
    spec: str
    conversion: str | None

    def __str__(self) -> str:
        conversion = f"!{self.conversion}" if self.conversion else ""
        spec = f":{self.spec}" if self.spec else ""
        return f"{{{self.name}{conversion}{spec}}}"


def _template_fields(template: object) -> list[_Field]:
    """The template's replacement fields, those nested in a format spec (`{price:.{digits}f}`)
    included; InvalidConfig for a template that cannot parse or names an unknown
    conversion (mistakes that need no row)."""
    if not isinstance(template, str) or not template.strip():
        raise InvalidConfig(
            "must be a non-empty string such as 'Classify: {text}'", field="template"
        )
    fields = _parsed_fields(template)
    nested = [
        inner for field in fields if "{" in field.spec for inner in _parsed_fields(field.spec)
    ]
    return fields + nested


def _parsed_fields(text: str) -> list[_Field]:
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise InvalidConfig(
            f"{exc}: write {{{{ and }}}} for literal braces (JSON in a template doubles them)",
            field="template",
        ) from None
    fields = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if conversion not in CONVERSIONS:
            raise InvalidConfig(
                f"{{{name}!{conversion}}}: unknown conversion !{conversion} (use !r, !s or !a)",
                field="template",
            )
        fields.append(_Field(name, spec or "", conversion))
    return fields


def _template_columns(fields: list[_Field], frame: pd.DataFrame) -> tuple[str, ...]:
    """The columns the template's `fields` read, in order; InvalidConfig for anything else
    in braces."""
    names = [c for c in frame.columns if isinstance(c, str)]
    used: list[str] = []
    for field in fields:
        root = _root(field.name)
        if not root or root.isdigit():
            example = names[0] if names else "text"
            raise InvalidConfig(
                f"{{{field.name}}} is positional: name a column, e.g. {{{example}}}",
                field="template",
            )
        if root not in names:
            close = difflib.get_close_matches(root, names, n=1)
            hint = f"did you mean {{{close[0]}}}?" if close else f"the columns are {names[:20]}"
            raise InvalidConfig(
                f"no column {root!r} for {{{field.name}}}: {hint}", field="template"
            )
        if root not in used:
            if int(frame.columns.get_indexer_for([root]).size) > 1:
                raise InvalidConfig(
                    f"the frame has more than one column named {root!r}: rename them",
                    field="template",
                )
            used.append(root)
    return tuple(used)


def _check_first_row(fields: list[_Field], frame: pd.DataFrame) -> None:
    """InvalidConfig for a format spec that fails on the first row's value: a spec that
    does not fit the column (`{price:bad}`, `{name:d}` on text) fails on every row.

    Left to the rows (a row error): a missing first value, an attribute or index the value
    lacks, and a spec that holds other fields."""
    if frame.empty:
        return
    for field in fields:
        if not field.spec or "{" in field.spec:
            continue
        value = frame[_root(field.name)].iloc[:1].tolist()[0]  # as the rows render it
        if _missing(value):
            continue
        try:
            target, _ = _FORMATTER.get_field(field.name, (), {_root(field.name): value})
            target = _FORMATTER.convert_field(target, field.conversion)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
            continue
        try:
            format(target, field.spec)
        except (ValueError, TypeError) as exc:
            raise InvalidConfig(
                f"{field} cannot format the first row's {type(target).__name__} value: {exc}",
                field="template",
            ) from None


def _root(name: str) -> str:
    """The column a field name reads: `price` of `price.real` or `tags[0]`."""
    return name.split(".", 1)[0].split("[", 1)[0]


def _filled(value: Any) -> Any:
    """A template value: missing (None, NaN, NA, NaT) is the empty string."""
    return "" if _missing(value) else value


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _run_key(template: str, config: AgentConfig, model: str) -> str:
    material = {
        "template": template,
        "model": model,
        "system": config.system_instruction,
        "settings": [
            config.temperature, config.top_p, config.top_k, config.max_output_tokens,
            list(config.stop_sequences), config.seed, config.thinking_budget,
            config.include_thoughts, config.response_mime_type, config.max_tool_steps,
        ],
        "schema": config.response_schema,
        "tools": [t.declaration() for t in config.tool_list],
    }  # fmt: skip
    return _digest(json.dumps(material, sort_keys=True, default=repr, separators=(",", ":")))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _integer(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfig(f"must be an integer, got {value!r:.40}", field=name)
    if not low <= value <= high:
        raise InvalidConfig(f"must be between {low} and {high}, got {value}", field=name)
    return value


def positive_or_none(name: str, value: object) -> float | None:
    """`value` as a float if it is a positive finite number; None stays None
    (`InvalidConfig` naming option `name` otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise InvalidConfig(f"must be a positive number or None, got {value!r:.40}", field=name)
    return float(value)
