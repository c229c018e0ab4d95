"""The benchmark lab: ``wirespeed bench`` measures wirespeed against the servers people would
pick instead, on the machine at hand, and reports the article's two tables with charts.

Theory of operation
-------------------
A run is a grid of *scenarios* (:mod:`.scenarios`: what is requested, by which load tool, with
how many connections, and which body is correct) times *peers* (:mod:`.peers`: how each server
is started as its users run it, one worker). For each scenario :mod:`.runner` starts every peer
pinned to the server CPU (:mod:`.process`), holds each to the scenario's contract before it is
measured (:mod:`.check`), warms each up, then runs rounds in shuffled order with the load
generator on the other CPU (:mod:`.load`: wrk for small bodies, the C block client for large
ones), sampling the server tree's CPU and memory and everyone else's CPU (:mod:`.sample`).
Every fact goes to ``trials.jsonl`` as it happens; :mod:`.report` turns those records into
tables, ``summary.json``, PNG charts and ``report.md``.

Adding a peer
    Write its program under ``apps/`` (serve ``GET /`` -> ``Hello, World!``, ``GET /json`` ->
    the data directory's ``payload.json``, ``GET /files/NAME`` -> ``files/NAME``), then add one
    ``Peer(...)`` entry to ``peers.PEERS``: name, title, a one-line "how it runs", the
    executables or Python modules it needs (a missing one becomes a one-line skip reason), and
    a function returning its command line for a port.

Adding a scenario
    Add one ``Scenario(...)`` entry to ``scenarios.SCENARIOS``: path, request headers, load tool
    (``wrk`` or ``block``), connections and why, the table it belongs to, and the body the check
    expects (``hello``, ``payload``, or a file from ``scenarios.FILE_SIZES``).
"""
