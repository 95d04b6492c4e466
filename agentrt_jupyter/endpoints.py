"""Which backend answers an agent: its endpoint (key, host, provider), made once and reused.

The model's prefix picks the provider ("openai:gpt-4.1-mini"; a bare name is Gemini's).
A Gemini agent with its own `api_key`/`base_url` talks to that endpoint; the others to
the runtime's: Gemini with a key, else the embedded local model server, started here on
first use. Another provider's agent uses its own settings, else that SDK's environment
variables: the runtime's key is Gemini's and never goes elsewhere. The runtime's
`backend_factory` turns an `Endpoint` into a `Backend` (`backends.default_backend`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
from typing import TYPE_CHECKING, Any

from .backends import check_extra, check_settings, default_backend
from .backends.base import Backend, BackendFactory, Endpoint
from .config import (
    OLLAMA_BASE_URL,
    AgentConfig,
    RuntimeConfig,
    provider_environment,
    provider_of,
)
from .errors import BackendError, InvalidConfig

if TYPE_CHECKING:
    from .server.process import LocalServer

log = logging.getLogger("agentrt_jupyter")

PROVIDER_HOSTS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "vertex": "aiplatform.googleapis.com",
}
"""Where each SDK goes without a base URL (for the reply cache's label)."""
PROVIDER_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
"""The providers whose own service needs a key (a server at a base_url may not)."""


def provider_endpoint(provider: str, config: AgentConfig) -> Endpoint:
    """The endpoint of a provider other than Gemini: the agent's settings, else the
    SDK's environment. A key from the environment goes only with the base URL from the
    environment (or the SDK's own host), never to an agent's own base_url."""
    if provider == "vertex":
        project, location = provider_environment("vertex")
        return Endpoint(
            config.api_key,
            config.base_url,
            provider="vertex",
            project=config.project or project,
            location=config.location or location,
        )
    if provider == "ollama":
        return Endpoint(config.api_key, config.base_url or OLLAMA_BASE_URL, provider="ollama")
    env_key, env_url = provider_environment(provider)
    base_url = config.base_url or env_url
    api_key = config.api_key
    if api_key is None and base_url == env_url:
        api_key = env_key
    return Endpoint(api_key, base_url, provider=provider)


class Backends:
    """The runtime's backends, one per endpoint, and the local server some of them use.

    Lives on the runtime loop; closed with the runtime."""

    def __init__(self, config: RuntimeConfig, factory: BackendFactory | None = None) -> None:
        self.config = config
        self._factory = factory or default_backend
        self._default_factory = factory is None
        """Only the default (google-genai) backends use the local model servers and the
        SDK's warm-up; a custom factory gets the endpoint as configured, and no server
        process is started for it."""
        self._made: dict[Endpoint, Backend] = {}
        self._lock: asyncio.Lock | None = None
        self.server: LocalServer | None = None
        self.default_credential: str | None = None
        """The fingerprint of the runtime's own key, once its backend was made."""

    def provider(self, config: AgentConfig) -> str:
        """The provider an agent's model names (its own, else the runtime's default)."""
        return provider_of(self.config.model_for(config.model))

    def check_endpoint(self, name: str, config: AgentConfig) -> None:
        """Settings its provider cannot honour are refused, and a key goes only to the
        endpoint it was configured with.

        A Gemini agent with its own `base_url` (a resumed one, whose key is never stored)
        must bring its own `api_key`; the runtime's key is not sent to another host.
        """
        provider = self.provider(config)
        if provider != "vertex":
            for setting in ("project", "location"):
                if getattr(config, setting) is not None:
                    raise InvalidConfig(
                        f"agent {name!r}: {setting} is a Vertex AI setting and its model is "
                        f"on {provider}: use model='vertex:...'",
                        field=setting,
                    )
        if provider != "gemini":
            self._check_other_provider(name, provider, config)
            return
        if (
            config.base_url is not None
            and config.api_key is None
            and config.base_url != self.config.base_url
        ):
            raise InvalidConfig(
                f"agent {name!r} has its own base_url, so it needs its own api_key "
                "(the runtime's key is only sent to the runtime's endpoint): pass api_key=...",
                field="api_key",
            )

    def _check_other_provider(self, name: str, provider: str, config: AgentConfig) -> None:
        """No Gemini-only setting, the SDK installed, and a key for the provider's service."""
        if config.api_version is not None:
            raise InvalidConfig(
                f"agent {name!r}: api_version is a Gemini API setting; the {provider} "
                "provider has none",
                field="api_version",
            )
        if self._default_factory:
            check_extra(provider)
        check_settings(provider, config)  # names the setting and the provider
        endpoint = provider_endpoint(provider, config)  # checks the environment's values
        if provider in PROVIDER_KEYS and endpoint.api_key is None and endpoint.base_url is None:
            raise InvalidConfig(
                f"agent {name!r}: the {provider} provider needs an API key: pass "
                f"api_key=... or set {PROVIDER_KEYS[provider]}",
                field="api_key",
            )

    def label(self, config: AgentConfig) -> str:
        """Who answers an agent, for the reply cache: a Gemini agent's base URL, or the
        backend's name (the local servers' random ports must not make a restarted kernel
        miss); another provider's name and host (a reply recorded on one provider never
        replays for another)."""
        provider = self.provider(config)
        if provider == "gemini":
            return config.base_url or self.config.base_url or self.config.resolved_backend()
        endpoint = provider_endpoint(provider, config)
        host = endpoint.base_url or PROVIDER_HOSTS[provider]
        if provider == "vertex":
            host = f"{host} {endpoint.project}/{endpoint.location}"
        return f"{provider} {host}"

    async def _endpoint(self, config: AgentConfig) -> Endpoint:
        """Where an agent's calls go: its own endpoint, else the runtime's."""
        provider = self.provider(config)
        if provider != "gemini":
            return provider_endpoint(provider, config)
        if config.api_key or config.base_url:
            return Endpoint(
                config.api_key or self.config.resolved_api_key(),
                config.base_url or self.config.base_url,
                config.api_version or self.config.api_version,
            )
        backend = self.config.resolved_backend()
        if backend == "gemini" or not self._default_factory:
            return Endpoint(
                self.config.resolved_api_key(),
                self.config.base_url,
                config.api_version or self.config.api_version,
                provider=backend,
            )
        server = await self._local_server(backend)
        return Endpoint(server.token, server.url, "v1beta", provider=backend)

    async def _local_server(self, engine: str) -> LocalServer:
        if self.server is None:
            from .server.process import LocalServer

            log.info("starting the local model server (%s engine)", engine)
            try:
                self.server = await asyncio.to_thread(
                    LocalServer.start, engine, startup_timeout=self.config.server_startup_timeout
                )
            except RuntimeError as exc:
                raise BackendError(
                    f"the embedded {engine} model server did not start ({exc}). Install the "
                    "[local] extra (see the README), or set GOOGLE_API_KEY to use Gemini",
                    status="UNAVAILABLE",
                ) from exc
        return self.server

    async def backend_for(self, config: AgentConfig) -> Backend:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            endpoint = await self._endpoint(config)
            backend = self._made.get(endpoint)
            if backend is None:
                backend = self._factory(endpoint)
                self._made[endpoint] = backend
            if not (config.api_key or config.base_url) and self.provider(config) == self.provider(
                AgentConfig()
            ):
                self.default_credential = backend.credential
            return backend

    async def default(self) -> Backend:
        """The backend of an agent with no endpoint of its own."""
        return await self.backend_for(AgentConfig())

    async def warm_up(self) -> None:
        """Import the SDK, build the client and start the local server now, not at the
        first turn, then the SDK models a short turn uses; a failure here is only logged
        (the first turn reports it).

        Between steps the loop runs what queued meanwhile, so a first cell sent during the
        import starts its turn as soon as the import is done, not after the whole warm-up.
        """
        try:
            if not self._default_factory or self.provider(AgentConfig()) != "gemini":
                await self.default()  # a custom factory's or another SDK's: just make it
                return
            gemini = _import_without_collections(f"{__package__}.backends.gemini")
            await self.default()
            for model in gemini.first_turn_models():
                await asyncio.sleep(0)
                model.model_rebuild()
        except Exception as exc:
            log.info("warm-up failed (the first turn will say why): %s", exc)

    async def aclose(self) -> None:
        """Close every backend, then stop the local server."""
        for backend in self._made.values():
            with contextlib.suppress(Exception):
                await backend.aclose()
        self._made.clear()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            self.server = None


def _import_without_collections(module: str) -> Any:
    """Import `module` with the cyclic garbage collector paused, then restored.

    The SDK's import creates a few hundred thousand objects (its ~900 pydantic models),
    and the collections they trigger add a fifth to its ~1 s; pausing them for it alone
    only defers what they would find."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return importlib.import_module(module)
    finally:
        if collecting:
            gc.enable()
