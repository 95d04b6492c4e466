"""Model backends: one async streaming method each (see `base.Backend`), and the wrappers
every backend shares (`retry.py`, `cache.py`)."""

from __future__ import annotations

from .base import Backend, Endpoint


def default_backend(endpoint: Endpoint) -> Backend:
    """The runtime's default `BackendFactory`: google-genai for Gemini and for the local
    servers (they speak Gemini's wire format). Imports the SDK (~0.5 s) when first called."""
    from .gemini import GeminiBackend

    return GeminiBackend(
        api_key=endpoint.api_key, base_url=endpoint.base_url, api_version=endpoint.api_version
    )
