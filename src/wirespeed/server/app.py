"""The native application API: :class:`App`, :class:`Request` and the response types.

Theory of operation
-------------------
An :class:`App` is a router: static paths live in a dict (one lookup per request), paths with
``{name}`` segments in a list of compiled patterns tried in registration order. Each route maps
methods to handlers; HEAD is answered by the GET handler (the connection drops the body), and a
path that exists without the method gets 405 with ``Allow``.

Handlers take a :class:`Request` and return a :class:`Response`, :class:`StreamResponse`,
``bytes``/``str`` (sent as ``text/plain``), ``dict``/``list`` (JSON through orjson) or ``None``
(204). ``async def`` handlers run on the event loop; the connection first steps the coroutine
directly and only creates a task if it really suspends, so a handler that never awaits costs no
task. Plain ``def`` handlers also run on the loop (they must not block); register them with
``blocking=True`` to run them in the loop's default thread pool instead.

:class:`Request` is created per request by the connection and is cheap: headers, query and path
decoding are all computed lazily on first access.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import parse_qsl, unquote_to_bytes

import orjson

from wirespeed.server.responses import Response, StreamResponse

if TYPE_CHECKING:
    from wirespeed.server.protocol import HttpProtocol

__all__ = [
    "App",
    "Handler",
    "Headers",
    "Request",
    "RequestBody",
    "Response",
    "StreamResponse",
]

Handler: TypeAlias = Callable[["Request"], Any]


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only view of request header fields (values decoded as latin-1).

    ``headers["content-type"]`` gives the first value, :meth:`getall` every value in order.
    """

    __slots__ = ("_first", "_lower", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw  # names as the client sent them
        self._lower: list[tuple[bytes, bytes]] | None = None
        self._first: dict[bytes, bytes] | None = None

    def _fields(self) -> list[tuple[bytes, bytes]]:
        lower = self._lower
        if lower is None:
            lower = self._lower = [(k.lower(), v) for k, v in self._raw]
        return lower

    def get_bytes(self, name: bytes) -> bytes | None:
        """The first raw value for a lowercase ``name``, or None. The fastest lookup."""
        first = self._first
        if first is None:
            first = self._index()
        return first.get(name)

    def has_any(self, names: frozenset[bytes]) -> bool:
        """Whether any of these lowercase names is present (one set operation)."""
        first = self._first
        if first is None:
            first = self._index()
        return not names.isdisjoint(first)

    def _index(self) -> dict[bytes, bytes]:
        # Built on the first lookup: a file response asks for several names, most absent, and
        # a dict answers each in one probe instead of a scan of every field.
        first: dict[bytes, bytes] = {}
        for name, value in self._raw:
            key = name.lower()
            if key not in first:
                first[key] = value
        self._first = first
        return first

    def __getitem__(self, name: str) -> str:
        value = self.get_bytes(name.lower().encode("latin-1"))
        if value is None:
            raise KeyError(name)
        return value.decode("latin-1")

    def getall(self, name: str) -> list[str]:
        """Every value of ``name``, in arrival order."""
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self._fields() if k == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get_bytes(name.lower().encode("latin-1")) is not None

    def __iter__(self) -> Iterator[str]:
        seen: set[bytes] = set()
        for key, _ in self._fields():
            if key not in seen:
                seen.add(key)
                yield key.decode("latin-1")

    def __len__(self) -> int:
        return len({k for k, _ in self._fields()})

    def raw(self) -> list[tuple[bytes, bytes]]:
        """All fields as ``(lowercase name, value)`` byte pairs, in arrival order."""
        return list(self._fields())

    def __repr__(self) -> str:
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self._raw]
        return f"Headers({pairs})"


class RequestBody:
    """Arrival state of one request body (only requests that have a body get one).

    The connection feeds it (:meth:`feed`, :meth:`finish`, :meth:`fail`); the handler drains it
    through :meth:`Request.body` or :meth:`Request.stream`.
    """

    __slots__ = (
        "buffered",
        "chunks",
        "complete",
        "consumed",
        "content_length",
        "discard",
        "expect",
        "kind",
        "received",
        "waiter",
        "wants_all",
    )

    def __init__(self, kind: int, content_length: int, expect: bool) -> None:
        self.kind = kind  # BODY_LENGTH or BODY_CHUNKED (wirespeed.proto.http11)
        self.content_length = content_length
        self.expect = expect  # the client waits for 100 Continue
        self.chunks: list[bytes] = []
        self.buffered = 0  # bytes in chunks
        self.received = 0  # bytes received in all
        self.complete = False
        self.consumed = False  # a reader took it (body() or stream())
        self.discard = False  # the response went out without the body: drop what arrives
        self.wants_all = False  # body() waits for all of it: do not pause reading
        self.waiter: asyncio.Future[None] | None = None

    def feed(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.buffered += len(chunk)
        self.received += len(chunk)
        waiter = self.waiter
        if waiter is not None and not self.wants_all:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_exception(exc)
                # Mark it retrieved: the handler waiting on it is usually being cancelled at the
                # same moment and will never look, which asyncio would log as an error.
                waiter.exception()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def take(self) -> list[bytes]:
        chunks = self.chunks
        self.chunks = []
        self.buffered = 0
        return chunks


class Request:
    """One HTTP request, as a handler sees it.

    Attributes: ``method`` (``"GET"``), ``path`` (percent-decoded ``str``), ``raw_path`` and
    ``query_string`` (``bytes``, as sent), ``query`` (``dict`` of first values; see
    :meth:`query_list`), ``headers`` (:class:`Headers`), ``path_params`` (from ``{name}`` route
    segments), ``http_version`` (``"1.1"``), ``client`` (``(host, port)`` or None).

    The body is read on demand: ``await request.body()`` returns all of it (bounded by the
    server's ``max_body``), ``async for chunk in request.stream()`` yields it as it arrives. Either
    sends ``100 Continue`` first when the client asked for it. Use one or the other, once.
    """

    __slots__ = (
        "_body",
        "_conn",
        "_headers",
        "_path",
        "_query",
        "_raw_headers",
        "http_version",
        "keep_alive",
        "method",
        "path_params",
        "query_string",
        "raw_path",
    )

    def __init__(
        self,
        conn: HttpProtocol | None,
        method: str,
        raw_path: bytes,
        query_string: bytes,
        http_version: str,
        raw_headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        body: RequestBody | None,
    ) -> None:
        self._conn = conn
        self.method = method
        self.raw_path = raw_path
        self.query_string = query_string
        self.http_version = http_version
        self._raw_headers = raw_headers
        self.keep_alive = keep_alive
        self._body = body
        self.path_params: dict[str, str] = _NO_PARAMS
        self._path: str | None = None
        self._headers: Headers | None = None
        self._query: dict[str, str] | None = None

    # -- head ----------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        path = self._path
        if path is None:
            raw = self.raw_path
            if 37 in raw:  # "%"; an int needle is cheapest (see HttpProtocol.on_request)
                raw = unquote_to_bytes(raw)
            try:
                path = raw.decode()  # no arguments: the cheapest call (nearly always ASCII)
            except UnicodeDecodeError:
                path = raw.decode("utf-8", "surrogateescape")
            self._path = path
        return path

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            headers = self._headers = Headers(self._raw_headers)
        return headers

    @property
    def query(self) -> dict[str, str]:
        query = self._query
        if query is None:
            query = {}
            pairs = parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True)
            for key, value in pairs:
                query.setdefault(key, value)
            self._query = query
        return query

    def query_list(self, name: str) -> list[str]:
        """Every value of query parameter ``name``, in order."""
        pairs = parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True)
        return [v for k, v in pairs if k == name]

    @property
    def client(self) -> tuple[str, int] | None:
        return self._conn.peer if self._conn is not None else None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.raw_path!r}>"

    # -- body ----------------------------------------------------------------------------------

    @property
    def body_complete(self) -> bool:
        """True once every body byte has arrived (or there was no body)."""
        return self._body is None or self._body.complete

    async def _wait(self, body: RequestBody) -> None:
        conn = self._conn
        if conn is None:
            raise ConnectionResetError("request has no connection")
        if body.expect:
            body.expect = False
            conn.send_continue()
        conn.want_body(self)
        waiter = body.waiter = asyncio.get_running_loop().create_future()
        await waiter

    async def body(self) -> bytes:
        """The whole request body. Raises :class:`ConnectionError` if the client goes away."""
        body = self._body
        if body is None:
            return b""
        if body.consumed:
            raise RuntimeError("request body already consumed")
        body.wants_all = True
        while not body.complete:
            await self._wait(body)
        body.consumed = True
        chunks = body.take()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def stream(self) -> AsyncIterator[bytes]:
        """Yield the request body in pieces as they arrive, with backpressure on the client."""
        body = self._body
        if body is None:
            return
        if body.consumed:
            raise RuntimeError("request body already consumed")
        body.consumed = True
        while True:
            if body.chunks:
                chunks = body.take()
                if self._conn is not None:
                    self._conn.want_body(self)
                for chunk in chunks:
                    yield chunk
            elif body.complete:
                return
            else:
                await self._wait(body)

    async def json(self) -> Any:
        """The body parsed as JSON (orjson). Raises :class:`ValueError` on invalid JSON."""
        return orjson.loads(await self.body())


# Shared by every request without path parameters; handlers must not mutate it.
_NO_PARAMS: dict[str, str] = {}


# -- routing ---------------------------------------------------------------------------------

_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::path)?\}")


class Route:
    """A compiled route: its pattern and the handler for each method."""

    __slots__ = ("methods", "names", "path", "regex")

    def __init__(self, path: str) -> None:
        self.path = path
        self.methods: dict[str, Endpoint] = {}
        self.names = _PARAM_RE.findall(path)
        self.regex: re.Pattern[str] | None = None
        if self.names:
            pattern = "^"
            last = 0
            for m in _PARAM_RE.finditer(path):
                pattern += re.escape(path[last : m.start()])
                # {name} matches one segment; {name:path} the rest of the path.
                pattern += (
                    f"(?P<{m.group(1)}>.+)"
                    if m.group(0).endswith(":path}")
                    else (f"(?P<{m.group(1)}>[^/]+)")
                )
                last = m.end()
            pattern += re.escape(path[last:]) + "$"
            self.regex = re.compile(pattern)


class Endpoint:
    """A handler with what the connection needs to know to call it fast."""

    __slots__ = ("blocking", "func", "is_async")

    def __init__(self, func: Handler, blocking: bool) -> None:
        self.func = func
        self.is_async = inspect.iscoroutinefunction(func)
        self.blocking = blocking and not self.is_async


Resolved: TypeAlias = tuple[Endpoint | None, dict[str, str] | None, Route | None]


class App:
    """A wirespeed application: routes and their handlers.

    Example::

        app = App()

        @app.get("/")
        async def hello(request: Request) -> Response:
            return Response(b"Hello, World!", content_type="text/plain")

        @app.get("/items/{item_id}")
        def item(request: Request) -> dict:
            return {"id": request.path_params["item_id"]}

    Serve it with ``wirespeed serve module:app``. Routes match the percent-decoded path exactly
    (no trailing-slash redirects); ``{name}`` matches one non-empty segment, ``{name:path}`` the
    rest of the path. A path registered without the request's method answers 405 with ``Allow``.
    """

    def __init__(self) -> None:
        self._static: dict[str, Route] = {}
        self._dynamic: list[Route] = []
        self._mounts: list[tuple[str, Handler]] = []
        self._mount_endpoints: dict[str, Endpoint] = {}
        #: method -> {path: endpoint} for routes without parameters: the connection's first,
        #: single-lookup try (HEAD included where only GET is registered).
        self.fast_routes: dict[str, dict[str, Endpoint]] = {}
        self.startup: list[Callable[[], Awaitable[None] | None]] = []
        self.shutdown: list[Callable[[], Awaitable[None] | None]] = []

    # -- registration --------------------------------------------------------------------------

    def add_route(
        self,
        path: str,
        handler: Handler,
        methods: Iterable[str] = ("GET",),
        *,
        blocking: bool = False,
    ) -> None:
        """Register ``handler`` for ``path`` and ``methods``. See :class:`App` for the syntax."""
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        route = self._route_for(path)
        endpoint = Endpoint(handler, blocking)
        for name in methods:
            method = name.upper()
            if method in route.methods:
                raise ValueError(f"duplicate route: {method} {path}")
            route.methods[method] = endpoint
        self._index_static()

    def _index_static(self) -> None:
        fast: dict[str, dict[str, Endpoint]] = {}
        for path, route in self._static.items():
            methods = dict(route.methods)
            if "GET" in methods:
                methods.setdefault("HEAD", methods["GET"])
            for method, endpoint in methods.items():
                fast.setdefault(method, {})[path] = endpoint
        self.fast_routes = fast

    def _route_for(self, path: str) -> Route:
        route = self._static.get(path)
        if route is not None:
            return route
        for route in self._dynamic:
            if route.path == path:
                return route
        route = Route(path)
        if route.regex is None:
            self._static[path] = route
        else:
            self._dynamic.append(route)
        return route

    def route(
        self, path: str, methods: Iterable[str] = ("GET",), *, blocking: bool = False
    ) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add_route`."""

        def register(handler: Handler) -> Handler:
            self.add_route(path, handler, methods, blocking=blocking)
            return handler

        return register

    def get(self, path: str, *, blocking: bool = False) -> Callable[[Handler], Handler]:
        return self.route(path, ("GET",), blocking=blocking)

    def post(self, path: str, *, blocking: bool = False) -> Callable[[Handler], Handler]:
        return self.route(path, ("POST",), blocking=blocking)

    def put(self, path: str, *, blocking: bool = False) -> Callable[[Handler], Handler]:
        return self.route(path, ("PUT",), blocking=blocking)

    def patch(self, path: str, *, blocking: bool = False) -> Callable[[Handler], Handler]:
        return self.route(path, ("PATCH",), blocking=blocking)

    def delete(self, path: str, *, blocking: bool = False) -> Callable[[Handler], Handler]:
        return self.route(path, ("DELETE",), blocking=blocking)

    def mount(self, prefix: str, handler: Handler) -> None:
        """Send every request under ``prefix`` (any method) to ``handler``.

        Used for static folders and sub-applications; ``request.path_params["path"]`` holds the
        rest of the path. Routes registered with :meth:`add_route` take precedence.
        """
        prefix = prefix.rstrip("/")
        self._mounts.append((prefix, handler))
        self._mounts.sort(key=lambda m: len(m[0]), reverse=True)
        self._mount_endpoints = {p: Endpoint(h, False) for p, h in self._mounts}

    def static(self, prefix: str, directory: str | os.PathLike[str], **options: Any) -> None:
        """Serve the files under ``directory`` at ``prefix`` (zero-copy, ranges, validators).

        ``options`` are those of :class:`~wirespeed.server.static.StaticFiles`: ``index``,
        ``follow_symlinks``, ``precompressed``, ``limit_rate``, ``limit_rate_after``,
        ``content_types``. Raises :class:`NotADirectoryError` if ``directory`` is not one.
        """
        from wirespeed.server.static import StaticFiles  # noqa: PLC0415 - static imports app

        self.mount(prefix, StaticFiles(directory, **options))

    # -- dispatch (called by the connection) ---------------------------------------------------

    def resolve(self, method: str, path: str) -> Resolved:
        """Find the endpoint for a request.

        Returns ``(endpoint, params, route)``: endpoint None and route set means 405 (the route's
        methods make ``Allow``); all None means 404.
        """
        route = self._static.get(path)
        params: dict[str, str] | None = None
        if route is None:
            for candidate in self._dynamic:
                regex = candidate.regex
                assert regex is not None
                match = regex.match(path)
                if match is not None:
                    route = candidate
                    params = match.groupdict()
                    break
        if route is not None:
            methods = route.methods
            endpoint = methods.get(method)
            if endpoint is None and method == "HEAD":
                endpoint = methods.get("GET")
            return endpoint, params, route
        for prefix, _ in self._mounts:
            if path == prefix or path.startswith(prefix + "/") or not prefix:
                rest = path[len(prefix) :].lstrip("/")
                return self._mount_endpoints[prefix], {"path": rest}, None
        return None, None, None

    @staticmethod
    def allowed(route: Route) -> str:
        """The ``Allow`` value for a route: its methods, plus HEAD when GET is there."""
        methods = set(route.methods)
        if "GET" in methods:
            methods.add("HEAD")
        return ", ".join(sorted(methods))
