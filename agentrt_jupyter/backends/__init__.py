"""Model backends: one async streaming method each (see `base.Backend`), and the wrappers
every backend shares (`retry.py`, `cache.py`)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from typing import Any

from ..config import AgentConfig
from ..content import Part
from ..errors import InvalidConfig
from .base import Backend, Endpoint

_EXTRAS = {"openai": "openai", "ollama": "openai", "anthropic": "anthropic"}
"""The SDK (and the package's extra of the same name) each provider needs."""


def default_backend(endpoint: Endpoint) -> Backend:
    """The runtime's default `BackendFactory`, chosen by `endpoint.provider`: google-genai
    for Gemini, Vertex AI and the local servers (they speak Gemini's wire format), the
    openai SDK for OpenAI-compatible servers (Ollama too), the anthropic SDK for
    Anthropic. Each SDK is imported when its first backend is made."""
    provider = endpoint.provider
    if provider in ("openai", "ollama"):
        openai: Any = _provider_module(provider)
        backend: Backend = openai.OpenAIBackend(
            api_key=endpoint.api_key, base_url=endpoint.base_url, provider=provider
        )
        return backend
    if provider == "anthropic":
        anthropic: Any = _provider_module(provider)
        backend = anthropic.AnthropicBackend(api_key=endpoint.api_key, base_url=endpoint.base_url)
        return backend
    if provider == "vertex":
        return _vertex_backend(endpoint)
    from .gemini import GeminiBackend

    return GeminiBackend(
        api_key=endpoint.api_key, base_url=endpoint.base_url, api_version=endpoint.api_version
    )


def _vertex_backend(endpoint: Endpoint) -> Backend:
    """google-genai on Vertex AI; no project or credentials to be found is `InvalidConfig`."""
    from google.auth.exceptions import GoogleAuthError

    from .gemini import GeminiBackend

    try:
        return GeminiBackend(
            api_key=endpoint.api_key,
            base_url=endpoint.base_url,
            api_version=None,
            vertexai=True,
            project=endpoint.project,
            location=endpoint.location,
        )
    except (ValueError, GoogleAuthError) as exc:  # the SDK's own words; no key in them
        raise InvalidConfig(
            f"Vertex AI needs a project and credentials: pass project=... and location=..., "
            f"set GOOGLE_CLOUD_PROJECT, or log in with application default credentials "
            f"({exc.__class__.__name__}: {str(exc)[:200]})",
            field="project",
        ) from None


def check_extra(provider: str) -> None:
    """`InvalidConfig` now if the provider's SDK is not installed (looked up, not imported),
    so an agent is refused at creation rather than at its first turn."""
    extra = _EXTRAS.get(provider)
    if extra is not None and importlib.util.find_spec(extra) is None:
        raise _missing_extra(provider, extra)


def check_settings(provider: str, config: AgentConfig) -> None:
    """`InvalidConfig` naming a setting the provider cannot honour and the provider, when
    an agent is created or reconfigured rather than at its first turn (nothing to check
    without the provider's SDK: its backend cannot be made either)."""
    module = _checks(provider)
    if module is None:
        return
    if provider == "anthropic":
        module.check_config(config)
    else:
        module.check_config(config, provider)


def check_parts(provider: str, parts: Sequence[Part]) -> None:
    """`InvalidContent` naming the provider and a part it cannot take, when a turn's
    content is given, before it is recorded or anything is sent."""
    module = _checks(provider)
    if module is None:
        return
    if provider == "anthropic":
        module.check_content(parts)
    else:
        module.check_parts(parts, provider)


def _checks(provider: str) -> Any:
    """The backend module whose checks apply to `provider` (None for Gemini's and Vertex's,
    which take what google-genai takes, or a provider whose SDK is not installed)."""
    extra = _EXTRAS.get(provider)
    if extra is None or importlib.util.find_spec(extra) is None:
        return None
    return _provider_module(provider)


def _missing_extra(provider: str, extra: str) -> InvalidConfig:
    return InvalidConfig(
        f"the {provider} provider needs the [{extra}] extra: "
        f"pip install 'agentrt-jupyter[{extra}]'",
        field="model",
    )


def _provider_module(provider: str) -> Any:
    """The backend module of an optional SDK; a missing SDK is one line saying which extra
    to install."""
    extra = _EXTRAS[provider]
    try:
        return importlib.import_module(f"{__name__}.{extra}")
    except ModuleNotFoundError as exc:
        if exc.name not in (extra, f"{__name__}.{extra}"):
            raise
        raise _missing_extra(provider, extra) from None
