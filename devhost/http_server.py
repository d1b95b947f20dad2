"""The devhost's HTTP server: the app's HTTP functions and the runtime's own endpoints on uvicorn, loopback only.

``build_asgi_app`` puts the runtime's routes (``/runtime/...``) before the app's; ``serve`` runs uvicorn on a
background thread with its own event loop, so async functions run on that loop and sync ones in its thread pool.

An instance of several also listens on a port shared with the others (``shared_port``), bound with
``SO_REUSEPORT``: the kernel spreads new connections over the instances listening on it, as the front end of a
scaled-out function app spreads requests over its instances, and a killed instance's socket simply leaves the group.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from devhost.app_index import AppIndex
from devhost.http_functions import DEFAULT_MAX_BODY_BYTES, DurableClientJson, http_routes

logger = logging.getLogger("devhost.http")

DEFAULT_ROUTE_PREFIX = "api"


def read_host_json(app_dir: Path) -> dict[str, Any]:
    """``host.json`` of the app, or ``{}`` if there is none."""
    path = app_dir / "host.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _get_ci(mapping: Mapping[str, Any], key: str) -> Any:
    # The host reads host.json through .NET configuration, where keys are case-insensitive.
    for k, v in mapping.items():
        if k.lower() == key.lower():
            return v
    return None


def route_prefix_from(host_json: Mapping[str, Any]) -> str:
    """``extensions.http.routePrefix`` (may be empty), ``"api"`` when unset."""
    extensions = _get_ci(host_json, "extensions")
    http = _get_ci(extensions, "http") if isinstance(extensions, Mapping) else None
    prefix = _get_ci(http, "routePrefix") if isinstance(http, Mapping) else None
    if prefix is None:
        return DEFAULT_ROUTE_PREFIX
    return str(prefix).strip("/")


def build_asgi_app(
    index: AppIndex,
    *,
    route_prefix: str,
    extra_routes: Sequence[BaseRoute] = (),
    durable_client_json: DurableClientJson | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    functions: bool = True,
) -> Starlette:
    """A Starlette app serving ``extra_routes`` first, then the app's HTTP functions (unless ``functions`` is
    False: an instance that does not run the HTTP group serves the runtime's own routes only)."""
    routes = list(extra_routes)
    if functions:
        routes += http_routes(
            index, route_prefix=route_prefix, durable_client_json=durable_client_json, max_body_bytes=max_body_bytes
        )
    return Starlette(routes=routes)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerHandle:
    """uvicorn on a background thread. ``start()``, then ``wait_ready()``; ``stop()`` shuts it down gracefully."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 7071,
        *,
        access_log: bool = False,
        shared_port: int | None = None,
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(f"the devhost binds to loopback only, not {host!r}")
        self.host = "127.0.0.1" if host == "localhost" else host
        self.port = port
        self.shared_port = shared_port
        self._config = uvicorn.Config(
            app,
            host=self.host,
            port=port,
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="auto",
            log_config=None,
            access_log=access_log,
            proxy_headers=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(self._config)
        self._sockets: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._announced = False

    @property
    def base_url(self) -> str:
        """The URL of ``port`` (an instance's own port when it also listens on a shared one)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _bind(self, port: int, *, reuse_port: bool) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted connections inherit this: without it a response's body waits behind its headers for the
        # client's delayed ACK (Nagle), about 40 ms per request on a kept-alive connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.host, port))
        except OSError:
            sock.close()
            raise
        return sock

    def start(self) -> ServerHandle:
        """Bind the socket (so ``port`` is known at once, also for port 0) and start serving on a thread."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = self._bind(self.port, reuse_port=False)
        self._sockets = [sock]
        self.port = sock.getsockname()[1]
        if self.shared_port is not None:
            try:
                self._sockets.append(self._bind(self.shared_port, reuse_port=True))
            except OSError:
                sock.close()
                raise
        self._server = uvicorn.Server(self._config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": self._sockets}, name=f"devhost-http-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def wait_ready(self, timeout: float = 10.0) -> ServerHandle:
        if self._thread is None:
            raise RuntimeError("server not started: call start() first")
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the HTTP server stopped during startup (see the log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the HTTP server was not ready within {timeout} s")
            time.sleep(0.01)
        if not self._announced:
            self._announced = True
            shared = f" and on the shared port {self.shared_port}" if self.shared_port is not None else ""
            logger.info("listening on %s%s", self.base_url, shared)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        self._thread = None

    def __enter__(self) -> ServerHandle:
        if self._thread is None:
            self.start()
        return self.wait_ready()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(app: Any, host: str = "127.0.0.1", port: int = 7071, *, shared_port: int | None = None) -> ServerHandle:
    """A handle for serving ``app`` on ``host:port`` (loopback only; port 0 picks a free one), and on
    ``shared_port`` with ``SO_REUSEPORT`` when given. Not yet started."""
    return ServerHandle(app, host, port, shared_port=shared_port)
