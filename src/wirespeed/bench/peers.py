"""The servers the lab measures, each started the way its users run it: one entry per peer.

Theory of operation
-------------------
A :class:`Peer` is data plus three small functions: what it needs (executables, importable
modules), how to build it once (the Go binary), and the command line for a scenario on a port.
Every peer serves the same routes from the same data directory (see
:mod:`wirespeed.bench.apps`); all run one worker, and :mod:`wirespeed.bench.process` pins the
process tree to the server CPU. Whether a peer is fit to be measured is decided by the check in
:mod:`wirespeed.bench.check`, never here: a peer that is installed but broken is skipped with the
check's reason, so a broken peer never produces a number.

A missing requirement is not an error: :meth:`Peer.unavailable` returns a one-line reason (with
the install hint) that the run prints and records, then the run carries on with the others.

Adding a peer: write its program under ``apps/`` serving ``/``, ``/json`` and ``/files/NAME``,
then add one :class:`Peer` entry to :data:`PEERS` with its requirements and command line.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import string
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from wirespeed.bench.scenarios import Dataset, Scenario

APPS = Path(__file__).resolve().parent / "apps"
# The directory that contains the ``wirespeed`` package, put first on the peers' PYTHONPATH so
# the apps import from this tree whether or not the package is installed.
SOURCE_ROOT = Path(__file__).resolve().parents[2]

# `go build` of the peer: the first build compiles net/http (~30 s on a 2-core box); later ones
# hit Go's build cache. Ten minutes is "something is wrong", not a tuning number.
GO_BUILD_TIMEOUT = 600.0


class Unavailable(Exception):
    """The peer cannot run here; the message is the one-line reason shown to the user."""


@dataclass(frozen=True)
class Context:
    """Where a run keeps things, handed to every peer."""

    data: Dataset
    cache: Path  # build products that outlive a run (the Go binary)
    work: Path  # this run's scratch directory (nginx prefixes)
    python: str = sys.executable


@dataclass(frozen=True)
class Launch:
    """A command line and the environment additions it needs."""

    argv: list[str]
    env: Mapping[str, str] = field(default_factory=dict)


Command = Callable[[Context, Scenario, int], Launch]


@dataclass(frozen=True)
class Peer:
    name: str
    title: str
    how: str  # one line for the report: how it runs
    command: Command
    executables: tuple[tuple[str, str], ...] = ()  # (executable, install hint)
    modules: tuple[str, ...] = ()  # importable Python modules (pip extra: wirespeed[peers])
    prepare: Callable[[Context], None] | None = None
    version: Callable[[], str] = lambda: "?"
    probe: Callable[[Context], str | None] | None = None  # an extra availability test

    def unavailable(self, ctx: Context) -> str | None:
        """A one-line reason this peer cannot run here, or None when it can.

        Runs the peer's ``prepare`` step (the Go build) when everything it needs is present,
        so a peer that fails to build is reported the same way as one that is missing.
        """
        for exe, hint in self.executables:
            if shutil.which(exe) is None:
                return f"{exe} not found on PATH ({hint})"
        for module in self.modules:
            if not _importable(module):
                return f"Python module {module} not installed (pip install 'wirespeed[peers]')"
        if self.probe is not None:
            reason = self.probe(ctx)
            if reason:
                return reason
        if self.prepare is not None:
            try:
                self.prepare(ctx)
            except Unavailable as exc:
                return str(exc)
        return None

    def launch(self, ctx: Context, scenario: Scenario, port: int) -> Launch:
        base = self.command(ctx, scenario, port)
        env = dict(os.environ)
        env.update(base.env)
        env["WIRESPEED_BENCH_DATA"] = str(ctx.data.root)
        previous = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(SOURCE_ROOT) + (os.pathsep + previous if previous else "")
        return Launch(base.argv, env)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _dist(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _output(argv: list[str]) -> str:
    """First line of a command's combined output ('' if it cannot run)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else ""


# ------------------------------------------------------------------------------------------------
# wirespeed


def _wirespeed_probe(ctx: Context) -> str | None:
    # In a child interpreter: importing the server here would tie the lab to its import-time
    # state, and the child sees exactly what `python -m wirespeed serve` will see.
    code = (
        "import importlib.util, wirespeed\n"
        "wirespeed.App\n"
        "assert importlib.util.find_spec('wirespeed.__main__'), 'no wirespeed.__main__'\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SOURCE_ROOT)
    done = subprocess.run(
        [ctx.python, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return f"wirespeed server not importable yet: {lines[-1] if lines else 'unknown error'}"


def _wirespeed(ctx: Context, scenario: Scenario, port: int) -> Launch:
    target = (
        str(ctx.data.root) if scenario.kind == "files" else "wirespeed.bench.apps.wirespeed_app:app"
    )
    return Launch(
        [ctx.python, "-m", "wirespeed", "serve", target, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"]
    )  # fmt: skip


def _wirespeed_asgi(ctx: Context, scenario: Scenario, port: int) -> Launch:
    return Launch(
        [ctx.python, "-m", "wirespeed", "serve", "wirespeed.bench.apps.asgi_app:app",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    )  # fmt: skip


def _wirespeed_version() -> str:
    return f"{_dist('wirespeed')} (uvloop {_dist('uvloop')}, httptools {_dist('httptools')})"


# ------------------------------------------------------------------------------------------------
# nginx


def _nginx(ctx: Context, scenario: Scenario, port: int) -> Launch:
    prefix = ctx.work / f"nginx-{port}"
    prefix.mkdir(parents=True, exist_ok=True)
    template = string.Template((APPS / "nginx.conf").read_text())
    conf = prefix / "nginx.conf"
    conf.write_text(template.substitute(prefix=prefix, port=port, data=ctx.data.root))
    # -e: the error log before the config is read (nginx >= 1.19.5); without it nginx first
    # opens the compiled-in /var/log/nginx/error.log, which fails for non-root users.
    return Launch(["nginx", "-p", str(prefix), "-c", str(conf), "-e", "stderr"])


def _nginx_version() -> str:
    return _output(["nginx", "-v"]).removeprefix("nginx version: ")


# ------------------------------------------------------------------------------------------------
# Go


def _go_binary(ctx: Context) -> Path:
    source = APPS / "server.go"
    digest = hashlib.sha256(source.read_bytes() + _go_version().encode()).hexdigest()[:12]
    return ctx.cache / "go" / f"server-{digest}"


def _go_prepare(ctx: Context) -> None:
    binary = _go_binary(ctx)
    if binary.exists():
        return
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # Go needs a writable build cache and finds its default through HOME or XDG_CACHE_HOME; when
    # neither is set (some CI and sudo setups) give it one, otherwise reuse the user's warm one.
    if not any(env.get(k) for k in ("GOCACHE", "HOME", "XDG_CACHE_HOME")):
        env["GOCACHE"] = str(ctx.cache / "go-build")
    tmp = binary.with_name(binary.name + ".tmp")
    try:
        done = subprocess.run(
            ["go", "build", "-o", str(tmp), str(APPS / "server.go")],
            capture_output=True,
            text=True,
            env=env,
            cwd=APPS,
            timeout=GO_BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"go build did not finish in {GO_BUILD_TIMEOUT:.0f} s") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise Unavailable(f"go build failed: {lines[-1] if lines else done.returncode}")
    tmp.replace(binary)


def _go(ctx: Context, scenario: Scenario, port: int) -> Launch:
    return Launch(
        [str(_go_binary(ctx)), "-addr", f"127.0.0.1:{port}", "-data", str(ctx.data.root)],
        {"GOMAXPROCS": "1"},
    )


@cache
def _go_version() -> str:
    parts = _output(["go", "version"]).split()
    return parts[2] if len(parts) > 2 else "?"


# ------------------------------------------------------------------------------------------------
# Node.js


def _node(ctx: Context, scenario: Scenario, port: int) -> Launch:
    return Launch(["node", str(APPS / "server.js"), str(port), str(ctx.data.root)])


# ------------------------------------------------------------------------------------------------
# Python ASGI servers, aiohttp and the stdlib


def _uvicorn(ctx: Context, scenario: Scenario, port: int) -> Launch:
    return Launch(
        [ctx.python, "-m", "uvicorn", "wirespeed.bench.apps.asgi_app:app",
         "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
         "--no-access-log", "--log-level", "warning", "--lifespan", "off"]
    )  # fmt: skip


def _granian(ctx: Context, scenario: Scenario, port: int) -> Launch:
    # --http 1: every other peer speaks HTTP/1.1 only; "auto" would sniff for HTTP/2 prior
    # knowledge on each connection. --no-ws likewise: no peer here serves websockets.
    return Launch(
        [ctx.python, "-m", "granian", "--interface", "asgi", "--workers", "1",
         "--loop", "uvloop", "--http", "1", "--no-ws", "--log-level", "warning",
         "--host", "127.0.0.1", "--port", str(port), "wirespeed.bench.apps.asgi_app:app"]
    )  # fmt: skip


def _aiohttp(ctx: Context, scenario: Scenario, port: int) -> Launch:
    return Launch(
        [ctx.python, "-m", "wirespeed.bench.apps.aiohttp_app", "--port", str(port),
         "--data", str(ctx.data.root)]
    )  # fmt: skip


def _stdlib(ctx: Context, scenario: Scenario, port: int) -> Launch:
    return Launch(
        [ctx.python, "-m", "wirespeed.bench.apps.stdlib_app", "--port", str(port),
         "--data", str(ctx.data.root)]
    )  # fmt: skip


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            name="wirespeed",
            title="wirespeed",
            how="wirespeed serve: native App (/, /json); a directory for files (sendfile)",
            command=_wirespeed,
            probe=_wirespeed_probe,
            version=_wirespeed_version,
        ),
        Peer(
            name="wirespeed-asgi",
            title="wirespeed (ASGI)",
            how="wirespeed serve on the raw ASGI app (Starlette FileResponse for files)",
            command=_wirespeed_asgi,
            probe=_wirespeed_probe,
            modules=("starlette",),
            version=_wirespeed_version,
        ),
        Peer(
            name="nginx",
            title="nginx",
            how="1 process (master_process off), sendfile on, tcp_nopush on, access_log off",
            command=_nginx,
            executables=(("nginx", "apt-get install nginx-light"),),
            version=_nginx_version,
        ),
        Peer(
            name="go",
            title="Go net/http",
            how="net/http + http.FileServer, GOMAXPROCS=1, built from apps/server.go",
            command=_go,
            executables=(("go", "apt-get install golang-go"),),
            prepare=_go_prepare,
            version=_go_version,
        ),
        Peer(
            name="node",
            title="Node.js http",
            how="http.createServer, fs.createReadStream().pipe(res) for files",
            command=_node,
            executables=(("node", "apt-get install nodejs"),),
            version=lambda: _output(["node", "--version"]),
        ),
        Peer(
            name="uvicorn",
            title="uvicorn",
            how="uvloop + httptools, raw ASGI app; Starlette FileResponse for files",
            command=_uvicorn,
            modules=("uvicorn", "uvloop", "httptools", "starlette"),
            version=lambda: f"{_dist('uvicorn')} (starlette {_dist('starlette')})",
        ),
        Peer(
            name="granian",
            title="granian",
            how="ASGI, 1 worker, uvloop; Starlette FileResponse (pathsend) for files",
            command=_granian,
            modules=("granian", "uvloop", "starlette"),
            version=lambda: f"{_dist('granian')} (starlette {_dist('starlette')})",
        ),
        Peer(
            name="aiohttp",
            title="aiohttp",
            how="web.run_app, web.Response, web.FileResponse, default asyncio loop",
            command=_aiohttp,
            modules=("aiohttp",),
            version=lambda: _dist("aiohttp"),
        ),
        Peer(
            name="stdlib",
            title="Python http.server",
            how="ThreadingHTTPServer, HTTP/1.1, SimpleHTTPRequestHandler for files; Nagle on "
            "as shipped (~40 ms per keep-alive response)",
            command=_stdlib,
            version=lambda: f"Python {platform.python_version()}",
        ),
    )
}

# The peer every ratio is taken against.
BASELINE = "wirespeed"


def select(names: list[str]) -> list[Peer]:
    """Peers by name in registry order; raise ValueError naming any unknown one."""
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer {', '.join(unknown)} (known: {', '.join(PEERS)})")
    wanted = set(names)
    return [p for p in PEERS.values() if p.name in wanted]


def ceiling(blockload: Path) -> Peer:
    """The loopback ceiling as a pseudo-peer: the block client's bare sendfile server."""

    def command(ctx: Context, scenario: Scenario, port: int) -> Launch:
        file = ctx.data.file(scenario.file)
        return Launch([str(blockload), "serve", "--port", str(port), "--file", str(file)])

    return Peer(
        name="loopback",
        title="loopback ceiling",
        how="bare sendfile(2) loop in C, thread per connection (tools/blockload.c)",
        command=command,
        version=lambda: "-",
    )
