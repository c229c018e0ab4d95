"""The programs the lab runs as peers, one per stack, all serving the same routes.

Every program answers:

- ``GET /``            -> 200, ``Hello, World!`` (13 bytes, text/plain)
- ``GET /json``        -> 200, the data directory's ``payload.json`` (compressed where the stack
  compresses as its users would switch it on)
- ``GET /files/NAME``  -> the file ``files/NAME`` of the data directory, with single-range
  support where the stack has it

The data directory comes from ``--data`` or the ``WIRESPEED_BENCH_DATA`` environment variable.
Access logs are off everywhere (nginx ``access_log off`` is the issue's setting; logging one line
per request would otherwise dominate the small-response numbers of the peers that log).
"""
