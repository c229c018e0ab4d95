"""The ``wirespeed`` command: serve | relay | fetch | tune | bench.

Every user error (a bad option value, a port in use, a missing folder, a target that does not
import) ends with one line on stderr, ``wirespeed <command>: error: <reason>``, and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from wirespeed import relay as relay_cli
from wirespeed.cliargs import OneLineParser, add_loop_arguments, positive_seconds
from wirespeed.io import tuning
from wirespeed.proto.http11 import Limits
from wirespeed.server.app import App
from wirespeed.server.config import ServerConfig
from wirespeed.upstream import fetch as fetch_cli

__all__ = ["main"]


class UsageError(Exception):
    """A problem with what the user asked for; reported in one line, exit status 2."""


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _int_range(low: int, high: int) -> argparse._ActionType:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer {low}-{high}, got {text!r}")
        return value

    return parse


def _bit_rate(text: str) -> float:
    # Decimal prefixes, as link rates are quoted (1g = 10^9 bits/s).
    units = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}
    number, unit = text[:-1], text[-1:].lower()
    if unit.isdigit() or unit == ".":
        number, unit = text, ""
    try:
        value = float(number) * units[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (e.g. 100m, 1g)") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _size(text: str) -> int:
    size = tuning.parse_size(text)
    if size is None:
        raise argparse.ArgumentTypeError(f"expected a byte count like 1048576 or 1M, got {text!r}")
    return size


def _build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="wirespeed", description="Network IO at wire speed, from Python.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    serve = sub.add_parser(
        "serve",
        help="serve a folder or an App",
        description="Serve TARGET: a folder of static files, or module:attr naming an App.",
    )
    serve.add_argument("target", metavar="TARGET", help="a directory, or module:attr")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    serve.add_argument(
        "--port", type=_int_range(0, 65535), default=8080, help="port (default %(default)s)"
    )
    serve.add_argument(
        "--workers", type=_int_range(1, 1024), default=1, help="worker processes (default 1)"
    )
    d = ServerConfig()
    serve.add_argument(
        "--graceful-timeout",
        type=_non_negative_float,
        default=d.graceful_timeout,
        metavar="SECONDS",
        help="time in-flight responses get after SIGTERM (default %(default)s)",
    )
    for name, help_text in (
        ("header-timeout", "time to receive a request head (408 after)"),
        ("keepalive-timeout", "idle keep-alive connections close after"),
        ("body-timeout", "longest pause inside a request body (408 after)"),
        ("send-timeout", "a client that reads nothing this long is dropped"),
    ):
        serve.add_argument(
            f"--{name}",
            type=positive_seconds,
            default=getattr(d, name.replace("-", "_")),
            metavar="SECONDS",
            help=f"{help_text} (default %(default)s)",
        )
    limits = Limits()
    serve.add_argument(
        "--max-body",
        type=_size,
        default=limits.max_body,
        metavar="BYTES",
        help="largest request body (413 above; default 1M)",
    )
    serve.add_argument(
        "--max-pipelined",
        type=_int_range(1, 1024),
        default=d.max_pipelined,
        metavar="N",
        help="queued pipelined requests before reading pauses (default %(default)s)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    files = serve.add_argument_group("static files (when TARGET is a directory)")
    files.add_argument(
        "--limit-rate",
        type=_size,
        metavar="BYTES_PER_S",
        help="pace each response to this many bytes/s, like nginx limit_rate (e.g. 1m)",
    )
    files.add_argument(
        "--limit-rate-after",
        type=_size,
        default=0,
        metavar="BYTES",
        help="send this much at full speed before pacing (nginx limit_rate_after)",
    )
    files.add_argument(
        "--no-zero-copy",
        dest="zero_copy",
        action="store_false",
        help="copy file bodies through userspace instead of sendfile (for comparison)",
    )
    files.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="serve symlinks that point outside the directory",
    )
    files.add_argument(
        "--no-precompressed",
        dest="precompressed",
        action="store_false",
        help="ignore .zst/.br/.gz siblings of files",
    )
    compression = serve.add_argument_group("compression")
    compression.add_argument(
        "--no-compress",
        dest="compress",
        action="store_false",
        help="never compress responses (precompressed siblings are still served)",
    )
    compression.add_argument(
        "--link-rate",
        type=_bit_rate,
        default=d.link_rate,
        metavar="BITS_PER_S",
        help="link rate one response can expect, weighed against compression CPU "
        "(k/m/g suffixes, e.g. 100m; default 1g)",
    )
    add_loop_arguments(serve)
    tuning.add_arguments(serve)

    tune = sub.add_parser(
        "tune",
        help="show effective socket options and the kernel limits that bound them",
    )
    tuning.add_arguments(tune)

    relay = sub.add_parser(
        "relay",
        help="zero-copy TCP relay (splice)",
        description="Relay TCP connections from --listen to --upstream, socket -> pipe -> "
        "socket with splice(2).",
    )
    relay_cli.add_arguments(relay)

    fetch = sub.add_parser(
        "fetch",
        help="download a URL, in parallel ranges when the server allows",
        description="Download URL over N pooled connections, one byte range each, into FILE.",
    )
    fetch_cli.add_arguments(fetch)

    bench = sub.add_parser("bench", help="compare wirespeed with other servers")
    if command == "bench":
        # The lab's imports (rich, psutil, matplotlib) are heavy: load them only for `bench`.
        from wirespeed.bench import cli as bench_cli  # noqa: PLC0415

        bench_cli.add_arguments(bench)
    return parser


def load_app(target: str, **static_options: Any) -> App:
    """Resolve a serve TARGET: a directory, or ``module:attr`` naming a wirespeed App.

    ``static_options`` go to :class:`~wirespeed.server.static.StaticFiles` for a directory.
    """
    if ":" not in target:
        if os.path.isdir(target):
            from wirespeed.server.static import static_app  # noqa: PLC0415

            return static_app(target, **static_options)
        if os.path.exists(target):
            raise UsageError(f"{target} is not a directory (use module:attr for an app)")
        raise UsageError(f"no such directory: {target}")
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UsageError(f"invalid target {target!r}: expected module:attr")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`, find modules in the current folder
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        raise UsageError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(obj, App):
        return obj
    raise UsageError(
        f"{target} is a {type(obj).__name__}, not a wirespeed App"
        " (ASGI applications are not supported yet)"
    )


def _serve(ns: argparse.Namespace) -> int:
    logging.basicConfig(
        level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = ServerConfig(
            host=ns.host,
            port=ns.port,
            workers=ns.workers,
            limits=Limits(max_body=ns.max_body),
            header_timeout=ns.header_timeout,
            keepalive_timeout=ns.keepalive_timeout,
            body_timeout=ns.body_timeout,
            send_timeout=ns.send_timeout,
            graceful_timeout=ns.graceful_timeout,
            max_pipelined=ns.max_pipelined,
            access_log=ns.access_log,
            zero_copy=ns.zero_copy,
            compress=ns.compress,
            link_rate=ns.link_rate,
        )
        options = tuning.from_namespace(ns)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    app = load_app(
        ns.target,
        limit_rate=ns.limit_rate,
        limit_rate_after=ns.limit_rate_after,
        follow_symlinks=ns.follow_symlinks,
        precompressed=ns.precompressed,
    )

    def ready(url: str) -> None:
        workers = f" with {config.workers} workers" if config.workers > 1 else ""
        print(f"wirespeed: serving {ns.target} on {url}{workers} (pid {os.getpid()})", flush=True)

    try:
        if config.workers > 1:
            from wirespeed.server.workers import supervise  # noqa: PLC0415

            return supervise(app, config, options, on_ready=ready)
        from wirespeed.server.runner import run  # noqa: PLC0415

        return run(app, config, options, on_ready=ready, use_uvloop=ns.loop == "uvloop")
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"{ns.host}:{ns.port} is already in use") from None
        if exc.errno == errno.EACCES:
            raise UsageError(f"no permission to listen on {ns.host}:{ns.port}") from None
        raise UsageError(f"cannot listen on {ns.host}:{ns.port}: {exc.strerror or exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wirespeed`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser(args[0] if args else None)
    ns = parser.parse_args(args)
    try:
        if ns.command == "serve":
            return _serve(ns)
        if ns.command == "tune":
            return tuning.tune_main(ns)
        if ns.command == "relay":
            return relay_cli.main(ns)
        if ns.command == "fetch":
            return fetch_cli.main(ns)
        if ns.command == "bench":
            from wirespeed.bench import cli as bench_cli  # noqa: PLC0415

            return bench_cli.run(ns)
    except UsageError as exc:
        print(f"wirespeed {ns.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {ns.command}")


if __name__ == "__main__":
    sys.exit(main())
