"""Running a server in this process: listen, serve, tick, stop gracefully.

Theory of operation
-------------------
:class:`Server` owns one listening socket (made by :func:`wirespeed.io.tuning.create_listener`,
or handed in by the worker supervisor), the shared :class:`ServerState`, and a ticker that runs
every ``config.tick_interval`` seconds to refresh the Date header and enforce deadlines.

:func:`run` is the blocking entry point used by the CLI and by each worker: it installs uvloop,
runs the app's startup hooks, serves until SIGTERM/SIGINT, then stops accepting, lets in-flight
responses finish for up to ``graceful_timeout`` seconds, cuts what is left, runs the shutdown
hooks and returns 0. A second signal during the grace period cuts at once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import socket
import sys
from collections.abc import Callable

from wirespeed.io.tuning import SocketOptions, connection_option_names, create_listener
from wirespeed.server.app import App
from wirespeed.server.config import ServerConfig
from wirespeed.server.protocol import HttpProtocol, ServerState

__all__ = ["Server", "format_url", "run"]

log = logging.getLogger("wirespeed")


def format_url(host: str, port: int) -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class Server:
    """A wirespeed HTTP server on the running event loop.

    Example::

        server = Server(app, ServerConfig(port=0))
        await server.start()
        print(server.url)
        ...
        await server.stop()
    """

    def __init__(
        self,
        app: App,
        config: ServerConfig | None = None,
        socket_options: SocketOptions | None = None,
    ) -> None:
        self.app = app
        self.config = config or ServerConfig()
        self.socket_options = socket_options or SocketOptions()
        self.state = ServerState(app, self.config)
        self.state.per_connection_options = (
            self.socket_options if connection_option_names(self.socket_options) else None
        )
        self._forced = False
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self.sock: socket.socket | None = None

    @property
    def port(self) -> int:
        assert self.sock is not None
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        assert self.sock is not None
        return format_url(str(self.sock.getsockname()[0]), self.port)

    async def start(self, sock: socket.socket | None = None) -> None:
        """Run the startup hooks and begin accepting. Raises OSError if the port is taken."""
        loop = asyncio.get_running_loop()
        if sock is None:
            sock = create_listener(self.config.host, self.config.port, self.socket_options)
        self.sock = sock
        for hook in self.app.startup:
            result = hook()
            if inspect.isawaitable(result):
                await result
        state = self.state
        self._server = await loop.create_server(
            lambda: HttpProtocol(state),
            sock=sock,
            # create_server calls listen() again: pass the backlog or it resets to 100.
            backlog=self.socket_options.backlog,
        )
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._ticker = loop.call_later(self.config.tick_interval, self._tick)

    def _tick(self) -> None:
        try:
            self.state.tick()
        finally:
            self._schedule_tick()

    def force(self) -> None:
        """Cut every connection now (a second signal during a graceful stop)."""
        self._forced = True
        for conn in list(self.state.connections):
            conn._abort()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, give in-flight responses ``grace`` seconds, then cut the rest."""
        grace = self.config.graceful_timeout if grace is None else grace
        if self._server is not None:
            self._server.close()
        self.state.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.state.connections and loop.time() < deadline and not self._forced:
            await asyncio.sleep(0.05)
        for conn in list(self.state.connections):
            conn._abort()
        if self._ticker is not None:
            self._ticker.cancel()
        self.state.file_cache.clear()
        # Let connection_lost callbacks and cancelled handler tasks run.
        await asyncio.sleep(0)
        for hook in self.app.shutdown:
            result = hook()
            if inspect.isawaitable(result):
                await result


def install_uvloop() -> bool:
    """Use uvloop when it is installed (it is a dependency; this only guards odd platforms)."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def run(
    app: App,
    config: ServerConfig,
    socket_options: SocketOptions | None = None,
    *,
    sock: socket.socket | None = None,
    on_ready: Callable[[str], None] | None = None,
    use_uvloop: bool = True,
) -> int:
    """Serve ``app`` until SIGTERM/SIGINT, then stop gracefully. Returns the exit status."""
    if use_uvloop:
        install_uvloop()
    return asyncio.run(_serve(app, config, socket_options, sock, on_ready))


async def _serve(
    app: App,
    config: ServerConfig,
    socket_options: SocketOptions | None,
    sock: socket.socket | None,
    on_ready: Callable[[str], None] | None,
) -> int:
    loop = asyncio.get_running_loop()
    server = Server(app, config, socket_options)
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            stop.set()
        else:
            log.warning("second signal: stopping now")
            server.force()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await server.start(sock)
    if on_ready is not None:
        on_ready(server.url)
    await stop.wait()
    await server.stop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    sys.stdout.flush()
    return 0
