"""Summaries, tables and the Markdown report from JSON-lines records (pure functions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wirespeed.bench import report
from wirespeed.bench.cli import _names
from wirespeed.bench.scenarios import SCENARIOS, make_payload, select


def trial(scenario: str, peer: str, rnd: int, rps: float, **extra: Any) -> dict[str, Any]:
    body = extra.pop("body_Bps", rps * 13)
    return {
        "type": "trial", "scenario": scenario, "peer": peer, "round": rnd, "rps": rps,
        "body_Bps": body, "wire_Bps": body * 1.1, "server_cpu": 99.0, "rss_peak": 30 << 20,
        "client_cpu": 40.0, "latency_ms": {"avg": 2.0, "p50": 1.5, "p99": 9.0 + rnd},
        "errors": 0, "noisy": False, "client_bound": False, "notes": [], **extra,
    }  # fmt: skip


def scenario_record(name: str) -> dict[str, Any]:
    s = SCENARIOS[name]
    return {"type": "scenario", "name": s.name, "title": s.title, "table": s.table,
            "load": s.load, "connections": s.connections, "headers": list(s.headers)}  # fmt: skip


RECORDS: list[dict[str, Any]] = [
    scenario_record("small"),
    scenario_record("compress"),
    scenario_record("file-64m"),
    {"type": "peer", "peer": "wirespeed", "title": "wirespeed", "version": "0.1", "how": "-"},
    {"type": "peer", "peer": "go", "title": "Go net/http", "version": "go1.19", "how": "-"},
    {"type": "ready", "scenario": "small", "peer": "go", "idle_rss": 6 << 20},
    {"type": "ready", "scenario": "compress", "peer": "go", "content_encoding": "identity",
     "wire_body_bytes": 204894},
    {"type": "ready", "scenario": "compress", "peer": "wirespeed", "content_encoding": "gzip",
     "wire_body_bytes": 28000},
    trial("small", "wirespeed", 1, 30000.0),
    trial("small", "wirespeed", 2, 36000.0, noisy=True),
    trial("small", "wirespeed", 3, 33000.0),
    trial("small", "go", 1, 60000.0),
    trial("small", "go", 2, 66000.0),
    trial("small", "go", 3, 63000.0, client_bound=True, errors=4),
    trial("compress", "wirespeed", 1, 1000.0),
    trial("compress", "go", 1, 4000.0),
    trial("file-64m", "go", 1, 30.0, body_Bps=2e9),
    trial("file-64m", "wirespeed", 1, 33.0, body_Bps=2.2e9),
    trial("file-64m", "loopback", 1, 35.0, body_Bps=2.5e9),
    {"type": "skip", "peer": "nginx", "scenario": "*", "reason": "nginx not found"},
    {"type": "skip", "peer": "stdlib", "scenario": "small", "reason": "check failed: x"},
    {"type": "skip", "peer": "stdlib", "scenario": "compress", "reason": "check failed: x"},
]  # fmt: skip


def by_peer(scenario: str) -> dict[str, report.Summary]:
    return {s.peer: s for s in report.summarize(RECORDS) if s.scenario == scenario}


def test_medians_with_min_max_over_rounds() -> None:
    ws = by_peer("small")["wirespeed"]
    assert ws.trials == 3
    assert (ws.rps.median, ws.rps.low, ws.rps.high) == (33000.0, 30000.0, 36000.0)
    assert ws.latency_ms["p99"] == 11.0  # median of 10, 11, 12
    assert ws.notes == ["noisy 1/3"]


def test_ratio_against_wirespeed_in_the_same_scenario() -> None:
    rows = by_peer("small")
    assert rows["wirespeed"].ratio == 1.0
    assert rows["go"].ratio == pytest.approx(63000 / 33000)
    assert rows["go"].notes == ["client-bound 1/3", "4 errors"]
    transfer = by_peer("file-64m")
    assert transfer["go"].ratio == pytest.approx(2.0 / 2.2)  # transfer rate, not requests/s


def test_compress_rows_show_the_coding() -> None:
    rows = by_peer("compress")
    assert rows["go"].notes == ["sent uncompressed"]
    assert rows["wirespeed"].notes == []
    columns, cells = report.table_rows(report.summarize(RECORDS), "compress")
    assert "Coding (body on the wire)" in columns
    coding = columns.index("Coding (body on the wire)")
    assert [row[coding] for row in cells] == ["identity 200.1 KiB", "gzip 27.3 KiB"]


def test_rows_fastest_first_ceiling_on_top() -> None:
    _, cells = report.table_rows(report.summarize(RECORDS), "small")
    assert [row[0] for row in cells] == ["Go net/http", "wirespeed"]
    columns, cells = report.table_rows(report.summarize(RECORDS), "file-64m")
    assert columns[1] == "Transfer rate (body)"
    assert [row[0] for row in cells] == ["loopback ceiling", "wirespeed", "Go net/http"]
    assert cells[1][1] == "2.20 GB/s"


def test_skips_are_one_line_per_peer() -> None:
    assert report.skipped(RECORDS) == [
        ("nginx", "all scenarios", "nginx not found"),
        ("stdlib", "small, compress", "check failed: x"),
    ]


def test_markdown_and_charts(tmp_path: Path) -> None:
    summaries = report.summarize(RECORDS)
    files = report.charts(summaries, tmp_path / "charts")
    assert sorted(p.name for p in files) == [
        "cpu-memory.png", "latency.png", "throughput.png", "transfer.png",
    ]  # fmt: skip
    md = report.markdown(RECORDS, summaries, files)
    assert "## Requests/s, latency, CPU and memory (small responses)" in md
    assert "## Transfer rate (large payloads)" in md
    assert "### file-64m: 64 MiB file (block client, 4 connections)" in md
    assert "| Go net/http | 63,000 | 60,000-66,000 | 1.91x |" in md
    assert "![Transfer rate, median with min-max](charts/transfer.png)" in md
    assert "- **stdlib** (small, compress): check failed: x" in md


@pytest.mark.parametrize(
    ("given", "names"),
    [(None, []), (["a,b", "c"], ["a", "b", "c"]), (["a, b,", "a"], ["a", "b"])],
)
def test_repeatable_comma_options(given: list[str] | None, names: list[str]) -> None:
    assert _names(given) == names


def test_unknown_scenario() -> None:
    with pytest.raises(ValueError, match="unknown scenario nope"):
        select(["small", "nope"])
    assert [s.name for s in select(["range", "small"])] == ["small", "range"]


def test_payload_is_200_kib_of_json() -> None:
    payload = make_payload()
    assert 200 * 1024 <= len(payload) < 202 * 1024
    assert isinstance(json.loads(payload), list)
    assert payload == make_payload()  # same bytes every run: identical bodies across peers
