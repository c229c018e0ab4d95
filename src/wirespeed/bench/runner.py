"""The experiment: start peers, check them, warm up, run interleaved rounds, record everything.

Theory of operation
-------------------
For each scenario the runner starts every available peer at once (each pinned to the server
CPU, each on its own port; idle peers sleep in epoll and cost nothing), checks each against the
scenario's contract, records its idle RSS, warms each up, then runs the rounds. A round visits
every peer once in a freshly shuffled order, so slow drift of the machine (thermal, another
tenant, page cache) spreads evenly over the peers instead of biasing whichever ran last; the
report takes medians over rounds with min-max. The load generator runs on the load CPU, and so
does the lab itself, which mostly sleeps during a trial.

Every fact is appended as one JSON object to ``trials.jsonl`` the moment it is known (machine,
settings, scenarios, skips with reasons, peers with versions and check facts, every trial), so
an interrupted run still leaves a usable record and :mod:`report` can be re-run from the file.

A peer that is missing, fails to build, start, listen, or pass the check, or dies during a
trial, is skipped for that scenario with a one-line reason; the run carries on with the rest.
All peers of a scenario are stopped in a ``finally`` block, on errors and on Ctrl-C alike.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from wirespeed.bench import machine
from wirespeed.bench.check import check, expected_for
from wirespeed.bench.load import (
    DEFAULT_BLOCK,
    LoadError,
    LoadResult,
    build_blockload,
    run_blockload,
    run_wrk,
)
from wirespeed.bench.peers import Context, Peer, ceiling
from wirespeed.bench.process import ProcessError, ServerProcess, free_port, tail
from wirespeed.bench.sample import Sample, Sampler, tree_detail, tree_rss
from wirespeed.bench.scenarios import Scenario, prepare_dataset

# Pause between two trials: lets the previous trial's connection teardown (FIN/ACK, TIME_WAIT
# bookkeeping) and deferred work such as a GC cycle happen outside the next measurement window.
SETTLE = 0.25
# The load generator at or above this share of its CPU measured itself as much as the server.
CLIENT_BOUND = 90.0
# Above this share of failed requests a trial's numbers are not the server's normal behaviour.
ERROR_RATE_NOTE = 0.001


@dataclass
class Settings:
    scenarios: list[Scenario]
    peers: list[Peer]
    out: Path
    cache: Path
    rounds: int = 3
    duration: float = 3.0
    warmup: float = 1.0
    server_cpu: int | None = 0
    load_cpu: int | None = 1
    seed: int = 0
    block: int = DEFAULT_BLOCK
    sink: str = "read"
    ceiling: bool = True
    command: str = ""


@dataclass
class Running:
    """A peer that passed its check for the current scenario."""

    peer: Peer
    server: ServerProcess
    facts: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Append-only JSON lines, kept in memory too for the report."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._file: IO[str] = path.open("w")

    def write(self, record_type: str, /, **fields: Any) -> dict[str, Any]:
        record = {"type": record_type, **fields}
        self.records.append(record)
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()
        return record

    def close(self) -> None:
        self._file.close()


class Runner:
    def __init__(self, settings: Settings, console: Console) -> None:
        self.s = settings
        self.console = console
        self.rng = random.Random(settings.seed)
        settings.out.mkdir(parents=True, exist_ok=True)
        self.rec = Recorder(settings.out / "trials.jsonl")
        self.blockload: Path | None = None
        self.tool_missing: dict[str, str] = {}

    # --------------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Run every scenario; return the records (also in ``out/trials.jsonl``)."""
        s = self.s
        self.rec.write("machine", **machine.describe())
        self.rec.write(
            "settings",
            command=s.command,
            rounds=s.rounds,
            duration=s.duration,
            warmup=s.warmup,
            server_cpu=s.server_cpu,
            load_cpu=s.load_cpu,
            seed=s.seed,
            block=s.block,
            sink=s.sink,
            scenarios=[x.name for x in s.scenarios],
            peers=[p.name for p in s.peers],
            started=_now(),
        )
        if s.server_cpu is not None and s.server_cpu == s.load_cpu:
            self._note("server and load share one CPU: numbers measure both together")
        try:
            with self._pinned_self(), tempfile.TemporaryDirectory(prefix="wirespeed-bench-") as w:
                self._run(Path(w))
        finally:
            self.rec.write("end", finished=_now())
            self.rec.close()
        return self.rec.records

    def _run(self, work: Path) -> None:
        s = self.s
        with self._progress() as progress:
            self.progress = progress
            # Total unknown until the peers are prepared (a Go build can take a while).
            self.task = progress.add_task("preparing data", total=None)
            data = prepare_dataset(s.cache / "data", s.scenarios)
            self._prepare_tools()
            ctx = Context(data=data, cache=s.cache, work=work)
            self.data = data
            peers: list[Peer] = []
            for peer in s.peers:
                self._status(f"preparing {peer.name}")
                reason = peer.unavailable(ctx)
                if reason:
                    self._skip(peer.name, "*", reason)
                    continue
                peers.append(peer)
                self.rec.write(
                    "peer", peer=peer.name, title=peer.title, how=peer.how, version=peer.version()
                )
            for scenario in s.scenarios:
                self.rec.write(
                    "scenario",
                    **{k: v for k, v in asdict(scenario).items() if k != "headers"},
                    headers=list(scenario.headers),
                )
            total = sum(
                (len(peers) + self._with_ceiling(x)) * s.rounds
                for x in s.scenarios
                if x.load not in self.tool_missing
            )
            progress.update(self.task, total=max(total, 1))
            for scenario in s.scenarios:
                if scenario.load in self.tool_missing:
                    self._skip("*", scenario.name, self.tool_missing[scenario.load])
                    continue
                self._scenario(ctx, scenario, peers)

    def file_size(self, scenario: Scenario) -> int:
        return self.data.file(scenario.file).stat().st_size if scenario.file else 0

    def _with_ceiling(self, scenario: Scenario) -> int:
        return int(self.s.ceiling and scenario.table == "transfer" and self.blockload is not None)

    def _prepare_tools(self) -> None:
        loads = {x.load for x in self.s.scenarios}
        if "wrk" in loads and shutil.which("wrk") is None:
            self.tool_missing["wrk"] = "wrk not found on PATH (apt-get install wrk)"
        if "block" in loads:
            self._status("building the block client")
            try:
                self.blockload = build_blockload(self.s.cache)
            except LoadError as exc:
                self.tool_missing["block"] = str(exc)

    # --------------------------------------------------------------------------------------------

    def _scenario(self, ctx: Context, scenario: Scenario, peers: list[Peer]) -> None:
        s = self.s
        contenders = list(peers)
        if self._with_ceiling(scenario):
            assert self.blockload is not None
            loopback = ceiling(self.blockload)
            contenders.append(loopback)
            if not any(r.get("peer") == loopback.name for r in self.rec.records):
                self.rec.write(
                    "peer", peer=loopback.name, title=loopback.title, how=loopback.how,
                    version=loopback.version(),
                )  # fmt: skip
        running: list[Running] = []
        with contextlib.ExitStack() as stack:
            self._status(f"{scenario.name}: starting {len(contenders)} servers")
            started: list[tuple[Peer, ServerProcess]] = []
            for peer in contenders:
                try:
                    launch = peer.launch(ctx, scenario, port := free_port())
                    server = ServerProcess(
                        peer.name,
                        launch.argv,
                        port=port,
                        cpu=s.server_cpu,
                        log_path=s.out / "logs" / f"{scenario.name}-{peer.name}.log",
                        env=launch.env,
                    )
                except ProcessError as exc:
                    self._skip(peer.name, scenario.name, str(exc))
                    self._advance(s.rounds)
                    continue
                except Exception as exc:  # a peer's launch bug must not end the whole run
                    self._skip(peer.name, scenario.name, f"cannot launch: {exc!r}")
                    self._advance(s.rounds)
                    continue
                stack.callback(server.stop)
                started.append((peer, server))
            expected = expected_for(scenario, ctx.data)
            for peer, server in started:
                self._status(f"{scenario.name}: checking {peer.name}")
                try:
                    server.wait_ready()
                except ProcessError as exc:
                    self._skip(peer.name, scenario.name, str(exc))
                    server.stop()
                    self._advance(s.rounds)
                    continue
                result = check(server.port, scenario, expected)
                if not result.ok:
                    self._skip(peer.name, scenario.name, f"check failed: {result.reason}")
                    server.stop()
                    self._advance(s.rounds)
                    continue
                facts: dict[str, Any] = dict(result.facts)
                facts["idle_rss"] = tree_rss(server.pid)
                facts["idle_processes"] = tree_detail(server.pid)
                facts["body_bytes"] = expected.length
                running.append(Running(peer, server, facts))
                self.rec.write(
                    "ready",
                    scenario=scenario.name,
                    peer=peer.name,
                    port=server.port,
                    pid=server.pid,
                    argv=server.argv,
                    **facts,
                )
            if s.warmup > 0:
                for r in self.rng.sample(running, len(running)):
                    self._status(f"{scenario.name}: warming up {r.peer.name}")
                    try:
                        self._load(scenario, r, s.warmup, round_no=0)
                    except LoadError as exc:
                        self._drop(running, r, scenario, f"warm-up failed: {exc}")
                        self._advance(s.rounds)
            for round_no in range(1, s.rounds + 1):
                for order, r in enumerate(self.rng.sample(running, len(running)), 1):
                    if r not in running:
                        continue  # dropped earlier in this round
                    self._trial(scenario, r, round_no, order, running)
                    time.sleep(SETTLE)

    def _drop(self, running: list[Running], r: Running, scenario: Scenario, why: str) -> None:
        if not r.server.alive():
            why = f"{why}; the server died: {tail(r.server.log_path) or 'no output'}"
        self._skip(r.peer.name, scenario.name, why)
        r.server.stop()
        running.remove(r)

    def _load(self, scenario: Scenario, r: Running, duration: float, round_no: int) -> LoadResult:
        s = self.s
        if scenario.load == "wrk":
            url = f"http://127.0.0.1:{r.server.port}{scenario.path}"
            return run_wrk(
                url,
                connections=scenario.connections,
                duration=duration,
                headers=scenario.headers,
                cpu=s.load_cpu,
            )
        assert self.blockload is not None
        return run_blockload(
            self.blockload,
            r.server.port,
            scenario.path,
            connections=scenario.connections,
            duration=duration,
            block=s.block,
            expect_status=scenario.expect_status,
            range_size=scenario.range_size,
            range_span=self.file_size(scenario),
            # Same seed for every peer in a round: all peers get the same sequence of ranges.
            seed=s.seed * 1000 + round_no,
            headers=scenario.headers,
            cpu=s.load_cpu,
            sink=s.sink,
        )

    def _trial(
        self, scenario: Scenario, r: Running, round_no: int, order: int, running: list[Running]
    ) -> None:
        s = self.s
        self.progress.update(
            self.task, description=f"{scenario.name} · {r.peer.name} · round {round_no}"
        )
        cpus = {c for c in (s.server_cpu, s.load_cpu) if c is not None} or set(
            os.sched_getaffinity(0)
        )
        sampler = Sampler(r.server.pid, cpus)
        started = _now()
        sampler.start()
        try:
            result = self._load(scenario, r, s.duration, round_no)
        except LoadError as exc:
            sampler.stop()
            self._drop(running, r, scenario, f"round {round_no}: {exc}")
            self._advance(s.rounds - round_no + 1)
            return
        sample = sampler.stop(result.client_cpu)
        if result.requests == 0:
            detail = f" ({result.error_detail})" if result.error_detail else ""
            self._drop(running, r, scenario, f"round {round_no}: no complete response{detail}")
            self._advance(s.rounds - round_no + 1)
            return
        if not r.server.alive():
            self._drop(running, r, scenario, f"round {round_no}: exited during the trial")
            self._advance(s.rounds - round_no + 1)
            return
        record = self._record(scenario, r, round_no, order, started, result, sample)
        self._advance(1)
        self._print_trial(record)

    def _record(
        self,
        scenario: Scenario,
        r: Running,
        round_no: int,
        order: int,
        started: str,
        result: LoadResult,
        sample: Sample,
    ) -> dict[str, Any]:
        body_size = int(r.facts["body_bytes"])
        body_bytes = (
            result.body_bytes if result.body_bytes is not None else result.requests * body_size
        )
        duration = result.duration or sample.wall
        client_cpu = 100.0 * result.client_cpu / sample.wall if sample.wall else 0.0
        notes: list[str] = []
        if sample.noisy():
            notes.append(f"other processes used {sample.other_cpu:.0f}% CPU")
            if sample.steal > 5:
                notes.append(f"hypervisor steal {sample.steal:.0f}%")
        if client_cpu >= CLIENT_BOUND:
            notes.append(f"load generator at {client_cpu:.0f}% CPU (client-bound)")
        total = result.requests + result.errors
        if result.errors and result.errors > ERROR_RATE_NOTE * total:
            notes.append(f"{result.errors} errors ({result.error_detail})")
        return self.rec.write(
            "trial",
            scenario=scenario.name,
            peer=r.peer.name,
            round=round_no,
            order=order,
            started=started,
            tool=result.tool,
            connections=scenario.connections,
            duration=duration,
            requests=result.requests,
            rps=result.requests / duration if duration else 0.0,
            body_bytes=body_bytes,
            wire_bytes=result.wire_bytes,
            body_Bps=body_bytes / duration if duration else 0.0,
            wire_Bps=result.wire_bytes / duration if duration else 0.0,
            latency_ms=result.latency_ms,
            errors=result.errors,
            error_detail=result.error_detail,
            server_cpu=round(sample.server_cpu, 1),
            rss_peak=sample.rss_peak,
            client_cpu=round(client_cpu, 1),
            other_cpu=round(sample.other_cpu, 1),
            steal=round(sample.steal, 1),
            noisy=sample.noisy(),
            client_bound=client_cpu >= CLIENT_BOUND,
            notes=notes,
            command=result.command,
        )

    # --------------------------------------------------------------------------------------------
    # display

    @contextlib.contextmanager
    def _progress(self) -> Iterator[Progress]:
        progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            # 4 Hz: smooth enough to watch, and the lab shares the load CPU with the client.
            refresh_per_second=4,
            transient=True,
        )
        with progress:
            yield progress

    def _status(self, text: str) -> None:
        progress = getattr(self, "progress", None)
        if progress is not None:
            progress.update(self.task, description=text)

    def _advance(self, n: int) -> None:
        progress = getattr(self, "progress", None)
        if progress is not None:
            progress.advance(self.task, n)

    def _skip(self, peer: str, scenario: str, reason: str) -> None:
        self.rec.write("skip", peer=peer, scenario=scenario, reason=reason)
        where = "" if scenario == "*" else f" ({scenario})"
        self.console.print(f"[yellow]skipped[/] {escape(peer + where)}: {escape(reason)}")

    def _note(self, text: str) -> None:
        self.rec.write("note", text=text)
        self.console.print(f"[yellow]note[/] {escape(text)}", highlight=False)

    def _print_trial(self, t: dict[str, Any]) -> None:
        lat = t["latency_ms"]
        if t["tool"] == "wrk":
            main = f"{t['rps']:>10,.0f} req/s  p99 {lat.get('p99', 0):7.2f} ms"
        else:
            main = f"{t['body_Bps'] / 1e9:>7.2f} GB/s {t['rps']:>7,.0f} req/s"
        notes = f"  [yellow]{escape('; '.join(t['notes']))}[/]" if t["notes"] else ""
        self.console.print(
            f"{t['scenario']:<11} {t['peer']:<15} r{t['round']}  {main}  "
            f"CPU {t['server_cpu']:4.0f}%  RSS {t['rss_peak'] / 2**20:6.1f} MiB{notes}",
            highlight=False,
        )

    @contextlib.contextmanager
    def _pinned_self(self) -> Iterator[None]:
        """Keep the lab (and the threads it starts) on the load CPU for the run."""
        before = os.sched_getaffinity(0)
        if self.s.load_cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {self.s.load_cpu})
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, before)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
