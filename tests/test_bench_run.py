"""``wirespeed bench`` end to end: real wrk, real peers, real files out; short durations.

The quick run of the issue (``--quick --scenario small --peers wirespeed,stdlib``) runs once per
module and the tests below read what it produced. wirespeed is measured when its server is
importable and skipped with a reason otherwise; either is a pass, a silent absence is not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from wirespeed.bench import cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (make sys-bench)"),
]

PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    dir: Path

    def records(self) -> list[dict[str, Any]]:
        lines = (self.dir / "trials.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["type"] == kind]


def bench(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> Outcome:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    code = cli.run(parser.parse_args([*args, "--out", str(out)]))
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err, out)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Outcome:
    """The issue's quick run, as a user runs it: a separate process, output captured."""
    out = tmp_path_factory.mktemp("quick")
    done = subprocess.run(
        [sys.executable, "-m", "wirespeed.bench", "--quick", "--scenario", "small",
         "--peers", "wirespeed,stdlib", "--out", str(out), "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    return Outcome(done.returncode, done.stdout, done.stderr, out)


def test_quick_run_succeeds(quick: Outcome) -> None:
    assert quick.code == 0, quick.err


def test_json_lines_hold_machine_settings_and_trials(quick: Outcome) -> None:
    records = quick.records()
    machine = records[0]
    assert machine["type"] == "machine"
    assert machine["kernel"] and machine["cpu_model"] and machine["cpus"] >= 1
    settings = quick.of("settings")[0]
    assert (
        settings["command"] == "wirespeed bench --quick --scenario small --peers wirespeed,stdlib"
    )
    assert (settings["rounds"], settings["duration"]) == (1, 1.0)
    trials = [t for t in quick.of("trial") if t["peer"] == "stdlib"]
    assert len(trials) == 1
    t = trials[0]
    assert t["scenario"] == "small" and t["tool"] == "wrk" and t["connections"] == 64
    assert t["requests"] > 0 and t["rps"] > 0
    assert t["body_bytes"] == t["requests"] * 13  # body bytes apart from wire bytes
    assert t["wire_bytes"] > t["body_bytes"]
    assert 0 < t["latency_ms"]["p50"] <= t["latency_ms"]["p99"]
    assert t["server_cpu"] > 0 and t["rss_peak"] > 10 * 2**20
    versions = {p["peer"]: p["version"] for p in quick.of("peer")}
    assert versions["stdlib"].startswith("Python 3.")
    assert records[-1]["type"] == "end"


def test_wirespeed_is_measured_or_skipped_with_a_reason(quick: Outcome) -> None:
    measured = [t for t in quick.of("trial") if t["peer"] == "wirespeed"]
    skipped = [s for s in quick.of("skip") if s["peer"] == "wirespeed"]
    assert measured or (skipped and skipped[0]["reason"])
    if skipped:
        assert f"skipped wirespeed (small): {skipped[0]['reason'][:40]}" in quick.out


def test_table_on_stdout(quick: Outcome) -> None:
    assert "small: 13-byte body, keep-alive (wrk, 64 connections)" in quick.out
    header = next(line for line in quick.out.splitlines() if "req/s" in line).split()
    assert header[:5] == ["Stack", "req/s", "min-max", "vs", "ws"]
    row = next(line for line in quick.out.splitlines() if "Python http.server" in line)
    assert row.split()[2].replace(",", "").isdigit()  # the requests/s cell


def test_charts_and_report(quick: Outcome) -> None:
    for name in ("throughput", "latency", "cpu-memory"):
        assert (quick.dir / "charts" / f"{name}.png").read_bytes().startswith(PNG)
    report = (quick.dir / "report.md").read_text()
    assert "![Throughput, median with min-max](charts/throughput.png)" in report
    assert "| Stack | Throughput (req/s) |" in report
    assert "| Python http.server |" in report
    summary = json.loads((quick.dir / "summary.json").read_text())
    assert {s["peer"] for s in summary} >= {"stdlib"}


def test_peers_are_stopped(quick: Outcome) -> None:
    for ready in quick.of("ready"):
        assert not psutil.pid_exists(ready["pid"]), ready["peer"]


def test_report_can_be_rebuilt_from_json_lines(
    quick: Outcome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "trials.jsonl"
    shutil.copy(quick.dir / "trials.jsonl", copy)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--report-from", str(copy)])) == 0
    assert "Python http.server" in capsys.readouterr().out
    assert (tmp_path / "charts" / "throughput.png").read_bytes().startswith(PNG)
    assert (tmp_path / "report.md").read_text() == (quick.dir / "report.md").read_text()


@pytest.fixture
def only_wrk_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH holding wrk and taskset only: nginx and node are really not installed there."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("wrk", "taskset"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))


@pytest.mark.usefixtures("only_wrk_on_path")
def test_missing_peer_is_skipped_with_its_reason(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = bench(
        ["--scenario", "small", "--peers", "nginx,stdlib,node", "--rounds", "1",
         "--duration", "1", "--warmup", "0", "--cache-dir", str(cache)],
        tmp_path / "out",
        capsys,
    )  # fmt: skip
    assert outcome.code == 0, outcome.err
    reasons = {s["peer"]: s["reason"] for s in outcome.of("skip")}
    assert reasons == {
        "nginx": "nginx not found on PATH (apt-get install nginx-light)",
        "node": "node not found on PATH (apt-get install nodejs)",
    }
    assert "skipped nginx (all scenarios): nginx not found on PATH" in outcome.out
    assert [t["peer"] for t in outcome.of("trial")] == ["stdlib"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- **nginx** (all scenarios): nginx not found on PATH" in report


@pytest.mark.usefixtures("only_wrk_on_path")
def test_nothing_measured_fails(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = bench(["--scenario", "small", "--peers", "nginx"], tmp_path / "out", capsys)
    assert outcome.code == 1
    assert "nothing was measured" in outcome.err


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = bench(["--scenario", "small,huge"], tmp_path / "out", capsys)
    assert outcome.code == 2
    assert "unknown scenario huge" in outcome.err
    outcome = bench(["--peers", "apache"], tmp_path / "out", capsys)
    assert outcome.code == 2
    assert "unknown peer apache" in outcome.err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_every_peer(sig: signal.Signals, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wirespeed.bench", "--scenario", "small", "--peers", "stdlib",
         "--rounds", "50", "--duration", "1", "--warmup", "0", "--out", str(out),
         "--cache-dir", str(cache)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        ready = _wait_for_record(out / "trials.jsonl", "trial", timeout=30)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    assert b"interrupted" in err
    pids = [r["pid"] for r in _records(out / "trials.jsonl") if r["type"] == "ready"]
    assert pids and ready
    for pid in pids:
        assert not psutil.pid_exists(pid)
    assert (out / "report.md").exists()  # the partial report is still written


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _wait_for_record(path: Path, kind: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in _records(path):
            if record["type"] == kind:
                return record
        time.sleep(0.1)
    raise AssertionError(f"no {kind} record in {path} within {timeout} s")
