"""``wirespeed bench``: the command-line face of the lab.

``wirespeed.cli`` builds the ``bench`` sub-command with :func:`add_arguments` and calls
:func:`run`; ``python -m wirespeed.bench`` does the same on its own. Progress and per-trial lines
go to stderr, the tables to stdout, files to ``--out``:

- ``trials.jsonl``: the machine, the settings, every skip with its reason, every peer's version
  and check facts, every trial;
- ``summary.json``: one row per scenario and peer (medians, min-max, ratios);
- ``charts/*.png`` and ``report.md``, which embeds them.

Exit status: 0 when at least one trial was measured, 1 when nothing could be measured, 2 on bad
arguments, 130 when interrupted (the partial report is still written).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from rich.console import Console

from wirespeed.bench import peers as peer_registry
from wirespeed.bench import report
from wirespeed.bench import scenarios as scenario_registry
from wirespeed.bench.load import DEFAULT_BLOCK
from wirespeed.bench.runner import Runner, Settings

# Full run: 3 rounds so a median exists and one disturbed round cannot move it; 3 s per trial is
# ~150k requests of the small scenario and ~100 files of 64 MiB, and keeps all 9 peers x 6
# scenarios (+ ceiling rows) under the 15 minutes on a 2-core box.
FULL = {"rounds": 3, "duration": 3.0, "warmup": 1.0}
# --quick: one round of 1 s (wrk's smallest duration) after a 1 s warm-up, under 3 minutes for
# everything: a smoke test with indicative numbers, not a result to publish.
QUICK = {"rounds": 1, "duration": 1.0, "warmup": 1.0}


def _names(values: list[str] | None) -> list[str]:
    """Flatten repeatable, comma-separated options: ['a,b', 'c'] -> ['a', 'b', 'c']."""
    out: list[str] = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return list(dict.fromkeys(out))


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wirespeed-bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench options to ``parser`` (a sub-command parser or a standalone one)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 round of 1 s after a 1 s warm-up: a smoke run in under 3 minutes",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help=f"scenario to run, repeatable or comma-separated (default: all of "
        f"{', '.join(scenario_registry.SCENARIOS)})",
    )
    parser.add_argument(
        "--peers",
        action="append",
        metavar="NAME[,NAME]",
        help=f"servers to measure, repeatable or comma-separated (default: all of "
        f"{', '.join(peer_registry.PEERS)})",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-out"), help="output directory (./bench-out)"
    )
    parser.add_argument("--rounds", type=int, help=f"rounds per peer (default {FULL['rounds']})")
    parser.add_argument(
        "--duration",
        type=float,
        help=f"seconds per trial (default {FULL['duration']:g}; wrk rounds up to whole seconds)",
    )
    parser.add_argument(
        "--warmup", type=float, help=f"warm-up seconds per peer (default {FULL['warmup']:g})"
    )
    parser.add_argument(
        "--server-cpu", type=int, help="CPU the servers are pinned to (default: first usable)"
    )
    parser.add_argument(
        "--load-cpu", type=int, help="CPU the load generator runs on (default: second usable)"
    )
    parser.add_argument("--seed", type=int, help="seed of the trial order and ranges (random)")
    parser.add_argument(
        "--block-size",
        type=int,
        default=DEFAULT_BLOCK,
        help=f"read size of the block client in bytes (default {DEFAULT_BLOCK})",
    )
    parser.add_argument(
        "--sink",
        choices=("read", "splice"),
        default="read",
        help="how the block client consumes bodies: read() them like a downloader (default), "
        "or splice them to /dev/null so the client copies nothing",
    )
    parser.add_argument("--no-ceiling", action="store_true", help="skip the loopback ceiling rows")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="data files and built peers (default ~/.cache/wirespeed-bench)",
    )
    parser.add_argument("--list", action="store_true", help="list peers and scenarios, then exit")
    parser.add_argument(
        "--report-from",
        type=Path,
        metavar="TRIALS_JSONL",
        help="rebuild tables, charts and report.md from a previous run's trials.jsonl",
    )


def _cpus(ns: argparse.Namespace) -> tuple[int | None, int | None]:
    usable = sorted(os.sched_getaffinity(0))
    server = ns.server_cpu if ns.server_cpu is not None else usable[0]
    load = ns.load_cpu if ns.load_cpu is not None else usable[1 if len(usable) > 1 else 0]
    return server, load


def _command(ns: argparse.Namespace, rounds: int, duration: float, warmup: float) -> str:
    parts = ["wirespeed", "bench"]
    if ns.quick:
        parts.append("--quick")
    for flag, values in (("--scenario", ns.scenario), ("--peers", ns.peers)):
        if values:
            parts += [flag, ",".join(_names(values))]
    for flag, value in (("--rounds", ns.rounds), ("--duration", ns.duration)):
        if value is not None:
            parts += [flag, f"{value:g}"]
    if ns.warmup is not None:
        parts += ["--warmup", f"{warmup:g}"]
    if ns.sink != "read":
        parts += ["--sink", ns.sink]
    return " ".join(parts)


def _list(out: Console) -> int:
    out.print("[bold]Peers[/]")
    for p in peer_registry.PEERS.values():
        out.print(f"  {p.name:<15} {p.how}", highlight=False)
    out.print("[bold]Scenarios[/]")
    for s in scenario_registry.SCENARIOS.values():
        out.print(f"  {s.name:<15} {s.title} ({s.table} table)", highlight=False)
    return 0


def _console(*, stderr: bool) -> Console:
    """A console; when it is not a terminal (a log, a CI job), wide enough for the tables."""
    stream = sys.stderr if stderr else sys.stdout
    # 200 columns: the widest table (compress) fits without wrapping a cell.
    return Console(stderr=stderr, width=None if stream.isatty() else 200)


def run(ns: argparse.Namespace) -> int:
    """Run the lab as ``ns`` says; return the process exit status."""
    out = _console(stderr=False)
    err = _console(stderr=True)
    if ns.list:
        return _list(out)
    if ns.report_from is not None:
        records = report.load(ns.report_from)
        path = report.write(records, ns.report_from.parent, out)
        err.print(f"report: {path}")
        return 0
    try:
        scenarios = scenario_registry.select(
            _names(ns.scenario) or list(scenario_registry.SCENARIOS)
        )
        peers = peer_registry.select(_names(ns.peers) or list(peer_registry.PEERS))
    except ValueError as exc:
        err.print(f"wirespeed bench: {exc}", highlight=False)
        return 2
    preset = QUICK if ns.quick else FULL
    rounds = int(ns.rounds if ns.rounds is not None else preset["rounds"])
    duration = float(ns.duration if ns.duration is not None else preset["duration"])
    warmup = float(ns.warmup if ns.warmup is not None else preset["warmup"])
    if rounds < 1 or duration <= 0 or warmup < 0:
        err.print("wirespeed bench: --rounds must be >= 1, --duration > 0, --warmup >= 0")
        return 2
    server_cpu, load_cpu = _cpus(ns)
    usable = os.sched_getaffinity(0)
    if server_cpu not in usable or load_cpu not in usable:
        err.print(f"wirespeed bench: CPUs must be among {sorted(usable)} (this process's set)")
        return 2
    settings = Settings(
        scenarios=scenarios,
        peers=peers,
        out=ns.out,
        cache=ns.cache_dir or default_cache(),
        rounds=rounds,
        duration=duration,
        warmup=warmup,
        server_cpu=server_cpu,
        load_cpu=load_cpu,
        seed=ns.seed if ns.seed is not None else random.randrange(1, 1 << 31),
        block=ns.block_size,
        sink=ns.sink,
        ceiling=not ns.no_ceiling,
        command=_command(ns, rounds, duration, warmup),
    )
    runner = Runner(settings, err)
    interrupted = False
    previous = _sigterm_interrupts()
    try:
        records = runner.run()
    except KeyboardInterrupt:
        interrupted = True
        records = runner.rec.records
        err.print("[yellow]interrupted[/]: peers stopped; writing the partial report")
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    path = report.write(records, settings.out, out)
    err.print(f"report: {path}  data: {settings.out / 'trials.jsonl'}", highlight=False)
    if interrupted:
        return 130
    if not any(r["type"] == "trial" for r in records):
        err.print("wirespeed bench: nothing was measured (see the skip reasons above)")
        return 1
    return 0


def _sigterm_interrupts() -> signal._HANDLER:
    """Make SIGTERM behave like Ctrl-C so the peers are stopped in the finally blocks."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return signal.getsignal(signal.SIGTERM)  # only the main thread may set handlers
    return signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wirespeed bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv if argv is not None else sys.argv[1:]))
